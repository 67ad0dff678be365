"""The app port's HTTP/1.1 as clients use it, byte for byte over raw sockets, on both of
its servers (`--server aiohttp` and the sidecar's own `http1`): keep-alive, pipelining,
`Connection: close`, HTTP/1.0, `Expect: 100-continue`, chunked bodies both ways, the
limits of the request head, malformed requests, and a drain with a stream in flight.
Idle and slowloris connections, the connection cap, the body limits and a client that
leaves are tried in test_sidecar_limits.py and test_sidecar_robustness.py (on either
server with AGENT_TEST_SIDECAR_SERVER)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import re
from typing import Any

import pytest
from agent_sidecar import Sidecar, http1, http1server
from conftest import SidecarFactory
from fakes import FakeProvider, Reply
from sidecar_support import agent_spec, document

CHAT = json.dumps({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}).encode()
STREAM = json.dumps(
    {"model": "gpt", "messages": [{"role": "user", "content": "hi"}], "stream": True}
).encode()

pytestmark = pytest.mark.parametrize("server", ["aiohttp", "http1"])


@pytest.fixture
async def app(
    server: str, sidecar_factory: SidecarFactory, two_provider_config: dict[str, Any]
) -> Sidecar:
    return await sidecar_factory(two_provider_config, server=server)


def post(path: str, body: bytes, *extra: str, version: str = "1.1") -> bytes:
    head = "".join(f"{line}\r\n" for line in extra)
    return (
        f"POST {path} HTTP/{version}\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{head}\r\n"
    ).encode() + body


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


async def read_answer(reader: asyncio.StreamReader, head_only: bool = False) -> Answer:
    """One answer: its status, headers (lower-cased names) and body, by its length, its
    chunks, or the connection's end."""
    status_line = await asyncio.wait_for(reader.readline(), timeout=20)
    assert status_line.startswith(b"HTTP/1."), status_line
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if head_only or status == 100:
        return Answer(status, headers, b"")
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while size := int((await reader.readline()).strip(), 16):
            parts.append(await reader.readexactly(size))
            await reader.readline()
        await reader.readline()
        body = b"".join(parts)
    else:
        body = await reader.read()
    return Answer(status, headers, body)


async def closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), timeout=10) == b""
    except ConnectionError:
        return True


@contextlib.asynccontextmanager
async def connection(port: int) -> Any:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()


async def test_keep_alive_answers_requests_one_after_another(app: Sidecar) -> None:
    # Three calls on one connection, each sent after the last answer.
    async with connection(app.app_port) as (reader, writer):
        for _ in range(3):
            writer.write(post("/v1/chat/completions", CHAT))
            answer = await read_answer(reader)
            assert answer.status == 200 and answer.json()["object"] == "chat.completion"
            assert "date" in answer.headers
            assert answer.headers.get("connection", "keep-alive") != "close"


