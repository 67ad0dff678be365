"""The app port's limits, each tried over a real socket: large bodies (scanned member by
member, charged to a budget), browsers and foreign Host names, idle connections, and
the connection cap. Each test says what it sent and checks nothing was lost."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import orjson
import pytest
from agent_sidecar import Sidecar
from agent_sidecar.bodies import LARGE
from agent_sidecar.members import NotJSON, members
from conftest import SidecarFactory
from fakes import FakeProvider
from hypothesis import given
from hypothesis import strategies as st
from sidecar_support import first_line

CHAT = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}
ANTHROPIC = {"anthropic-version": "2023-06-01"}

# ---- the member scanner ------------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), JSON, max_size=6))
def test_the_scanner_finds_every_member_of_any_object(obj: dict[str, Any]) -> None:
    raw = orjson.dumps(obj)
    found = {orjson.loads(key): orjson.loads(raw[s:e]) for key, s, e in members(raw)}
    assert found == obj


@given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_the_scanner_refuses_what_is_not_an_object_without_crashing(raw: bytes) -> None:
    try:
        spans = members(raw)
    except NotJSON:
        return
    assert raw.strip().startswith(b"{") and raw.strip().endswith(b"}")
    assert all(0 < s < e <= len(raw) for _, s, e in spans)


@pytest.mark.parametrize(
    "raw",
    [b'{"a":[1}', b'{"a" 1}', b'{"a":1}x', b'{"a":"x}', b'{"a":[\\]}', b"{,}", b"[]", b""],
)
def test_the_scanner_refuses_broken_structure(raw: bytes) -> None:
    with pytest.raises(NotJSON):
        members(raw)


# ---- large bodies --------------------------------------------------------------------------


def large_body(extra_items: int = 120_000, **fields: Any) -> dict[str, Any]:
    """Over LARGE: an OpenAI call with a big field the sidecar does not read."""
    return {**CHAT, "x_trace": [f"item-{i:08d}" for i in range(extra_items)], **fields}


async def test_a_large_unread_field_reaches_a_same_format_upstream_unchanged(
    sidecar: Sidecar, fake_openai: FakeProvider
) -> None:
    body = large_body()
    raw = orjson.dumps(body)
    assert len(raw) > LARGE
    async with httpx.AsyncClient(base_url=sidecar.app_url, timeout=30) as client:
        answer = await client.post("/v1/chat/completions", content=raw)
    assert answer.status_code == 200, answer.text
    sent = fake_openai.last_request.json
    assert sent["x_trace"] == body["x_trace"]  # every item, in order: nothing lost
    assert sent["messages"] == [{"role": "user", "content": "hi"}]


async def test_a_large_body_with_broken_json_is_a_400_in_either_format(sidecar: Sidecar) -> None:
    raw = orjson.dumps(large_body())
    broken = raw[:-1] + b",}"  # a trailing comma after 1 MB of good JSON
    cut = raw[: len(raw) // 2]
    async with httpx.AsyncClient(base_url=sidecar.app_url, timeout=30) as client:
        for body in (broken, cut):
            openai_style = await client.post("/v1/chat/completions", content=body)
            anthropic_style = await client.post("/v1/messages", content=body, headers=ANTHROPIC)
            assert openai_style.status_code == 400, openai_style.text
            assert "not valid JSON" in openai_style.json()["error"]["message"]
            assert anthropic_style.status_code == 400
            assert anthropic_style.json()["type"] == "error"


async def test_a_declared_length_over_the_limit_is_refused_before_reading(
    sidecar_factory: SidecarFactory, two_provider_config: dict[str, object]
) -> None:
    sidecar = await sidecar_factory(two_provider_config, max_body_bytes=4096)
    # Headers announcing 1 GB, then nothing: the answer cannot wait for the body.
    head = await first_line(
        sidecar.app_port,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Length: 1000000000\r\n\r\n",
        timeout=5,
    )
    assert head.startswith(b"HTTP/1.1 413")


async def test_large_bodies_past_the_budget_get_a_retryable_503_and_small_ones_pass(
    sidecar_factory: SidecarFactory, two_provider_config: dict[str, object]
) -> None:
    sidecar = await sidecar_factory(two_provider_config, body_budget_bytes=LARGE + 1000)
    raw = orjson.dumps(large_body())
    # A first large body is announced and half sent: it holds its share of the budget.
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.app_port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
        + f"Content-Length: {len(raw)}\r\n\r\n".encode()
        + raw[: len(raw) // 2]
    )
    await writer.drain()
    for _ in range(300):  # until the sidecar has read its headers and charged the budget
        if (
            f"agent_sidecar_body_bytes_in_flight {float(len(raw))}"
            in sidecar.metrics.render().decode()
        ):
            break
        await asyncio.sleep(0.01)
    async with httpx.AsyncClient(base_url=sidecar.app_url, timeout=30) as client:
        second = await client.post("/v1/chat/completions", content=raw)
        anthropic_style = await client.post("/v1/messages", content=raw, headers=ANTHROPIC)
        small = await client.post("/v1/chat/completions", json=CHAT)
        assert second.status_code == 503 and second.headers["retry-after"] == "1"
        assert "memory budget" in second.json()["error"]["message"]
        assert anthropic_style.status_code == 529
        assert anthropic_style.json()["error"]["type"] == "overloaded_error"
        assert small.status_code == 200  # small bodies never wait on the budget
        # The first body finishes and is answered; then the budget is free again.
        writer.write(raw[len(raw) // 2 :])
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
        assert head.startswith(b"HTTP/1.1 200"), head
        writer.close()
        again = await client.post("/v1/chat/completions", content=raw)
        assert again.status_code == 200, again.text
    metrics = sidecar.metrics.render().decode()
    assert "agent_sidecar_bodies_refused_total 2.0" in metrics


# ---- browsers and foreign names --------------------------------------------------------------


async def test_requests_a_web_page_could_send_are_refused(
    sidecar: Sidecar, fake_openai: FakeProvider
) -> None:
    refused_headers = [
        {"Origin": "https://evil.example", "Content-Type": "text/plain"},  # CSRF, no preflight
        {"Origin": "http://localhost:3000"},  # a local web app is still a browser
        {"Host": "evil.example"},  # DNS rebinding: the page's name, pointed at 127.0.0.1
        {"Host": "attacker.test:4000"},
    ]
    async with httpx.AsyncClient(base_url=sidecar.app_url) as client:
        for headers in refused_headers:
            answer = await client.post(
                "/v1/chat/completions", content=orjson.dumps(CHAT), headers=headers
            )
            assert answer.status_code == 403, headers
            assert answer.json()["error"]["type"] == "permission_error"
            models = await client.get("/v1/models", headers={**headers, **ANTHROPIC})
            assert models.status_code == 403 and models.json()["type"] == "error"
        for host in ("localhost", "localhost:4000", "127.0.0.1:4000", "[::1]:4000", "127.0.0.2"):
            answer = await client.post("/v1/chat/completions", json=CHAT, headers={"Host": host})
            assert answer.status_code == 200, host
    assert len(fake_openai.requests) == 5  # the refused ones never reached a provider


# ---- connections ---------------------------------------------------------------------------


async def test_idle_and_slowloris_connections_are_closed(
    sidecar_factory: SidecarFactory, two_provider_config: dict[str, object]
) -> None:
    sidecar = await sidecar_factory(two_provider_config, idle_timeout=0.5)
    idle = await asyncio.open_connection("127.0.0.1", sidecar.app_port)
    slow = await asyncio.open_connection("127.0.0.1", sidecar.app_port)
    slow[1].write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n")
    lines = 0
    with contextlib.suppress(ConnectionError):
        while lines < 100 and not slow[0].at_eof():  # a header line every 0.1 s, for 10 s
            await asyncio.sleep(0.1)
            slow[1].write(b"X-Slow: 1\r\n")
            await slow[1].drain()
            lines += 1
    assert lines < 100  # closed long before the headers would have ended
    for reader, writer in (idle, slow):
        try:
            closed = await asyncio.wait_for(reader.read(), timeout=5) == b""
        except ConnectionError:  # reset: the sidecar closed it while we still wrote
            closed = True
        assert closed
        writer.close()
    async with httpx.AsyncClient(base_url=sidecar.app_url) as client:
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_past_the_connection_cap_the_oldest_idle_connections_close(
    sidecar_factory: SidecarFactory, two_provider_config: dict[str, object]
) -> None:
    sidecar = await sidecar_factory(two_provider_config, max_connections=5)
    idle = [await asyncio.open_connection("127.0.0.1", sidecar.app_port) for _ in range(8)]
    # The three oldest were closed to make room; the newest five are still open.
    closed = [await asyncio.wait_for(r.read(), timeout=5) == b"" for r, _ in idle[:3]]
    assert closed == [True, True, True]
    async with httpx.AsyncClient(base_url=sidecar.app_url) as client:
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    for _, writer in idle:
        writer.close()
