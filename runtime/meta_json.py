"""``mnist.meta.json``: the pixels-in models' metadata for runtimes that cannot read ``metadata_props``.

onnxruntime-web cannot read an ONNX file's ``metadata_props``, so export writes
this sidecar beside ``mnist.pixels.onnx`` and ``mnist.pixels.int8.onnx`` (the
web page reads it). Standard library only. The schema (``format`` 1)::

    {"format": 1, "dataset": str, "labels": [str, ...], "model_version": str,
     "source_sha256": str, "recipe": {...}, "versions": {...},
     "models": {"fp32": {"file": "mnist.pixels.onnx", "bytes": int,
                         "test_accuracy": float, "agreement": float,
                         "ort_file": "mnist.pixels.ort" | null,
                         "input": "pixels", "outputs": ["probabilities", "label"]},
                "int8": {...}}}

``test_accuracy`` is the file's accuracy on the validation pictures, and
``agreement`` the fraction of them on which its label equals ``mnist-infer``'s
(Python preprocessing + the core model).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mnist_edge.runtime.errors import MnistEdgeError

META_FORMAT = 1


class MetaJsonError(MnistEdgeError, ValueError):
    """An ``mnist.meta.json`` text does not follow the schema; the message names the field."""


@dataclass(frozen=True)
class PixelsModelEntry:
    """One pixels-in file as listed in ``mnist.meta.json``."""

    file: str
    bytes: int
    test_accuracy: float
    agreement: float
    ort_file: str | None = None
    input: str = "pixels"
    outputs: tuple[str, ...] = ("probabilities", "label")

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "bytes": self.bytes,
            "test_accuracy": self.test_accuracy,
            "agreement": self.agreement,
            "ort_file": self.ort_file,
            "input": self.input,
            "outputs": list(self.outputs),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> PixelsModelEntry:
        ort_file = data.get("ort_file")
        return cls(
            file=_typed(data, "file", str, where),
            bytes=_typed(data, "bytes", int, where),
            test_accuracy=float(_typed(data, "test_accuracy", (int, float), where)),
            agreement=float(_typed(data, "agreement", (int, float), where)),
            ort_file=ort_file if isinstance(ort_file, str) else None,
            input=_typed(data, "input", str, where),
            outputs=tuple(str(x) for x in _typed(data, "outputs", list, where)),
        )


@dataclass(frozen=True)
class MetaJson:
    """The contents of ``mnist.meta.json``: shared metadata and one entry per precision."""

    dataset: str
    labels: tuple[str, ...]
    model_version: str
    source_sha256: str
    recipe: Mapping[str, Any] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    models: Mapping[str, PixelsModelEntry] = field(default_factory=dict)

    def to_json(self) -> str:
        """The file's text (pretty-printed, ends with a newline)."""
        data = {
            "format": META_FORMAT,
            "dataset": self.dataset,
            "labels": list(self.labels),
            "model_version": self.model_version,
            "source_sha256": self.source_sha256,
            "recipe": dict(self.recipe),
            "versions": dict(self.versions),
            "models": {k: v.to_dict() for k, v in self.models.items()},
        }
        return json.dumps(data, indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> MetaJson:
        """Parse the file's text.

        Raises:
            MetaJsonError: not JSON, another format version, or a field missing or of the wrong type.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MetaJsonError(f"mnist.meta.json is not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise MetaJsonError("mnist.meta.json must hold a JSON object")
        if data.get("format") != META_FORMAT:
            raise MetaJsonError(
                f"mnist.meta.json has format {data.get('format')!r}; this reader knows {META_FORMAT}"
            )
        models = _typed(data, "models", dict, "mnist.meta.json")
        return cls(
            dataset=_typed(data, "dataset", str, "mnist.meta.json"),
            labels=tuple(str(x) for x in _typed(data, "labels", list, "mnist.meta.json")),
            model_version=_typed(data, "model_version", str, "mnist.meta.json"),
            source_sha256=_typed(data, "source_sha256", str, "mnist.meta.json"),
            recipe=_typed(data, "recipe", dict, "mnist.meta.json"),
            versions=_typed(data, "versions", dict, "mnist.meta.json"),
            models={
                str(k): PixelsModelEntry.from_dict(
                    _typed(models, k, dict, "mnist.meta.json models"), f"models.{k}"
                )
                for k in models
            },
        )


def _typed(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise MetaJsonError(f"{where}: field {key!r} is missing or not {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)
