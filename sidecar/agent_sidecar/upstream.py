"""The sidecar's upstream HTTP/1.1 client: an `agent.transport.AsyncTransport` on asyncio
protocols and `httptools` (llhttp), with a pool of keep-alive connections per origin.

Every LLM call the sidecar relays goes through here, so the client does only what those
calls need: one write per request (head and body together; a large body a slice at a
time, see `_SLICE`), the answer parsed in C, and no per-request tasks, payload objects
or timer contexts. Profiled in the sidecar (py-spy, plain calls at 10 connections),
aiohttp's client took ~75 us of CPU a request besides the socket write, this one ~14 us.
Its semantics are `AiohttpTransport`'s, which stays for requests that go through a proxy
from the environment: timeouts per wait (connecting: min(t, 10 s), each read: t), at
most 1000 requests in flight (the rest wait their turn), HTTP errors returned as a
`Reply`, and every failure raised as an `agent.errors` type, here.

A connection goes back to the pool only after a whole answer that lets it stay open
(not `Connection: close`, not HTTP/1.0, not cut short), and stays there 60 s at most.
A request on a pooled connection that the server had closed (an end of stream before
any byte of the answer) is sent again once on a new connection. A reset is not: the
server may have acted on the request, and the router's retry policy decides that one
(aiohttp's client retries neither for a POST).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, cast

import httptools
import yarl
from multidict import CIMultiDict, CIMultiDictProxy

from agent.errors import AgentError, APIConnectionError, APITimeoutError, ConfigurationError
from agent.transport import Reply, WireRequest
from agent_sidecar import transport as aiohttp_transport
from agent_sidecar.transport import AiohttpTransport, _proxy, _ssl_context

_KEEPALIVE = 60.0  # seconds an idle connection stays pooled, as aiohttp's connector did
_IDLE_PER_ORIGIN = 1000  # idle connections kept per origin (the rest close)
_IN_FLIGHT = 1000  # requests on the wire at once, as aiohttp's connector allowed
_SLICE = 256 * 1024  # bodies larger than this are written a slice at a time, not copied
_HIGH_WATER = 256 * 1024  # a stream's unread bytes past which the socket is not read
_HEADERS_LIMIT = 64 * 1024  # an answer's header bytes (aiohttp's allows 8 KiB a line)
_CONNECT_LIMIT = 10.0


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a URL's requests go, parsed once per URL (the same few come back)."""

    origin: tuple[str, str, int]  # scheme, host, port: the pool's key
    path: str  # the request target: path and query, as sent
    host_header: str
    proxied: bool  # an environment proxy applies: the aiohttp client sends it


@functools.lru_cache(maxsize=1024)
def _target(url: str) -> _Target:
    try:
        parsed = yarl.URL(url)
        host = parsed.raw_host
        port = parsed.port
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"bad base URL: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not host or port is None:
        # The URL is not repeated: a query or user part may hold a credential.
        raise ConfigurationError(f"bad base URL: not an http(s) URL with a host ({parsed.scheme!r})")
    host_header = f"[{host}]" if ":" in host else host
    if not parsed.is_default_port():
        host_header += f":{port}"
    proxied = _proxy(parsed.scheme, host)[0] is not None
    return _Target((parsed.scheme, host, port), parsed.raw_path_qs, host_header, proxied)


def _head(request: WireRequest, target: _Target) -> bytes:
    """The request line and headers. No Accept-Encoding unless the agent set one: an
    upstream then answers uncompressed and nothing here spends time inflating."""
    headers = request.headers
    lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    if lines.count("\n") != len(headers) or lines.count("\r") != len(headers):
        # A line break inside a header would start a header (or a request) of its own.
        bad = [name for name, value in headers.items() if "\r" in name + value or "\n" in name + value]
        raise ConfigurationError(f"a header holds a line break: {', '.join(bad)}")
    body = request.body
    length = f"Content-Length: {len(body)}\r\n" if body or request.method != "GET" else ""
    agent = "" if "user-agent" in headers else "User-Agent: agent-router-sidecar\r\n"
    return (
        f"{request.method} {target.path} HTTP/1.1\r\nHost: {target.host_header}\r\n"
        f"{length}{agent}{lines}\r\n"
    ).encode()


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


