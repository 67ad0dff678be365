"""The app port's HTTP/1.1 server: an asyncio protocol on httptools (llhttp), as the
sidecar's client (`agent_sidecar.http1`) is, serving the handlers of `agent_sidecar.app`.

Why its own: every routed call crosses the app port, and aiohttp's server half (its
parser glue, request and response objects, router, middlewares and writer) and the event
loop under it were about 31% of a plain call's CPU in the sidecar's profile.
This one does what the app port needs and nothing else: a request is a `Request` (what
the handlers read, see `agent_sidecar.exchange`), a whole answer is aiohttp's
`web.Response` as the handlers build it (written here with its length), a streamed one
a `Stream` (chunked). The admin and health ports stay on aiohttp.

What clients see is what aiohttp's server did:
* keep-alive, pipelined requests answered in order, `Connection: close`, HTTP/1.0,
  `Expect: 100-continue`, bodies with a length or chunked;
* the limits of aiohttp's parser (an 8190-byte request line and header, 128 headers),
  a malformed request a 400 and the connection closed (a malformed body: a 400 in the
  caller's format);
* a body answered before it was read (a 413) is read and dropped for up to `LINGER`
  seconds, then the connection closes: a client that writes its whole body before it
  reads (as the SDKs do) reads the answer, not a reset (aiohttp's server stalls it);
* `idle_timeout`: a connection with no complete request this long after it opened or
  after its last answer is closed (idle keep-alive and slowloris headers alike);
* `max_connections`: past it, the oldest idle connections close (see `connections`);
* a client that goes away cancels its handler at once (the upstream call closes), and
  writing to a gone client raises ConnectionError;
* `stop()` drains: no new connections, idle ones closed, requests and streams in flight
  finish up to the drain timeout, then what is left is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import cast

import httptools
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from agent.wire.inbound import invalid
from agent_sidecar.connections import make_room
from agent_sidecar.exchange import Request, Stream, head, text
from agent_sidecar.http1 import NoCallbacks

log = logging.getLogger("agent_sidecar.http1server")

Handler = Callable[[Request], Awaitable[web.StreamResponse | Stream]]
Route = Callable[[str, str], tuple[Handler, Mapping[str, str]]]  # method, path -> handler

MAX_LINE = 8190  # bytes of the request line, and of a header's name and value (aiohttp's)
MAX_HEADERS = 128  # headers of a request (aiohttp's)
LINGER = 10.0  # seconds to read and drop the rest of a body answered without it


DETACHED = httptools.HttpRequestParser(NoCallbacks())  # never fed: no bytes come after the end


class Connection(asyncio.Protocol):
    """One client connection: parses requests as they arrive and answers them in order,
    one handler at a time (pipelined requests wait their turn)."""

    def __init__(self, server: AppServer) -> None:
        self._server = server
        self._loop = server.loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._target: list[bytes] = []
        self._headers: list[tuple[str, str]] = []
        self._parsing: Request | None = None  # headers complete, body still arriving
        self._waiting: deque[Request | str] = deque()  # whose turn has not come (or a 400)
        self._handling: asyncio.Task[None] | None = None
        self._current: Request | None = None  # the request being answered
        self._closing = False  # answer what is running, then close
        self.answered = 0  # requests answered: a connection that answered none goes first
        self._idle_since = self._loop.time()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._reading_paused = False
        self._writable: asyncio.Future[None] | None = None  # set while the socket is full
        self._lost = False

    # ---- the socket ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm_idle()
        self._server.opened(self)

    def data_received(self, data: bytes) -> None:
        if self._closing and self._parsing is None:
            return  # a request after the last one this connection answers: not read
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An upgrade (or CONNECT) is answered as any request, then the connection ends.
            self._closing = True
            self.pause_reading()
        except httptools.HttpParserError as exc:
            if self._closing and self._parsing is None:
                return  # bytes after a request that closes the connection: not read
            why = exc.__context__ if isinstance(exc, httptools.HttpParserCallbackError) else None
            self._refuse(str(why if why is not None else exc))

    def eof_received(self) -> bool:
        if self._parsing is not None:
            self._parsing.content.fail(ConnectionResetError("the client closed mid-body"))
        return False  # close, as aiohttp's server does (which cancels the handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._server.closed(self)
        # Let the parser go (see NoCallbacks; measured before: RSS grew about 150 KB per
        # 32 connections closed).
        self._parser = DETACHED
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._parsing is not None:
            self._parsing.content.fail(ConnectionResetError("the client went away"))
        self._waiting.clear()
        if self._handling is not None:
            self._handling.cancel()  # the handler stops, and closes its upstream call
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self._lost:
            self._reading_paused = False
            self.transport.resume_reading()

    def send(self, data: bytes) -> None:
        if self._lost or self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the client went away")
        self.transport.write(data)
        if self._current is not None:
            self._current.sent += len(data)

    async def drain(self) -> None:
        if self._writable is not None:
            await self._writable
        if self._lost:
            raise ConnectionResetError("the client went away")

    # ---- the parser's callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._target.clear()
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._target.append(url)
        if sum(map(len, self._target)) > MAX_LINE:
            raise ValueError(f"the request line is longer than {MAX_LINE} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > MAX_LINE:
            raise ValueError(f"a header is longer than {MAX_LINE} bytes")
        if len(self._headers) == MAX_HEADERS:
            raise ValueError(f"more than {MAX_HEADERS} headers")
        self._headers.append((text(name), text(value)))

    def on_headers_complete(self) -> None:
        parser = self._parser
        request = Request(
            self,
            parser.get_method().decode("ascii"),
            text(b"".join(self._target)),
            parser.get_http_version(),
            CIMultiDictProxy(CIMultiDict(self._headers)),
            parser.should_keep_alive() and not self._closing,
        )
        self._parsing = request
        self._idle_since = -1.0  # a whole request: no longer idle
        if not request.keep_alive:
            self._closing = True  # the last request this connection answers
        if self._handling is None:
            self._begin(request)
        else:
            self._waiting.append(request)

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing.content.feed(body)

    def on_message_complete(self) -> None:
        request = self._parsing
        if request is not None:
            request.content.end()
            self._parsing = None
            if request.content.dropping:
                self.close()  # answered already: that body was all this connection waited for
                return
        if len(self._waiting) > 8:
            self.pause_reading()  # a client pipelining far ahead waits for its answers

    # ---- answering ------------------------------------------------------------------------

    def _begin(self, request: Request) -> None:
        self._current = request
        self._handling = self._loop.create_task(self._answer(request))

    async def _answer(self, request: Request) -> None:
        stream: Stream | None = None
        try:
            if request.expect is not None and request.version == "1.1":
                if request.expect.lower() != "100-continue":
                    self._whole(request, web.Response(status=417, text="Unknown Expect"))
                    return
                self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            handler, request.match_info = self._server.route(request.method, request.path)
            reply = await handler(request)
            if isinstance(reply, Stream):
                stream = reply
                await reply.write_eof()  # a handler that left it open (after a write error)
            elif isinstance(reply, web.Response):
                self._whole(request, reply)
            else:
                raise TypeError(f"a handler answered {type(reply).__name__}")
        except ConnectionError:
            self._closing = True
        except Exception:
            log.exception("internal error answering %s %s", request.method, request.path)
            if stream is None and not self._lost:
                with contextlib.suppress(ConnectionError):
                    self._whole(request, web.Response(status=500, text="internal error"))
            self._closing = True
        finally:
            self._server.logged(self, request)
            self._next(request)  # cancelled too: a stream cut by the drain ends its connection

    def _whole(self, request: Request, response: web.Response) -> None:
        body = response.body or b""
        if not isinstance(body, bytes | bytearray):  # the handlers answer with bytes or text
            raise TypeError(f"a body of {type(body).__name__}")
        headers = response.headers
        if "Content-Type" not in headers and body:
            headers["Content-Type"] = "application/octet-stream"
        if not request.content.is_eof():
            request.keep_alive = False  # a body left unread: the connection cannot go on
        start = head(request, response.status, response.reason,
                     headers, f"Content-Length: {len(body)}\r\n")
        self.send(start + body if request.method != "HEAD" else start)

    def _next(self, request: Request) -> None:
        """After an answer: the next request's turn, or idle, or the end."""
        self._handling = self._current = None
        self.answered += 1
        if self._lost:
            return
        if self._waiting and isinstance(self._waiting[0], str):
            self._send_400(self._waiting[0])  # the malformed request after this one
            return
        if not request.keep_alive or self._closing:
            if self._parsing is request:
                self._linger(request)
            else:
                self.close()
            return
        if self._waiting:
            following = self._waiting.popleft()
            assert not isinstance(following, str)
            self._begin(following)
            if len(self._waiting) <= 8 and self._parsing is None:
                self.resume_reading()
            return
        self.resume_reading()
        if self._parsing is None:
            self._idle_since = self._loop.time()
            self._arm_idle()

    def _linger(self, request: Request) -> None:
        """Answered before its body was read (a 413): read the rest and drop it, for a
        while, so that a client that writes its whole body before it reads (as the SDKs
        do) reads the answer rather than a reset; then close."""
        request.content.drop()
        self.resume_reading()
        self._loop.call_later(LINGER, self.close)

    def _refuse(self, why: str) -> None:
        """A malformed request: a 400 (after the answers due before it), then the end."""
        self._closing = True
        self.pause_reading()
        if self._parsing is not None:  # a malformed body: its reader gets a 400 to answer
            self._parsing.content.fail(invalid(f"the body is malformed: {why}"))
            self._parsing = None
            return
        if self._handling is None:
            self._send_400(why)
        else:
            self._waiting.append(why)

    def _send_400(self, why: str) -> None:
        log.info("refused a malformed request: %s", why)
        body = f"400, message:\n  Bad request: {why}".encode()
        with contextlib.suppress(ConnectionError):
            self.send(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(body), body)
            )
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # ---- idle connections -----------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Waiting for a request, or still receiving its headers."""
        return self._handling is None and self._parsing is None and not self._waiting

    def _arm_idle(self) -> None:
        # One timer that re-arms itself when it fires early, rather than one per answer.
        if self._idle_timer is None:
            when = self._idle_since + self._server.idle_timeout
            self._idle_timer = self._loop.call_at(when, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self._idle_since < 0 or self._lost:
            return  # a request came: `_next` re-arms after its answer
        if self._loop.time() >= self._idle_since + self._server.idle_timeout:
            self.close()
        else:
            self._arm_idle()

    def drain_start(self) -> None:
        """The server is stopping: close now if idle, else after the answer in progress."""
        self._closing = True
        if self._current is not None:
            self._current.keep_alive = False  # its answer says so, if not yet under way
        if self.idle:
            self.close()

    @property
    def handling(self) -> asyncio.Task[None] | None:
        return self._handling

    def abort(self) -> None:
        if self._handling is not None:
            self._handling.cancel()
        if self.transport is not None:
            self.transport.abort()


class AppServer:
    """The app port: connections answered by `route`'s handlers."""

    def __init__(self, route: Route, *, idle_timeout: float, max_connections: int,
                 access_log: logging.Logger | None) -> None:
        self.route = route
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.access_log = access_log
        self.loop = asyncio.get_running_loop()
        self.connections: dict[Connection, None] = {}  # in order of arrival
        self._listener: asyncio.Server | None = None
        self._all_closed: asyncio.Event | None = None

    async def start(self, host: str, port: int) -> None:
        self._listener = await self.loop.create_server(
            lambda: Connection(self), host or None, port, reuse_address=True
        )

    @property
    def port(self) -> int:
        assert self._listener is not None, "not started"
        return int(self._listener.sockets[0].getsockname()[1])

    def opened(self, connection: Connection) -> None:
        self.connections[connection] = None
        make_room(self.connections, self.max_connections, lambda c: c.idle,
                  lambda c: c.answered > 0, Connection.close)

    def closed(self, connection: Connection) -> None:
        self.connections.pop(connection, None)
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()

    def logged(self, connection: Connection, request: Request) -> None:
        """The access log line, in aiohttp's default format."""
        if self.access_log is None:
            return
        transport = connection.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        remote = peer[0] if peer else "-"
        when = time.strftime("[%d/%b/%Y:%H:%M:%S +0000]", time.gmtime())
        status = request.status or 499
        self.access_log.info(
            '%s %s "%s %s HTTP/%s" %d %d "%s" "%s"', remote, when, request.method,
            request.target, request.version, status, request.sent,
            request.headers.get("Referer", "-"), request.headers.get("User-Agent", "-"),
        )

    async def stop(self, timeout: float) -> None:
        """Drain: stop accepting, close idle connections, let requests and streams in
        flight finish up to `timeout` seconds, then cancel what is left."""
        if self._listener is not None:
            self._listener.close()
        self._all_closed = asyncio.Event()
        if not self.connections:
            self._all_closed.set()
        for connection in list(self.connections):
            connection.drain_start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._all_closed.wait()
        running = [c.handling for c in self.connections if c.handling is not None]
        for connection in list(self.connections):
            connection.abort()
        if running:  # the cancelled handlers unwind (closing their upstream calls)
            await asyncio.wait(running, timeout=1.0)
        if self._listener is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._listener.wait_closed()
            self._listener = None
