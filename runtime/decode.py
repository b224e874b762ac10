"""Parallel decoding: files -> MNIST-style digits (and on CPU, probabilities), in input order.

Files go in chunks to a :class:`~mnist_edge.runtime.workers.WorkerPool`, at most
``max_in_flight`` tasks ahead of the consumer; on CPU each worker also runs the
model (see :mod:`.workers`). Small runs are decoded in this process.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mnist_edge.runtime.arrays import array_to_uint8, is_array_file, open_array_file
from mnist_edge.runtime.images import ImageError, ImageOptions, load_batch, preprocess
from mnist_edge.runtime.inputs import Source
from mnist_edge.runtime.pipeline import PipelineConfig
from mnist_edge.runtime.workers import DecoderError, WorkerPool, decode_and_classify, usable_cores

if TYPE_CHECKING:
    from mnist_edge.runtime.classifier import Classifier


@dataclass(frozen=True)
class DecodedChunk:
    """Consecutive inputs, decoded.

    Attributes:
        paths: k input names.
        images: uint8 (k, 28, 28); zeros where ``errors[i]`` is set.
        errors: per input, ``None`` or why it failed.
        probabilities: float32 (k, classes) when a worker already ran the model
            (then ``images`` is empty); ``None`` otherwise.
    """

    paths: list[str]
    images: np.ndarray
    errors: list[str | None]
    probabilities: np.ndarray | None = None


def _array_chunks(path: str, options: ImageOptions, chunk_size: int) -> Iterator[DecodedChunk]:
    """The images of a ``.npy``/IDX file, as ``path[i]`` records, chunk by chunk."""
    try:
        array = open_array_file(path)  # (N, H, W), memory-mapped for .npy
    except ImageError as exc:
        yield _error_chunk(Source(path, str(exc)), options.preprocessing.size)
        return
    size = options.preprocessing.size
    for start in range(0, len(array), chunk_size):
        part = array_to_uint8(np.asarray(array[start : start + chunk_size]))  # (k, H, W)
        images = np.stack([preprocess(img, options) for img in part])  # (k, size, size)
        paths = [f"{path}[{start + i}]" for i in range(len(part))]
        yield DecodedChunk(paths, images, [None] * len(part))
    if len(array) == 0:
        yield _error_chunk(Source(path, "array file holds no images"), size)


def _error_chunk(source: Source, size: int) -> DecodedChunk:
    return DecodedChunk([source.path], np.zeros((1, size, size), np.uint8), [source.error])


def _units(sources: Iterable[Source], chunk_size: int) -> Iterator[tuple[str, object]]:
    """Group sources: ("files", [paths]) chunks, ("array", path), ("error", Source)."""
    files: list[str] = []
    for source in sources:
        if source.error is None and not is_array_file(source.path):
            files.append(source.path)
            if len(files) == chunk_size:
                yield "files", files
                files = []
            continue
        if files:
            yield "files", files
            files = []
        yield ("error", source) if source.error is not None else ("array", source.path)
    if files:
        yield "files", files


class _Decoder:
    """Runs decoding (and on CPU, inference) inline or in a :class:`WorkerPool`.

    With ``workers=None`` the first ``inline_limit`` files are decoded here; past
    that the pool starts in the background and files keep being decoded here
    until it is ready (a few tenths of a second), so small runs never pay for it.
    A ``prestarted`` pool is used as soon as it is ready and left to its owner.
    """

    def __init__(
        self,
        options: ImageOptions,
        config: PipelineConfig,
        model: str | None,
        prestarted: WorkerPool | None = None,
    ) -> None:
        self.options = options
        self.config = config
        self.model = model
        self.auto = config.workers is None
        self.workers = usable_cores() if self.auto else config.workers
        self.seen = 0
        self.handle = prestarted
        self.owned = prestarted is None

    def _pool(self) -> ProcessPoolExecutor | None:
        """The pool to submit to now, or ``None`` to decode inline."""
        if self.workers == 0:
            return None
        if self.handle is None:
            if self.auto and self.seen <= self.config.inline_limit:
                return None
            self.handle = WorkerPool(self.workers, self.model)
        pool = self.handle.get(wait=not self.auto)
        if pool is None and not self.auto and self.handle.failed:
            raise DecoderError("decoder processes could not start; rerun with --workers 0")
        return pool

    def submit(self, paths: list[str]) -> Future | list[str]:
        self.seen += len(paths)
        pool = self._pool()
        if pool is None:
            return paths  # decoded here when it is its turn
        if self.handle is not None and self.model is not None and self.handle.model == self.model:
            return pool.submit(decode_and_classify, paths, self.options, self.config.batch_size)
        return pool.submit(load_batch, paths, self.options)

    def resolve(self, task: Future | list[str], paths: list[str]) -> DecodedChunk:
        if isinstance(task, list):
            images, errors = load_batch(task, self.options)
            return DecodedChunk(task, images, errors)
        try:
            data, errors = task.result()
        except BrokenProcessPool:
            raise DecoderError(
                "an image decoder process died (out of memory?); rerun with --workers 0"
            ) from None
        if data.ndim == 2:  # decode_and_classify: probabilities (k, classes), not images
            return DecodedChunk(paths, _NO_IMAGES, errors, probabilities=data)
        return DecodedChunk(paths, data, errors)

    def close(self) -> None:
        if self.handle is not None and self.owned:
            self.handle.close()


_NO_IMAGES = np.zeros((0, 0, 0), np.uint8)


def decode_stream(
    sources: Iterable[Source],
    options: ImageOptions,
    config: PipelineConfig | None = None,
    classifier: Classifier | None = None,
    pool: WorkerPool | None = None,
) -> Iterator[DecodedChunk]:
    """Decode and preprocess ``sources`` in parallel; yield chunks in input order.

    With a CPU ``classifier`` and ``config.infer_in_workers``, worker processes also
    run the model and their chunks come with ``probabilities``. At most
    ``max_in_flight`` tasks are queued ahead of the consumer, so memory stays
    bounded however many inputs come. A ``pool`` started earlier (for instance
    while the model loaded) is used once ready, and not closed here.
    """
    config = config or PipelineConfig()
    in_workers = (
        classifier is not None
        and config.infer_in_workers
        and classifier.provider == "CPUExecutionProvider"
    )
    decoder = _Decoder(options, config, str(classifier.path) if in_workers else None, pool)
    workers = pool.workers if pool is not None else decoder.workers
    limit = config.max_in_flight or max(2, 4 * max(workers, 1))
    task_size = max(config.chunk_size, config.batch_size) if in_workers else config.chunk_size
    size = options.preprocessing.size
    window: deque[tuple[str, object]] = deque()

    def drain_one() -> Iterator[DecodedChunk]:
        kind, item = window.popleft()
        if kind == "files":
            task, paths = item  # type: ignore[misc]
            yield decoder.resolve(task, paths)
        elif kind == "array":
            yield from _array_chunks(item, options, config.chunk_size)  # type: ignore[arg-type]
        else:
            yield _error_chunk(item, size)  # type: ignore[arg-type]

    try:
        for kind, item in _units(sources, task_size):
            if kind == "files":
                window.append(("files", (decoder.submit(item), item)))  # type: ignore[arg-type]
            else:
                window.append((kind, item))
            while len(window) > limit or (window and _ready(window[0])):
                yield from drain_one()
        while window:
            yield from drain_one()
    finally:
        decoder.close()


def _ready(entry: tuple[str, object]) -> bool:
    """Whether the oldest queued unit can be emitted without waiting on a worker."""
    kind, item = entry
    if kind != "files":
        return True
    task = item[0]  # type: ignore[index]
    return not isinstance(task, Future) or task.done()  # inline work is always ready
