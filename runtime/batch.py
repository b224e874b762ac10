"""Streamed batch inference: inputs -> decoded digits (in parallel) -> batches -> ordered results.

Iterators, each with bounded memory:

* :func:`~mnist_edge.runtime.inputs.expand_inputs` gives one ``Source`` per file.
* :func:`~mnist_edge.runtime.decode.decode_stream` decodes them in worker
  processes, a bounded number of chunks ahead, in input order.
* :func:`classify_stream` groups decoded digits into batches, runs the
  :class:`~mnist_edge.runtime.classifier.Classifier` and yields one
  :class:`Result` per input, in input order, while the workers decode ahead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

import numpy as np

from mnist_edge.runtime.decode import DecodedChunk, DecoderError, decode_stream
from mnist_edge.runtime.images import ImageOptions
from mnist_edge.runtime.inputs import expand_inputs
from mnist_edge.runtime.pipeline import Pipeline, PipelineConfig

if TYPE_CHECKING:
    from mnist_edge.runtime.classifier import Classifier

__all__ = [
    "DecoderError",
    "Pipeline",
    "PipelineConfig",
    "Result",
    "classify_stream",
    "run_pipeline",
]


@dataclass(frozen=True)
class Result:
    """The outcome for one input: a prediction, or an error."""

    path: str
    error: str | None = None
    label: str | None = None
    confidence: float | None = None
    top_k: tuple[tuple[str, float], ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None


def classify_stream(
    chunks: Iterable[DecodedChunk],
    classifier: Classifier,
    config: PipelineConfig | None = None,
) -> Iterator[Result]:
    """Batch decoded digits through ``classifier``; yield one :class:`Result` per input, in order."""
    from mnist_edge.runtime.classifier import Predictions  # onnxruntime: loaded with `classifier`

    config = config or PipelineConfig()
    pending: deque[tuple[str, str | None]] = deque()  # every input not yet emitted, in order
    buffer: list[np.ndarray] = []  # decoded images waiting for a batch, each (k, H, W)
    buffered = 0
    done: deque[tuple[str, float, tuple[tuple[str, float], ...]]] = deque()
    classes = classifier.classes
    top_k = min(config.top_k, len(classes))

    def record(predictions: Predictions) -> None:  # N predictions -> results waiting in `done`
        confs = predictions.confidences.tolist()
        alts = predictions.top_k(top_k) if top_k else None  # (N, top_k)
        probs = predictions.probabilities
        for i, (index, conf) in enumerate(zip(predictions.indices.tolist(), confs, strict=True)):
            alt = (
                tuple((classes[j], float(probs[i, j])) for j in alts[i]) if alts is not None else ()
            )
            done.append((classes[index], conf, alt))

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
                label, conf, alt = done.popleft()
                yield Result(path, label=label, confidence=conf, top_k=alt)
            else:
                return

    for chunk in chunks:
        ok = [i for i, e in enumerate(chunk.errors) if e is None]
        if chunk.probabilities is not None:  # a worker ran the model; keep the order
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


def run_pipeline(
    inputs: Iterable[str],
    classifier: Classifier,
    options: ImageOptions,
    config: PipelineConfig | None = None,
    stdin: TextIO | None = None,
) -> Iterator[Result]:
    """Inputs (as on the command line) -> results, streamed and in order (see the module doc)."""
    config = config or PipelineConfig()
    sources = expand_inputs(inputs, stdin)
    chunks = decode_stream(sources, options, config, classifier)
    yield from classify_stream(chunks, classifier, config)
