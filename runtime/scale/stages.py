"""The Ray Data stage: read, decode and classify a block of inputs in one step, and the result rows.

One stage, not a read stage, a decode stage and a model stage: every extra
stage moves each block through the object store again, and per-file read
tasks cost more than the decoding itself on 28x28 pictures. A block of the
input Dataset names the files (``path`` + ``source``: where to read them);
a Dataset of bytes (``bytes`` + ``path``, e.g. from ``read_binary_files``) is
decoded instead of read. Everything here is plain numpy/pyarrow, runnable
(and tested) without Ray.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnist_edge.runtime.arrays import array_to_uint8, is_array_file, open_array_file
from mnist_edge.runtime.errors import first_line
from mnist_edge.runtime.images import (
    ImageError,
    ImageOptions,
    load_batch,
    load_bytes_batch,
    preprocess,
)
from mnist_edge.runtime.scale.config import RayEngineError
from mnist_edge.runtime.session import SessionConfig

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs

    from mnist_edge.runtime.classifier import Classifier, Predictions

RESULT_COLUMNS = ("path", "label", "confidence", "top_k", "error")
"""The columns of a result row: ``label``/``confidence``/``top_k`` are null on error rows,
``error`` is null on the others; ``top_k`` is a list of ``{label, confidence}`` (empty
unless asked for)."""

LOCAL = 0
"""``source`` of a file on the worker's own file system; ``k > 0`` is ``Job.filesystems[k - 1]``."""


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


def result_table(
    paths: Sequence[str],
    errors: Sequence[str | None],
    predictions: Predictions,
    top_k: int,
) -> pa.Table:
    """Result rows: an error row where ``errors[i]`` is set, else the next of ``predictions``.

    The columnar twin of :func:`mnist_edge.runtime.messages.results`: the same
    labels, confidences and top-k (from :class:`Predictions`), built as one Arrow
    array per column, with no Python per row or per alternative.

    Args:
        paths: n input names.
        errors: per input, ``None`` or why it failed.
        predictions: one per input without an error, in input order.
        top_k: alternatives per row (at most the number of classes; 0 = none).
    """
    import pyarrow as pa

    n = len(paths)
    failed = np.fromiter((e is not None for e in errors), dtype=bool, count=n)
    ok = np.flatnonzero(~failed)
    if len(ok) != len(predictions.indices):
        raise ValueError(f"{len(predictions.indices)} predictions for {len(ok)} decoded inputs")
    names = np.asarray(predictions.classes, dtype=object)
    indices = np.zeros(n, np.int64)
    indices[ok] = predictions.indices
    confidences = np.zeros(n, np.float64)
    confidences[ok] = predictions.confidences
    schema = result_schema()
    alternative = schema.field("top_k").type.value_type
    if top_k:
        best = np.zeros((n, top_k), np.int64)
        best[ok] = predictions.top_k(top_k)  # (n_ok, k), most probable first
        probabilities = np.zeros((n, top_k), np.float64)
        probabilities[ok] = np.take_along_axis(predictions.probabilities, best[ok], axis=1)
        alternatives = pa.StructArray.from_arrays(
            [pa.array(names[best.ravel()], pa.string()), pa.array(probabilities.ravel())],
            fields=list(alternative),
        )
    else:
        alternatives = pa.array([], alternative)
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * top_k)
    top = pa.ListArray.from_arrays(
        offsets, alternatives, type=schema.field("top_k").type, mask=pa.array(failed)
    )
    return pa.table(
        [
            pa.array(paths, pa.string()),
            pa.array(names[indices], pa.string(), mask=failed),
            pa.array(confidences, pa.float64(), mask=failed),
            top,
            pa.array(errors, pa.string()),
        ],
        schema=schema,
    )


