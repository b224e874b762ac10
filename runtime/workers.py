"""Decoder worker processes: a pool started from a forkserver, in the background.

PIL holds the GIL while it decodes, so threads do not help (measured: 2 threads
are no faster than 1); decoding runs in processes. On CPU each process also runs
the model with one ONNX Runtime thread, so only paths and probabilities cross
process boundaries.

Only the standard library is imported at module level (the workers' forkserver
preloads numpy, pillow and ONNX Runtime), so a :class:`WorkerPool` can start
while the caller is still importing them and loading the model itself.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

from mnist_edge.runtime.errors import MnistEdgeError

if TYPE_CHECKING:
    import numpy as np

    from mnist_edge.runtime.classifier import Classifier
    from mnist_edge.runtime.images import ImageOptions

# One-thread ONNX Runtime on a 28x28 CNN is fastest at about this many images per
# call (the activations stay in cache): measured 20.3k images/s at 64 vs 17.8k at 256.
WORKER_BATCH = 64


class DecoderError(MnistEdgeError, RuntimeError):
    """A decoder process died or could not start; the run cannot account for its inputs."""


def usable_cores() -> int:
    """CPU cores this process may run on (affinity and cgroup-free count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# One classifier per worker process when the workers also run the model (CPU):
# made once by _worker_init, used by every task that process runs.
_worker_classifier: Classifier | None = None
_worker_error: str | None = None  # why the model did not load (told by _worker_ready)


def _worker_init(model: str | None) -> None:
    global _worker_classifier, _worker_error
    # Ctrl-C is the main process's to handle: it shuts the pool down cleanly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if model is not None:
        from mnist_edge.runtime.classifier import Classifier  # preloaded by the forkserver
        from mnist_edge.runtime.session import (
            MissingMetadataWarning,
            ModelError,
            ProviderError,
            SessionConfig,
        )

        # An initializer that raises gets a traceback printed and a broken pool;
        # keep the reason for _worker_ready instead (the main process says it properly).
        try:
            with warnings.catch_warnings():  # the main process has already said it
                warnings.simplefilter("ignore", MissingMetadataWarning)
                config = SessionConfig(provider="cpu", threads=1)  # one core per worker
                _worker_classifier = Classifier(model, config=config)
        except (ModelError, ProviderError) as exc:
            _worker_error = str(exc)


def _worker_ready() -> None:
    """Start-up probe run in each new worker.

    Raises:
        DecoderError: the worker could not load its model.
    """
    if _worker_error is not None:
        raise DecoderError(f"a decoder process could not load the model: {_worker_error}")


def decode_and_classify(
    paths: list[str], options: ImageOptions, batch_size: int
) -> tuple[np.ndarray, list[str | None]]:
    """Worker task: decode, preprocess and classify -> (probabilities (k, classes), errors).

    The model runs on at most ``min(batch_size, WORKER_BATCH)`` images per call.
    """
    import numpy as np

    from mnist_edge.runtime.images import load_batch  # both preloaded: no cost per task

    if _worker_classifier is None:
        raise DecoderError(
            _worker_error or "decoder process has no model (pool started without one)"
        )
    images, errors = load_batch(paths, options)  # (k, size, size)
    ok = [i for i, e in enumerate(errors) if e is None]
    if len(ok) < len(paths):
        images = images[ok]  # (len(ok), size, size)
    probs = np.zeros((len(paths), len(_worker_classifier.classes)), np.float32)
    step = min(batch_size, WORKER_BATCH)
    for start in range(0, len(ok), step):
        rows = ok[start : start + step]
        probs[rows] = _worker_classifier.predict(images[start : start + step]).probabilities
    return probs, errors


def new_pool(workers: int, model: str | None = None) -> ProcessPoolExecutor:
    """A started pool of ``workers`` decoder processes (each with the model when ``model`` is set).

    Raises:
        BrokenProcessPool, OSError: the processes could not start.
        DecoderError: they could not load ``model``.
    """
    # forkserver: workers fork from a small clean server process, never from this
    # one (which holds ONNX Runtime's threads); spawn where there is no forkserver.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if "forkserver" in methods:
        preload = ["mnist_edge.runtime.images", "mnist_edge.runtime.workers"]
        ctx.set_forkserver_preload(
            [*preload, "mnist_edge.runtime.classifier"] if model else preload
        )
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(model,))
    # start every worker now (the executor would start them one per submit)
    try:
        for future in [pool.submit(_worker_ready) for _ in range(workers)]:
            future.result()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    return pool


class WorkerPool:
    """A :func:`new_pool` started in a background thread; the caller goes on meanwhile.

    Args:
        workers: processes to start (>= 1).
        model: ONNX file each process loads (CPU, one thread), or ``None`` to decode only.
    """

    def __init__(self, workers: int, model: str | None = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, not {workers}")
        self.workers = workers
        self.model = model
        self._pool: ProcessPoolExecutor | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._start, name="decoder-pool", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            self._pool = new_pool(self.workers, self.model)
        except (
            OSError,
            BrokenProcessPool,
            DecoderError,
        ):  # no processes (sandbox, limits), bad model
            self._pool = None
        finally:
            self._ready.set()

    def get(self, wait: bool = False) -> ProcessPoolExecutor | None:
        """The running pool; ``None`` while it is starting (unless ``wait``) or if it could not start."""
        if wait:
            self._ready.wait()
        return self._pool if self._ready.is_set() else None

    @property
    def failed(self) -> bool:
        """True once starting is over and no pool came of it."""
        return self._ready.is_set() and self._pool is None

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