async def test_pipelined_requests_are_answered_in_order(app: Sidecar) -> None:
    # A call, a listing, a model and a missing path, all in one write before any answer.
    async with connection(app.app_port) as (reader, writer):
        writer.write(
            post("/v1/chat/completions", CHAT)
            + b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n"
            + b"GET /v1/models/claude HTTP/1.1\r\nHost: localhost\r\n\r\n"
            + b"GET /nowhere HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        answers = [await read_answer(reader) for _ in range(4)]
    assert [a.status for a in answers] == [200, 200, 200, 404]
    assert answers[0].json()["object"] == "chat.completion"
    assert [m["id"] for m in answers[1].json()["data"]] == ["default", "gpt", "claude"]
    assert answers[2].json()["id"] == "claude"
    assert "no such endpoint: GET /nowhere" in answers[3].json()["error"]["message"]


async def test_a_target_in_absolute_form_is_served_by_its_path(app: Sidecar) -> None:
    # As a client configured with a proxy would send it: the scheme and host before the path.
    async with connection(app.app_port) as (reader, writer):
        writer.write(post(f"http://127.0.0.1:{app.app_port}/v1/chat/completions", CHAT))
        answer = await read_answer(reader)
    assert answer.status == 200 and answer.json()["object"] == "chat.completion"


async def test_connection_close_is_honoured(app: Sidecar) -> None:
    # The client asks to close after its call: the answer says so and the socket ends.
    async with connection(app.app_port) as (reader, writer):
        writer.write(post("/v1/chat/completions", CHAT, "Connection: close"))
        answer = await read_answer(reader)
        assert answer.status == 200 and answer.headers["connection"] == "close"
        assert await closed(reader)


async def test_http_1_0_is_answered_and_closed_unless_kept_alive(app: Sidecar) -> None:
    # HTTP/1.0 closes after each answer by default, and keeps the connection when asked.
    async with connection(app.app_port) as (reader, writer):
        writer.write(post("/v1/chat/completions", CHAT, version="1.0"))
        answer = await read_answer(reader)
        assert answer.status == 200 and answer.json()["object"] == "chat.completion"
        assert await closed(reader)
    async with connection(app.app_port) as (reader, writer):
        for _ in range(2):
            writer.write(
                post("/v1/chat/completions", CHAT, "Connection: keep-alive", version="1.0")
            )
            answer = await read_answer(reader)
            assert answer.status == 200 and answer.headers["connection"].lower() == "keep-alive"


async def test_a_stream_over_http_1_0_ends_with_the_connection(
    app: Sidecar, fake_openai: FakeProvider
) -> None:
    # No chunks in HTTP/1.0: the events come as they are and the connection's end ends them.
    fake_openai.script(Reply(text="one two three", chunk_delay=0.05))
    async with connection(app.app_port) as (reader, writer):
        writer.write(post("/v1/chat/completions", STREAM, version="1.0"))
        answer = await read_answer(reader)
    assert answer.status == 200 and "transfer-encoding" not in answer.headers
    assert answer.body.rstrip().endswith(b"data: [DONE]")


async def test_expect_100_continue_gets_the_go_ahead_before_the_body(app: Sidecar) -> None:
    # The head alone, with Expect: 100-continue; the body only after "100 Continue".
    async with connection(app.app_port) as (reader, writer):
        head = post("/v1/chat/completions", b"", "Expect: 100-continue")
        head = head.replace(b"Content-Length: 0", b"Content-Length: %d" % len(CHAT))
        writer.write(head)
        go_ahead = await read_answer(reader)
        assert go_ahead.status == 100
        writer.write(CHAT)
        answer = await read_answer(reader)
        assert answer.status == 200 and answer.json()["object"] == "chat.completion"


async def test_an_unknown_expectation_is_refused(app: Sidecar) -> None:
    # A 417; then the connection either ends or answers the next call (never hangs).
    async with connection(app.app_port) as (reader, writer):
        writer.write(post("/v1/chat/completions", CHAT, "Expect: something-else"))
        assert (await read_answer(reader)).status == 417
        writer.write(post("/v1/chat/completions", CHAT))
        status_line = await asyncio.wait_for(reader.readline(), timeout=20)
        assert status_line == b"" or status_line.startswith(b"HTTP/1.1 200"), status_line


async def test_a_chunked_request_body_is_read_whole(
    app: Sidecar, fake_openai: FakeProvider
) -> None:
    # The body in three chunks of a chunked request, the last sent after a pause.
    async with connection(app.app_port) as (reader, writer):
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        parts = [CHAT[:10], CHAT[10:30], CHAT[30:]]
        for part in parts[:2]:
            writer.write(b"%x\r\n%b\r\n" % (len(part), part))
        await asyncio.sleep(0.1)
        writer.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(parts[2]), parts[2]))
        answer = await read_answer(reader)
    assert answer.status == 200 and answer.json()["object"] == "chat.completion"
    assert fake_openai.requests[-1].json["messages"] == [{"role": "user", "content": "hi"}]


async def test_a_streamed_answer_is_chunked_and_the_connection_goes_on(
    app: Sidecar, fake_openai: FakeProvider
) -> None:
    # A stream whose events arrive apart is sent in chunks; the next call follows on the
    # same connection.
    fake_openai.script(Reply(text="one two three", chunk_delay=0.05))
    async with connection(app.app_port) as (reader, writer):
        writer.write(post("/v1/chat/completions", STREAM))
        answer = await read_answer(reader)
        assert answer.status == 200 and answer.headers["transfer-encoding"] == "chunked"
        assert answer.headers["content-type"].startswith("text/event-stream")
        assert answer.body.rstrip().endswith(b"data: [DONE]")
        writer.write(post("/v1/chat/completions", CHAT))
        assert (await read_answer(reader)).status == 200


async def test_a_client_that_reads_late_gets_the_whole_stream(
    app: Sidecar, fake_openai: FakeProvider
) -> None:
    # A stream of about 12 MB that the client leaves unread for a second (the sockets'
    # buffers fill and the sidecar waits for them), then reads whole.
    words = [f"w{i}" for i in range(40_000)]
    fake_openai.script(Reply(text=" ".join(words)))
    async with connection(app.app_port) as (reader, writer):
        writer.write(post("/v1/chat/completions", STREAM))
        await asyncio.sleep(1.0)
        answer = await read_answer(reader)
    assert answer.status == 200 and answer.body.rstrip().endswith(b"data: [DONE]")
    frames = [
        json.loads(line[6:]) for line in answer.body.split(b"\n\n") if line.startswith(b"data: {")
    ]
    text = "".join(f["choices"][0]["delta"].get("content") or "" for f in frames if f["choices"])
    assert text == " ".join(words)
    assert len(answer.body) > 10_000_000  # more than a socket buffers for an idle reader


