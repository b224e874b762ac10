"""Dynamic batching: concurrent requests coalesced into one model call, run off the event loop.

Request handlers ``await batcher.submit(rows)``. One worker thread takes the
oldest waiting request, then gathers more until the batch holds ``max_batch``
rows or the oldest has waited ``max_wait_ms``, runs the model once on all of
them and hands each request its own rows back. Under load the queue fills while
a batch runs, so the next batch forms without waiting; a lone request waits at
most ``max_wait_ms``.

The worker counts what it does (:class:`BatchStats`), in the shape of Triton's
statistics extension, so clients and tests can see how many model calls served
how many requests.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mnist_edge.runtime.errors import MnistEdgeError, first_line


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
        max_wait_ms: longest the oldest waiting request is held for others to join.
        max_queue_rows: rows allowed to wait; beyond it requests are refused (overload).
    """

    max_batch: int = 64
    max_wait_ms: float = 2.0
    max_queue_rows: int = 8192

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, not {self.max_batch}")
        if not 0 <= self.max_wait_ms <= 10_000:
            raise ValueError(f"max_wait_ms must be in [0, 10000], not {self.max_wait_ms}")
        if self.max_queue_rows < self.max_batch:
            raise ValueError(
                f"max_queue_rows ({self.max_queue_rows}) must be >= max_batch ({self.max_batch})"
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


@dataclass
class _Item:
    rows: np.ndarray  # (k, ...) model input
    future: asyncio.Future[np.ndarray]
    loop: asyncio.AbstractEventLoop
    enqueued_ns: int


def _deliver(future: asyncio.Future[np.ndarray], value: np.ndarray | BaseException) -> None:
    """Runs on the event loop: settle ``future`` unless its request was cancelled."""
    if future.done():
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


class DynamicBatcher:
    """Coalesces concurrent :meth:`submit` calls into calls of ``run``, in one worker thread.

    Args:
        run: the model call: (n, ...) input -> (n, ...) output (rows in order).
        config: batching limits.
    """

    def __init__(
        self, run: Callable[[np.ndarray], np.ndarray], config: BatchConfig | None = None
    ) -> None:
        self.config = config or BatchConfig()
        self._run = run
        self._queue: queue.Queue[_Item | None] = queue.Queue()  # None: stop
        self._lock = threading.Lock()
        self._queued_rows = 0
        self._accepting = False
        self._stats = BatchStats()
        self._thread: threading.Thread | None = None
        self._carry: _Item | None = None  # taken from the queue but did not fit the last batch

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        if self._thread is not None:
            return
        self._accepting = True
        self._thread = threading.Thread(target=self._work, name="mnist-serve-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new requests, finish the waiting ones, and end the worker thread."""
        with self._lock:
            self._accepting = False
        if self._thread is None:
            return
        with self._lock:  # after every accepted request
            self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._accepting and self._thread is not None and self._thread.is_alive()

    def stats(self) -> BatchStats:
        """A snapshot of the counters."""
        with self._lock:
            s = self._stats
            return BatchStats(
                requests=s.requests,
                inference_count=s.inference_count,
                execution_count=s.execution_count,
                last_inference_ms=s.last_inference_ms,
                success=_Duration(s.success.count, s.success.ns),
                fail=_Duration(s.fail.count, s.fail.ns),
                queue=_Duration(s.queue.count, s.queue.ns),
                compute_infer=_Duration(s.compute_infer.count, s.compute_infer.ns),
                batch_sizes={k: _Duration(v.count, v.ns) for k, v in s.batch_sizes.items()},
            )

    async def submit(self, rows: np.ndarray) -> np.ndarray:
        """Run the model on ``rows`` (k, ...) together with whatever else is waiting.

        Returns:
            The model's output rows for this request, (k, ...).

        Raises:
            BatcherError: stopped (503), the queue is full (503), or the model call failed (500).
        """
        loop = asyncio.get_running_loop()
        item = _Item(rows, loop.create_future(), loop, time.perf_counter_ns())
        with self._lock:
            if not self._accepting:
                raise BatcherError("the server is shutting down; retry on another instance")
            if self._queued_rows + len(rows) > self.config.max_queue_rows:
                raise BatcherError(
                    f"the server is overloaded ({self._queued_rows} rows waiting); retry later"
                )
            self._queued_rows += len(rows)
            self._queue.put(item)  # under the lock: never after the stop mark
        return await item.future

    # ------------------------------------------------------------ worker thread

    def _take(self) -> list[_Item] | None:
        """The next batch (blocks until there is one); ``None`` once stopped and drained."""
        first = self._carry if self._carry is not None else self._queue.get()
        self._carry = None
        if first is None:  # stop: everything queued before it has run
            return None
        batch, rows = [first], len(first.rows)
        deadline = first.enqueued_ns + int(self.config.max_wait_ms * 1e6)
        while rows < self.config.max_batch:
            wait = (deadline - time.perf_counter_ns()) / 1e9
            try:
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # nothing is queued after the stop mark
                break
            if rows + len(item.rows) > self.config.max_batch:
                self._carry = item
                break
            batch.append(item)
            rows += len(item.rows)
        return batch

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            self._execute(batch)

    def _call(self, items: list[_Item]) -> np.ndarray:
        x = items[0].rows if len(items) == 1 else np.concatenate([i.rows for i in items])
        return self._run(x)

    def _execute(self, batch: list[_Item]) -> None:
        start = time.perf_counter_ns()
        rows = sum(len(i.rows) for i in batch)
        try:
            out = self._call(batch)
            results: list[np.ndarray | BaseException] = []
            offset = 0
            for item in batch:
                results.append(out[offset : offset + len(item.rows)])
                offset += len(item.rows)
        except Exception as exc:  # ORT raises its own types; every waiting request must hear
            if len(batch) > 1:  # run them one by one so only the request at fault fails
                for item in batch:
                    self._execute([item])
                return
            results = [BatcherError(f"model call failed: {first_line(exc)[:300]}", status=500)]
        end = time.perf_counter_ns()
        with self._lock:
            s = self._stats
            self._queued_rows -= rows
            s.execution_count += 1
            s.compute_infer.add(end - start)
            s.batch_sizes.setdefault(rows, _Duration()).add(end - start)
            s.last_inference_ms = time.time_ns() // 1_000_000
            for item, result in zip(batch, results, strict=True):
                s.requests += 1
                s.queue.add(start - item.enqueued_ns)
                if isinstance(result, BaseException):
                    s.fail.add(end - item.enqueued_ns)
                else:
                    s.inference_count += len(item.rows)
                    s.success.add(end - item.enqueued_ns)
        for item, result in zip(batch, results, strict=True):
            item.loop.call_soon_threadsafe(_deliver, item.future, result)
