"""``ModelStreamInfer``: many infer requests on one gRPC stream, answered in their order.

``tritonclient.grpc``'s ``start_stream`` / ``async_stream_infer`` and
``tritonclient.grpc.aio``'s ``stream_infer`` send their requests as messages of
one bidirectional stream, which costs both ends much less per request than a
unary call each. A stream's reader thread checks each request and hands it to
the batcher without waiting for the answer, so the requests in flight on one
stream batch together; the call's handler thread sends the answers, each a
``ModelStreamInferResponse``, in the order of the requests:

* ``infer_response``: the answer ``ModelInfer`` would give;
* ``error_message``: the request was refused (the message ``ModelInfer``'s
  status would carry) and ``infer_response`` holds only its ``id``; the stream
  goes on with the next request.

At most ``window`` requests of a stream are read and not yet answered; beyond
that the reader waits, and gRPC's flow control holds the client back. When the
server stops, an open stream takes no further requests, answers the ones it
has taken and ends with ``UNAVAILABLE``: every request either got an answer or
was not run.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb

from mnist_edge.runtime.serve.batcher import BatcherError
from mnist_edge.runtime.serve.protocol import ProtocolError
from mnist_edge.runtime.serve.service import ModelService

STREAM_WINDOW = 128  # requests of one stream read and not yet answered
logger = logging.getLogger("mnist_edge.serve.grpc")


def status_code(exc: ProtocolError | BatcherError) -> grpc.StatusCode:
    """The gRPC status for an error the HTTP side answers with ``exc.status``."""
    if exc.status == 404:
        return grpc.StatusCode.NOT_FOUND
    if exc.status == 503:
        return grpc.StatusCode.UNAVAILABLE
    if exc.status == 413:
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if 400 <= exc.status < 500:
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


class Infers(Protocol):
    """What a stream needs of the servicer: the unary call's checks and answers."""

    service: ModelService

    def prepare(self, request: Any) -> tuple[np.ndarray, list[str]]: ...

    def reply(
        self, request: Any, requested: list[str], results: dict[str, np.ndarray]
    ) -> pb.ModelInferResponse: ...


class _Slot:
    """One request of a stream, from the moment it is read until its answer is sent."""

    __slots__ = ("code", "error", "ready", "request", "requested", "results", "start")

    def __init__(self, request: Any) -> None:
        self.request = request
        self.start = time.perf_counter()
        self.ready = threading.Event()  # set once `results` or `error` is in
        self.requested: list[str] = []
        self.results: dict[str, np.ndarray] | None = None
        self.error = ""
        self.code = grpc.StatusCode.OK

    def fail(self, code: grpc.StatusCode, message: str) -> None:
        self.code, self.error = code, message
        self.ready.set()

    def answered(self, out: dict[str, np.ndarray] | BaseException) -> None:
        """In the batcher's worker thread: the model's outputs, or why the call failed."""
        if isinstance(out, BaseException):
            self.fail(grpc.StatusCode.INTERNAL, str(out))
        else:
            self.results = out
            self.ready.set()


_END = _Slot(None)  # in the order queue: nothing follows (the client stopped writing, or a stop)


