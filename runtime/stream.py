"""Label images, streamed: inputs -> decode -> classify, in input order, in bounded memory.

:class:`Pipeline` is the one entry point. It is given the model path once and
runs three steps, each an iterator passing small typed messages
(:mod:`~mnist_edge.runtime.messages`) to the next:

1. **inputs**: :func:`~mnist_edge.runtime.inputs.expand_inputs` gives one
   ``Source`` per file; :func:`_units` groups them into ``Files`` tasks,
   ``ArrayFile`` (``.npy``/IDX) and ``Failed`` inputs.
2. **decode**: worker processes (:mod:`~mnist_edge.runtime.workers`) decode
   the files, at most ``max_in_flight`` tasks ahead, and on CPU also run the
   model; they give ``Decoded`` digits or ``Classified`` probabilities, in input
   order. Small runs are decoded in this process (no start-up cost).
3. **classify**: digits are batched through the
   :class:`~mnist_edge.runtime.classifier.Classifier`; one ``Result`` per
   input comes out, in input order.

Only light modules are imported at module level (numpy, pillow and ONNX
Runtime load when a :class:`Pipeline` is made), so a CLI can import this and
start the worker processes first: they load those libraries in parallel with
this process.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import chain, islice
from typing import TYPE_CHECKING, TextIO

from mnist_edge.runtime.errors import ConfigError
from mnist_edge.runtime.inputs import MAX_PIXELS, Source, check_max_pixels, expand_inputs
from mnist_edge.runtime.messages import (
    ArrayFile,
    Classified,
    Decoded,
    Failed,
    Files,
    Prediction,
    Result,
    Unit,
)
from mnist_edge.runtime.metadata import INVERT_MODES
from mnist_edge.runtime.processes import usable_cores
from mnist_edge.runtime.workers import (
    INLINE_LIMIT,
    DecoderError,
    WorkerModel,
    WorkerPool,
    classify_pictures,
)

if TYPE_CHECKING:
    import numpy as np

    from mnist_edge.runtime.classifier import Classifier, Predictions
    from mnist_edge.runtime.images import ImageOptions
    from mnist_edge.runtime.session import SessionConfig

__all__ = ["Pipeline", "PipelineConfig", "Result", "classify_chunks", "decode_here"]


@dataclass(frozen=True)
class PipelineConfig:
    """How inputs are decoded and batched.

    Attributes:
        batch_size: images per inference call (worker processes run at most
            :data:`~mnist_edge.runtime.workers.WORKER_BATCH` per call, one thread's best).
        workers: worker processes; ``None`` = the usable cores, started only when
            more than ``inline_limit`` inputs come (small runs start fast);
            ``0`` = everything in this process. Scripts that use processes need the
            usual ``if __name__ == "__main__":`` guard (forkserver/spawn re-import them).
        chunk_size: files per worker task (at least ``batch_size`` when workers run
            the model). Large tasks keep the per-task cost down.
        max_in_flight: worker tasks queued ahead of the consumer; ``None`` = 4 per worker.
        inline_limit: with ``workers=None``, runs of at most this many inputs stay in-process.
        top_k: alternatives to report per image (0 = none); checked against the
            model's classes when the model opens (:func:`~mnist_edge.runtime.classifier.check_top_k`).
        infer_in_workers: on CPU, each worker process also runs the model (one
            thread each), so every core decodes and infers and only results cross
            processes. Other providers always infer in this process.
        invert: ``auto`` inverts dark-on-light pictures; ``always``/``never`` force it.
        max_pixels: pictures with more pixels are refused, each with its error
            (decompression bombs); default :data:`~mnist_edge.runtime.inputs.MAX_PIXELS`.

    Raises:
        ConfigError: a value out of range.
    """

    batch_size: int = 256
    workers: int | None = None
    chunk_size: int = 512
    max_in_flight: int | None = None
    inline_limit: int = INLINE_LIMIT
    top_k: int = 0
    infer_in_workers: bool = True
    invert: str = "auto"
    max_pixels: int = MAX_PIXELS

    def __post_init__(self) -> None:
        for name in ("batch_size", "chunk_size", "inline_limit"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, not {getattr(self, name)}", name)
        for name in ("workers", "max_in_flight"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "workers" else 1):
                raise ConfigError(
                    f"{name} must be >= {0 if name == 'workers' else 1} or None, not {value}", name
                )
        check_max_pixels(self.max_pixels)
        if self.invert not in INVERT_MODES:
            raise ConfigError(
                f"invert must be one of {', '.join(INVERT_MODES)}, not {self.invert!r}", "invert"
            )


class Pipeline:
    """Label every image in ``inputs`` with the model at ``model``.

    Making one starts the worker processes (when there are enough inputs to pay
    for them) and then loads the model, so both happen at once; iterating it
    streams one :class:`Result` per input, in input order. Use it as a context
    manager: closing stops the workers. Iterate it once::

        with Pipeline("artifacts/mnist.onnx", ["images/"]) as pipeline:
            for result in pipeline:
                print(result.path, result.label or result.error)

    Args:
        model: the ONNX file, or ``None`` for the default model (as
            :func:`~mnist_edge.runtime.layout.model_path` picks it).
        inputs: files, folders, globs, or ``-`` for paths on ``stdin``
            (see :func:`~mnist_edge.runtime.inputs.expand_inputs`); one path alone
            is one input.
        config: decoding and batching.
        session: provider and threads for the model in this process.
        stdin: where ``-`` reads paths from.

    Raises:
        ModelError: the model is missing, not ONNX, not a path, or not an mnist-edge
            classifier this runtime can feed. Nothing of ``inputs`` is read before this check.
        ProviderError: the provider is not available.
        ConfigError: ``config.top_k`` is more than the model's classes
            (:func:`~mnist_edge.runtime.classifier.check_top_k`).
        DecoderError: ``config.workers`` asked for processes and they could not start.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None,
        inputs: Iterable[str] | str | os.PathLike[str],
        config: PipelineConfig | None = None,
        session: SessionConfig | None = None,
        stdin: TextIO | None = None,
    ) -> None:
        from mnist_edge.runtime.layout import model_path
        from mnist_edge.runtime.session import ModelError, SessionConfig

        self.config = config = config or PipelineConfig()
        session = session or SessionConfig()
        self.pool: WorkerPool | None = None
        if model is None:
            model = model_path(None)
        if not isinstance(model, (str, os.PathLike)):
            raise ModelError(
                f"model must be the path of an ONNX file (str or os.PathLike) or None for "
                f"the default model, not {model!r}"
            )
        if isinstance(inputs, (str, os.PathLike)):
            inputs = [os.fspath(inputs)]
        self._sources: Iterator[Source] = expand_inputs(inputs, stdin)
        if config.workers != 0 and os.path.isfile(model):  # a missing model is reported first
            head = list(islice(self._sources, config.inline_limit + 1))
            self._sources = chain(head, self._sources)
            if config.workers is not None or len(head) > config.inline_limit:
                self.pool = WorkerPool(config.workers or usable_cores(), config.infer_in_workers)
        try:
            self.classifier, self.options = open_model(
                model, session, config.invert, config.max_pixels
            )
            from mnist_edge.runtime.classifier import check_top_k

            check_top_k(config.top_k, len(self.classifier.classes))
        except BaseException:
            self.close()
            raise
        # The provider was resolved once, here; workers run the model only on that same
        # provider, and only when it is the CPU one (one thread each).
        from mnist_edge.runtime.session import CPU

        # What the workers run (None: they only decode, the model runs here).
        self.worker_model: WorkerModel | None = None
        if config.infer_in_workers and self.classifier.provider == CPU:
            self.worker_model = WorkerModel(os.fspath(self.classifier.path), CPU)

    def __iter__(self) -> Iterator[Result]:
        return classify_chunks(self._decode(), self.classifier, self.config)

    def _decode(self) -> Iterator[Decoded | Classified]:
        """Step 2: units of work -> decoded (or classified) chunks, in input order."""
        config, pool = self.config, self.pool
        in_workers = self.worker_model is not None
        task_size = max(config.chunk_size, config.batch_size) if in_workers else config.chunk_size
        workers = pool.workers if pool is not None else 1
        limit = config.max_in_flight or 4 * workers
        window: deque[tuple[Unit, Future[Decoded] | Future[Classified] | None]] = deque()
        for unit in _units(self._sources, task_size):
            window.append((unit, self._submit(unit)))
            while len(window) > limit or (window and _ready(window[0][1])):
                yield from self._resolve(*window.popleft())
        while window:
            yield from self._resolve(*window.popleft())

    def _submit(self, unit: Unit) -> Future[Decoded] | Future[Classified] | None:
        """Queue ``unit`` on a worker; ``None``: it is done here when its turn comes."""
        pool = self.pool
        if pool is None or not isinstance(unit, Files):
            return None
        # Explicitly asked-for workers are waited for; `auto` ones are used once up.
        if not pool.ready(wait=self.config.workers is not None):
            if pool.failed and self.config.workers is not None:
                raise DecoderError("the worker processes could not start")
            return None
        if self.worker_model is not None:
            return pool.classify(
                unit.paths, self.options, self.config.batch_size, self.worker_model
            )
        if self.classifier.pixels_in:  # the graph needs the pictures, not decoded digits
            return None
        return pool.decode(unit.paths, self.options)

    def _resolve(
        self, unit: Unit, task: Future[Decoded] | Future[Classified] | None
    ) -> Iterator[Decoded | Classified]:
        if task is None:
            yield from _decode_unit(unit, self.classifier, self.options, self.config.chunk_size)
            return
        try:
            yield task.result()
        except BrokenProcessPool:
            raise DecoderError("a worker process died (out of memory?)") from None

    def close(self) -> None:
        """Stop the worker processes (tasks not yet started are cancelled)."""
        if self.pool is not None:
            self.pool.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_model(
    model: str | os.PathLike[str] | Classifier,
    session: SessionConfig,
    invert: str,
    max_pixels: int = MAX_PIXELS,
) -> tuple[Classifier, ImageOptions]:
    """The classifier (``model`` itself when it is one) and how pictures are made ready for it.

    Raises:
        ModelError, ProviderError: see :class:`Pipeline`.
        ConfigError: a forced ``invert`` for a pixels-in model (its graph decides), or
            ``max_pixels`` < 1.
    """
    from mnist_edge.runtime.classifier import Classifier
    from mnist_edge.runtime.images import ImageOptions
    from mnist_edge.runtime.session import ModelError

    classifier = model if isinstance(model, Classifier) else Classifier(model, config=session)
    if classifier.pixels_in and invert != "auto":
        raise ConfigError(
            f"{classifier.path} is a pixels-in model: its graph decides the inversion itself (as invert "
            f"'auto' does), so invert {invert!r} cannot apply; use the model without .pixels "
            "in its name to force it",
            "invert",
        )
    check_max_pixels(max_pixels)  # before the model's preprocessing is judged below
    try:
        options = ImageOptions(
            preprocessing=classifier.metadata.preprocessing, invert=invert, max_pixels=max_pixels
        )
    except ValueError as exc:
        raise ModelError(
            f"{classifier.path}: {exc}; it was made by a newer mnist-edge than this runtime"
        ) from None
    return classifier, options


