"""Dynamic batching: concurrent requests coalesced into one model call, run off the event loop.

Request handlers ``await batcher.submit(rows)``; the requests wait on the event
loop. When the model is idle, a request goes to it at once, together with
whatever else is already waiting (the requests the event loop has in hand in
the same turn); requests gather only while a batch runs, so under load the next
batch forms without any timer (it goes one loop turn after the last one ends,
once its answers are out and the requests already received have joined). ``max_wait_ms`` (default 0) optionally holds the
oldest request that long for company, for users who want bigger batches at
some latency; a batch of ``max_batch`` rows goes at once either way. The model
runs in one worker thread (one batch at a time), each request gets its own rows
back, and only whole batches cross to the worker thread.

With ``stack=False`` (the pixels-in model, one picture of any size per call)
the requests of a batch are not concatenated: the worker runs the model once
per request, still one hand-over per batch.

The worker counts what it does (:class:`BatchStats`), in the shape of Triton's
statistics extension, so clients and tests can see how many model calls served
how many requests.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from mnist_edge.runtime.errors import ConfigError, MnistEdgeError, first_line


class BatcherError(MnistEdgeError, RuntimeError):
    """The batcher cannot take the request (stopped or full) or the model call failed."""

    status: int = 503

    def __init__(self, message: str, status: int = 503) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class BatchConfig:
    """How requests are coalesced.

    Attributes:
        max_batch: most rows in one model call (a single request with more runs alone).
        max_wait_ms: longest the oldest waiting request is held for others to join
            (0: never held; it goes as soon as the model is idle).
        max_queue_rows: rows allowed to wait; beyond it requests are refused (overload).
    """

    max_batch: int = 64
    max_wait_ms: float = 0.0
    max_queue_rows: int = 8192

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, not {self.max_batch}", "max_batch")
        if not 0 <= self.max_wait_ms <= 10_000:
            raise ConfigError(
                f"max_wait_ms must be in [0, 10000], not {self.max_wait_ms}", "max_wait_ms"
            )
        if self.max_queue_rows < self.max_batch:
            raise ConfigError(
                f"max_batch ({self.max_batch}) must be <= max_queue_rows ({self.max_queue_rows})",
                "max_batch",
            )


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class BatchStats:
    """What the worker did, in the terms of Triton's statistics extension.

    ``inference_count`` counts rows (images), ``execution_count`` model calls;
    ``requests`` counts requests served. ``batch_sizes`` maps rows per call to
    the calls of that size and their compute time.
    """

    requests: int = 0
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    batch_sizes: dict[int, _Duration] = field(default_factory=dict)

    def model_stats(self, name: str, version: str) -> dict[str, Any]:
        """One entry of the statistics extension's ``model_stats`` list."""
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_infer": self.compute_infer.as_dict(),
            },
            "batch_stats": [
                {"batch_size": size, "compute_infer": d.as_dict()}
                for size, d in sorted(self.batch_sizes.items())
            ],
        }


class BatchObserver(Protocol):
    """Told what the worker did (e.g. Prometheus metrics); called on the event loop."""

    def batch_done(self, rows: int, calls: int, seconds: float) -> None:
        """A batch of ``rows`` images ran in ``calls`` model calls taking ``seconds``."""

    def request_done(self, rows: int, queue_seconds: float, ok: bool) -> None:
        """A request of ``rows`` images waited ``queue_seconds`` before its batch ran."""


@dataclass
class _Item:
    rows: np.ndarray  # (k, ...) model input, or one picture (stack=False)
    count: int  # images in rows
    future: asyncio.Future[np.ndarray]
    enqueued_ns: int


