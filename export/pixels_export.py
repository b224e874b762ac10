"""The export's pixels-in step: build, validate and describe ``mnist.pixels[.int8].onnx``.

:func:`build_pixels_files` wraps the main fp32 and int8 files of an export
(already validated against PyTorch, metadata set) with
:func:`mnist_edge.export.pixels.build_pixels_model`, validates each against
``mnist-infer``'s Python path (:mod:`.pixels_check`) and gives their
``metadata_props``. :func:`meta_document` makes ``mnist.meta.json``
(:mod:`mnist_edge.runtime.meta_json`) from what was written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from mnist_edge.export.config import ExportConfig
from mnist_edge.export.onnx import MODEL_VERSION
from mnist_edge.export.parity import Reference
from mnist_edge.export.pixels import build_pixels_model
from mnist_edge.export.pixels_check import (
    Pictures,
    PixelsParityReport,
    PixelsTolerance,
    check_pixels,
    run_core,
    validation_pictures,
)
from mnist_edge.export.provenance import Int8Provenance, file_props, model_preprocessing
from mnist_edge.export.report import ExportedFile
from mnist_edge.export.spec import GraphSpec
from mnist_edge.runtime.images import ImageOptions, preprocess
from mnist_edge.runtime.layout import model_name
from mnist_edge.runtime.meta_json import MetaJson, PixelsModelEntry
from mnist_edge.runtime.metadata import Preprocessing

if TYPE_CHECKING:
    from mnist_edge.train.checkpoint import Checkpoint

Log = Callable[[str], None]
INTERFACE_KEY = "mnist_edge.input"
INTERFACE = "pixels: uint8 [height, width], any size and polarity; preprocessing inside the graph"


@dataclass
class PixelsValidator:
    """The validation pictures and the Python path's results on them, shared by every pixels-in file.

    Attributes:
        pictures: from :func:`validation_pictures`.
        digits: uint8 (N, 28, 28): ``preprocess`` of each picture (the Python path's first half).
        preprocessing: the models' preprocessing.
        tolerance: the bounds.
        cores: serialized core model per precision (the Python path's second half).
    """

    pictures: Pictures
    digits: np.ndarray
    preprocessing: Preprocessing
    tolerance: PixelsTolerance
    cores: dict[str, bytes] = field(default_factory=dict)
    _reference: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_reference(
        cls, reference: Reference, preprocessing: Preprocessing, config: ExportConfig
    ) -> PixelsValidator:
        """Pictures from the first ``config.pixels_images`` evaluation digits, preprocessed once."""
        digits = np.rint(reference.images[:, 0] * 255.0).astype(np.uint8)  # (N, 28, 28), exact
        pictures = validation_pictures(digits, reference.labels, config.pixels_images)
        options = ImageOptions(preprocessing)
        prepared = np.stack([preprocess(p, options) for p in pictures.pixels])
        tolerance = PixelsTolerance(config.pixels_min_agreement, config.pixels_max_accuracy_gap)
        return cls(pictures, prepared, preprocessing, tolerance)

    def reference(self, precision: str) -> np.ndarray:
        """The Python path's probabilities (N, classes) with the ``precision`` core."""
        if precision not in self._reference:
            self._reference[precision] = run_core(
                self.cores[precision], self.digits, self.preprocessing
            )
        return self._reference[precision]

    def check(self, model: onnx.ModelProto | Path, precision: str, name: str) -> PixelsParityReport:
        """All checks of one pixels-in file (a ``ModelProto``, or an ``.onnx``/``.ort`` path)."""
        return check_pixels(
            model,
            self.cores[precision],
            self.pictures,
            self.preprocessing,
            self.tolerance,
            name=name,
            precision=precision,
            reference=self.reference(precision),
        )


def build_pixels_files(
    built: Sequence[tuple[ExportedFile, onnx.ModelProto]],
    reference: Reference,
    ckpt: Checkpoint,
    config: ExportConfig,
    versions: dict[str, str],
    int8: Int8Provenance,
    log: Log,
) -> tuple[list[tuple[ExportedFile, onnx.ModelProto]], PixelsValidator]:
    """Build and validate the pixels-in twin of each main (dynamic-batch, float-input) file.

    ``int8``: the preset of the int8 core, recorded in the int8 twin as in the core file.

    Returns:
        The new ``(entry, model)`` pairs (parity and metadata set) and the validator
        (reused for their ``.ort`` twins).
    """
    dataset = ckpt.dataset.name
    main = GraphSpec()
    pre = model_preprocessing(dataset, main)
    validator = PixelsValidator.from_reference(reference, pre, config)
    log(
        f"pixels-in: {len(validator.pictures):,} validation pictures "
        f"({len(set(validator.pictures.variants))} variants)"
    )
    out: list[tuple[ExportedFile, onnx.ModelProto]] = []
    for entry, core in built:
        if entry.spec != main or entry.pixels:
            continue
        validator.cores[entry.precision] = core.SerializeToString()
        name = model_name(entry.precision, pixels=True)
        log(f"building and validating {name}")
        model = build_pixels_model(core, pre)
        parity = validator.check(model, entry.precision, name)
        props = file_props(ckpt, entry.precision, main, parity, versions, int8)
        props[INTERFACE_KEY] = INTERFACE
        del model.metadata_props[:]
        onnx.helper.set_model_props(model, props)
        model.model_version = MODEL_VERSION
        pixels_entry = ExportedFile(
            entry.path.with_name(name), entry.precision, main, parity=parity, pixels=True
        )
        out.append((pixels_entry, model))
    return out, validator


def meta_document(
    files: Sequence[ExportedFile], ckpt: Checkpoint, versions: dict[str, str]
) -> MetaJson:
    """``mnist.meta.json`` for the pixels-in files among ``files`` (and their ``.ort`` twins)."""
    ort_names = {f.path.name for f in files if f.path.suffix == ".ort" and f.written}
    models = {}
    for f in files:
        if not f.pixels or f.path.suffix != ".onnx" or f.parity is None:
            continue
        if not (np.isfinite(f.parity.accuracy) and np.isfinite(f.parity.agreement)):
            continue  # it could not run (written only with allow_mismatch): nothing to show
        ort_name = f.path.with_suffix(".ort").name
        models[f.precision] = PixelsModelEntry(
            file=f.path.name,
            bytes=f.size_bytes,
            test_accuracy=round(f.parity.accuracy, 6),
            agreement=round(f.parity.agreement, 6),
            ort_file=ort_name if ort_name in ort_names else None,
        )
    return MetaJson(
        dataset=ckpt.dataset.name,
        labels=ckpt.classes,
        model_version=f"{MODEL_VERSION}+{ckpt.sha256[:12]}",
        source_sha256=ckpt.sha256,
        recipe=dict(ckpt.recipe),
        versions=dict(versions),
        models=models,
    )