def _ready(task: Future[Decoded] | Future[Classified] | None) -> bool:
    """Whether the oldest queued unit can be emitted without waiting on a worker."""
    return task is None or task.done()


def _units(sources: Iterable[Source], task_size: int) -> Iterator[Unit]:
    """Step 1: sources -> ``Files`` tasks of up to ``task_size`` paths, ``ArrayFile`` and ``Failed``."""
    from mnist_edge.runtime.arrays import is_array_file

    files: list[str] = []
    for source in sources:
        if source.error is None and not is_array_file(source.path):
            files.append(source.path)
            if len(files) == task_size:
                yield Files(files)
                files = []
            continue
        if files:
            yield Files(files)
            files = []
        yield Failed(source) if source.error is not None else ArrayFile(source.path)
    if files:
        yield Files(files)


def decode_here(
    inputs: Iterable[str], classifier: Classifier, options: ImageOptions, chunk_size: int = 512
) -> Iterator[Decoded | Classified]:
    """Step 1 and 2 in this process (no workers): inputs -> decoded chunks, in input order.

    Files, folders, globs, ``.npy`` and IDX files as for :class:`Pipeline`
    (``-`` is not read here); what :func:`mnist_edge.runtime.classify` decodes with.
    A pixels-in ``classifier`` classifies each picture as it is (``Classified``).
    """
    for unit in _units(expand_inputs(inputs), chunk_size):
        yield from _decode_unit(unit, classifier, options, chunk_size)


