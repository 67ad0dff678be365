"""Transports (`agent.transport`): which transport a call uses, sync and async alike,
who owns and closes the connection pools, and what a transport hands back reaching the
codecs and the router unchanged."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fakes import Fail, Reply

from agent import Agent, AgentRouter
from agent.errors import ConfigurationError, RateLimitError, RoutingError
from agent.transport import (
    AsyncStreamResponse,
    HttpxTransport,
    StreamResponse,
    WireRequest,
    default_transport,
    set_default_transport,
)
from agent.transport import Reply as WireReply


class Counting(HttpxTransport):
    """A transport of our own: the engine's httpx one, noting every request it moves."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.urls: list[str] = []
        self.clients: set[int] = set()  # the async connection pools requests went through

    def __repr__(self) -> str:
        return f"Counting({self.name})"

    def send(self, request: WireRequest, timeout: float) -> WireReply:
        self.urls.append(request.url)
        return super().send(request, timeout)

    def open_stream(self, request: WireRequest, timeout: float) -> StreamResponse | WireReply:
        self.urls.append(request.url)
        return super().open_stream(request, timeout)

    async def send_async(self, request: WireRequest, timeout: float) -> WireReply:
        self.urls.append(request.url)
        self.clients.add(id(self._async_client()))
        return await super().send_async(request, timeout)

    async def open_stream_async(
        self, request: WireRequest, timeout: float
    ) -> AsyncStreamResponse | WireReply:
        self.urls.append(request.url)
        self.clients.add(id(self._async_client()))
        return await super().open_stream_async(request, timeout)


class AsyncOnly:
    """A transport with only the async protocol (as the sidecar's aiohttp one)."""

    def __init__(self) -> None:
        self.inner = HttpxTransport()

    def __repr__(self) -> str:
        return "AsyncOnly()"

    async def send_async(self, request: WireRequest, timeout: float) -> WireReply:
        return await self.inner.send_async(request, timeout)

    async def open_stream_async(
        self, request: WireRequest, timeout: float
    ) -> AsyncStreamResponse | WireReply:
        return await self.inner.open_stream_async(request, timeout)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def process_default() -> Iterator[Counting]:
    counting = Counting("process")
    previous = set_default_transport(counting)
    try:
        yield counting
    finally:
        set_default_transport(previous)
        counting.close()


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


def test_sync_calls_use_the_agents_transport_too(fake_openai_sync) -> None:
    """What was tried: a sync run, stream and json through an agent given a transport,
    and through a router given one; each request must go through them, none around."""
    own, routers = Counting("agent"), Counting("router")
    agent = openai_agent(fake_openai_sync, transport=own)
    agent.run("x")
    list(agent.stream("x"))
    router = AgentRouter([openai_agent(fake_openai_sync)], transport=routers)
    router.run("x")
    list(router.stream("x"))
    assert len(own.urls) == 2 and len(routers.urls) == 2
    assert len(fake_openai_sync.requests) == 4


def test_a_transport_without_the_sync_protocol_is_a_configuration_error(fake_openai_sync) -> None:
    """What was tried: a sync call through an async-only transport. It must fail with a
    typed error naming the transport, not reach the network some other way."""
    agent = openai_agent(fake_openai_sync, transport=AsyncOnly())
    with pytest.raises(ConfigurationError, match=r"AsyncOnly\(\) cannot serve sync calls"):
        agent.run("x")
    assert fake_openai_sync.requests == []


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


def test_a_sync_race_reuses_one_pool_and_close_ends_it(fake_openai_sync) -> None:
    """What was tried: five sync `fastest` calls and a sync racing stream over two
    agents. Every request must go through one connection pool (the router's loop thread
    keeps it) instead of one per call, and `close()` must stop that thread."""
    counting = Counting("race")
    with AgentRouter(
        [openai_agent(fake_openai_sync, name="a"), openai_agent(fake_openai_sync, name="b")],
        strategy="fastest",
        transport=counting,
    ) as router:
        for _ in range(5):
            assert router.run("x").text
        assert list(router.stream("x"))[-1].type == "done"
        thread = router._resources._thread
        assert thread is not None and thread.is_alive()
    assert len(counting.urls) == 12
    assert len(counting.clients) == 1
    assert not thread.is_alive()
    counting.close()


def test_a_router_closes_the_pools_it_made_sync(fake_openai_sync) -> None:
    with AgentRouter([openai_agent(fake_openai_sync)], strategy="fastest") as router:
        router.run("x")
        router.run("x")
        pool = router._resources.pool()
        assert pool.pools() == 1  # the loop thread's; the sync pool was never needed
    assert pool.pools() == 0


async def test_a_router_closes_the_pools_it_made(fake_openai) -> None:
    async with AgentRouter([openai_agent(fake_openai)]) as router:
        await router.run_async("x")
        pool = router._resources.pool()
        assert pool.pools() == 1
    assert pool.pools() == 0


async def test_a_router_leaves_a_given_transport_open(fake_openai) -> None:
    given = Counting("given")
    async with AgentRouter([openai_agent(fake_openai)], transport=given) as router:
        await router.run_async("x")
    assert given.pools() == 1, "the transport is its owner's to close"
    await given.aclose()


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


def test_set_default_transport_returns_the_previous_one_and_none_restores_own_pools() -> None:
    original = default_transport()
    mine = Counting("mine")
    assert set_default_transport(mine) is original
    assert default_transport() is mine
    assert set_default_transport(None) is mine
    assert default_transport() is None
    set_default_transport(original)
