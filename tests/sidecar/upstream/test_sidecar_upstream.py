"""The sidecar's HTTP/1.1 client against small servers on real sockets that answer in
exactly the bytes each test needs: pooling, the ways a body ends, stale connections,
flow control, TLS, compression, and the errors the engine expects."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import socket
import ssl
import struct
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from agent_sidecar.upstream import _HIGH_WATER, Stream, UpstreamTransport
from support.controlplane import CertificateAuthority

from agent import Agent
from agent.errors import APIConnectionError, APITimeoutError, ConfigurationError
from agent.transport import Reply, WireRequest
from agent.types import TextDelta


@dataclass
class Received:
    head: bytes
    body: bytes
    connection: int  # which accepted connection (1, 2, ...) it came on
    turn: int  # the how-many-th request on that connection
    reader: asyncio.StreamReader  # read to its end: until the client hangs up


# What a server does with a request: the bytes to answer, or None to close at once.
Answer = Callable[[Received, asyncio.StreamWriter], Awaitable[bytes | None]]


@dataclass
class Upstream:
    """A bare HTTP/1.1 server that reads whole requests and lets `answer` write."""

    answer: Answer
    ssl_context: ssl.SSLContext | None = None
    accepted: int = 0
    requests: list[Received] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # a connection closed
    port: int = 0

    async def start(self) -> asyncio.Server:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = server.sockets[0].getsockname()[1]
        return server

    def url(self, path: str = "/v1/chat", host: str = "127.0.0.1") -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        connection, turn = self.accepted, 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                turn += 1
                body = await reader.readexactly(length)
                received = Received(head, body, connection, turn, reader)
                self.requests.append(received)
                answer = await self.answer(received, writer)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.ended.set()


def ok(body: bytes = b'{"ok": true}', *extra: str) -> bytes:
    headers = "".join(f"{h}\r\n" for h in extra)
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


def chunked(*parts: bytes) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body


def post(url: str, body: bytes = b'{"q": 1}', **headers: str) -> WireRequest:
    return WireRequest("POST", url, {"content-type": "application/json", **headers}, body, False)


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Upstream]]]:
    servers: list[asyncio.Server] = []

    async def start(answer: Answer, ssl_context: ssl.SSLContext | None = None) -> Upstream:
        upstream = Upstream(answer, ssl_context)
        servers.append(await upstream.start())
        return upstream

    yield start
    for server in servers:
        server.close()


@pytest_asyncio.fixture
async def client() -> AsyncIterator[UpstreamTransport]:
    transport = UpstreamTransport()
    yield transport
    await transport.aclose()


def always(answer: bytes) -> Answer:
    async def reply(_: Received, __: asyncio.StreamWriter) -> bytes:
        return answer

    return reply


async def test_a_pooled_connection_carries_the_next_requests(serve, client) -> None:
    """Three calls one after another, each answered with a length: one connection."""
    upstream = await serve(always(ok(b"hello", "X-RateLimit-Remaining: 7")))
    for _ in range(3):
        reply = await client.send_async(post(upstream.url()), 5.0)
        assert (reply.status, reply.body) == (200, b"hello")
        assert reply.headers["x-ratelimit-remaining"] == "7"  # any case finds it
    assert upstream.accepted == 1
    assert [r.turn for r in upstream.requests] == [1, 2, 3]
    head = upstream.requests[0].head.decode().lower()
    assert "host: 127.0.0.1:" in head and "content-length: 8" in head
    assert "accept-encoding" not in head  # none unless the agent sets one


@pytest.mark.parametrize(
    ("answer", "how"),
    [
        (ok(b"bye", "Connection: close"), "Connection: close"),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nbye", "HTTP/1.0"),
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nbye", "a body ended by the close"),
    ],
)
async def test_an_answer_that_ends_the_connection_is_not_pooled(serve, client, answer, how) -> None:
    """The server says the connection ends with the answer (or ends the body by closing
    it): each call gets the whole body, on a connection of its own."""

    async def then_close(_: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(answer)
        await writer.drain()
        return None

    upstream = await serve(then_close)
    for _ in range(2):
        reply = await client.send_async(post(upstream.url()), 5.0)
        assert (reply.status, reply.body) == (200, b"bye"), how
    assert upstream.accepted == 2, how


async def test_a_chunked_answer_is_joined_and_its_connection_kept(serve, client) -> None:
    upstream = await serve(always(chunked(b'{"a"', b": 1", b"}")))
    for _ in range(2):
        assert (await client.send_async(post(upstream.url()), 5.0)).body == b'{"a": 1}'
    assert upstream.accepted == 1


async def test_an_interim_answer_is_passed_over_for_the_real_one(serve, client) -> None:
    """A 103 Early Hints before the answer: the caller gets the 200 and its headers only."""
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    upstream = await serve(always(early + ok(b"real", "X-Answer: final")))
    for _ in range(2):
        reply = await client.send_async(post(upstream.url()), 5.0)
        assert (reply.status, reply.body, reply.headers["x-answer"]) == (200, b"real", "final")
        assert "link" not in reply.headers
    assert upstream.accepted == 1


async def test_a_pooled_connection_the_server_closed_is_retried_once(serve, client) -> None:
    """The server answers the first call, then closes that connection (an end of stream,
    no answer) when the second call arrives on it: the call goes again on a new
    connection and the caller sees only its answer."""

    async def close_second(received: Received, _: asyncio.StreamWriter) -> bytes | None:
        return None if (received.connection, received.turn) == (1, 2) else ok(b"fine")

    upstream = await serve(close_second)
    assert (await client.send_async(post(upstream.url()), 5.0)).body == b"fine"
    assert (await client.send_async(post(upstream.url()), 5.0)).body == b"fine"
    assert upstream.accepted == 2
    assert [(r.connection, r.turn) for r in upstream.requests] == [(1, 1), (1, 2), (2, 1)]


async def test_a_connection_closed_while_idle_is_not_used(serve, client) -> None:
    """The server closes the connection after answering (its idle timeout, say): the
    pool notices and the next call opens a new one, no error and no retry."""

    async def answer_then_hang_up(_: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(ok(b"once"))
        await writer.drain()
        return None

    upstream = await serve(answer_then_hang_up)
    await client.send_async(post(upstream.url()), 5.0)
    await asyncio.wait_for(upstream.ended.wait(), 5.0)
    await asyncio.sleep(0.05)  # the end of stream reaches the client's loop
    assert (await client.send_async(post(upstream.url()), 5.0)).body == b"once"
    assert [(r.connection, r.turn) for r in upstream.requests] == [(1, 1), (2, 1)]


async def test_a_reset_after_the_request_is_not_sent_again(serve, client) -> None:
    """A reset may come after the server acted on the call: an error, not a second call."""

    async def reset_second(received: Received, writer: asyncio.StreamWriter) -> bytes | None:
        if received.turn == 2:
            linger_zero = struct.pack("ii", 1, 0)  # close with a reset, not an end of stream
            writer.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, linger_zero
            )
            writer.transport.abort()
            return None
        return ok()

    upstream = await serve(reset_second)
    await client.send_async(post(upstream.url()), 5.0)
    with pytest.raises(APIConnectionError, match="closed the connection"):
        await client.send_async(post(upstream.url()), 5.0)
    assert len(upstream.requests) == 2


async def test_an_answer_that_is_not_http_is_a_clear_error(serve, client) -> None:
    upstream = await serve(always(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"))
    with pytest.raises(APIConnectionError, match="malformed response"):
        await client.send_async(post(upstream.url()), 5.0)


async def test_endless_headers_are_a_clear_error(serve, client) -> None:
    """An upstream that sends header after header: refused past 64 KiB, not held."""

    async def endless(_: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(10_000):
            writer.write(b"X-Filler-%d: %s\r\n" % (i, b"f" * 100))
            await writer.drain()
        return None

    upstream = await serve(endless)
    with pytest.raises(APIConnectionError, match="headers longer than"):
        await client.send_async(post(upstream.url()), 5.0)


async def test_no_answer_in_time_is_a_timeout_and_the_connection_goes(serve, client) -> None:
    async def never(received: Received, _: asyncio.StreamWriter) -> None:
        await received.reader.read()
        return None

    upstream = await serve(never)
    with pytest.raises(APITimeoutError):
        await client.send_async(post(upstream.url()), 0.2)
    await asyncio.wait_for(upstream.ended.wait(), 5.0)  # the client hung up


async def test_refused_and_bad_urls_are_the_engines_errors(client) -> None:
    with pytest.raises(ConfigurationError):
        await client.send_async(post("ftp://example.com/x"), 1.0)
    with pytest.raises(ConfigurationError):
        await client.send_async(post("http:///nohost"), 1.0)
    with pytest.raises(APIConnectionError, match="failed"):
        await client.send_async(post("http://127.0.0.1:1/x"), 1.0)  # nothing listens on 1


async def test_credentials_in_the_url_are_basic_authorization_unless_the_agent_sends_its_own(
    serve, client
) -> None:
    """What was tried: a base URL with a user and a percent-encoded password, as a
    gateway behind Basic authentication is configured; then the same URL with a request
    that carries its own Authorization. The first goes as Basic with the decoded pair;
    the second keeps the agent's; neither request line nor Host holds the credentials."""
    upstream = await serve(always(ok()))
    url = upstream.url().replace("http://", "http://gw-user:s%40cret@")
    await client.send_async(post(url), 5.0)
    await client.send_async(post(url, authorization="Bearer sk-agent"), 5.0)
    first, second = (r.head.decode() for r in upstream.requests)
    expected = base64.b64encode(b"gw-user:s@cret").decode()
    assert f"Authorization: Basic {expected}\r\n" in first
    assert "authorization: Bearer sk-agent\r\n" in second and "Basic" not in second
    for head in (first, second):
        request_line, host = head.split("\r\n")[:2]
        assert "cret" not in request_line + host and "gw-user" not in request_line + host