def _decode_unit(
    unit: Unit, classifier: Classifier, options: ImageOptions, chunk_size: int
) -> Iterator[Decoded | Classified]:
    """Decode one unit of work in this process (pixels-in models: classify its pictures)."""
    from mnist_edge.runtime.images import load_batch

    if isinstance(unit, Files) and classifier.pixels_in:
        yield classify_pictures(unit.paths, classifier, options)
    elif isinstance(unit, Files):
        images, errors = load_batch(unit.paths, options)
        yield Decoded(unit.paths, images, errors)
    elif isinstance(unit, ArrayFile):
        yield from _array_chunks(unit.path, classifier, options, chunk_size)
    else:
        yield _failed(unit.source, options.preprocessing.size)


def _failed(source: Source, size: int) -> Decoded:
    import numpy as np

    return Decoded([source.path], np.zeros((1, size, size), np.uint8), [source.error])


def _array_chunks(
    path: str, classifier: Classifier, options: ImageOptions, chunk_size: int
) -> Iterator[Decoded | Classified]:
    """The images of a ``.npy``/IDX file as ``path[i]`` inputs, chunk by chunk."""
    from mnist_edge.runtime.arrays import open_array_file
    from mnist_edge.runtime.images import ImageError

    try:
        array = open_array_file(path)  # (N, H, W), memory-mapped for .npy
    except ImageError as exc:
        yield _failed(Source(path, str(exc)), options.preprocessing.size)
        return
    yield from array_chunks(path, array, classifier, options, chunk_size)