async def test_a_client_that_sends_a_refused_body_whole_still_reads_the_413(
    server: str, sidecar_factory: SidecarFactory, two_provider_config: dict[str, Any]
) -> None:
    # 8 MB declared and sent at once, over a 4 KiB limit, as an SDK writes a body before it
    # reads: the sidecar answers at once and drops the rest as it comes, so the client
    # reads the 413 rather than a reset.
    if server == "aiohttp":
        pytest.skip("aiohttp's server stops reading such a body: the client's write stalls")
    app = await sidecar_factory(two_provider_config, server=server, max_body_bytes=4096)
    big = b'{"model": "gpt", "x": "' + b"x" * (8 * 1024 * 1024) + b'"}'
    async with connection(app.app_port) as (reader, writer):
        writer.write(post("/v1/chat/completions", big))
        await asyncio.wait_for(writer.drain(), timeout=20)
        answer = await read_answer(reader)
        assert answer.status == 413 and "larger than 4096 bytes" in answer.body.decode()
        assert await closed(reader)


async def test_head_is_answered_without_a_body(app: Sidecar) -> None:
    async with connection(app.app_port) as (reader, writer):
        writer.write(b"HEAD /v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = await read_answer(reader, head_only=True)
        assert answer.status == 200 and int(answer.headers["content-length"]) > 0
        writer.write(b"GET /v1/models/gpt HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert (await read_answer(reader)).json()["id"] == "gpt"  # no stray body between


@pytest.mark.parametrize(
    "head",
    [
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n",  # a long line
        b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: localhost\r\n"  # more than aiohttp's 128 headers
        + b"".join(b"X-H%d: c\r\n" % i for i in range(130))
        + b"\r\n",
        b"GARBAGE\r\n\r\n",  # not HTTP
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # a bad chunk size
    ],
    ids=["line", "header", "headers", "garbage", "two-lengths", "bad-chunk"],
)
async def test_a_malformed_or_oversized_head_is_a_4xx_and_the_end(
    app: Sidecar, head: bytes
) -> None:
    # The connection answers no more after it; the port keeps serving others.
    async with connection(app.app_port) as (reader, writer):
        writer.write(head)
        answer = await read_answer(reader)
        assert 400 <= answer.status < 500, answer.body
        assert await closed(reader)
    async with connection(app.app_port) as (reader, writer):
        writer.write(post("/v1/chat/completions", CHAT))
        assert (await read_answer(reader)).status == 200


async def test_a_malformed_chunked_body_is_a_400_in_the_callers_format(
    server: str, app: Sidecar
) -> None:
    # A chat call whose second chunk has a size that is not hex: the call is refused as
    # a bad request (aiohttp's server: its own 400 text; the sidecar's: the caller's
    # format), and the connection ends.
    async with connection(app.app_port) as (reader, writer):
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"%x\r\n%b\r\nzz\r\n" % (len(CHAT[:10]), CHAT[:10])
        )
        answer = await read_answer(reader)
        assert answer.status == 400, answer.body
        if server == "http1":
            assert answer.json()["error"]["type"] == "invalid_request_error"
        assert await closed(reader)


async def test_a_request_after_a_malformed_one_is_not_answered(app: Sidecar) -> None:
    # A good call, garbage, then a good call, in one write: the 400 is the last answer
    # (aiohttp's server refuses the whole write; the sidecar's answers the call before it).
    async with connection(app.app_port) as (reader, writer):
        writer.write(
            post("/v1/chat/completions", CHAT)
            + b"GARBAGE\r\n\r\n"
            + post("/v1/chat/completions", CHAT)
        )
        answer = await read_answer(reader)
        if answer.status == 200:
            answer = await read_answer(reader)
        assert answer.status == 400
        assert await closed(reader)


async def test_closed_connections_are_freed_at_once_not_left_to_the_collector(
    server: str, app: Sidecar
) -> None:
    # Twenty clients each make a call, a stream and close; then the sidecar closes its
    # upstream connections. With the collector off, none of those connections may be
    # left: one in a reference cycle waits for a full collection, which the sidecar's gc
    # thresholds make rare, and its memory grew with every connection a client closed.
    def left() -> list[object]:
        kinds = (http1.Connection, http1server.Connection)
        return [o for o in gc.get_objects() if isinstance(o, kinds)]

    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            async with connection(app.app_port) as (reader, writer):
                writer.write(post("/v1/chat/completions", CHAT))
                assert (await read_answer(reader)).status == 200
                writer.write(post("/v1/chat/completions", STREAM))
                assert b"[DONE]" in (await read_answer(reader)).body
        await app.store.transport.aclose()  # type: ignore[union-attr]
        for _ in range(100):
            if not left():
                break
            await asyncio.sleep(0.02)
        assert left() == []
    finally:
        gc.enable()


async def test_the_access_log_has_a_line_a_request(
    server: str,
    sidecar_factory: SidecarFactory,
    two_provider_config: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # With --access-log, a call and a missing path: a line each, aiohttp's format.
    app = await sidecar_factory(two_provider_config, server=server, access_log=True)
    with caplog.at_level(logging.INFO, logger="agent_sidecar.access"):
        async with connection(app.app_port) as (reader, writer):
            writer.write(post("/v1/chat/completions", CHAT, "User-Agent: raw-test"))
            await read_answer(reader)
            writer.write(b"GET /nowhere?x=1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            await read_answer(reader)
        for _ in range(100):  # aiohttp logs just after its answer is written
            lines = [r.getMessage() for r in caplog.records if r.name == "agent_sidecar.access"]
            if len(lines) >= 2:
                break
            await asyncio.sleep(0.05)
    assert len(lines) == 2, lines
    assert re.fullmatch(
        r"127\.0\.0\.1 \[\d+/\w+/\d+:\d+:\d+:\d+ [+-]\d{4}\] "
        r'"POST /v1/chat/completions HTTP/1\.1" 200 \d+ "-" "raw-test"',
        lines[0],
    ), lines[0]
    assert '"GET /nowhere?x=1 HTTP/1.1" 404 ' in lines[1]


async def test_drain_finishes_the_stream_in_flight_and_refuses_new_connections(
    server: str,
    sidecar_factory: SidecarFactory,
    two_provider_config: dict[str, Any],
    fake_openai: FakeProvider,
) -> None:
    # A stream of about a second is running and another connection is idle when the
    # drain starts: the idle one is closed, the stream ends whole, the port stops listening.
    app = await sidecar_factory(two_provider_config, server=server)
    port = app.app_port
    fake_openai.script(Reply(text=" ".join(["word"] * 10), chunk_delay=0.1))
    async with connection(port) as (reader, writer), connection(port) as (idle, _):
        writer.write(post("/v1/chat/completions", STREAM))
        first = await read_answer(reader, head_only=True)
        assert first.status == 200
        stopping = asyncio.create_task(app.stop())
        assert await closed(idle)
        rest = await asyncio.wait_for(reader.read(), timeout=20)
        assert rest.endswith(b"\r\n0\r\n\r\n") and b"data: [DONE]" in rest
        await stopping
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_a_route_named_outside_ascii_is_served_and_named_in_ascii(
    server: str, sidecar_factory: SidecarFactory, fake_openai: FakeProvider
) -> None:
    """What was tried: a route whose name (what apps send as `model`) is not ASCII,
    plain and streamed. It is served, and `x-agent-route` names it in escaped ASCII
    (a header is one ASCII line), the same on both servers."""
    config = document([agent_spec(fake_openai, "gpt")], [{"name": "café", "agents": ["gpt"]}])
    app = await sidecar_factory(config, server=server)
    for body in (CHAT, STREAM):
        sent = body.replace(b'"gpt"', '"café"'.encode())
        async with connection(app.app_port) as (reader, writer):
            writer.write(post("/v1/chat/completions", sent))
            answer = await read_answer(reader)
        assert answer.status == 200, answer.body
        assert answer.headers["x-agent-route"] == "caf\\xe9"


async def test_a_forwarded_header_that_is_not_utf_8_goes_upstream_as_it_came(
    app: Sidecar, fake_anthropic: FakeProvider
) -> None:
    """What was tried: `anthropic-beta` (a header the sidecar forwards upstream) holding
    bytes that are not UTF-8, then a good request on the same connection. Both are
    served; the upstream gets the header's bytes as the caller sent them (they were an
    internal error, a 500, before)."""
    body = json.dumps(
        {"model": "claude", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    bad = post("/v1/messages", body, "anthropic-version: 2023-06-01").replace(
        b"\r\n\r\n", b"\r\nanthropic-beta: caf\xe9-\xff\r\n\r\n", 1
    )
    async with connection(app.app_port) as (reader, writer):
        writer.write(bad)
        first = await read_answer(reader)
        writer.write(post("/v1/messages", body, "anthropic-version: 2023-06-01"))
        second = await read_answer(reader)
    assert first.status == 200, first.body
    assert second.status == 200, second.body
    sent = fake_anthropic.requests[0].headers["anthropic-beta"]
    assert sent.encode("utf-8", "surrogateescape") == b"caf\xe9-\xff"
