"""The FastAPI app: Open Inference Protocol routes, ``/v1/classify`` and ``/metrics`` over a :class:`ModelService`.

Handlers take the raw request and return raw responses (no request models): the
protocol's wire format is the contract, and the binary tensor extension is not
JSON. Every error answer is ``{"error": "..."}``; the request body is always read
to its end before an answer goes out (a client still sending, like
``tritonclient``, cannot read a reply sent early). Anything a client sends gets
a 4xx; a 500 means a bug here, and its message does not say more than "internal error".
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

from fastapi import FastAPI, Request, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive

from mnist_edge.runtime import __version__
from mnist_edge.runtime.classifier import Classifier
from mnist_edge.runtime.serve.batcher import BatcherError
from mnist_edge.runtime.serve.middleware import (
    JSON,
    Body,
    DrainRequestBody,
    InferRoute,
    RecordMetrics,
)
from mnist_edge.runtime.serve.protocol import HEADER_LENGTH, ProtocolError, dumps, error_body
from mnist_edge.runtime.serve.service import ModelService, ServeConfig

CLASSIFY_HINT = "send pictures as multipart/form-data file fields, e.g. curl -F file=@digit.png"


class Companion(Protocol):
    """Something that starts and stops with the app, inside the service's life (the gRPC server)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def _json(payload: dict[str, Any], status: int = 200) -> Response:
    return Response(dumps(payload), status_code=status, media_type=JSON)


def _error(message: str, status: int) -> Response:
    return Response(error_body(message), status_code=status, media_type=JSON)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole request body within ``limit`` bytes (:meth:`Body.read`; the rest is
    drained by :class:`DrainRequestBody` before the answer).

    Raises:
        ProtocolError: over the limit (413), or a compressed body (415).
    """
    headers = request.headers
    return await Body(request.receive).read(
        headers.get("content-encoding", ""), headers.get("content-length", ""), limit
    )


def _replay(body: bytes) -> Receive:
    """A receive callable that gives ``body`` again (to parse a body already read)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _top_k(request: Request) -> int | str:
    """``?top_k=`` as an int, or as sent when it is none (the service's check refuses it)."""
    raw = request.query_params.get("top_k", "0")
    try:
        return int(raw)
    except ValueError:
        return raw