async def test_a_connection_not_accepted_in_time_is_a_timeout(client) -> None:
    """What was tried: a server whose accept queue is full (listen backlog 0, one
    connection waiting), so the next connection's handshake is never answered. The
    call fails as a timeout naming the address (the call's timeout bounds the connect)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    waiting = []
    for _ in range(3):  # fill the queue
        sock = socket.socket()
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(("127.0.0.1", port))
        waiting.append(sock)
    try:
        with pytest.raises(APITimeoutError, match=f"127.0.0.1:{port}"):
            await client.send_async(post(f"http://127.0.0.1:{port}/v1/chat"), 0.5)
    finally:
        for sock in (*waiting, server):
            sock.close()


async def test_a_header_with_a_line_break_is_refused_before_sending(serve, client) -> None:
    upstream = await serve(always(ok()))
    with pytest.raises(ConfigurationError, match="x-smuggle") as refused:
        await client.send_async(post(upstream.url(), **{"x-smuggle": "a\r\nX-Evil: 1"}), 1.0)
    assert "Evil" not in str(refused.value)  # the value (maybe a secret) is not repeated
    assert upstream.requests == []


async def test_a_compressed_answer_reaches_the_engine_decoded(serve, client) -> None:
    """Not asked to, an upstream compresses anyway (gzip, then zlib deflate): decoded."""
    payload = b'{"text": "' + b"x" * 5000 + b'"}'

    upstream = await serve(always(ok(gzip.compress(payload), "Content-Encoding: gzip")))
    assert (await client.send_async(post(upstream.url()), 5.0)).body == payload
    upstream = await serve(always(ok(zlib.compress(payload), "Content-Encoding: deflate")))
    assert (await client.send_async(post(upstream.url()), 5.0)).body == payload


async def test_a_body_that_is_not_what_its_encoding_says_is_a_clear_error(serve, client) -> None:
    upstream = await serve(always(ok(b"plain, not gzip", "Content-Encoding: gzip")))
    with pytest.raises(APIConnectionError, match="malformed compressed body"):
        await client.send_async(post(upstream.url()), 5.0)


async def test_a_large_body_arrives_whole(serve, client) -> None:
    """8 MB, written in slices of the caller's buffer: the server reads every byte."""
    body = bytes(range(256)) * (8 * 4096)
    upstream = await serve(always(ok()))
    assert (await client.send_async(post(upstream.url(), body), 10.0)).status == 200
    assert upstream.requests[0].body == body
    assert (await client.send_async(post(upstream.url()), 5.0)).status == 200
    assert upstream.accepted == 1  # and the connection stays usable


