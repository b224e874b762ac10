"""The Open Inference Protocol over gRPC, on the same :class:`ModelService` (and batcher) as HTTP.

The service is the one ``tritonclient[grpc]`` ships compiled from the public
proto (``GRPCInferenceService``); :class:`GrpcServer` runs it with grpcio's
asyncio server (``grpc.aio``) on an event loop of its own, in its own thread
beside the HTTP server's loop, and both hand their requests to the one batcher
of the :class:`ModelService`, so requests from both protocols batch together.
Implemented: ``ServerLive``, ``ServerReady``, ``ModelReady``, ``ServerMetadata``,
``ModelMetadata``, ``ModelInfer`` (typed ``contents`` or ``raw_input_contents``
in; ``raw_output_contents`` out, as Triton answers), ``ModelStreamInfer`` (many
infer requests on one stream: ``grpc_stream.py``) and ``ModelStatistics``; the
others answer ``UNIMPLEMENTED``.

Errors carry the HTTP side's messages, as status codes: 404 ->
``NOT_FOUND``, 503 -> ``UNAVAILABLE``, 413 -> ``RESOURCE_EXHAUSTED``, other
client errors -> ``INVALID_ARGUMENT``, a failed model call -> ``INTERNAL``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from mnist_edge.runtime.errors import MnistEdgeError
from mnist_edge.runtime.serve.batcher import BatcherError
from mnist_edge.runtime.serve.grpc_stream import InferStreams, status_code
from mnist_edge.runtime.serve.protocol import (
    ProtocolError,
    check_datatype,
    check_shape,
    tensor_from_bytes,
    tensor_from_values,
)
from mnist_edge.runtime.serve.service import ModelService

# The typed-contents field that carries each protocol datatype (the proto's comments).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
METADATA_BYTES = 16 * 1024  # gRPC request metadata (headers) bound
MAX_STREAMS = 32  # open ModelStreamInfer calls at once
logger = logging.getLogger("mnist_edge.serve.grpc")


class GrpcBindError(MnistEdgeError, OSError):
    """The gRPC port cannot be bound (in use, or not an address of this host)."""


Reply = TypeVar("Reply")
Result = TypeVar("Result")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Reply]]


def _rpc(endpoint: str) -> Callable[[Handler[Reply]], Handler[Reply]]:
    """Turn the service's errors into status codes and count the call in the metrics."""

    def wrap(method: Handler[Reply]) -> Handler[Reply]:
        async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Reply:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await method(self, request, context)
            except (ProtocolError, BatcherError) as exc:
                code = status_code(exc)
                await context.abort(code, str(exc))
                raise  # abort() raises; this line only satisfies the type checker
            except Exception:  # a bug here: logged, and the client hears no details
                code = grpc.StatusCode.INTERNAL
                logger.exception("mnist-serve: %s failed", endpoint)
                await context.abort(code, "internal error")
                raise
            finally:
                metrics = self.service.metrics
                if metrics is not None:
                    metrics.request("grpc", endpoint, code.name, time.perf_counter() - start)

        handler.__name__ = method.__name__
        handler.__doc__ = method.__doc__
        return handler

    return wrap


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """``GRPCInferenceService`` over a :class:`ModelService`."""

    def __init__(self, service: ModelService, max_streams: int = MAX_STREAMS) -> None:
        self.service = service
        self.streams = InferStreams(self, max_streams)
        # requests in the batcher now, unary calls and stream messages (on the server's loop)
        self.in_flight = 0

    def _check_model(self, name: str, version: str) -> None:
        self.service.check_model(name, version or None)

    @_rpc("live")
    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_rpc("ready")
    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.ready)

    @_rpc("model_ready")
    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        self._check_model(request.name, request.version)
        return pb.ModelReadyResponse(ready=self.service.ready)

    @_rpc("server_metadata")
    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        meta = self.service.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    @_rpc("model_metadata")
    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        self._check_model(request.name, request.version)
        meta = self.service.model_metadata()

        def tensors(specs: list[dict[str, Any]]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
            return [
                pb.ModelMetadataResponse.TensorMetadata(
                    name=t["name"], datatype=t["datatype"], shape=t["shape"]
                )
                for t in specs
            ]

        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=tensors(meta["inputs"]),
            outputs=tensors(meta["outputs"]),
        )

    @_rpc("statistics")
    async def ModelStatistics(self, request: Any, context: Any) -> pb.ModelStatisticsResponse:
        if request.name:  # an empty name asks for every model
            self._check_model(request.name, request.version)
        return pb.ModelStatisticsResponse(
            model_stats=[_statistics(s) for s in self.service.statistics()["model_stats"]]
        )

    @_rpc("infer")
    async def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
        tensor, requested = self.prepare(request)
        results = self.service.outputs_of(await self.enqueue(tensor))
        return self.reply(request, requested, results)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for answer in self.streams.serve(request_iterator, context):
            yield answer

    def enqueue(self, tensor: np.ndarray) -> asyncio.Future[np.ndarray]:
        """A checked input into the batcher, counted in :attr:`in_flight` until answered.

        A request is alone (it may run on this loop while the model is idle) only
        when no other gRPC request is in the batcher.

        Raises:
            BatcherError: shutting down or overloaded.
        """
        outputs = self.service.enqueue(tensor, alone=self.in_flight == 0)
        self.in_flight += 1
        outputs.add_done_callback(self._answered)
        return outputs

    def _answered(self, outputs: asyncio.Future[np.ndarray]) -> None:
        self.in_flight -= 1

    def prepare(self, request: Any) -> tuple[np.ndarray, list[str]]:
        """An infer request's checked input tensor and the names of the outputs it asks for.

        Raises:
            ProtocolError: unknown model, bad input or outputs (the HTTP side's messages).
        """
        self._check_model(request.model_name, request.model_version)
        return self._input(request), self._outputs(request)

    def reply(
        self, request: Any, requested: list[str], results: dict[str, np.ndarray]
    ) -> pb.ModelInferResponse:
        """The answer to ``request``: the ``requested`` outputs in ``raw_output_contents``."""
        config = self.service.config
        reply = pb.ModelInferResponse(
            model_name=config.model_name, model_version=config.model_version, id=request.id
        )
        for name in requested:
            array = results[name]
            reply.outputs.add(name=name, datatype=_datatype(array), shape=list(array.shape))
            reply.raw_output_contents.append(
                np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
            )
        return reply

    def _input(self, request: Any) -> np.ndarray:
        spec = self.service.input
        names = [i.name for i in request.inputs]
        unknown = [n for n in names if n != spec.name]
        if unknown or len(names) != 1:
            what = f"unknown input {unknown[0]!r}" if unknown else f"{len(names)} inputs"
            raise ProtocolError(f"{what}; the model takes one input, {spec.name!r}")
        entry = request.inputs[0]
        check_datatype(entry.datatype, spec)
        shape = check_shape(
            list(entry.shape),
            spec,
            self.service.config.max_request_rows,
            self.service.max_input_values,
        )
        field = CONTENTS_FIELD[spec.datatype]
        typed = getattr(entry.contents, field) if entry.HasField("contents") else ()
        if request.raw_input_contents:
            if len(request.raw_input_contents) != 1:
                raise ProtocolError(
                    f"{len(request.raw_input_contents)} raw_input_contents for one input"
                )
            if len(typed):
                raise ProtocolError(f"input {spec.name!r} has both contents and raw_input_contents")
            return tensor_from_bytes(request.raw_input_contents[0], spec, shape)
        if not entry.HasField("contents"):
            raise ProtocolError(
                f"input {spec.name!r} has no data: send contents.{field} or raw_input_contents"
            )
        return tensor_from_values(np.asarray(list(typed)), spec, shape, f"contents.{field}")

    def _outputs(self, request: Any) -> list[str]:
        known = [o.name for o in self.service.outputs]
        if not request.outputs:
            return known
        names = []
        for out in request.outputs:
            if out.name not in known:
                raise ProtocolError(
                    f"unknown output {out.name!r}; the model has "
                    f"{', '.join(repr(n) for n in sorted(known))}"
                )
            if "classification" in out.parameters:
                raise ProtocolError(
                    "the classification extension is not supported; ask for the probabilities "
                    "(or POST pictures to /v1/classify for labels)"
                )
            names.append(out.name)
        return names


