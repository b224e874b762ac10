"""Parallel decoding: files -> MNIST-style digits (and on CPU, probabilities), in input order.

PIL holds the GIL while it decodes, so threads do not help (measured: 2 threads
are no faster than 1); the work runs in a pool of processes started from a
forkserver, at most ``max_in_flight`` tasks ahead of the consumer. On CPU each
process also runs the model, one thread each, so only paths and probabilities
cross process boundaries.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from mnist_edge.runtime.classifier import Classifier
from mnist_edge.runtime.images import (
    ImageError,
    ImageOptions,
    array_to_uint8,
    is_array_file,
    load_batch,
    open_array_file,
    preprocess,
)
from mnist_edge.runtime.inputs import Source
from mnist_edge.runtime.session import MissingMetadataWarning, SessionConfig, usable_cores


class DecoderError(RuntimeError):
    """A decoder process died; the run cannot account for its inputs."""


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


@dataclass(frozen=True)
class PipelineConfig:
    """Batching and decoding.

    Attributes:
        batch_size: images per inference call.
        workers: decoder processes; ``None`` = the usable cores, started only once
            more than ``inline_limit`` files have come (small runs start fast);
            ``0`` = decode in this process. Scripts that use processes need the
            usual ``if __name__ == "__main__":`` guard (forkserver/spawn re-import them).
        chunk_size: files per decoder task.
        max_in_flight: decoder tasks queued ahead; ``None`` = 4 per worker.
        inline_limit: with ``workers=None``, files decoded in-process before the pool starts.
        top_k: alternatives to report per image (0 = none).
        infer_in_workers: on CPU, each decoder process also runs the model (one
            thread each), so every core decodes and infers and only results cross
            processes. GPU providers always infer in this process.
    """

    batch_size: int = 256
    workers: int | None = None
    chunk_size: int = 64
    max_in_flight: int | None = None
    inline_limit: int = 256
    top_k: int = 0
    infer_in_workers: bool = True

    def __post_init__(self) -> None:
        for name in ("batch_size", "chunk_size", "inline_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0, not {self.workers}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, not {self.top_k}")


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


# One classifier per decoder process when the workers also run the model (CPU):
# made once by _worker_init, used by every task that process runs.
_worker_classifier: Classifier | None = None


def _worker_init(model: str | None) -> None:
    global _worker_classifier
    # Ctrl-C is the main process's to handle: it shuts the pool down cleanly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if model is not None:
        with warnings.catch_warnings():  # the main process has already said it
            warnings.simplefilter("ignore", MissingMetadataWarning)
            config = SessionConfig(provider="cpu", threads=1)  # one core per worker
            _worker_classifier = Classifier(model, config=config)


def _decode_and_classify(
    paths: list[str], options: ImageOptions, batch_size: int
) -> tuple[np.ndarray, list[str | None]]:
    """Worker task: decode, preprocess and classify -> (probabilities (k, classes), errors)."""
    if _worker_classifier is None:
        raise RuntimeError("decoder process has no model (pool started without one)")
    images, errors = load_batch(paths, options)  # (k, size, size)
    ok = [i for i, e in enumerate(errors) if e is None]
    probs = np.zeros((len(paths), len(_worker_classifier.classes)), np.float32)
    for start in range(0, len(ok), batch_size):
        rows = ok[start : start + batch_size]
        probs[rows] = _worker_classifier.predict(images[rows]).probabilities
    return probs, errors


def _new_pool(workers: int, model: str | None = None) -> ProcessPoolExecutor:
    """A started pool of ``workers`` decoder processes (each with the model when ``model`` is set)."""
    # forkserver: workers fork from a small clean server process, never from this
    # one (which holds ONNX Runtime's threads); spawn where there is no forkserver.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if "forkserver" in methods:
        preload = ["mnist_edge.runtime.images"]
        ctx.set_forkserver_preload([*preload, "mnist_edge.runtime.decode"] if model else preload)
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(model,))
    # start every worker now (the executor would start them one per submit)
    for future in [pool.submit(int) for _ in range(workers)]:
        future.result()
    return pool


class _Decoder:
    """Runs decoding (and on CPU, inference) inline or in a process pool.

    With ``workers=None`` the first ``inline_limit`` files are decoded here; past
    that the pool is started in a background thread and files keep being decoded
    here until it is ready (a few tenths of a second), so small runs never pay for it.
    """

    def __init__(self, options: ImageOptions, config: PipelineConfig, model: str | None) -> None:
        self.options = options
        self.config = config
        self.model = model
        self.auto = config.workers is None
        self.workers = usable_cores() if self.auto else config.workers
        self.seen = 0
        self.pool: ProcessPoolExecutor | None = None
        self._ready = threading.Event()
        self._starter: threading.Thread | None = None

    def _start(self) -> None:
        try:
            self.pool = _new_pool(self.workers, self.model)
        except (OSError, BrokenProcessPool):  # no processes here (sandbox, limits): stay inline
            self.pool = None
        finally:
            self._ready.set()

    def submit(self, paths: list[str]) -> Future | list[str]:
        self.seen += len(paths)
        if self.workers == 0:
            return paths  # decoded here when it is its turn
        if self.auto:
            if self._starter is None and self.seen > self.config.inline_limit:
                self._starter = threading.Thread(
                    target=self._start, name="decoder-pool", daemon=True
                )
                self._starter.start()
            if not self._ready.is_set() or self.pool is None:
                return paths
        elif self.pool is None:
            try:
                self.pool = _new_pool(self.workers, self.model)
            except BrokenProcessPool:
                raise DecoderError(
                    "decoder processes could not start; rerun with --workers 0"
                ) from None
        if self.model is not None:
            return self.pool.submit(
                _decode_and_classify, paths, self.options, self.config.batch_size
            )
        return self.pool.submit(load_batch, paths, self.options)

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
        if self.model is not None:  # data: probabilities (k, classes)
            return DecodedChunk(paths, _NO_IMAGES, errors, probabilities=data)
        return DecodedChunk(paths, data, errors)

    def close(self) -> None:
        if self._starter is not None:
            self._starter.join()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


_NO_IMAGES = np.zeros((0, 0, 0), np.uint8)


def decode_stream(
    sources: Iterable[Source],
    options: ImageOptions,
    config: PipelineConfig = PipelineConfig(),
    classifier: Classifier | None = None,
) -> Iterator[DecodedChunk]:
    """Decode and preprocess ``sources`` in parallel; yield chunks in input order.

    With a CPU ``classifier`` and ``config.infer_in_workers``, worker processes also
    run the model and their chunks come with ``probabilities``. At most
    ``max_in_flight`` tasks are queued ahead of the consumer, so memory stays
    bounded however many inputs come.
    """
    in_workers = (
        classifier is not None
        and config.infer_in_workers
        and classifier.provider == "CPUExecutionProvider"
    )
    decoder = _Decoder(options, config, str(classifier.path) if in_workers else None)
    limit = config.max_in_flight or max(2, 4 * max(decoder.workers, 1))
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
