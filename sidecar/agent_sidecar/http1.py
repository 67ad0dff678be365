"""One upstream HTTP/1.1 connection (`Connection`, an asyncio protocol): it writes a
request and parses the answer with httptools (llhttp), one exchange at a time, for the
sidecar's client (`agent_sidecar.upstream`), which pools these connections.

The socket's and the parser's callbacks record what arrived and wake the one coroutine
waiting; failures are kept as engine errors (`agent.errors`), so that the client raises
them as they are. An answer's body ends with its length, its last chunk, or the
connection's end; a gzip or deflate body is decoded as it arrives.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from typing import NoReturn, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from agent.errors import AgentError, APIConnectionError, APITimeoutError, ConfigurationError
from agent.transport import WireRequest

SLICE = 256 * 1024  # bodies larger than this are written a slice at a time, not copied
_HEADERS_LIMIT = 64 * 1024  # an answer's header bytes (aiohttp's allows 8 KiB a line)


def header_lines(headers: Mapping[str, str]) -> str:
    """`name: value` lines, each ended by CRLF. A line break inside a header would start
    a header (or a message) of its own: ValueError, naming the headers that hold one."""
    lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    if lines.count("\n") != len(headers) or lines.count("\r") != len(headers):
        bad = [
            name for name, value in headers.items() if "\r" in name + value or "\n" in name + value
        ]
        raise ValueError(", ".join(bad))
    return lines


def request_head(
    request: WireRequest, target: str, host: str, authorization: str | None = None
) -> bytes:
    """The request line and headers. No Accept-Encoding unless the agent set one: an
    upstream then answers uncompressed and nothing here spends time inflating.
    `authorization` (the URL's credentials) goes with it unless the agent sent its own."""
    headers = request.headers
    if authorization is not None and not any(k.lower() == "authorization" for k in headers):
        headers = {**headers, "Authorization": authorization}
    try:
        lines = header_lines(headers)
    except ValueError as exc:
        raise ConfigurationError(f"a header holds a line break: {exc}") from None
    body = request.body
    length = f"Content-Length: {len(body)}\r\n" if body or request.method != "GET" else ""
    agent = "" if "user-agent" in headers else "User-Agent: agent-router-sidecar\r\n"
    return (
        f"{request.method} {target} HTTP/1.1\r\nHost: {host}\r\n{length}{agent}{lines}\r\n"
    ).encode("utf-8", "surrogateescape")  # a caller's header bytes go on as they came


class _Inflate:
    """A gzip or deflate body decoded as it arrives, as aiohttp's client did: an upstream
    may compress without being asked, and the engine reads the decoded bytes."""

    def __init__(self, encoding: str) -> None:
        self._gzip = encoding == "gzip"
        self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS if self._gzip else zlib.MAX_WBITS)
        self._started = False

    def feed(self, data: bytes) -> bytes:
        if not self._started and not self._gzip:
            self._started = True
            try:
                return self._zlib.decompress(data)
            except zlib.error:  # "deflate" sent raw, without the zlib wrapper
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
        self._started = True
        return self._zlib.decompress(data)

    def flush(self) -> bytes:
        return self._zlib.flush()


class NoCallbacks:
    """A parser's callbacks once its connection is gone: none. A live parser holds its
    connection's callbacks and the connection holds it, a cycle; a closed connection
    swaps its parser for one made with these, so that it is freed at once rather than
    at a full collection (which the sidecar's gc thresholds make rare)."""


DETACHED = httptools.HttpResponseParser(NoCallbacks())  # never fed: no bytes come after the end


