"""``ModelStreamInfer``: many infer requests on one gRPC stream, answered in their order.

``tritonclient.grpc``'s ``start_stream`` / ``async_stream_infer`` and
``tritonclient.grpc.aio``'s ``stream_infer`` send their requests as messages of
one bidirectional stream, which costs both ends less per request than a unary
call each. A stream's reader task checks each request and hands it to the
batcher without waiting for the answer, so the requests in flight on one
stream batch together; the call itself sends the answers, each a
``ModelStreamInferResponse``, in the order of the requests:

* ``infer_response``: the answer ``ModelInfer`` would give;
* ``error_message``: the request was refused (the message ``ModelInfer``'s
  status would carry) and ``infer_response`` holds only its ``id``; the stream
  goes on with the next request.

At most ``window`` requests of a stream are read and not yet answered; beyond
that the reader waits, and gRPC's flow control holds the client back. When the
server stops, an open stream takes no further requests, answers the ones it
has taken and ends with ``UNAVAILABLE``: every request either got an answer or
was not run. Everything here runs on the gRPC server's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
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
    """What a stream needs of the servicer: the unary call's checks, batcher entry and answers."""

    service: ModelService

    def prepare(self, request: Any) -> tuple[np.ndarray, list[str]]: ...

    def enqueue(self, tensor: np.ndarray) -> asyncio.Future[np.ndarray]: ...

    def reply(
        self, request: Any, requested: list[str], results: dict[str, np.ndarray]
    ) -> pb.ModelInferResponse: ...


class _Slot:
    """One request of a stream, from the moment it is read until its answer is sent."""

    __slots__ = ("code", "error", "outputs", "request", "requested", "start")

    def __init__(self, request: Any) -> None:
        self.request = request
        self.start = time.perf_counter()
        self.requested: list[str] = []
        self.outputs: asyncio.Future[np.ndarray] | None = None  # the model's; None: refused
        self.error = ""
        self.code = grpc.StatusCode.OK

    def fail(self, code: grpc.StatusCode, message: str) -> None:
        self.code, self.error = code, message


_END = _Slot(None)  # in the order queue: nothing follows (the client stopped writing, or a stop)


class _Stream:
    """One open ``ModelStreamInfer`` call: its reader task and its answers in order."""

    def __init__(
        self,
        servicer: Infers,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
        window: int,
    ) -> None:
        self._servicer = servicer
        self._requests = requests
        self._context = context
        self._order: asyncio.Queue[_Slot] = asyncio.Queue()  # slots in request order
        self._window = asyncio.Semaphore(window)  # taken per request read, given back once sent
        self._closing = False  # no further requests are taken
        self._stopped = False  # the server's stop closed it (it ends with UNAVAILABLE)

    async def answers(self) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """The answers, in the order of the requests."""
        reader = asyncio.create_task(self._read())
        metrics = self._servicer.service.metrics
        try:
            while (slot := await self._order.get()) is not _END:
                answer = await self._answer(slot)
                if metrics is not None:
                    seconds = time.perf_counter() - slot.start
                    metrics.request("grpc", "stream_infer", slot.code.name, seconds)
                yield answer
                self._window.release()
        finally:  # the end, or the call was cancelled (the client went)
            self._close()
            reader.cancel()
        if self._stopped:
            await self._context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the server is shutting down; the requests on this stream that got no answer "
                "were not run: send them again",
            )

    def stop(self) -> None:
        """Take no further requests; the ones taken are still answered, then the call ends."""
        if not self._closing:
            self._stopped = True
        self._close()

    def _close(self) -> None:
        if not self._closing:
            self._closing = True
            self._order.put_nowait(_END)

    async def _read(self) -> None:
        """The reader task: takes each request in turn while the window allows."""
        try:
            async for request in self._requests:
                await self._window.acquire()
                if self._closing:
                    return
                self._order.put_nowait(self._take(request))
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass  # the call ended (cancelled, or the client went): nothing follows
        except Exception:  # a bug here: logged; the stream ends after the answers it owes
            logger.exception("mnist-serve: reading a ModelStreamInfer stream failed")
        finally:
            self._close()

    def _take(self, request: Any) -> _Slot:
        slot = _Slot(request)
        servicer = self._servicer
        try:
            tensor, slot.requested = servicer.prepare(request)
            slot.outputs = servicer.enqueue(tensor)
        except (ProtocolError, BatcherError) as exc:
            slot.fail(status_code(exc), str(exc))
        except Exception:  # a bug here: logged, and the client hears no details
            logger.exception("mnist-serve: stream_infer failed")
            slot.fail(grpc.StatusCode.INTERNAL, "internal error")
        return slot

    async def _answer(self, slot: _Slot) -> pb.ModelStreamInferResponse:
        if slot.outputs is not None:
            try:
                results = self._servicer.service.outputs_of(await slot.outputs)
            except BatcherError as exc:  # the model call failed
                slot.fail(status_code(exc), str(exc))
            else:
                reply = self._servicer.reply(slot.request, slot.requested, results)
                return pb.ModelStreamInferResponse(infer_response=reply)
        return pb.ModelStreamInferResponse(
            error_message=slot.error, infer_response=pb.ModelInferResponse(id=slot.request.id)
        )


class InferStreams:
    """The open ``ModelStreamInfer`` calls of one servicer: how many may be open, and stopping them.

    Args:
        servicer: checks requests (``prepare``), hands them to the batcher
            (``enqueue``) and builds answers (``reply``).
        max_streams: most streams open at once; one more is refused with
            ``RESOURCE_EXHAUSTED``.
        window: most requests of one stream read and not yet answered.
    """

    def __init__(self, servicer: Infers, max_streams: int, window: int = STREAM_WINDOW) -> None:
        self._servicer = servicer
        self.max_streams = max_streams
        self.window = window
        self._open: set[_Stream] = set()
        self._stopping = False

    async def serve(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """The answers of one ``ModelStreamInfer`` call."""
        if self._stopping:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the server is shutting down; retry on another instance",
            )
        if len(self._open) >= self.max_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{len(self._open)} streams are open, the most this server takes; "
                "send on an open stream, close one, or use ModelInfer",
            )
        stream = _Stream(self._servicer, requests, context, self.window)
        self._open.add(stream)
        try:
            async for answer in stream.answers():
                yield answer
        finally:
            self._open.discard(stream)

    def stop(self) -> None:
        """Refuse new streams; each open one answers what it has taken, then ends (idempotent)."""
        self._stopping = True
        for stream in list(self._open):
            stream.stop()