class _Stream:
    """One open ``ModelStreamInfer`` call: its reader thread, its order of answers."""

    def __init__(
        self,
        servicer: Infers,
        requests: Iterator[Any],
        context: grpc.ServicerContext,
        window: int,
    ) -> None:
        self._servicer = servicer
        self._requests = requests
        self._context = context
        self._window = window
        self._order: queue.SimpleQueue[_Slot] = queue.SimpleQueue()  # slots in request order
        self._cond = threading.Condition(threading.Lock())
        self._unanswered = 0  # guarded by _cond: slots read and not yet sent
        self._closing = False  # guarded by _cond: no further requests are taken
        self._stopped = False  # the server's stop closed it (it ends with UNAVAILABLE)

    def answers(self) -> Iterator[pb.ModelStreamInferResponse]:
        """In the call's handler thread: the answers, in the order of the requests."""
        reader = threading.Thread(target=self._read, name="mnist-serve-grpc-stream", daemon=True)
        reader.start()
        metrics = self._servicer.service.metrics
        try:
            while (slot := self._order.get()) is not _END:
                slot.ready.wait()  # the batcher answers every request it takes
                answer = self._answer(slot)
                if metrics is not None:
                    seconds = time.perf_counter() - slot.start
                    metrics.request("grpc", "stream_infer", slot.code.name, seconds)
                yield answer
                with self._cond:
                    self._unanswered -= 1
                    self._cond.notify()
        finally:  # the end, or grpcio dropped the call (the client went): the reader stops
            self._close()
        if self._stopped:
            self._context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the server is shutting down; the requests on this stream that got no answer "
                "were not run: send them again",
            )

    def stop(self) -> None:
        """Take no further requests; the ones taken are still answered, then the call ends."""
        with self._cond:
            if not self._closing:
                self._stopped = True
        self._close()

    def _close(self) -> None:
        with self._cond:
            if not self._closing:
                self._closing = True
                self._order.put(_END)  # under the lock: after every slot the reader queued
            self._cond.notify_all()

    def _read(self) -> None:
        """The reader thread: takes each request in turn while the window allows."""
        try:
            for request in self._requests:
                slot = _Slot(request)
                with self._cond:
                    while self._unanswered >= self._window and not self._closing:
                        self._cond.wait()
                    if self._closing:
                        return
                    self._unanswered += 1
                    self._order.put(slot)
                self._take(slot)
        except grpc.RpcError:  # the call ended (the client cancelled or went): nothing follows
            pass
        except Exception:  # a bug here: logged; the stream ends after the answers it owes
            logger.exception("mnist-serve: reading a ModelStreamInfer stream failed")
        finally:
            self._close()

    def _take(self, slot: _Slot) -> None:
        servicer = self._servicer
        try:
            tensor, slot.requested = servicer.prepare(slot.request)
            servicer.service.run_nowait(tensor, slot.answered)
        except (ProtocolError, BatcherError) as exc:
            slot.fail(status_code(exc), str(exc))
        except Exception:  # a bug here: logged, and the client hears no details
            logger.exception("mnist-serve: stream_infer failed")
            slot.fail(grpc.StatusCode.INTERNAL, "internal error")

    def _answer(self, slot: _Slot) -> pb.ModelStreamInferResponse:
        if slot.results is None:
            return pb.ModelStreamInferResponse(
                error_message=slot.error, infer_response=pb.ModelInferResponse(id=slot.request.id)
            )
        reply = self._servicer.reply(slot.request, slot.requested, slot.results)
        return pb.ModelStreamInferResponse(infer_response=reply)


class InferStreams:
    """The open ``ModelStreamInfer`` calls of one servicer: how many may be open, and stopping them.

    Args:
        servicer: checks requests (``prepare``), runs them (its ``service``) and
            builds answers (``reply``).
        max_streams: most streams open at once; one more is refused with
            ``RESOURCE_EXHAUSTED`` (each holds a handler thread of the server).
        window: most requests of one stream read and not yet answered.
    """

    def __init__(self, servicer: Infers, max_streams: int, window: int = STREAM_WINDOW) -> None:
        self._servicer = servicer
        self.max_streams = max_streams
        self.window = window
        self._lock = threading.Lock()
        self._open: set[_Stream] = set()
        self._stopping = False

    def serve(
        self, requests: Iterator[Any], context: grpc.ServicerContext
    ) -> Iterator[pb.ModelStreamInferResponse]:
        """The answers of one ``ModelStreamInfer`` call (its handler thread iterates them)."""
        with self._lock:
            if self._stopping:
                context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    "the server is shutting down; retry on another instance",
                )
            if len(self._open) >= self.max_streams:
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{len(self._open)} streams are open, the most this server takes; "
                    "send on an open stream, close one, or use ModelInfer",
                )
            stream = _Stream(self._servicer, requests, context, self.window)
            self._open.add(stream)
        try:
            yield from stream.answers()
        finally:
            with self._lock:
                self._open.discard(stream)

    def stop(self) -> None:
        """Refuse new streams; each open one answers what it has taken, then ends (idempotent)."""
        with self._lock:
            self._stopping = True
            streams = list(self._open)
        for stream in streams:
            stream.stop()
