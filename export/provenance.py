"""What an exported file says about itself: its ``metadata_props`` and doc string.

:func:`file_props` gives the props of :mod:`mnist_edge.runtime.metadata`'s
contract (labels, preprocessing, test accuracy of *this* file, precision,
source checkpoint SHA-256, recipe, versions) plus the validation outcome;
:func:`file_doc` the human-readable description shown in Netron.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import onnx

from mnist_edge.export.onnx import MODEL_VERSION
from mnist_edge.export.parity import ParityReport
from mnist_edge.export.spec import GraphSpec
from mnist_edge.runtime.metadata import ModelMetadata, Preprocessing
from mnist_edge.train.data import DATASETS

if TYPE_CHECKING:
    from mnist_edge.train.checkpoint import Checkpoint


def model_preprocessing(dataset: str, spec: GraphSpec) -> Preprocessing:
    """The preprocessing recorded in a file: how the dataset's images were made
    (MNIST defaults for unknown datasets), with the file's input dtype."""
    known = DATASETS.get(dataset)
    base = known.preprocessing if known else Preprocessing()
    return replace(base, input_dtype="uint8" if spec.uint8_input else "float32")


@dataclass(frozen=True)
class Int8Provenance:
    """Which int8 preset made a file, what CPU it assumes, and the exporting host's CPU."""

    target: str
    tuned_for: str
    export_cpu: str


def export_versions(trained_with: dict[str, str]) -> dict[str, str]:
    """Tool and library versions recorded in each file (plus the training ones, prefixed)."""
    import onnxruntime
    import onnxscript

    from mnist_edge.train.checkpoint import library_versions

    versions = library_versions() | {
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxscript": onnxscript.__version__,
    }
    return versions | {f"train.{k}": str(v) for k, v in trained_with.items()}


def file_props(
    ckpt: Checkpoint,
    precision: str,
    spec: GraphSpec,
    parity: ParityReport,
    versions: dict[str, str],
    int8: Int8Provenance | None = None,
) -> dict[str, str]:
    """The ``metadata_props`` of one file: its :class:`ModelMetadata` plus the number of
    test images it was checked on and its validation outcome (``passed`` or ``FAILED: ...``).
    An int8 file also records ``int8`` (its preset and the CPUs involved).

    Raises:
        ValueError: an int8 file without its ``int8`` provenance (every int8 file records it).
    """
    if precision == "int8" and int8 is None:
        raise ValueError("an int8 file needs its Int8Provenance (the preset that made it)")
    acc = parity.accuracy if np.isfinite(parity.accuracy) else None
    meta = ModelMetadata(
        labels=ckpt.classes,
        preprocessing=model_preprocessing(ckpt.dataset.name, spec),
        dataset=ckpt.dataset.name,
        test_accuracy=acc,
        precision=precision,
        source_sha256=ckpt.sha256,
        recipe=ckpt.recipe,
        versions=versions,
        model_version=f"{MODEL_VERSION}+{ckpt.sha256[:12]}",
    )
    if precision == "int8" and int8 is not None:  # checked above; narrows the type
        meta = replace(
            meta,
            int8_target=int8.target,
            int8_tuned_for=int8.tuned_for,
            export_cpu=int8.export_cpu,
        )
    props = meta.to_props()
    props["mnist_edge.test_images"] = str(parity.images)
    props["mnist_edge.validation"] = (
        "passed" if parity.ok else "FAILED: " + "; ".join(parity.failures)
    )
    return props


def file_doc(dataset: str, precision: str, spec: GraphSpec, sha: str) -> str:
    """The model doc string: input and output, their shapes and preprocessing, the source checkpoint."""
    pre = model_preprocessing(dataset, spec)
    centring = "centred by centre of mass" if pre.centering == "center-of-mass" else "box centred"
    shape = ", ".join(str(d) for d in spec.input_shape)
    pixels = "raw uint8 pixels" if spec.uint8_input else "pixels scaled to [0, 1]"
    return (
        f"mnist-edge {dataset} convnet ({precision}). Input 'image': "
        f"{'uint8' if spec.uint8_input else 'float32'} [{shape}], {pixels}, white on black, "
        f"28x28, {centring}. Output 'probabilities': float32 [{spec.batch_dim}, "
        f"{spec.num_classes}], softmax over the classes in metadata 'labels'. "
        f"Exported from checkpoint sha256 {sha[:12]}."
    )