def slow_sink(listener: socket.socket) -> int:
    """Accept one connection, wait a little (the client's socket buffer fills), then read
    one request's body into a fixed buffer (allocating nothing per byte) and answer."""
    conn, _ = listener.accept()
    with conn:
        time.sleep(0.3)
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        left, buffer = length - len(rest), bytearray(1 << 20)
        while left > 0:
            got = conn.recv_into(buffer)
            assert got, "the client hung up midway"
            left -= got
        conn.sendall(ok())
        return length


async def test_a_30_mb_body_is_sent_without_a_copy_of_it(client) -> None:
    """While a slow server takes a 30 MB body, the client's (and the loop's) Python
    allocations stay far below the body's size: it is written from the caller's buffer
    a slice at a time, never joined with the head nor queued whole."""
    body = b"x" * (30 * 1024 * 1024)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        taken = asyncio.get_running_loop().run_in_executor(None, slow_sink, listener)
        tracemalloc.start()
        try:
            reply = await client.send_async(post(f"http://127.0.0.1:{port}/v1", body), 30.0)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert reply.status == 200 and await taken == len(body)
    assert peak < 8 * 1024 * 1024, f"{peak / 2**20:.1f} MB allocated while sending"


async def test_past_its_in_flight_limit_a_request_waits_for_one_to_finish(serve) -> None:
    """Three calls at once through a client allowed two: the third reaches the server
    only once one of the first two has its answer, and all three succeed."""
    hold = asyncio.Event()

    async def held(_: Received, __: asyncio.StreamWriter) -> bytes:
        await hold.wait()
        return ok()

    upstream = await serve(held)
    client = UpstreamTransport(in_flight=2)
    try:
        calls = [
            asyncio.ensure_future(client.send_async(post(upstream.url()), 5.0)) for _ in range(3)
        ]
        for _ in range(100):
            if len(upstream.requests) == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # time enough for a third to arrive, were it let through
        assert len(upstream.requests) == 2
        hold.set()
        assert [r.status for r in await asyncio.gather(*calls)] == [200, 200, 200]
        assert len(upstream.requests) == 3
        # A stream dropped midway gives its place back too.
        stream = await client.open_stream_async(streaming(post(upstream.url())), 5.0)
        assert isinstance(stream, Stream)
        await stream.aclose()
        await asyncio.gather(*[client.send_async(post(upstream.url()), 5.0) for _ in range(4)])
        assert client._busy == 0
    finally:
        await client.aclose()


