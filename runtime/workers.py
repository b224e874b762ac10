"""Worker processes that decode pictures and, on CPU, also run the model.

PIL holds the GIL while it decodes, so threads do not help; decoding runs in
processes. When the model runs on the CPU, each process also runs it with one
ONNX Runtime thread, so only paths and probabilities cross process boundaries.

Workers fork from a forkserver (never from the caller, which holds ONNX
Runtime's threads), ignore Ctrl-C (the owner shuts them down), and exit on
their own within a fraction of a second if the owner is killed
(:func:`~mnist_edge.runtime.processes.exit_with`).

A worker never picks a provider: the owner opens the model first, and only
when that resolved to the CPU provider does it send classify tasks, each
naming the file and the provider it resolved (:class:`WorkerModel`); a worker
loads that model on its first such task. Otherwise workers only decode, and
the owner runs the model (on OpenVINO or a GPU, say).

Only the standard library is imported at module level (the forkserver preloads
numpy, pillow and ONNX Runtime), so a :class:`WorkerPool` can start while the
caller is still importing them and loading the model itself.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mnist_edge.runtime.errors import DecoderError, MnistEdgeError
from mnist_edge.runtime.messages import Classified, Decoded
from mnist_edge.runtime.processes import exit_with

if TYPE_CHECKING:
    from mnist_edge.runtime.classifier import Classifier
    from mnist_edge.runtime.images import ImageOptions

# One-thread ONNX Runtime on a 28x28 CNN is fastest at a few dozen images per
# call: the activations stay in cache (bench/bench_infer.py measures batch sizes).
WORKER_BATCH = 64
# Runs of at most this many inputs stay in the main process when the worker count is
# left to mnist-edge: below it, starting the processes costs more than they save
# (bench/bench_workers.py measures where they start to pay).
INLINE_LIMIT = 10_000


@dataclass(frozen=True)
class WorkerModel:
    """The model the workers may run.

    Attributes:
        path: the ONNX file.
        provider: the ONNX Runtime provider the owner's session resolved to
            (``CPUExecutionProvider``; never ``auto``): workers open ``path`` on it.
    """

    path: str
    provider: str


# Per worker process: the model it opened on its first classify task, and for which WorkerModel.
_classifier: Classifier | None = None
_loaded: WorkerModel | None = None


def _init(owner: int) -> None:
    exit_with(owner)  # the owner killed outright: exit instead of waiting forever
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the owner's to handle


def _ready() -> bool:
    """Start-up probe run in each new worker."""
    return True


def _model(model: WorkerModel) -> Classifier:
    """This worker's classifier for ``model``, opened (one thread) on first use.

    Raises:
        DecoderError: the worker could not open it.
    """
    global _classifier, _loaded
    if _classifier is None or _loaded != model:
        from mnist_edge.runtime.classifier import Classifier  # preloaded by the forkserver
        from mnist_edge.runtime.session import MissingMetadataWarning, SessionConfig, short_name

        try:
            with warnings.catch_warnings():  # the owner has already said it
                warnings.simplefilter("ignore", MissingMetadataWarning)
                config = SessionConfig(provider=short_name(model.provider), threads=1)
                _classifier = Classifier(model.path, config=config)
        except MnistEdgeError as exc:
            raise DecoderError(f"a worker process could not load the model: {exc}") from None
        _loaded = model
    return _classifier


def decode_files(paths: list[str], options: ImageOptions) -> Decoded:
    """Worker task: decode and preprocess picture files."""
    from mnist_edge.runtime.images import load_batch  # preloaded: no cost per task

    images, errors = load_batch(paths, options)
    return Decoded(paths, images, errors)


def classify_files(
    paths: list[str], options: ImageOptions, batch_size: int, model: WorkerModel
) -> Classified:
    """Worker task: decode, preprocess and classify picture files with ``model``.

    The model runs on at most ``min(batch_size, WORKER_BATCH)`` images per call.
    """
    import numpy as np

    from mnist_edge.runtime.images import load_batch

    classifier = _model(model)
    if classifier.pixels_in:
        return classify_pictures(paths, classifier, options)
    images, errors = load_batch(paths, options)  # (k, size, size)
    ok = [i for i, e in enumerate(errors) if e is None]
    if len(ok) < len(paths):
        images = images[ok]  # (len(ok), size, size)
    probs = np.zeros((len(paths), len(classifier.classes)), np.float32)
    step = min(batch_size, WORKER_BATCH)
    for start in range(0, len(ok), step):
        rows = ok[start : start + step]
        probs[rows] = classifier.predict(images[start : start + step]).probabilities
    return Classified(paths, probs, errors)


def classify_pictures(
    paths: list[str], classifier: Classifier, options: ImageOptions
) -> Classified:
    """Decode picture files and hand each, as it is, to a pixels-in ``classifier`` (its graph preprocesses).

    Runs in a worker task or in the caller; a file that cannot be decoded gets its error.
    """
    import numpy as np

    from mnist_edge.runtime.images import ImageError, decode_image

    probs = np.zeros((len(paths), len(classifier.classes)), np.float32)  # (k, classes)
    errors: list[str | None] = [None] * len(paths)
    for i, path in enumerate(paths):
        try:
            picture = decode_image(path, options.max_pixels)  # (H, W) uint8
        except ImageError as exc:
            errors[i] = str(exc)
            continue
        probs[i] = classifier.classify_picture(picture).probabilities[0]
    return Classified(paths, probs, errors)


def _start(workers: int, preload_model: bool) -> ProcessPoolExecutor:
    """Start ``workers`` processes and wait until each is up.

    ``preload_model``: the forkserver also imports the classifier (they may run the model).

    Raises:
        BrokenProcessPool, OSError: the processes could not start.
    """
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if "forkserver" in methods:
        preload = ["mnist_edge.runtime.images", "mnist_edge.runtime.workers"]
        ctx.set_forkserver_preload(
            [*preload, "mnist_edge.runtime.classifier"] if preload_model else preload
        )
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init, initargs=(os.getpid(),))
    try:  # start every worker now (the executor would start them one per submit)
        for f in [pool.submit(_ready) for _ in range(workers)]:
            f.result()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    return pool


class WorkerPool:
    """Worker processes started in a background thread; the caller goes on meanwhile.

    Args:
        workers: processes to start (>= 1).
        may_classify: whether :meth:`classify` may be used (the forkserver then
            preloads ONNX Runtime); otherwise the workers only decode.

    Raises:
        ValueError: ``workers`` < 1.
    """

    def __init__(self, workers: int, may_classify: bool = True) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, not {workers}")
        self.workers = workers
        self.may_classify = may_classify
        self._pool: ProcessPoolExecutor | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._start, name="worker-pool", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            self._pool = _start(self.workers, self.may_classify)
        except (OSError, BrokenProcessPool):  # sandbox limits
            self._pool = None
        finally:
            self._ready.set()

    def ready(self, wait: bool = False) -> bool:
        """Whether the pool is running (waiting for the start to end when ``wait``)."""
        if wait:
            self._ready.wait()
        return self._ready.is_set() and self._pool is not None

    @property
    def failed(self) -> bool:
        """True once starting is over and no pool came of it (work is then done in-process)."""
        return self._ready.is_set() and self._pool is None

    def decode(self, paths: list[str], options: ImageOptions) -> Future[Decoded]:
        """Queue :func:`decode_files` (the pool must be :meth:`ready`)."""
        return self._running().submit(decode_files, paths, options)

    def classify(
        self, paths: list[str], options: ImageOptions, batch_size: int, model: WorkerModel
    ) -> Future[Classified]:
        """Queue :func:`classify_files` (the pool must be ready and made ``may_classify``)."""
        return self._running().submit(classify_files, paths, options, batch_size, model)

    def _running(self) -> ProcessPoolExecutor:
        if self._pool is None:
            raise DecoderError("the worker processes are not running")
        return self._pool

    def close(self) -> None:
        """Wait for the start to finish, then stop the processes (queued tasks are cancelled)."""
        self._thread.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
