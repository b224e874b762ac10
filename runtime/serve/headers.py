"""Bounded HTTP request heads: uvicorn's httptools protocol with a size limit on the head.

uvicorn's httptools protocol buffers a request line and headers of any size;
:class:`BoundedHttpToolsProtocol` counts the bytes that arrive before a head is
complete and answers ``431 Request Header Fields Too Large`` (then closes the
connection) past :data:`MAX_HEAD_BYTES`, so a header flood costs at most that
much memory per connection. Pass the class as ``uvicorn.Config(http=...)``.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024  # request line and headers (Triton's and nginx's are smaller)

_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/json\r\n"
    b"connection: close\r\n"
)


class _HeadTooLarge(Exception):
    """Stops the parser once the 431 answer is out."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing request heads over :data:`MAX_HEAD_BYTES`.

    Two counts: the parsed request line and headers (a head that arrives in one
    chunk), and the raw bytes of chunks that leave a head unfinished (a head
    that never ends is not held beyond the limit).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # waiting for (the rest of) a request line and headers
        self._head_bytes = 0  # raw bytes of chunks that ended inside a head
        self._parsed_bytes = 0  # request line and headers of the current request
        self._ended = False  # a request ended inside the chunk being parsed
        self._refused = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._parsed_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._parsed_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed_bytes += len(name) + len(value) + 4
        super().on_header(name, value)

    def _refuse(self) -> None:
        self._refused = True
        body = (
            b'{"error":"request line and headers over the limit of %d bytes; '
            b'send fewer or shorter headers"}' % MAX_HEAD_BYTES
        )
        self.transport.write(_431 + b"content-length: %d\r\n\r\n" % len(body) + body)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # the parser stopped because of the 431 already sent
            super().send_400_response(msg)

    def on_headers_complete(self) -> None:
        if self._parsed_bytes > MAX_HEAD_BYTES:
            self._refuse()
            raise _HeadTooLarge
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._ended = True

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._ended = False
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        if self._ended:  # the chunk's tail starts the next head: one chunk at most, not counted
            self._head_bytes = 0
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse()