@dataclass(frozen=True)
class ModelBlob:
    """The model as it travels to the workers: its bytes, so they need no shared file system.

    Attributes:
        name: the file's name, for messages.
        data: the ``.onnx`` file's bytes.
    """

    name: str
    data: bytes = field(repr=False)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ModelBlob:
        return cls(Path(path).name, Path(path).read_bytes())


@dataclass(frozen=True)
class Remote:
    """A pyarrow filesystem and the URI scheme put back in front of the paths it names."""

    scheme: str
    filesystem: pafs.FileSystem


@dataclass(frozen=True)
class Job:
    """What every worker of one run needs (picklable; sent once per worker).

    Attributes:
        model: the model.
        session: ONNX Runtime settings (provider; one thread on CPU).
        options: decode and preprocessing settings (the model's preprocessing).
        top_k: alternatives per image (0 = none).
        images_per_call: images per ONNX Runtime call.
        remotes: the filesystems of ``source`` 1, 2, ... (``source`` 0 is local).
    """

    model: ModelBlob
    session: SessionConfig
    options: ImageOptions
    top_k: int = 0
    images_per_call: int = 64
    remotes: tuple[Remote, ...] = ()


class ClassifyFiles:
    """The stage: a block of inputs -> result rows, one :class:`Classifier` per worker.

    As a Ray actor (``map_batches(ClassifyFiles, compute=ActorPoolStrategy(...))``)
    or inside Ray tasks through :func:`classify_block`. Decoding and preprocessing
    are the local engine's (:func:`~mnist_edge.runtime.images.load_batch`), so are
    the error texts; a ``.npy``/IDX file gives one row per image (``path[i]``).
    """

    def __init__(self, job: Job) -> None:
        self.classifier = open_model(job.model, job.session)
        self.job = job
        self.top_k = min(job.top_k, len(self.classifier.classes))

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        import pyarrow as pa

        if "bytes" in batch and "path" in batch:
            paths = [str(p) for p in batch["path"]]
            images, errors = load_bytes_batch([bytes(b) for b in batch["bytes"]], self.job.options)
            return self._classify(paths, images, errors)
        if "source" not in batch or "path" not in batch:
            raise RayEngineError(
                f"the dataset has no bytes or path column (it has {', '.join(batch) or 'none'}); "
                "pass a Dataset from ray.data.read_binary_files(..., include_paths=True)"
            )
        paths = [str(p) for p in batch["path"]]
        sources = np.asarray(batch["source"])
        arrays = [i for i, p in enumerate(paths) if is_array_file(p)]
        pictures = np.setdiff1d(np.arange(len(paths)), arrays) if arrays else None
        if pictures is not None:
            paths_of, sources_of = [paths[i] for i in pictures], sources[pictures]
        else:
            paths_of, sources_of = paths, sources
        tables = [self._pictures(paths_of, sources_of)] if paths_of else []
        tables += [self._array_file(paths[i], int(sources[i])) for i in arrays]
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    def _name(self, path: str, source: int) -> str:
        return path if source == LOCAL else self.job.remotes[source - 1].scheme + path

    def _pictures(self, paths: list[str], sources: np.ndarray) -> pa.Table:
        if not sources.any():  # all local: exactly the local engine's reader
            images, errors = load_batch(paths, self.job.options)
            return self._classify(paths, images, errors)
        names = [self._name(p, int(s)) for p, s in zip(paths, sources, strict=True)]
        blobs: list[bytes] = []
        unread: dict[int, str] = {}
        for i, (path, source) in enumerate(zip(paths, sources, strict=True)):
            try:
                blobs.append(self._read(path, int(source)))
            except OSError as exc:
                blobs.append(b"")
                unread[i] = f"cannot read image: {exc.strerror or first_line(exc)}"
        images, errors = load_bytes_batch(blobs, self.job.options)
        for i, reason in unread.items():
            errors[i] = reason
        return self._classify(names, images, errors)

    def _read(self, path: str, source: int) -> bytes:
        if source == LOCAL:
            return Path(path).read_bytes()
        with self.job.remotes[source - 1].filesystem.open_input_stream(path) as stream:
            return bytes(stream.readall())

    def _classify(self, paths: list[str], images: np.ndarray, errors: list[str | None]) -> pa.Table:
        """(n, size, size) uint8 digits (zeros where ``errors[i]`` is set) -> result rows."""
        from mnist_edge.runtime.classifier import Predictions

        ok = [i for i, e in enumerate(errors) if e is None]
        good = images[ok] if len(ok) < len(paths) else images  # (n_ok, size, size)
        step = self.job.images_per_call
        parts = [
            self.classifier.predict(good[i : i + step]).probabilities
            for i in range(0, len(ok), step)
        ]
        classes = self.classifier.classes
        probabilities = np.concatenate(parts) if parts else np.zeros((0, len(classes)), np.float32)
        predictions = Predictions.from_probabilities(probabilities, classes)  # (n_ok, classes)
        return result_table(paths, errors, predictions, self.top_k)

    def _array_file(self, path: str, source: int) -> pa.Table:
        """One row per image of a ``.npy``/IDX file, or one error row (as the local engine)."""
        name = self._name(path, source)
        try:
            # (N, H, W), memory-mapped for a local .npy
            array = open_array_file(path) if source == LOCAL else self._remote_array(path, source)
        except ImageError as exc:
            return error_table([name], [str(exc)])
        if len(array) == 0:
            return error_table([name], ["array file holds no images"])
        tables = []
        step = max(self.job.images_per_call, 1024)
        for start in range(0, len(array), step):
            part = array_to_uint8(np.asarray(array[start : start + step]))  # (k, H, W)
            images = np.stack([preprocess(img, self.job.options) for img in part])  # (k, s, s)
            paths = [f"{name}[{start + i}]" for i in range(len(part))]
            tables.append(self._classify(paths, images, [None] * len(part)))
        import pyarrow as pa

        return pa.concat_tables(tables)

    def _remote_array(self, path: str, source: int) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="mnist-edge-array-") as tmp:
            local = Path(tmp) / Path(path).name
            try:
                local.write_bytes(self._read(path, source))
            except OSError as exc:
                raise ImageError(
                    f"cannot read array file: {exc.strerror or first_line(exc)}"
                ) from None
            return np.array(open_array_file(local))  # a copy: the file goes with `tmp`


