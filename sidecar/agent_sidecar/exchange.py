"""What the handlers see of one exchange on the sidecar's own server
(`agent_sidecar.http1server`): the `Request` (what aiohttp's `web.Request` gives them
too), its `Body` as it arrives (what `agent_sidecar.bodies` reads of aiohttp's
StreamReader), a streamed answer (`Stream`, chunked), and the head of any answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from email.utils import formatdate
from typing import Protocol
from urllib.parse import unquote

import httptools
from multidict import CIMultiDictProxy

from agent_sidecar.http1 import header_lines

BODY_BUFFER = 256 * 1024  # body bytes buffered before the socket is paused
NO_MATCH: Mapping[str, str] = {}


class Channel(Protocol):
    """The connection an exchange is on: what a body and a stream need of it."""

    def send(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Body:
    """A request's body as it arrives: what `agent_sidecar.bodies` reads (aiohttp's
    StreamReader's `is_eof`, `read_nowait`, `readany`)."""

    __slots__ = ("_chunks", "_connection", "_eof", "_error", "_size", "_waiter", "dropping")

    def __init__(self, connection: Channel) -> None:
        self._connection = connection
        self._chunks: list[bytes] = []
        self._size = 0
        self._eof = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.dropping = False  # answered without it: the rest is read and dropped

    def is_eof(self) -> bool:
        return self._eof

    def read_nowait(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        if self._size > BODY_BUFFER:
            self._connection.resume_reading()
        self._size = 0
        return data

    async def readany(self) -> bytes:
        """What arrived since the last read (waiting for some); b"" at the end."""
        while not self._chunks and not self._eof:
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.read_nowait()

    def feed(self, data: bytes) -> None:
        if self.dropping:
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._size > BODY_BUFFER:
            self._connection.pause_reading()  # the handler reads slower than the client sends
        self._wake()

    def drop(self) -> None:
        self.dropping = True
        self._chunks.clear()
        self._size = 0

    def end(self) -> None:
        self._eof = True
        self._wake()

    def fail(self, error: Exception) -> None:
        self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Request:
    """One request: what the handlers read of it (aiohttp's `web.Request` has the same)."""

    __slots__ = (
        "_connection",
        "content",
        "content_length",
        "expect",
        "headers",
        "keep_alive",
        "match_info",
        "method",
        "path",
        "sent",
        "status",
        "target",
        "version",
    )

    def __init__(self, connection: Channel, method: str, target: str, version: str,
                 headers: CIMultiDictProxy[str], keep_alive: bool) -> None:
        self._connection = connection
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.content = Body(connection)
        length = headers.get("Content-Length")
        self.content_length = int(length) if length is not None else None  # llhttp checked it
        self.expect = headers.get("Expect")
        path = target.partition("?")[0]
        if not path.startswith("/"):  # the absolute form, as sent to a proxy: its path
            path = text(httptools.parse_url(target.encode("utf-8", "surrogateescape")).path
                         or b"/")
        self.path = unquote(path) if "%" in path else path
        self.match_info: Mapping[str, str] = NO_MATCH
        self.status = 0  # of its answer, once sent, and its bytes (for the access log)
        self.sent = 0

    async def start_stream(self, headers: Mapping[str, str]) -> Stream:
        """A 200 answer whose body follows in parts (chunked)."""
        return Stream(self._connection, self, headers)


class Stream:
    """A streamed answer: its head is written at once; `write` waits while the client's
    socket is full; `write_eof` ends it. Writing to a gone client raises ConnectionError."""

    __slots__ = ("_chunked", "_connection", "_ended", "status")

    def __init__(self, connection: Channel, request: Request, headers: Mapping[str, str]
                 ) -> None:
        self._connection = connection
        self.status = 200
        self._ended = False
        # HTTP/1.0 has no chunks: the body ends with the connection.
        self._chunked = request.version == "1.1"
        if not self._chunked:
            request.keep_alive = False
        framing = "Transfer-Encoding: chunked\r\n" if self._chunked else ""
        connection.send(head(request, 200, "OK", headers, framing))

    async def write(self, data: bytes) -> None:
        if data:
            self._connection.send(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
            await self._connection.drain()

    async def write_eof(self, data: bytes = b"") -> None:
        if self._ended:
            return
        self._ended = True
        if self._chunked:
            end = b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data) if data else b"0\r\n\r\n"
            self._connection.send(end)
        elif data:
            self._connection.send(data)
        await self._connection.drain()


def head(request: Request, status: int, reason: str, headers: Mapping[str, str],
          framing: str) -> bytes:
    """The status line and headers; a line break in a header would split the answer."""
    try:
        lines = header_lines(headers)
    except ValueError as exc:
        raise ValueError(f"a header of the answer holds a line break: {exc}") from None
    if not request.keep_alive:
        framing += "Connection: close\r\n"
    elif request.version == "1.0":
        framing += "Connection: keep-alive\r\n"
    request.status = status
    return (
        f"HTTP/1.1 {status} {reason}\r\n{lines}{framing}Date: {_date()}\r\n\r\n"
    ).encode("latin-1")


def text(raw: bytes) -> str:
    # As aiohttp's parser reads the head: UTF-8, any other byte kept as it came.
    return raw.decode("utf-8", "surrogateescape")


_dated = [0, ""]  # the second and its Date value: formatted once a second


def _date() -> str:
    now = int(time.time())
    if _dated[0] != now:
        _dated[:] = [now, formatdate(now, usegmt=True)]
    return str(_dated[1])
