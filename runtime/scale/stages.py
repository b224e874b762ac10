"""The two Ray Data stages: decode (tasks) and classify (an actor per model), and the result rows.

Both are plain functions/classes of numpy batches, runnable (and tested) without Ray.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnist_edge.runtime.arrays import is_array_file
from mnist_edge.runtime.images import ImageOptions, load_bytes_batch
from mnist_edge.runtime.scale.config import RayEngineError
from mnist_edge.runtime.session import SessionConfig

if TYPE_CHECKING:
    import pyarrow as pa

    from mnist_edge.runtime.classifier import Classifier

RESULT_COLUMNS = ("path", "label", "confidence", "top_k", "error")
"""The columns of a result row: ``label``/``confidence``/``top_k`` are null on error rows,
``error`` is null on the others; ``top_k`` is a list of ``{label, confidence}`` (empty
unless asked for)."""

ARRAY_FILE_ERROR = "array files (.npy, IDX) hold many images: classify them with the local engine"

# The columns between the decode and the classify stage; "" = no error.
_PATH, _IMAGE, _ERROR = "path", "image", "error"


def result_schema() -> pa.Schema:
    """The Arrow schema of result rows (:data:`RESULT_COLUMNS`)."""
    import pyarrow as pa

    alternative = pa.struct([("label", pa.string()), ("confidence", pa.float64())])
    return pa.schema(
        [
            ("path", pa.string()),
            ("label", pa.string()),
            ("confidence", pa.float64()),
            ("top_k", pa.list_(alternative)),
            ("error", pa.string()),
        ]
    )


def error_table(paths: Sequence[str], errors: Sequence[str]) -> pa.Table:
    """Result rows for inputs that failed before classification."""
    import pyarrow as pa

    n = len(paths)
    schema = result_schema()
    return pa.table(
        [
            pa.array(paths, pa.string()),
            pa.nulls(n, pa.string()),
            pa.nulls(n, pa.float64()),
            pa.nulls(n, schema.field("top_k").type),
            pa.array(errors, pa.string()),
        ],
        schema=schema,
    )


def decode_batch(batch: dict[str, np.ndarray], options: ImageOptions) -> dict[str, np.ndarray]:
    """Decode stage: ``{bytes, path}`` rows -> ``{path, image (k, size, size) uint8, error}``.

    Runs in Ray tasks; the same decode and preprocessing as the local CLI
    (:func:`~mnist_edge.runtime.images.load_bytes_batch`).
    """
    missing = [c for c in ("bytes", "path") if c not in batch]
    if missing:
        raise RayEngineError(
            f"the dataset has no {' or '.join(missing)} column; pass a Dataset from "
            "ray.data.read_binary_files(..., include_paths=True)"
        )
    paths = [str(p) for p in batch["path"]]
    blobs = [bytes(b) for b in batch["bytes"]]
    images, errors = load_bytes_batch(blobs, options)  # (k, size, size) uint8
    for i, path in enumerate(paths):
        if is_array_file(path):
            errors[i] = ARRAY_FILE_ERROR
    return {
        _PATH: np.asarray(paths, dtype=object),
        _IMAGE: images,
        _ERROR: np.asarray([e or "" for e in errors], dtype=object),
    }


class ClassifyBatch:
    """Classify stage: one :class:`Classifier` per Ray actor, decoded rows -> result rows.

    The model travels as bytes (workers need no shared file system) and is
    loaded from a private temporary file.

    Args:
        model: the ONNX file's bytes.
        name: the model's name, for messages.
        session: ONNX Runtime settings (provider; one thread on CPU).
        top_k: alternatives per image (0 = none).
        model_batch: images per ONNX Runtime call.
    """

    def __init__(
        self, model: bytes, name: str, session: SessionConfig, top_k: int, model_batch: int
    ) -> None:
        from mnist_edge.runtime.classifier import Classifier

        with tempfile.TemporaryDirectory(prefix="mnist-edge-actor-") as tmp:
            path = Path(tmp) / name
            path.write_bytes(model)
            self.classifier: Classifier = Classifier(path, config=session)
        self.top_k = min(top_k, len(self.classifier.classes))
        self.model_batch = model_batch
        self.schema = result_schema()

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        import pyarrow as pa

        paths = [str(p) for p in batch[_PATH]]
        errors = [str(e) for e in batch[_ERROR]]
        ok = np.flatnonzero([not e for e in errors])
        images = np.asarray(batch[_IMAGE])[ok]  # (n_ok, size, size) uint8
        classes = self.classifier.classes
        labels: list[str | None] = [None] * len(paths)
        confs: list[float | None] = [None] * len(paths)
        alts: list[list[dict[str, Any]] | None] = [None] * len(paths)
        for start in range(0, len(ok), self.model_batch):
            predictions = self.classifier.predict(images[start : start + self.model_batch])
            top = predictions.top_k(self.top_k) if self.top_k else None  # (n, k)
            probs = predictions.probabilities
            rows = ok[start : start + self.model_batch]
            for i, (row, index, conf) in enumerate(
                zip(
                    rows,
                    predictions.indices.tolist(),
                    predictions.confidences.tolist(),
                    strict=True,
                )
            ):
                labels[row] = classes[index]
                confs[row] = conf
                alts[row] = (
                    [{"label": classes[j], "confidence": float(probs[i, j])} for j in top[i]]
                    if top is not None
                    else []
                )
        return pa.table(
            {
                "path": paths,
                "label": labels,
                "confidence": confs,
                "top_k": alts,
                "error": [e or None for e in errors],
            },
            schema=self.schema,
        )
