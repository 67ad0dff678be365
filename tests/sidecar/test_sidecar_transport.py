"""The sidecar's transports (its own HTTP/1.1 client, the default, and aiohttp's), through
the engine's public seam: the same typed errors and stream behaviour as the engine's
httpx transport, and no global change."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from agent_sidecar.transport import AiohttpTransport
from agent_sidecar.upstream import UpstreamTransport
from fakes import CutStream, Fail, Hang, Reply, Reset
from sidecar_support import agent_spec, document

from agent import Agent
from agent.errors import APIConnectionError, APITimeoutError, ConfigurationError, RateLimitError
from agent.transport import default_transport

SidecarTransport = UpstreamTransport | AiohttpTransport


@pytest_asyncio.fixture(params=[UpstreamTransport, AiohttpTransport])
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[SidecarTransport]:
    t: SidecarTransport = request.param()
    try:
        yield t
    finally:
        await t.aclose()


def agent(fake, transport: SidecarTransport, **kw) -> Agent:  # type: ignore[no-untyped-def]
    return Agent(
        provider=fake.kind,
        model="claude-haiku" if fake.kind == "anthropic" else "gpt-4o",
        base_url=fake.base_url,
        api_key="test-key",
        transport=transport,
        **kw,
    )


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
async def test_plain_and_streamed_calls(fake_factory, transport: SidecarTransport, kind) -> None:
    fake = await fake_factory(kind)
    fake.script(Reply(text="one two three"), Reply(text="one two three"))
    a = agent(fake, transport)
    assert (await a.run_async("x")).text == "one two three"
    events = [e async for e in await a.stream_async("x")]
    assert "".join(e.text for e in events if e.type == "text_delta") == "one two three"
    assert events[-1].response.text == "one two three"


async def test_failures_are_the_engines_typed_errors(fake_openai, transport) -> None:
    fake_openai.script(Fail(429, retry_after=2), Reset(), Hang(), CutStream(after=1))
    a = agent(fake_openai, transport, timeout=0.3)
    with pytest.raises(RateLimitError) as limited:
        await a.run_async("x")
    assert limited.value.retry_after == 2
    with pytest.raises(APIConnectionError):
        await a.run_async("x")
    with pytest.raises(APITimeoutError):
        await a.run_async("x")
    with pytest.raises(APIConnectionError):
        [e async for e in await a.stream_async("x")]


async def test_a_bad_base_url_is_a_configuration_error(transport) -> None:
    a = Agent("openai", "gpt-4o", base_url="ftp://nowhere", api_key="k", transport=transport)
    with pytest.raises(ConfigurationError):
        await a.run_async("x")


async def test_a_stream_closed_early_disconnects_the_upstream(fake_openai, transport) -> None:
    fake_openai.script(Reply(text="one two three four five", chunk_delay=0.05))
    events = await agent(fake_openai, transport).stream_async("x")
    async for _ in events:
        break
    await events.aclose()  # type: ignore[attr-defined]
    assert await fake_openai.wait_disconnect() == 1


async def test_a_running_sidecar_leaves_the_engines_default_alone(sidecar) -> None:
    assert default_transport() is None
    route = sidecar.store.loaded.routes["default"]
    assert route.router.transport is sidecar.transport
    assert isinstance(sidecar.transport, UpstreamTransport)


async def test_the_engines_own_transport_serves_when_chosen(sidecar_factory, fake_openai) -> None:
    """What was tried: `--transport httpx`, whose client is loaded only when chosen; a
    plain and a streamed call go through it to the fake provider."""
    config = document([agent_spec(fake_openai, "gpt")], [{"name": "default", "agents": ["gpt"]}])
    sidecar = await sidecar_factory(config, transport="httpx")
    assert type(sidecar.transport).__name__ == "HttpxTransport"
    async with httpx.AsyncClient(base_url=sidecar.app_url, timeout=10) as client:
        body = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
        plain = await client.post("/v1/chat/completions", json=body)
        streamed = await client.post("/v1/chat/completions", json={**body, "stream": True})
    assert plain.status_code == 200, plain.text
    assert plain.json()["choices"][0]["message"]["content"]
    assert streamed.status_code == 200 and "data: [DONE]" in streamed.text
    assert len(fake_openai.requests) == 2
