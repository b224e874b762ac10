"""Dynamic batching: concurrent requests coalesced into one model call in one worker thread.

Requests come from event loops (``await batcher.submit(rows)``: the HTTP
server's and the gRPC server's, each in its own thread); all join one queue
that the worker thread takes from. When
the model is idle, a request goes to it at once, together with whatever else is
already waiting (an event loop hands over the requests of one loop turn
together); requests gather only while a batch runs, so under load the next
batch forms without any timer: it takes everything that came while the last one
ran. ``max_wait_ms`` (default 0) optionally holds the oldest request that long
for company, for users who want bigger batches at some latency; a batch of
``max_batch`` rows goes at once either way. Each request gets its own rows back;
an event loop's requests of one batch are answered in one wake-up of that loop.

With ``stack=False`` (the pixels-in model, one picture of any size per call)
the requests of a batch are not concatenated: the worker runs the model once
per request.

The worker counts what it does (:class:`BatchStats`), in the shape of Triton's
statistics extension, so clients and tests can see how many model calls served
how many requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
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
        max_batch: most rows in one model call (a single request with more runs alone),
            1 to ``max_queue_rows``.
        max_wait_ms: longest the oldest waiting request is held for others to join
            (0: never held; it goes as soon as the model is idle).
        max_queue_rows: rows allowed to wait; beyond it requests are refused (overload).
    """

    max_batch: int = 64
    max_wait_ms: float = 0.0
    max_queue_rows: int = 8192

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch <= self.max_queue_rows:
            raise ConfigError(
                f"max_batch must be 1 to max_queue_rows ({self.max_queue_rows}), not {self.max_batch}",
                "max_batch",
            )
        if not 0 <= self.max_wait_ms <= 10_000:
            raise ConfigError(
                f"max_wait_ms must be in [0, 10000], not {self.max_wait_ms}", "max_wait_ms"
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
    """Told what the worker did (e.g. Prometheus metrics); called in the worker thread."""

    def batch_done(self, rows: int, calls: int, seconds: float) -> None:
        """A batch of ``rows`` images ran in ``calls`` model calls taking ``seconds``."""

    def request_done(self, rows: int, queue_seconds: float, ok: bool) -> None:
        """A request of ``rows`` images waited ``queue_seconds`` before its batch ran."""


class _Item:
    """One request in the queue, answered through the future on its event loop."""

    __slots__ = ("count", "enqueued_ns", "future", "loop", "result", "rows")

    def __init__(self, rows: np.ndarray, count: int) -> None:
        self.rows = rows  # (k, ...) model input, or one picture (stack=False)
        self.count = count  # images in rows
        self.enqueued_ns = time.perf_counter_ns()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.future: asyncio.Future[np.ndarray] | None = None
        self.result: np.ndarray | BaseException | None = None


class _Turn:
    """One event loop's requests of its current turn, and the call that hands them over."""

    __slots__ = ("alone", "soon", "staged")

    def __init__(self) -> None:
        self.staged: list[_Item] = []
        self.alone = True  # no caller of this turn said it has other requests in flight
        self.soon: asyncio.Handle | None = None


def _settle(items: list[_Item]) -> None:
    """On an event loop: hand the worker's answers to the waiting coroutines."""
    for item in items:
        future = item.future
        if future is not None and not future.done():  # the client may have gone
            if isinstance(item.result, BaseException):
                future.set_exception(item.result)
            else:
                future.set_result(item.result)  # type: ignore[arg-type]


class DynamicBatcher:
    """Coalesces concurrent :meth:`submit` calls into calls of ``run``.

    :meth:`start`, then any number of :meth:`submit` or :meth:`enqueue` calls
    from any number of event loops (each in its own thread), then ``await``
    :meth:`aclose` on one of them once the others have stopped submitting.

    Args:
        run: the model call: (n, ...) input -> (n, ...) output (rows in order);
            with ``stack=False``, one request's array -> its output.
        config: batching limits.
        stack: concatenate the requests of a batch into one call (``False``: one
            call per request, each request counting as one image).
        observer: told about every batch and request (metrics), in the worker thread.
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
        self._cond = threading.Condition(threading.Lock())
        # guarded by _cond: the queue the worker takes from, rows queued or staged
        self._waiting: deque[_Item] = deque()
        self._ready_rows = 0  # rows in _waiting
        self._queued_rows = 0  # rows in _waiting and staged in a loop turn (the overload bound)
        self._accepting = False
        self._closing = False
        self._running = False  # the worker is in a model call
        self._finished = False  # the worker has ended: what still arrives runs on its loop
        self._lone = stack and self.config.max_wait_ms == 0
        # each event loop's requests of its current turn, handed over together at its end
        # (each loop touches only its own entry; a closed loop's goes with it)
        self._turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Turn] = (
            weakref.WeakKeyDictionary()
        )
        self._thread: threading.Thread | None = None
        self._stats_lock = threading.Lock()
        self._stats = BatchStats()

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._cond:
            self._accepting = True
            self._closing = False
            if self._thread is None:
                self._finished = False
                self._thread = threading.Thread(
                    target=self._work, name="mnist-serve-batcher_0", daemon=True
                )
                self._thread.start()

    async def aclose(self) -> None:
        """Refuse new requests, run the waiting ones now, then end the worker thread."""
        turn = self._turns.get(asyncio.get_running_loop())
        if turn is not None:
            self._flush(turn)
        with self._cond:
            self._accepting = False
            self._closing = True
            self._cond.notify()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join)

    @property
    def running(self) -> bool:
        return self._accepting and self._thread is not None

    def stats(self) -> BatchStats:
        """A copy of the counters as they are now."""
        with self._stats_lock:
            return copy.deepcopy(self._stats)

    def _admit(self, rows: np.ndarray) -> _Item:
        """Count a new request's rows against the bound (call with ``_cond`` held)."""
        if not self._accepting or self._thread is None:
            raise BatcherError("the server is shutting down; retry on another instance")
        count = len(rows) if self._stack else 1
        if self._queued_rows + count > self.config.max_queue_rows:
            raise BatcherError(
                f"the server is overloaded ({self._queued_rows} rows waiting); retry later"
            )
        self._queued_rows += count
        return _Item(rows, count)

    async def submit(self, rows: np.ndarray, alone: bool = True) -> np.ndarray:
        """Run the model on ``rows`` (k, ...) together with whatever else is waiting.

        ``alone=False`` tells that the caller has other requests in flight
        (which the batcher may not see yet): the request then never runs on the
        event loop, so the loop goes on reading them while the worker computes.

        Returns:
            The model's output rows for this request, (k, ...) (``stack=False``:
            the model's output for this one array).

        Raises:
            BatcherError: stopped (503), too many rows waiting (503), or the model call failed (500).
        """
        return await self.enqueue(rows, alone)

    def enqueue(self, rows: np.ndarray, alone: bool = True) -> asyncio.Future[np.ndarray]:
        """:meth:`submit` without awaiting: the future of the answer, on the running loop.

        Raises:
            BatcherError: stopped or too many rows waiting (503), at once; the
                future may hold a failed model call's (500).
        """
        with self._cond:
            item = self._admit(rows)
        loop = asyncio.get_running_loop()
        item.loop = loop
        future = item.future = loop.create_future()
        turn = self._turns.get(loop)
        if turn is None:
            turn = self._turns[loop] = _Turn()
        turn.staged.append(item)
        turn.alone = turn.alone and alone
        if turn.soon is None:  # at the end of this loop turn, with the requests it brings
            turn.soon = loop.call_soon(self._flush, turn)
        return future

    def _flush(self, turn: _Turn) -> None:
        """On an event loop: hand this turn's requests to the worker together.

        A lone one-image request while the model is idle runs here instead: the
        hand-over to the worker thread and back would cost it more than the model
        call, and nothing else is waiting to join its batch.
        """
        if turn.soon is not None:
            turn.soon.cancel()
            turn.soon = None
        if not turn.staged:
            return
        staged, turn.staged = turn.staged, []
        alone, turn.alone = turn.alone, True
        with self._cond:
            lone = self._finished or (
                self._lone
                and alone
                and len(staged) == 1
                and staged[0].count == 1
                and not self._waiting
                and not self._running
            )
            if lone:
                self._queued_rows -= sum(i.count for i in staged)
            else:
                self._waiting.extend(staged)
                self._ready_rows += sum(i.count for i in staged)
                self._cond.notify()
        if lone:
            self._execute(staged, here=True)

    # ------------------------------------------------------------ in the worker thread

    def _take(self) -> list[_Item] | None:
        """The next batch, waiting for one; ``None`` once closing and nothing is left."""
        config = self.config
        with self._cond:
            while not self._waiting and not self._closing:
                self._cond.wait()
            if not self._waiting:
                self._finished = True
                return None
            if config.max_wait_ms > 0:
                due = self._waiting[0].enqueued_ns + int(config.max_wait_ms * 1e6)
                while self._ready_rows < config.max_batch and not self._closing:
                    left = (due - time.perf_counter_ns()) / 1e9
                    if left <= 0:
                        break
                    self._cond.wait(left)
            batch = [self._waiting.popleft()]
            rows = batch[0].count
            while self._waiting and rows + self._waiting[0].count <= config.max_batch:
                item = self._waiting.popleft()
                batch.append(item)
                rows += item.count
            self._ready_rows -= rows
            self._queued_rows -= rows
            self._running = True
            return batch

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            self._execute(batch)
            with self._cond:
                self._running = False

    def _call(self, batch: list[_Item]) -> np.ndarray | list[np.ndarray]:
        if not self._stack:
            return [self._run(i.rows) for i in batch]
        x = batch[0].rows if len(batch) == 1 else np.concatenate([i.rows for i in batch])
        return self._run(x)

    def _execute(self, batch: list[_Item], here: bool = False) -> None:
        """Run one batch and answer its requests (``here``: on the event loop they all came from)."""
        start = time.perf_counter_ns()
        out: np.ndarray | list[np.ndarray] | BatcherError
        try:
            out = self._call(batch)
        except Exception as exc:  # ORT raises its own types; every waiting request must hear
            if len(batch) > 1:  # run them one by one so only the request at fault fails
                for item in batch:
                    self._execute([item], here)
                return
            out = BatcherError(f"model call failed: {first_line(exc)[:300]}", status=500)
        end = time.perf_counter_ns()
        rows = sum(i.count for i in batch)
        calls = 1 if self._stack else len(batch)
        offset = 0
        for k, item in enumerate(batch):
            if isinstance(out, BaseException):
                item.result = out
            elif isinstance(out, list):
                item.result = out[k]
            else:
                item.result = out[offset : offset + item.count]
                offset += item.count
        self._count(batch, rows, calls, start, end)
        if here:
            _settle(batch)
            return
        loops: dict[asyncio.AbstractEventLoop, list[_Item]] = {}
        for item in batch:
            if item.loop is not None:
                loops.setdefault(item.loop, []).append(item)
        for loop, items in loops.items():
            # a closed loop raises RuntimeError: nobody is waiting there any more
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, items)

    def _count(self, batch: list[_Item], rows: int, calls: int, start: int, end: int) -> None:
        with self._stats_lock:
            s = self._stats
            s.execution_count += calls
            s.compute_infer.add(end - start, calls)
            s.batch_sizes.setdefault(rows if self._stack else 1, _Duration()).add(
                end - start, calls
            )
            s.last_inference_ms = time.time_ns() // 1_000_000
            for item in batch:
                s.requests += 1
                s.queue.add(start - item.enqueued_ns)
                if isinstance(item.result, BaseException):
                    s.fail.add(end - item.enqueued_ns)
                else:
                    s.inference_count += item.count
                    s.success.add(end - item.enqueued_ns)
        observer = self._observer
        if observer is not None:
            observer.batch_done(rows, calls, (end - start) / 1e9)
            for item in batch:
                observer.request_done(
                    item.count,
                    (start - item.enqueued_ns) / 1e9,
                    not isinstance(item.result, BaseException),
                )