def _datatype(array: np.ndarray) -> str:
    return {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}[array.dtype]


def _duration(d: dict[str, int]) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d["count"], ns=d["ns"])


def _statistics(stats: dict[str, Any]) -> pb.ModelStatistics:
    """One ``model_stats`` entry of the statistics extension (as HTTP answers it) -> proto."""
    inference = stats["inference_stats"]
    return pb.ModelStatistics(
        name=stats["name"],
        version=stats["version"],
        last_inference=stats["last_inference"],
        inference_count=stats["inference_count"],
        execution_count=stats["execution_count"],
        inference_stats=pb.InferStatistics(
            success=_duration(inference["success"]),
            fail=_duration(inference["fail"]),
            queue=_duration(inference["queue"]),
            compute_infer=_duration(inference["compute_infer"]),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=b["batch_size"], compute_infer=_duration(b["compute_infer"])
            )
            for b in stats["batch_stats"]
        ],
    )


class GrpcServer:
    """grpcio's asyncio server for one :class:`ModelService`, on an event loop of its own.

    The loop runs in a thread of its own, beside the HTTP server's loop: each
    call hands its checked input to the batcher and awaits the answer there,
    so any number of calls wait for one batch at no cost of a thread each.
    grpcio's C core does the network I/O outside the GIL. The methods are
    called from the HTTP server's event loop.

    Args:
        service: the model service (shared with the HTTP app).
        host: address to listen on.
        port: TCP port; 0 picks a free one (see :attr:`port` after :meth:`bind`).
        max_message_bytes: largest request message (the HTTP body limit).
        grace: seconds the calls in flight get to finish when it stops.
        max_streams: most ``ModelStreamInfer`` calls open at once.
    """

    def __init__(
        self,
        service: ModelService,
        host: str,
        port: int,
        max_message_bytes: int,
        grace: float,
        max_streams: int = MAX_STREAMS,
    ) -> None:
        self.service = service
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.max_message_bytes = max_message_bytes
        self.grace = grace
        self.port = port
        self._servicer = InferenceServicer(service, max_streams)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: grpc.aio.Server | None = None
        self._stopped: concurrent.futures.Future[None] | None = None

    async def bind(self) -> int:
        """Start the server's event loop, make the server and bind its port; returns the port.

        Raises:
            GrpcBindError: the address cannot be bound.
        """
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="mnist-serve-grpc", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            self.port = await self._on_loop(self._bind())
        except BaseException:
            await self._end_loop()
            raise
        return self.port

    async def _bind(self) -> int:
        limit = self.max_message_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.max_metadata_size", METADATA_BYTES),
                ("grpc.so_reuseport", 0),  # a busy port is an error, not a second listener
            ],
        )
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self._servicer, server)
        try:
            bound = server.add_insecure_port(self.address)
        except RuntimeError as exc:  # grpcio raises when the port cannot be bound
            raise GrpcBindError(f"cannot listen on {self.address} for gRPC ({exc})") from None
        if bound == 0:
            raise GrpcBindError(f"cannot listen on {self.address} for gRPC")
        self._server = server
        return bound

    async def start(self) -> None:
        """Start answering (binds first if :meth:`bind` was not called)."""
        if self._loop is None:
            await self.bind()
        if self._server is not None:
            await self._on_loop(self._server.start())

    def begin_stop(self) -> None:
        """Refuse new calls now; the calls in flight get ``grace`` seconds (idempotent).

        Open streams take no further requests: each answers those it has taken,
        then ends with ``UNAVAILABLE``.
        """
        if self._stopped is None and self._loop is not None and self._server is not None:
            self._stopped = asyncio.run_coroutine_threadsafe(self._stop(), self._loop)

    async def _stop(self) -> None:
        self._servicer.streams.stop()
        if self._server is not None:
            await self._server.stop(self.grace)

    async def stop(self) -> None:
        """:meth:`begin_stop`, then wait until the calls in flight are done and end the loop."""
        self.begin_stop()
        if self._stopped is not None:
            await asyncio.wrap_future(self._stopped)
        await self._end_loop()

    async def _on_loop(self, coroutine: Coroutine[Any, Any, Result]) -> Result:
        """Run ``coroutine`` on the server's event loop; await its result on the caller's."""
        if self._loop is None:
            raise RuntimeError("the gRPC server's event loop is not running")
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self._loop))

    async def _end_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            await asyncio.to_thread(thread.join)
            loop.close()