async def _uploads(request: Request, body: bytes, max_files: int) -> list[tuple[str, bytes]]:
    """The picture files of a multipart body, in order: ``(filename, content)``."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ProtocolError(f"expected multipart/form-data; {CLASSIFY_HINT}", status=415)
    replay = Request(request.scope, receive=_replay(body))
    files: list[tuple[str, bytes]] = []
    async with replay.form(max_files=max_files, max_fields=max_files) as form:
        for key, value in form.multi_items():
            if not isinstance(value, UploadFile):
                raise ProtocolError(f"form field {key!r} is not a file; {CLASSIFY_HINT}")
            files.append((value.filename or key, await value.read()))
    if not files:
        raise ProtocolError(f"no picture files in the request; {CLASSIFY_HINT}")
    return files


def create_app(
    model: Classifier | ModelService,
    config: ServeConfig | None = None,
    *,
    companion: Companion | None = None,
    direct_infer: bool = True,
) -> FastAPI:
    """The server for a model: start it with any ASGI server (``mnist-serve`` uses uvicorn).

    Args:
        model: the classifier, or a :class:`ModelService` shared with another
            front end (the gRPC server).
        config: limits and batching when ``model`` is a classifier.
        companion: started after the service and stopped before it (the gRPC
            server, so its calls in flight still reach the batcher).
        direct_infer: serve the model's infer route with :class:`InferRoute`
            (``False``: through the framework's router, as every other route).

    The batcher starts and stops with the app's lifespan: requests that are in
    the queue at shutdown are answered before it ends.
    """
    service = model if isinstance(model, ModelService) else ModelService(model, config)
    limits = service.config

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            if companion is not None:
                await companion.start()
            yield
        finally:
            if companion is not None:
                await companion.stop()
            await service.aclose()

    app = FastAPI(
        title="mnist-serve",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.service = service
    app.add_middleware(DrainRequestBody)
    if service.metrics is not None:
        app.add_middleware(RecordMetrics, metrics=service.metrics)
    if direct_infer:
        app.add_middleware(InferRoute, service=service)  # outermost: the hot path skips the rest

    async def protocol_error(_: Request, exc: Exception) -> Response:
        status = getattr(exc, "status", 400)
        return _error(str(exc), status)

    async def http_error(_: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            return _error(str(exc.detail), exc.status_code)
        return _error("internal error", 500)

    app.add_exception_handler(ProtocolError, protocol_error)
    app.add_exception_handler(BatcherError, protocol_error)
    app.add_exception_handler(HTTPException, http_error)
    # Anything else is a bug: answer in the protocol's shape, without its details
    # (uvicorn logs the traceback).
    app.add_exception_handler(Exception, lambda _, exc: _error("internal error", 500))

    Handler = Callable[[Request], Awaitable[Response]]

    def route(method: str, *paths: str) -> Callable[[Handler], Handler]:
        # Plain Starlette routes: the handlers read the raw request themselves, so
        # FastAPI's parameter and response-model machinery would only add latency.
        def register(handler: Handler) -> Handler:
            for path in paths:
                app.add_route(path, handler, methods=[method], include_in_schema=False)
            return handler

        return register

    def model_paths(suffix: str = "") -> tuple[str, str]:
        return (
            f"/v2/models/{{name}}{suffix}",
            f"/v2/models/{{name}}/versions/{{version}}{suffix}",
        )

    def check_model(request: Request) -> None:
        service.check_model(request.path_params["name"], request.path_params.get("version"))

    @route("GET", "/v2")
    async def server_metadata(request: Request) -> Response:
        return _json(service.server_metadata())

    @route("GET", "/v2/health/live")
    async def live(request: Request) -> Response:
        return _json({"live": True})

    @route("GET", "/v2/health/ready")
    async def ready(request: Request) -> Response:
        return _json({"ready": service.ready}, 200 if service.ready else 400)

    @route("GET", "/v2/models/stats")
    async def all_stats(request: Request) -> Response:
        return _json(service.statistics())

    @route("GET", *model_paths())
    async def model_metadata(request: Request) -> Response:
        check_model(request)
        return _json(service.model_metadata())

    @route("GET", *model_paths("/ready"))
    async def model_ready(request: Request) -> Response:
        check_model(request)
        return _json(
            {"name": limits.model_name, "ready": service.ready}, 200 if service.ready else 400
        )

    @route("GET", *model_paths("/stats"))
    async def model_stats(request: Request) -> Response:
        check_model(request)
        return _json(service.statistics())

    @route("POST", *model_paths("/infer"))
    async def infer(request: Request) -> Response:
        body = await read_body(request, limits.max_body_bytes)
        check_model(request)
        content, header_length = await service.infer(body, request.headers.get(HEADER_LENGTH))
        if header_length is None:
            return Response(content, media_type=JSON)
        return Response(
            content,
            media_type="application/octet-stream",
            headers={HEADER_LENGTH: str(header_length)},
        )

    metrics = service.metrics
    if metrics is not None:
        from mnist_edge.runtime.serve.metrics import CONTENT_TYPE

        @route("GET", "/metrics")
        async def prometheus(request: Request) -> Response:
            return Response(metrics.render(), media_type=CONTENT_TYPE)

    @route("POST", "/v1/classify")
    async def classify(request: Request) -> Response:
        body = await read_body(request, limits.max_body_bytes)
        top_k = service.check_top_k(_top_k(request))
        files = await _uploads(request, body, limits.max_files)
        answer = await service.classify(files, top_k)
        return _json(answer.payload, answer.status)

    return app
