"""The async transport seam (`agent.transport`): which transport a call uses, and what a
transport hands back reaching the codecs and the router unchanged."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fakes import Fail, Reply

from agent import Agent, AgentRouter
from agent.errors import RateLimitError, RoutingError
from agent.transport import (
    AsyncStreamResponse,
    HttpxTransport,
    WireRequest,
    default_transport,
    set_default_transport,
)
from agent.transport import Reply as WireReply


class Counting:
    """A transport of our own: the engine's httpx one, noting every request it moves."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.urls: list[str] = []
        self.inner = HttpxTransport()

    async def send(self, request: WireRequest, timeout: float) -> WireReply:
        self.urls.append(request.url)
        return await self.inner.send(request, timeout)

    async def open_stream(
        self, request: WireRequest, timeout: float
    ) -> AsyncStreamResponse | WireReply:
        self.urls.append(request.url)
        return await self.inner.open_stream(request, timeout)


@pytest.fixture
def process_default() -> Iterator[Counting]:
    counting = Counting("process")
    previous = set_default_transport(counting)
    try:
        yield counting
    finally:
        set_default_transport(previous)


def openai_agent(fake, **kw) -> Agent:  # type: ignore[no-untyped-def]
    return Agent(
        provider="openai", model="gpt-4o", base_url=fake.base_url, api_key="test-key", **kw
    )


async def test_the_agents_transport_wins_over_the_routers_and_the_process_default(
    fake_openai, process_default: Counting
) -> None:
    own, routers = Counting("agent"), Counting("router")
    with_own = openai_agent(fake_openai, transport=own, name="own")
    without = openai_agent(fake_openai, name="without")
    router = AgentRouter([with_own, without], strategy="round_robin", transport=routers)

    await router.run_async("x")  # with_own first
    await router.run_async("x")  # without first
    events = [e async for e in await router.stream_async("x")]  # with_own again
    await without.run_async("x")  # no router: the process default

    assert events[-1].type == "done"
    assert len(own.urls) == 2 and len(routers.urls) == 1 and len(process_default.urls) == 1
    assert all(u.endswith("/chat/completions") for u in own.urls + routers.urls)


async def test_racing_strategies_use_the_routers_transport(fake_factory) -> None:
    a, b = await fake_factory("openai"), await fake_factory("openai")
    routers = Counting("router")
    router = AgentRouter(
        [openai_agent(a, name="a"), openai_agent(b, name="b")],
        strategy="fastest",
        transport=routers,
    )
    response = await router.run_async("x")
    events = [e async for e in await router.stream_async("x")]
    assert response.text and events[-1].type == "done"
    assert len(routers.urls) == 4  # both racers, twice


async def test_an_http_error_from_the_transport_becomes_the_providers_typed_error(
    fake_factory,
) -> None:
    a, b = await fake_factory("openai"), await fake_factory("openai")
    a.script(Fail(429, retry_after=7))
    b.script(Fail(429, retry_after=3))
    router = AgentRouter(
        [openai_agent(a, name="a"), openai_agent(b, name="b")], retries=0, transport=Counting("r")
    )
    with pytest.raises(RoutingError) as caught:
        [e async for e in await router.stream_async("x")]
    errors = caught.value.errors
    assert all(isinstance(e, RateLimitError) for e in errors)
    assert [e.retry_after for e in errors] == [7, 3], "headers reached the codec"


async def test_a_stream_closed_early_closes_the_transports_connection(fake_openai) -> None:
    fake_openai.script(Reply(text="one two three four five", chunk_delay=0.05))
    agent = openai_agent(fake_openai, transport=Counting("agent"))
    events = await agent.stream_async("x")
    async for event in events:
        assert event.type == "text_delta"
        break
    await events.aclose()  # type: ignore[attr-defined]
    assert await fake_openai.wait_disconnect() == 1


def test_set_default_transport_returns_the_previous_one_and_none_restores_httpx() -> None:
    original = default_transport()
    mine = Counting("mine")
    assert set_default_transport(mine) is original
    assert default_transport() is mine
    assert set_default_transport(None) is mine
    assert isinstance(default_transport(), HttpxTransport)
    set_default_transport(original)
