"""Pipeline settings, and starting worker processes before the model is loaded.

Only the standard library is imported here (numpy, pillow and ONNX Runtime load
lazily), so ``mnist-infer`` can start its workers, which import all of them
themselves, at once and load the model in the meantime.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, islice
from typing import TYPE_CHECKING, TextIO

from mnist_edge.runtime.inputs import Source, expand_inputs
from mnist_edge.runtime.workers import WorkerPool, usable_cores

if TYPE_CHECKING:
    from mnist_edge.runtime.batch import Result
    from mnist_edge.runtime.classifier import Classifier
    from mnist_edge.runtime.images import ImageOptions


@dataclass(frozen=True)
class PipelineConfig:
    """Batching and decoding.

    Attributes:
        batch_size: images per inference call (at most
            :data:`~mnist_edge.runtime.workers.WORKER_BATCH` in a CPU worker, one thread's best).
        workers: decoder processes; ``None`` = the usable cores, started only once
            more than ``inline_limit`` files have come (small runs start fast);
            ``0`` = decode in this process. Scripts that use processes need the
            usual ``if __name__ == "__main__":`` guard (forkserver/spawn re-import them).
        chunk_size: files per decoder task (with ``infer_in_workers``, at least
            ``batch_size``). Large tasks keep the per-task cost down: on 2 cores,
            512 gave 17.2k images/s where 256 gave 16.4k and 64 gave 14.1k.
        max_in_flight: decoder tasks queued ahead; ``None`` = 4 per worker.
        inline_limit: with ``workers=None``, files decoded in-process before the pool starts.
        top_k: alternatives to report per image (0 = none).
        infer_in_workers: on CPU, each decoder process also runs the model (one
            thread each), so every core decodes and infers and only results cross
            processes. GPU providers always infer in this process.
    """

    batch_size: int = 256
    workers: int | None = None
    chunk_size: int = 512
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


class Pipeline:
    """:func:`run_pipeline` in two steps, so worker processes start while the model loads.

    Expands the first ``config.inline_limit + 1`` inputs right away; when there
    are that many and ``config.workers`` allows processes, a
    :class:`~mnist_edge.runtime.workers.WorkerPool` with ``model`` starts in the
    background. Use it as a context manager (closing stops the workers).

    Args:
        inputs, config, stdin: as for :func:`run_pipeline`.
        model: the ONNX file the classifier passed to :meth:`run` will load.
        prestart: ``False`` reads no input and starts no workers here (:meth:`run`
            then starts them as :func:`run_pipeline` does): for a model that is
            not there yet (its error comes first) or providers other than CPU.
    """

    def __init__(
        self,
        inputs: Iterable[str],
        model: str | os.PathLike[str],
        config: PipelineConfig | None = None,
        stdin: TextIO | None = None,
        prestart: bool = True,
    ) -> None:
        self.config = config or PipelineConfig()
        self.pool: WorkerPool | None = None
        self._sources: Iterator[Source] = expand_inputs(inputs, stdin)
        limit = self.config.inline_limit
        if prestart and self.config.workers != 0:
            head = list(islice(self._sources, limit + 1))
            self._sources = chain(head, self._sources)
            if len(head) > limit:
                workers = self.config.workers or usable_cores()
                worker_model = os.fspath(model) if self.config.infer_in_workers else None
                self.pool = WorkerPool(workers, worker_model)

    def run(self, classifier: Classifier, options: ImageOptions) -> Iterator[Result]:
        """Results for every input, streamed and in order (call once)."""
        from mnist_edge.runtime.batch import classify_stream
        from mnist_edge.runtime.decode import decode_stream

        chunks = decode_stream(self._sources, options, self.config, classifier, self.pool)
        yield from classify_stream(chunks, classifier, self.config)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