def streaming(request: WireRequest) -> WireRequest:
    return WireRequest(request.method, request.url, request.headers, request.body, True)


async def test_a_slow_reader_of_a_large_stream_holds_a_bounded_buffer(serve, client) -> None:
    """The server writes 32 MB of events as fast as it can while the caller reads one
    and waits: the client stops reading past its limit (the server's writes back up),
    then hands over every byte in order once the caller reads on."""
    event = b"data: " + b"y" * 4090 + b"\n\n"  # 4 KiB
    count = 8192

    async def flood(_: Received, writer: asyncio.StreamWriter) -> bytes:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(count):
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
        return b"0\r\n\r\n"

    upstream = await serve(flood)
    stream = await client.open_stream_async(streaming(post(upstream.url())), 5.0)
    assert isinstance(stream, Stream) and stream.status == 200
    first = await stream.__anext__()
    await asyncio.sleep(0.5)  # the server writes on; the client should not read on
    conn = stream._conn
    assert conn.buffered <= _HIGH_WATER + 256 * 1024  # the limit and one socket read
    total = len(first) + sum([len(chunk) async for chunk in stream])
    assert total == len(event) * count
    await stream.aclose()
    assert (await client.send_async(post(upstream.url()), 5.0)).status == 200
    assert upstream.accepted == 1  # read to its end, the connection went back


async def test_a_stream_closed_midway_hangs_up_and_one_read_to_the_end_is_kept(
    serve, client
) -> None:
    async def events(received: Received, writer: asyncio.StreamWriter) -> bytes | None:
        if received.connection == 1 and received.turn == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await writer.drain()
            await received.reader.read()
            return None
        return chunked(b"one", b"two")

    upstream = await serve(events)
    stream = await client.open_stream_async(streaming(post(upstream.url())), 5.0)
    assert isinstance(stream, Stream)
    assert await stream.__anext__() == b"first"
    await stream.aclose()
    await asyncio.wait_for(upstream.ended.wait(), 5.0)  # the upstream saw the caller go

    stream = await client.open_stream_async(streaming(post(upstream.url())), 5.0)
    assert isinstance(stream, Stream)
    assert b"".join([chunk async for chunk in stream]) == b"onetwo"
    await stream.aclose()
    await client.send_async(post(upstream.url()), 5.0)
    assert upstream.accepted == 2  # the whole stream's connection served the next call


async def test_an_answer_whole_with_its_headers_gives_its_connection_back_once(
    serve, client
) -> None:
    """What was tried: an agent on this client streams answers that arrive whole with
    their headers (the engine reads them without a read step and frees the connection
    without a close step), three one after another, then two at once. The one
    connection carries the three; the two at once need two, each with its own answer
    (a connection given back twice would be handed to both)."""
    words = iter(["one", "two", "three", "four", "five"])

    async def answer(received: Received, _: asyncio.StreamWriter) -> bytes:
        word = next(words)
        if received.connection > 1 or received.turn > 3:
            await asyncio.sleep(0.2)  # both of the last two are in flight together
        chunk = {"choices": [{"index": 0, "delta": {"content": word}}]}
        done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        body = b"".join(b"data: %s\n\n" % json.dumps(c).encode() for c in (chunk, done))
        return ok(body + b"data: [DONE]\n\n", "Content-Type: text/event-stream")

    upstream = await serve(answer)
    agent = Agent(
        "openai", "gpt-4o-mini", base_url=upstream.url("/v1"), api_key="k", transport=client
    )

    async def text() -> str:
        return "".join(
            [e.text async for e in await agent.stream_async("hi") if isinstance(e, TextDelta)]
        )

    assert [await text() for _ in range(3)] == ["one", "two", "three"]
    assert upstream.accepted == 1
    both = await asyncio.wait_for(asyncio.gather(text(), text()), 10.0)
    assert sorted(both) == ["five", "four"]
    assert upstream.accepted == 2


