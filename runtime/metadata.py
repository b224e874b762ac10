"""The metadata an mnist-edge ONNX file carries (``metadata_props``), and its parser.

Export writes it, the runtime reads it: labels and preprocessing come from the
model file, so a model trained on Fashion-MNIST labels its outputs correctly
with no extra configuration. Every value is a string (ONNX requires it);
structured values are JSON. Readable from
``InferenceSession.get_modelmeta().custom_metadata_map`` and in Netron.

Keys (all prefixed ``mnist_edge.`` except the few generic ones tools show):

===============================  =============================================
key                              value
===============================  =============================================
``mnist_edge.format``            ``"1"``: version of this metadata layout
``labels``                       JSON list of class names, index = output column
``preprocessing``                JSON :class:`Preprocessing`
``dataset``                      ``"mnist"`` or ``"fashion-mnist"``
``test_accuracy``                accuracy of *this file* on the 10k test set
``mnist_edge.precision``         ``"fp32"`` or ``"int8"``
``mnist_edge.source_sha256``     SHA-256 of the checkpoint it was exported from
``mnist_edge.recipe``            JSON training recipe (epochs, batch, lr, ...)
``mnist_edge.versions``          JSON tool and library versions
``model_version``                version string of the model (e.g. ``1.0+sha``)
``mnist_edge.int8_target``       int8 files: the preset (``x86-vnni``,
                                 ``x86-avx2``, ``arm64``, ``portable``)
``mnist_edge.int8_tuned_for``    int8 files: the CPU features that preset
                                 assumes (e.g. ``x86_64 avx2 (no vnni)``)
``mnist_edge.export_cpu``        int8 files: the exporting host's CPU
                                 (``x86_64: avx2``), for ``auto``
===============================  =============================================

Files from before a key existed simply lack it; the parser gives ``""``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

FORMAT_KEY = "mnist_edge.format"
FORMAT_VERSION = "1"
INT8_TARGET_KEY = "mnist_edge.int8_target"
INT8_TUNED_FOR_KEY = "mnist_edge.int8_tuned_for"
EXPORT_CPU_KEY = "mnist_edge.export_cpu"

MNIST_LABELS: tuple[str, ...] = tuple(str(i) for i in range(10))
# How a picture's polarity is chosen before preprocessing: invert a dark-on-light
# picture (auto), or force it. Here, in this import-light module, so CLIs can offer
# the choice before numpy and pillow load.
INVERT_MODES = ("auto", "always", "never")


@dataclass(frozen=True)
class Preprocessing:
    """How raw pixels become the model's input.

    Attributes:
        size: output image side (28).
        fit: the ink's bounding box is scaled to fit ``fit`` x ``fit`` (20, as MNIST).
        scale: multiply uint8 pixels by this (1/255) to get [0, 1] inputs.
        foreground: ``"white-on-black"``: the digit is bright on a dark background.
        centering: ``"center-of-mass"``: the fitted digit is placed so its centre
            of mass is at the image centre (as MNIST was made).
        input_dtype: ``"float32"`` ([N, 1, 28, 28] in [0, 1]) or ``"uint8"``
            ([N, 28, 28] raw pixels; the graph scales them).
    """

    size: int = 28
    fit: int = 20
    scale: float = 1.0 / 255.0
    foreground: str = "white-on-black"
    centering: str = "center-of-mass"
    input_dtype: str = "float32"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Preprocessing:
        data = json.loads(text)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class ModelMetadata:
    """Everything :mod:`mnist_edge.runtime` needs from, and export records in, a model file."""

    labels: tuple[str, ...] = MNIST_LABELS
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    dataset: str = "mnist"
    test_accuracy: float | None = None
    precision: str = "fp32"
    source_sha256: str = ""
    recipe: Mapping[str, Any] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    model_version: str = ""
    int8_target: str = ""
    int8_tuned_for: str = ""
    export_cpu: str = ""
    # False when the file had no mnist-edge metadata and these are the MNIST defaults.
    from_file: bool = True

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` entries (all strings)."""
        props = {
            FORMAT_KEY: FORMAT_VERSION,
            "labels": json.dumps(list(self.labels)),
            "preprocessing": self.preprocessing.to_json(),
            "dataset": self.dataset,
            "mnist_edge.precision": self.precision,
            "mnist_edge.source_sha256": self.source_sha256,
            "mnist_edge.recipe": json.dumps(dict(self.recipe), sort_keys=True),
            "mnist_edge.versions": json.dumps(dict(self.versions), sort_keys=True),
            "model_version": self.model_version,
        }
        if self.test_accuracy is not None:
            props["test_accuracy"] = f"{self.test_accuracy:.4f}"
        for key, value in (
            (INT8_TARGET_KEY, self.int8_target),
            (INT8_TUNED_FOR_KEY, self.int8_tuned_for),
            (EXPORT_CPU_KEY, self.export_cpu),
        ):
            if value:
                props[key] = value
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> ModelMetadata:
        """Parse ``metadata_props`` (e.g. ``get_modelmeta().custom_metadata_map``).

        A file without our format key gives the MNIST defaults with
        ``from_file=False`` (the caller warns once).

        Raises:
            ValueError: the file claims to be ours but a value does not parse.
        """
        if FORMAT_KEY not in props:
            return cls(from_file=False)
        try:
            labels = tuple(
                str(x) for x in json.loads(props.get("labels", "null") or "null") or MNIST_LABELS
            )
            pre = (
                Preprocessing.from_json(props["preprocessing"])
                if "preprocessing" in props
                else Preprocessing()
            )
            acc = props.get("test_accuracy")
            return cls(
                labels=labels,
                preprocessing=pre,
                dataset=props.get("dataset", "mnist"),
                test_accuracy=float(acc) if acc else None,
                precision=props.get("mnist_edge.precision", "fp32"),
                source_sha256=props.get("mnist_edge.source_sha256", ""),
                recipe=json.loads(props.get("mnist_edge.recipe", "{}") or "{}"),
                versions=json.loads(props.get("mnist_edge.versions", "{}") or "{}"),
                model_version=props.get("model_version", ""),
                int8_target=props.get(INT8_TARGET_KEY, ""),
                int8_tuned_for=props.get(INT8_TUNED_FOR_KEY, ""),
                export_cpu=props.get(EXPORT_CPU_KEY, ""),
                from_file=True,
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"model metadata does not parse ({exc})") from exc