class Connection(asyncio.Protocol):
    """One upstream connection and the answer it is reading: a single request at a time.

    The protocol callbacks (the socket's and the parser's) record what arrived and wake
    the one coroutine waiting (`wait`); failures are kept in `error` as engine errors."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        origin: tuple[str, str, int],
        free: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.origin = origin
        self.busy = False  # it holds one of the client's in-flight places
        self._free = free
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False  # it served an answer before: it may have gone stale
        self.idle = True  # no request on it: any byte that arrives is out of turn
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._timeout = 0.0
        self._last = 0.0  # when the last wait began or the last bytes arrived
        self._timer: asyncio.TimerHandle | None = None
        self._writing_paused = False
        self._reading_paused = False
        self.begin(0.0, None)
        self.idle = True

    def begin(self, timeout: float, limit: int | None) -> None:
        """Ready for the next answer: `limit` bounds the unread bytes (None: no bound)."""
        self.idle = False
        self._timeout = timeout
        self._limit = limit
        self.body_sent = True  # False: answered or gone before the whole body was sent
        self.started = False  # a byte of the answer arrived
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.until_close = False  # the body ends when the connection does
        self._interim = False  # reading a 1xx answer (103 Early Hints): the real one follows
        self.error: AgentError | None = None
        self.status = 0
        self.headers: CIMultiDictProxy[str] = NO_HEADERS
        self._raw: list[tuple[str, str]] = []
        self._header_bytes = 0
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self._inflate: _Inflate | None = None

    # -- the socket's callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.complete or self.idle:
            self.close()  # bytes nobody asked for: the connection cannot be trusted
            return
        self.started = True
        self._last = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:  # after `_stop`, its error stands
            self._fail(APIConnectionError(f"malformed response from the upstream: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close: an HTTP/1.1 client has nothing left to say on it

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.parser = DETACHED  # see NoCallbacks
        self.give_back()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.headers_done and not self.complete and self.until_close and exc is None:
            self._finish()  # a body delimited by the close: this is its end
        elif not self.complete and self.error is None:
            detail = f": {exc}" if exc is not None else ""
            self.error = Closed(f"the upstream closed the connection{detail}", exc is None)
        self._wake()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake()

    # -- the parser's callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > _HEADERS_LIMIT:  # a broken upstream must not fill memory
            self._stop(f"headers longer than {_HEADERS_LIMIT} bytes from the upstream")
        self._raw.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True
            self._raw.clear()
            return
        self.status = status
        headers = CIMultiDict(self._raw)
        self.headers = CIMultiDictProxy(headers)
        self.headers_done = True
        self.until_close = "content-length" not in headers and "transfer-encoding" not in headers
        encoding = headers.get("content-encoding", "").lower()
        if encoding in ("gzip", "deflate"):
            self._inflate = _Inflate(encoding)
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._inflate is not None:
            try:
                body = self._inflate.feed(body)
            except zlib.error as exc:
                self._stop(f"malformed compressed body from the upstream: {exc}")
        self.chunks.append(body)
        self.buffered += len(body)
        if self._limit is not None and self.buffered > self._limit and not self._reading_paused:
            assert self.transport is not None
            self._reading_paused = True
            self.transport.pause_reading()  # the caller is slower than the upstream
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self.keep_alive = self.parser.should_keep_alive()
        self._finish()

    # -- for the client

    def send(self, head: bytes, body: bytes) -> None:
        """Write a request whose body fits one write."""
        assert self.transport is not None
        self._last = self.loop.time()
        self.transport.write(head + body if body else head)

    async def send_large(self, head: bytes, body: bytes) -> None:
        """Write a large body a slice of the caller's buffer at a time, waiting while the
        socket's buffer is full: never a copy of the whole body."""
        assert self.transport is not None
        self.send(head, b"")
        view = memoryview(body)
        for start in range(0, len(view), SLICE):
            while self._writing_paused and self.error is None and not self.headers_done:
                await self.wait()
            if self.error is not None or self.headers_done:
                self.body_sent = False
                return
            self.transport.write(view[start : start + SLICE])

    async def wait(self) -> None:
        """Until a callback has news, or `timeout` passes with no bytes from the upstream
        (an `APITimeoutError` in `error`, and the connection closed)."""
        waiter = self._waiter = self.loop.create_future()
        self._last = self.loop.time()
        deadline = self._last + self._timeout
        if self._timer is None or self._timer.when() > deadline:  # a longer wait's timer
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(deadline, self._check)
        await waiter

    def unbounded(self) -> None:
        """Read the rest whatever its size (a whole error body, say)."""
        self._limit = None
        self._resume_reading()

    def take(self) -> bytes:
        """The unread body bytes so far (resuming the socket if it was paused for them)."""
        chunk = self.chunks.popleft() if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        self._resume_reading()  # the caller took what held the socket back
        return chunk

    def _resume_reading(self) -> None:
        if self._reading_paused:
            assert self.transport is not None
            self._reading_paused = False
            self.transport.resume_reading()

    def give_back(self) -> None:
        """Free the client's in-flight place this connection's request held."""
        if self.busy:
            self.busy = False
            self._free()

    def reusable(self) -> bool:
        ok = self.complete and self.keep_alive and self.body_sent
        return ok and self.error is None and not self.closed

    def close(self) -> None:
        self.closed = True
        self.give_back()
        if self.transport is not None:
            self.transport.close()

    def _finish(self) -> None:
        if self._inflate is not None:
            try:
                rest = self._inflate.flush()
            except zlib.error as exc:
                self._fail(
                    APIConnectionError(f"malformed compressed body from the upstream: {exc}")
                )
                return
            if rest:
                self.chunks.append(rest)
                self.buffered += len(rest)
        self.complete = True
        self._wake()

    def _stop(self, reason: str) -> NoReturn:
        """From a parser callback: fail with `reason` and stop the parser."""
        self._fail(APIConnectionError(reason))
        raise httptools.HttpParserCallbackError(reason)

    def _fail(self, error: AgentError) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _check(self) -> None:
        # One timer per connection, moved on only when it fires: cheaper than a timer per
        # wait or per read, and as exact (a wait ends at most `timeout` after its last news).
        self._timer = None
        if self._waiter is None or self.closed:
            return
        deadline = self._last + self._timeout
        if self.loop.time() >= deadline:
            self._fail(APITimeoutError(f"no answer from the upstream in {self._timeout:g} s"))
            self.close()
        else:
            self._timer = self.loop.call_at(deadline, self._check)


NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class Closed(APIConnectionError):
    """The upstream closed the connection; `clean`: with an end of stream, not a reset."""

    def __init__(self, message: str, clean: bool) -> None:
        super().__init__(message)
        self.clean = clean