async def test_an_error_status_on_a_stream_is_a_whole_reply(serve, client) -> None:
    body = b'{"error": {"message": "slow down"}}'
    upstream = await serve(
        always(
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
    )
    reply = await client.open_stream_async(streaming(post(upstream.url())), 5.0)
    assert isinstance(reply, Reply)
    assert (reply.status, reply.headers["Retry-After"], reply.body) == (429, "2", body)


async def test_a_large_error_body_on_a_stream_is_read_whole(serve, client) -> None:
    """An error answer bigger than a stream's read-ahead limit still arrives whole."""
    body = b'{"error": "' + b"e" * (3 * _HIGH_WATER) + b'"}'
    upstream = await serve(
        always(b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    )
    reply = await client.open_stream_async(streaming(post(upstream.url())), 5.0)
    assert isinstance(reply, Reply) and (reply.status, reply.body) == (500, body)


async def test_each_call_has_its_own_timeout_on_a_shared_connection(serve, client) -> None:
    """A call with a long timeout, then one with a short one on the same connection
    that gets no answer: the second times out after its own timeout, not the first's."""

    async def answer_once(received: Received, _: asyncio.StreamWriter) -> bytes | None:
        if received.turn == 1:
            return ok()
        await received.reader.read()
        return None

    upstream = await serve(answer_once)
    await client.send_async(post(upstream.url()), 600.0)
    with pytest.raises(APITimeoutError):
        await asyncio.wait_for(client.send_async(post(upstream.url()), 0.2), 30.0)
    assert upstream.accepted == 1


async def test_a_stream_that_stalls_times_out_per_read(serve, client) -> None:
    async def stall(received: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n")
        await writer.drain()
        await received.reader.read()
        return None

    upstream = await serve(stall)
    stream = await client.open_stream_async(streaming(post(upstream.url())), 0.3)
    assert isinstance(stream, Stream)
    assert await stream.__anext__() == b"one"
    with pytest.raises(APITimeoutError):
        await stream.__anext__()
    await stream.aclose()


def tls_server(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext, list[str | None]]:
    """A server context with a certificate for localhost from a throw-away CA, a client
    context trusting that CA, and the names the clients asked for (SNI)."""
    ca = CertificateAuthority("upstream test CA")
    pair = ca.issue("localhost", hosts=["localhost"], server=True)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(pair.cert_pem)
    key.write_bytes(pair.key_pem)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    names: list[str | None] = []
    server.sni_callback = lambda _sock, name, _ctx: names.append(name)  # type: ignore[assignment,misc,func-returns-value]
    client = ssl.create_default_context(cadata=ca.cert_pem.decode())
    return server, client, names


async def test_tls_with_the_servers_name_and_a_trusted_ca(serve, tmp_path) -> None:
    server_context, client_context, names = tls_server(tmp_path)
    upstream = await serve(always(ok(b"secure")), server_context)
    trusting = UpstreamTransport(client_context)
    try:
        for _ in range(2):
            reply = await trusting.send_async(post(upstream.url(host="localhost")), 5.0)
            assert reply.body == b"secure"
    finally:
        await trusting.aclose()
    assert names == ["localhost"]  # one handshake, naming the host
    assert upstream.accepted == 1


async def test_tls_refuses_a_certificate_from_an_unknown_ca(serve, client, tmp_path) -> None:
    """The default roots (certifi) do not include the test CA: a clear connection error."""
    server_context, _, _ = tls_server(tmp_path)
    upstream = await serve(always(ok()), server_context)
    with pytest.raises(APIConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        await client.send_async(post(upstream.url(host="localhost")), 5.0)


async def test_a_proxied_origin_goes_through_the_aiohttp_client(serve, client, monkeypatch) -> None:
    """HTTP_PROXY names a proxy: the request reaches it in proxy form (the whole URL)."""
    proxy = await serve(always(ok(b"via proxy")))
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    url = f"http://upstream-{proxy.port}.test:8080/v1/chat"  # a name no earlier lookup cached
    reply = await client.send_async(post(url), 5.0)
    assert reply.body == b"via proxy"
    assert proxy.requests[0].head.startswith(f"POST {url} ".encode())