def array_chunks(
    path: str,
    array: np.ndarray,
    classifier: Classifier,
    options: ImageOptions,
    chunk_size: int = 512,
) -> Iterator[Decoded | Classified]:
    """The images of an (N, H, W) array as ``path[i]`` inputs, chunk by chunk.

    A pixels-in ``classifier`` gets each image's pixels as they are (classified
    here, one by one); otherwise they are preprocessed for the batched model.
    """
    import numpy as np

    from mnist_edge.runtime.arrays import array_to_uint8
    from mnist_edge.runtime.images import preprocess

    if len(array) == 0:
        yield _failed(Source(path, "array holds no images"), options.preprocessing.size)
    for start in range(0, len(array), chunk_size):
        part = array_to_uint8(np.asarray(array[start : start + chunk_size]))  # (k, H, W)
        names = [f"{path}[{start + i}]" for i in range(len(part))]
        if classifier.pixels_in:
            probs = np.stack([classifier.classify_picture(img).probabilities[0] for img in part])
            yield Classified(names, probs, [None] * len(part))  # probs (k, classes)
            continue
        images = np.stack([preprocess(img, options) for img in part])  # (k, size, size)
        yield Decoded(names, images, [None] * len(part))


def classify_chunks(
    chunks: Iterable[Decoded | Classified], classifier: Classifier, config: PipelineConfig
) -> Iterator[Result]:
    """Step 3: batch decoded digits through ``classifier``; one :class:`Result` per input, in order."""
    import numpy as np

    from mnist_edge.runtime.classifier import Predictions

    pending: deque[tuple[str, str | None]] = deque()  # every input not yet emitted, in order
    buffer: list[np.ndarray] = []  # decoded images waiting for a batch, each (k, H, W)
    buffered = 0
    done: deque[Prediction] = deque()  # predictions not yet matched with their input
    classes = classifier.classes

    def record(predictions: Predictions) -> None:
        done.extend(predictions.records(config.top_k))

    def infer(count: int) -> None:
        nonlocal buffer, buffered
        images = np.concatenate(buffer) if len(buffer) > 1 else buffer[0]  # (buffered, H, W)
        for start in range(0, count, config.batch_size):
            record(classifier.predict(images[start : min(start + config.batch_size, count)]))
        rest = images[count:]
        buffer = [rest] if len(rest) else []
        buffered = len(rest)

    def emit() -> Iterator[Result]:
        while pending:
            path, error = pending[0]
            if error is not None:
                pending.popleft()
                yield Result(path, error=error)
            elif done:
                pending.popleft()
                yield Result.of(path, done.popleft())
            else:
                return

    for chunk in chunks:
        ok = [i for i, e in enumerate(chunk.errors) if e is None]
        if isinstance(chunk, Classified):  # a worker ran the model; keep the order
            if buffered:
                infer(buffered)
            record(Predictions.from_probabilities(chunk.probabilities[ok], classes))
        elif ok:
            buffer.append(chunk.images if len(ok) == len(chunk.errors) else chunk.images[ok])
            buffered += len(ok)
        pending.extend(zip(chunk.paths, chunk.errors, strict=True))
        if buffered >= config.batch_size:
            infer(buffered - buffered % config.batch_size)
        yield from emit()
    if buffered:
        infer(buffered)
    yield from emit()