class DynamicBatcher:
    """Coalesces concurrent :meth:`submit` calls into calls of ``run`` in one worker thread.

    Use it from one event loop: :meth:`start`, any number of :meth:`submit`,
    then ``await`` :meth:`aclose`.

    Args:
        run: the model call: (n, ...) input -> (n, ...) output (rows in order);
            with ``stack=False``, one request's array -> its output.
        config: batching limits.
        stack: concatenate the requests of a batch into one call (``False``: one
            call per request, each request counting as one image).
        observer: told about every batch and request (metrics).
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        config: BatchConfig | None = None,
        *,
        stack: bool = True,
        observer: BatchObserver | None = None,
    ) -> None:
        self.config = config or BatchConfig()
        self._run = run
        self._stack = stack
        self._observer = observer
        self._waiting: deque[_Item] = deque()
        self._waiting_rows = 0
        self._timer: asyncio.TimerHandle | None = None
        self._soon: asyncio.Handle | None = None  # a dispatch at the end of this loop turn
        self._busy: asyncio.Task[None] | None = None  # the batch in the worker thread
        self._executor: ThreadPoolExecutor | None = None
        self._accepting = False
        self._stats = BatchStats()

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="mnist-serve-batcher")
        self._accepting = True

    async def aclose(self) -> None:
        """Refuse new requests, run the waiting ones now, then end the worker thread."""
        self._accepting = False
        while self._busy is not None or self._waiting:
            if self._busy is None:
                self._dispatch()
            if self._busy is not None:
                await asyncio.shield(self._busy)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @property
    def running(self) -> bool:
        return self._accepting and self._executor is not None

    def stats(self) -> BatchStats:
        """The counters (updated on the event loop; read them there)."""
        return self._stats

    async def submit(self, rows: np.ndarray) -> np.ndarray:
        """Run the model on ``rows`` (k, ...) together with whatever else is waiting.

        Returns:
            The model's output rows for this request, (k, ...) (``stack=False``:
            the model's output for this one array).

        Raises:
            BatcherError: stopped (503), too many rows waiting (503), or the model call failed (500).
        """
        if not self.running:
            raise BatcherError("the server is shutting down; retry on another instance")
        count = len(rows) if self._stack else 1
        if self._waiting_rows + count > self.config.max_queue_rows:
            raise BatcherError(
                f"the server is overloaded ({self._waiting_rows} rows waiting); retry later"
            )
        loop = asyncio.get_running_loop()
        item = _Item(rows, count, loop.create_future(), time.perf_counter_ns())
        self._waiting.append(item)
        self._waiting_rows += count
        if self._busy is None:  # while a batch runs, its end schedules the next
            if self._waiting_rows >= self.config.max_batch:
                self._dispatch()
            elif self._soon is None:
                # idle model: go at the end of this loop turn, with the requests it brings
                self._soon = loop.call_soon(self._on_soon)
        return await item.future

    # ------------------------------------------------------------ on the event loop

    def _schedule(self) -> None:
        """Dispatch a batch if one is due; otherwise set a timer for when the oldest is."""
        if self._busy is not None or not self._waiting:
            return
        waited_ns = time.perf_counter_ns() - self._waiting[0].enqueued_ns
        wait_s = self.config.max_wait_ms / 1e3 - waited_ns / 1e9
        if self._waiting_rows >= self.config.max_batch or wait_s <= 0:
            self._dispatch()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(wait_s, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._schedule()

    def _on_soon(self) -> None:
        self._soon = None
        self._schedule()

    def _dispatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        batch = [self._waiting.popleft()]
        rows = batch[0].count
        while self._waiting and rows + self._waiting[0].count <= self.config.max_batch:
            item = self._waiting.popleft()
            batch.append(item)
            rows += item.count
        self._waiting_rows -= rows
        self._busy = asyncio.get_running_loop().create_task(self._execute(batch))

    async def _execute(self, batch: list[_Item]) -> None:
        try:
            await self._execute_batch(batch)
        finally:
            self._busy = None
            if self._accepting and self._waiting and self._soon is None:
                # after one loop turn: the answers go out and the requests already read join
                self._soon = asyncio.get_running_loop().call_soon(self._on_soon)

    async def _execute_batch(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        start = time.perf_counter_ns()
        out: np.ndarray | list[np.ndarray] | BatcherError
        try:
            out = await loop.run_in_executor(self._executor, self._call, batch)
        except Exception as exc:  # ORT raises its own types; every waiting request must hear
            if len(batch) > 1:  # run them one by one so only the request at fault fails
                for item in batch:
                    await self._execute_batch([item])
                return
            out = BatcherError(f"model call failed: {first_line(exc)[:300]}", status=500)
        end = time.perf_counter_ns()
        s = self._stats
        rows = sum(i.count for i in batch)
        calls = 1 if self._stack else len(batch)
        s.execution_count += calls
        s.compute_infer.add(end - start, calls)
        s.batch_sizes.setdefault(rows if self._stack else 1, _Duration()).add(end - start, calls)
        s.last_inference_ms = time.time_ns() // 1_000_000
        observer = self._observer
        if observer is not None:
            observer.batch_done(rows, calls, (end - start) / 1e9)
        offset = 0
        for k, item in enumerate(batch):
            s.requests += 1
            s.queue.add(start - item.enqueued_ns)
            if isinstance(out, BaseException):
                s.fail.add(end - item.enqueued_ns)
                result: np.ndarray | BaseException = out
            elif isinstance(out, list):
                s.inference_count += item.count
                s.success.add(end - item.enqueued_ns)
                result = out[k]
            else:
                s.inference_count += item.count
                s.success.add(end - item.enqueued_ns)
                result = out[offset : offset + item.count]
                offset += item.count
            if observer is not None:
                observer.request_done(
                    item.count,
                    (start - item.enqueued_ns) / 1e9,
                    not isinstance(result, BaseException),
                )
            if not item.future.done():  # the client may have gone
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)

    # ------------------------------------------------------------ in the worker thread

    def _call(self, batch: list[_Item]) -> np.ndarray | list[np.ndarray]:
        if not self._stack:
            return [self._run(i.rows) for i in batch]
        x = batch[0].rows if len(batch) == 1 else np.concatenate([i.rows for i in batch])
        return self._run(x)
