"""The server's ASGI middleware: the direct infer route, body draining and request metrics.

:class:`InferRoute` answers the protocol's hot path, ``POST .../infer``, without the
framework's router and request objects; :class:`DrainRequestBody` and
:class:`RecordMetrics` wrap every other route. :class:`Body` reads a request body
within its limit, for both paths.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mnist_edge.runtime.serve.batcher import BatcherError
from mnist_edge.runtime.serve.protocol import HEADER_LENGTH, ProtocolError, error_body
from mnist_edge.runtime.serve.service import ModelService

JSON = "application/json"
_JSON_TYPE = (b"content-type", JSON.encode())
_BINARY_TYPE = (b"content-type", b"application/octet-stream")
_HEADER_LENGTH_NAME = HEADER_LENGTH.lower()  # ASGI header names are lower case
_HEADER_LENGTH_KEY = _HEADER_LENGTH_NAME.encode()
_READ_HEADERS = (b"content-length", b"content-encoding", _HEADER_LENGTH_KEY)
logger = logging.getLogger("mnist_edge.serve.http")


class DrainRequestBody:
    """ASGI middleware: read whatever is left of the request body before the response starts.

    An error can be decided before the body has arrived (an unknown route, a
    declared size over the limit); HTTP/1.1 clients that are still sending then
    miss the answer. Draining discards the bytes (memory stays flat).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        finished = False

        async def tracked_receive() -> Message:
            nonlocal finished
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                finished = True
            return message

        async def drain_then_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                while not finished:
                    await tracked_receive()
            await send(message)

        await self.app(scope, tracked_receive, drain_then_send)


class RecordMetrics:
    """ASGI middleware: count every HTTP answer by endpoint and status in the service's metrics."""

    def __init__(self, app: ASGIApp, metrics: Any) -> None:
        from mnist_edge.runtime.serve.metrics import http_endpoint

        self.app = app
        self.metrics = metrics
        self.endpoint = http_endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # an exception that escapes the app is answered 500 by Starlette

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.request(
                "http", self.endpoint(scope["path"]), str(status), time.perf_counter() - start
            )


class InferRoute:
    """ASGI middleware: ``POST /v2/models/{name}[/versions/{version}]/infer`` for the served model, direct.

    The protocol's hot path skips the framework's routing, request object and
    middleware stack: it reads the body (bounded, drained to its end before any
    answer), hands it to :meth:`ModelService.infer` and writes the answer, with
    the same bodies, statuses and metrics as the framework route, which still
    serves every other path (another model name or version gets its 404 there).
    """

    def __init__(self, app: ASGIApp, service: ModelService) -> None:
        self.app = app
        self.service = service
        base = f"/v2/models/{service.config.model_name}"
        self.paths = {f"{base}/infer", f"{base}/versions/{service.config.model_version}/infer"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        service = self.service
        status = 200
        body = Body(receive)
        try:
            try:
                headers = _headers(scope)
                data = await body.read(
                    headers.get("content-encoding", ""),
                    headers.get("content-length", ""),
                    service.config.max_body_bytes,
                )
                content, header_length = await service.infer(data, headers.get(_HEADER_LENGTH_NAME))
            except (ProtocolError, BatcherError) as exc:
                status = exc.status
                content, header_length = error_body(str(exc)), None
            except Exception:  # a bug here: logged; the client hears no details
                logger.exception("mnist-serve: infer failed")
                status = 500
                content, header_length = error_body("internal error"), None
            await body.drain()  # a client still sending cannot read an answer sent early
            kind = _JSON_TYPE if header_length is None else _BINARY_TYPE
            response = [kind, (b"content-length", b"%d" % len(content))]
            if header_length is not None:
                response.append((_HEADER_LENGTH_KEY, b"%d" % header_length))
            await send({"type": "http.response.start", "status": status, "headers": response})
            await send({"type": "http.response.body", "body": content})
        finally:
            if service.metrics is not None:
                service.metrics.request("http", "infer", str(status), time.perf_counter() - start)


def _headers(scope: Scope) -> dict[str, str]:
    """The request headers this route reads, by lower-case name (latin-1, as HTTP has them)."""
    return {k.decode(): v.decode("latin-1") for k, v in scope["headers"] if k in _READ_HEADERS}


class Body:
    """A request's body from ASGI ``receive``, and whether it has been read to its end."""

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.done = False

    async def _chunk(self) -> bytes:
        message = await self.receive()
        if message["type"] != "http.request":  # the client went away
            self.done = True
            return b""
        self.done = not message.get("more_body", False)
        return message.get("body", b"")

    async def read(self, encoding: str, declared: str, limit: int) -> bytes:
        """The whole body, refusing more than ``limit`` bytes without holding them; a
        refusal leaves the rest unread (:meth:`drain` it before answering).

        Args:
            encoding: the ``Content-Encoding`` header ("" if none).
            declared: the ``Content-Length`` header ("" if none).
            limit: the most bytes the body may have.

        Raises:
            ProtocolError: over the limit (413), or a compressed body (415).
        """
        encoding = encoding.strip().lower()
        if encoding not in ("", "identity"):
            raise ProtocolError(
                f"Content-Encoding {encoding!r} is not supported; send the body uncompressed",
                status=415,
            )
        too_big = (
            f"request body over the limit of {limit} bytes; send fewer images per request "
            "or raise the server's body limit"
        )
        if declared.isdigit() and int(declared) > limit:
            raise ProtocolError(too_big, status=413)
        chunks: list[bytes] = []
        total = 0
        while not self.done:
            chunk = await self._chunk()
            total += len(chunk)
            if total > limit:
                raise ProtocolError(too_big, status=413)
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def drain(self) -> None:
        """Read and drop what is left (memory stays flat)."""
        while not self.done:
            await self._chunk()