# This process's open model ({"key": (sha256, session), "classifier": ...}) and its stage
# for the current run ({"key": run, "stage": ...}).
_OPEN: dict[str, Any] = {}
_WORKER: dict[str, Any] = {}


def open_model(model: ModelBlob, session: SessionConfig) -> Classifier:
    """``model`` opened in this process with ``session``; opened again only for another
    model or other settings (the process keeps the latest one open)."""
    from mnist_edge.runtime.classifier import Classifier

    key = (hashlib.sha256(model.data).hexdigest(), session)
    if _OPEN.get("key") != key:
        _OPEN.clear()
        with tempfile.TemporaryDirectory(prefix="mnist-edge-worker-") as tmp:
            path = Path(tmp) / model.name
            path.write_bytes(model.data)
            _OPEN.update(key=key, classifier=Classifier(path, config=session))
    classifier: Classifier = _OPEN["classifier"]
    return classifier


def classify_block(
    batch: dict[str, np.ndarray], job: Job, stage: type[ClassifyFiles], run: str
) -> pa.Table:
    """:class:`ClassifyFiles` inside a Ray task; each worker process opens the model once per run.

    Args:
        batch: a block of inputs.
        job: the run's settings.
        stage: the stage class (a subclass in tests).
        run: a key unique to the run (a worker keeps only the latest run's model).
    """
    if _WORKER.get("key") != run:
        _WORKER.clear()
        _WORKER.update(key=run, stage=stage(job))
    return _WORKER["stage"](batch)
