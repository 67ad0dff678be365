"""The sidecar's upstream HTTP/1.1 client: an `agent.transport.AsyncTransport` on asyncio
protocols and `httptools` (llhttp), with a pool of keep-alive connections per origin.

Every LLM call the sidecar relays goes through here, so the client does only what those
calls need: one write per request (head and body together; a large body a slice at a
time), the answer parsed in C (`agent_sidecar.http1`), and no per-request tasks,
payload objects or timer contexts. Profiled in the sidecar (py-spy, plain calls at 10 connections),
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

Credentials in a base URL (`https://user:secret@gateway/v1`) are sent as Basic
authorization, as aiohttp's and httpx's clients send them, unless the agent sends an
`Authorization` header of its own.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ssl
from collections import deque
from dataclasses import dataclass, field

import yarl

from agent.errors import APIConnectionError, APITimeoutError, ConfigurationError
from agent.transport import Reply, WireRequest
from agent_sidecar import transport as aiohttp_transport
from agent_sidecar.http1 import SLICE, Closed, Connection, request_head
from agent_sidecar.transport import AiohttpTransport, _proxy, _ssl_context

_KEEPALIVE = 60.0  # seconds an idle connection stays pooled, as aiohttp's connector did
_IDLE_PER_ORIGIN = 1000  # idle connections kept per origin (the rest close)
_IN_FLIGHT = 1000  # requests on the wire at once, as aiohttp's connector allowed
_HIGH_WATER = 256 * 1024  # a stream's unread bytes past which the socket is not read
_CONNECT_LIMIT = 10.0


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a URL's requests go, parsed once per URL (the same few come back)."""

    origin: tuple[str, str, int]  # scheme, host, port: the pool's key
    path: str  # the request target: path and query, as sent
    host_header: str
    proxied: bool  # an environment proxy applies: the aiohttp client sends it
    authorization: str | None = field(default=None, repr=False)  # from the URL's user part


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
        raise ConfigurationError(
            f"bad base URL: not an http(s) URL with a host ({parsed.scheme!r})"
        )
    host_header = f"[{host}]" if ":" in host else host
    if not parsed.is_default_port():
        host_header += f":{port}"
    proxied = _proxy(parsed.scheme, host)[0] is not None
    authorization = None
    if parsed.user is not None or parsed.password is not None:
        pair = f"{parsed.user or ''}:{parsed.password or ''}".encode()
        authorization = "Basic " + base64.b64encode(pair).decode()
    return _Target(
        (parsed.scheme, host, port), parsed.raw_path_qs, host_header, proxied, authorization
    )


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
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
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
    ) -> Connection:
        """Send the request and read up to the end of the answer's headers. The
        connection returned holds an in-flight place until it is released or lost."""
        head = request_head(request, target.path, target.host_header, target.authorization)
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
                    if len(request.body) > SLICE:
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
                stale = isinstance(error, Closed) and error.clean and not conn.started
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

    async def _whole(self, conn: Connection) -> Reply:
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

    async def _connect(self, target: _Target, timeout: float) -> Connection:
        loop = asyncio.get_running_loop()
        scheme, host, port = target.origin
        try:
            async with asyncio.timeout(min(timeout, _CONNECT_LIMIT)):
                _, conn = await loop.create_connection(
                    lambda: Connection(loop, target.origin, self._free),
                    host,
                    port,
                    ssl=(self._ssl or _ssl_context()) if scheme == "https" else None,
                )
        except TimeoutError as exc:
            raise APITimeoutError(f"no connection to {host}:{port} in time") from exc
        except OSError as exc:  # refused, unreachable, a name that does not resolve, TLS
            raise APIConnectionError(f"connection to {host}:{port} failed: {exc}") from exc
        return conn

    def _pooled(self, origin: tuple[str, str, int]) -> Connection | None:
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

    def release(self, conn: Connection) -> None:
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

    def __init__(self, client: UpstreamTransport, conn: Connection) -> None:
        self._client = client
        self._conn = conn
        self.status = conn.status
        self.headers = conn.headers

    def __aiter__(self) -> Stream:
        return self

    def ready(self) -> bytes:
        """What has arrived and is not taken yet, without waiting (b"" when nothing)."""
        conn = self._conn
        return conn.take() if conn.chunks else b""

    @property
    def ended(self) -> bool:
        """Every byte of the answer was taken: the next read would say so, and closing
        gives the connection back to the pool."""
        conn = self._conn
        return conn.complete and not conn.chunks and conn.error is None

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
        if self.ended:
            self._client.release(self._conn)  # read to its end: back to the pool
        else:
            self._conn.close()  # mid-stream: drop the connection, the upstream sees it at once