class _Connection(asyncio.Protocol):
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
        self.error: AgentError | None = None
        self.status = 0
        self.headers: CIMultiDictProxy[str] = _NO_HEADERS
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
        self.give_back()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.headers_done and not self.complete and self.until_close and exc is None:
            self._finish()  # a body delimited by the close: this is its end
        elif not self.complete and self.error is None:
            detail = f": {exc}" if exc is not None else ""
            self.error = _Closed(f"the upstream closed the connection{detail}", exc is None)
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
        self.status = self.parser.get_status_code()
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
        for start in range(0, len(view), _SLICE):
            while self._writing_paused and self.error is None and not self.headers_done:
                await self.wait()
            if self.error is not None or self.headers_done:
                self.body_sent = False
                return
            self.transport.write(view[start : start + _SLICE])

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
                self._fail(APIConnectionError(f"malformed compressed body from the upstream: {exc}"))
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


_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class _Closed(APIConnectionError):
    """The upstream closed the connection; `clean`: with an end of stream, not a reset."""

    def __init__(self, message: str, clean: bool) -> None:
        super().__init__(message)
        self.clean = clean


class UpstreamTransport:
    """An `agent.transport.AsyncTransport` on a lean HTTP/1.1 client, for one event loop
    at a time (the sidecar's); `aclose()` closes its pooled connections."""

    def __init__(
        self, ssl_context: ssl.SSLContext | None = None, in_flight: int = _IN_FLIGHT
    ) -> None:
        # The roots httpx and aiohttp trust (certifi) unless told otherwise.
        self._ssl = ssl_context
        self._in_flight = in_flight  # past it, requests wait for one to finish
        self._busy = 0
        self._queue: deque[asyncio.Future[None]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._proxied: AiohttpTransport | None = None

    def __repr__(self) -> str:
        return "UpstreamTransport()"

    async def send_async(self, request: WireRequest, timeout: float) -> Reply:
        target = _target(request.url)
        if target.proxied:
            return await self._via_proxy().send_async(request, timeout)
        conn = await self._exchange(request, target, timeout, None)
        return await self._whole(conn)

    async def open_stream_async(
        self, request: WireRequest, timeout: float
    ) -> Stream | aiohttp_transport.Stream | Reply:
        target = _target(request.url)
        if target.proxied:
            return await self._via_proxy().open_stream_async(request, timeout)
        conn = await self._exchange(request, target, timeout, _HIGH_WATER)
        if conn.status >= 400:
            return await self._whole(conn)
        return Stream(self, conn)

    async def aclose(self) -> None:
        """Close the pooled connections (and the proxied requests' aiohttp session)."""
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._proxied is not None:
            await self._proxied.aclose()

    async def _exchange(
        self, request: WireRequest, target: _Target, timeout: float, limit: int | None
    ) -> _Connection:
        """Send the request and read up to the end of the answer's headers. The
        connection returned holds an in-flight place until it is released or lost."""
        head = _head(request, target)
        while self._busy >= self._in_flight:
            await self._turn()
        self._busy += 1
        try:
            conn = self._pooled(target.origin)
            while True:
                if conn is None:
                    conn = await self._connect(target, timeout)
                conn.begin(timeout, limit)
                try:
                    if len(request.body) > _SLICE:
                        await conn.send_large(head, request.body)
                    else:
                        conn.send(head, request.body)
                    while not conn.headers_done and conn.error is None:
                        await conn.wait()
                except BaseException:  # the caller gave up (cancelled): nobody reads the rest
                    conn.close()
                    raise
                error = conn.error
                if error is None:
                    conn.busy = True  # the place is the connection's now
                    return conn
                conn.close()
                stale = isinstance(error, _Closed) and error.clean and not conn.started
                if not (conn.reused and stale):
                    raise error
                conn = None  # the server had closed the pooled connection: once more, anew
        except BaseException:
            self._free()
            raise

    async def _turn(self) -> None:
        """Wait until a request in flight finishes."""
        turn = asyncio.get_running_loop().create_future()
        self._queue.append(turn)
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled():
                self._free(0)  # woken but leaving: the next in line gets the turn
            else:
                self._queue.remove(turn)
            raise

    def _free(self, places: int = 1) -> None:
        self._busy -= places
        while self._queue:
            turn = self._queue.popleft()
            if not turn.done():
                turn.set_result(None)
                return

    async def _whole(self, conn: _Connection) -> Reply:
        conn.unbounded()
        try:
            while not conn.complete and conn.error is None:
                await conn.wait()
        except BaseException:
            conn.close()
            raise
        if conn.error is not None:
            conn.close()
            raise conn.error
        reply = Reply(conn.status, conn.headers, conn.take())
        self.release(conn)
        return reply

    async def _connect(self, target: _Target, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        scheme, host, port = target.origin
        try:
            async with asyncio.timeout(min(timeout, _CONNECT_LIMIT)):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, target.origin, self._free),
                    host,
                    port,
                    ssl=(self._ssl or _ssl_context()) if scheme == "https" else None,
                )
        except TimeoutError as exc:
            raise APITimeoutError(f"no connection to {host}:{port} in time") from exc
        except OSError as exc:  # refused, unreachable, a name that does not resolve, TLS
            raise APIConnectionError(f"connection to {host}:{port} failed: {exc}") from exc
        return conn

    def _pooled(self, origin: tuple[str, str, int]) -> _Connection | None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a pool's connections belong to the loop that made them
            self._loop, self._idle, self._sweeper = loop, {}, None
        idle = self._idle.get(origin)
        now = loop.time()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < _KEEPALIVE:
                return conn
            conn.close()
        return None

    def release(self, conn: _Connection) -> None:
        """Back to the pool after a whole answer that lets the connection stay open."""
        conn.give_back()
        if not conn.reusable() or conn.loop is not self._loop:
            conn.close()
            return
        idle = self._idle.setdefault(conn.origin, [])
        if len(idle) >= _IDLE_PER_ORIGIN:
            conn.close()
            return
        conn.reused = True
        conn.idle_since = conn.loop.time()
        conn.idle = True
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = conn.loop.call_later(_KEEPALIVE, self._sweep)

    def _sweep(self) -> None:
        """Close the connections idle for the keep-alive time (and forget closed ones)."""
        assert self._loop is not None
        now = self._loop.time()
        for origin, idle in list(self._idle.items()):
            keep = [c for c in idle if not c.closed and now - c.idle_since < _KEEPALIVE]
            for conn in idle:
                if conn not in keep:
                    conn.close()
            if keep:
                self._idle[origin] = keep
            else:
                del self._idle[origin]
        oldest = min((c.idle_since for idle in self._idle.values() for c in idle), default=None)
        self._sweeper = (
            None if oldest is None else self._loop.call_at(oldest + _KEEPALIVE, self._sweep)
        )

    def _via_proxy(self) -> AiohttpTransport:
        if self._proxied is None:
            self._proxied = AiohttpTransport()
        return self._proxied


class Stream:
    """An open streaming answer: an `agent.transport.AsyncStreamResponse`. Its
    connection reads at most ~`_HIGH_WATER` bytes ahead of the caller."""

    __slots__ = ("_client", "_conn", "headers", "status")

    def __init__(self, client: UpstreamTransport, conn: _Connection) -> None:
        self._client = client
        self._conn = conn
        self.status = conn.status
        self.headers = conn.headers

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        while not conn.chunks:
            if conn.error is not None:
                raise conn.error
            if conn.complete:
                raise StopAsyncIteration
            try:
                await conn.wait()
            except BaseException:
                conn.close()
                raise
        return conn.take()

    async def aclose(self) -> None:
        conn = self._conn
        if conn.complete and not conn.chunks and conn.error is None:
            self._client.release(conn)  # read to its end: back to the pool
        else:
            conn.close()  # mid-stream: drop the connection, the upstream sees it at once
