"""A router is an agent: a route can fall back to another route (a router among its
agents), sync and async, plain and streamed, with the route information nesting."""

from __future__ import annotations

import pytest
from fakes import Fail, Hang, Reply

from agent import Agent, AgentRouter, BaseAgent, Started, TextDelta
from agent.errors import RoutingError, ServerError
from agent.transport import HttpxTransport, WireRequest
from agent.transport import Reply as WireReply


def agent_for(fake, name: str, **kw) -> Agent:  # type: ignore[no-untyped-def]
    return Agent("openai", "gpt-4o", base_url=fake.base_url, api_key="test-key", name=name, **kw)


async def test_a_route_falls_back_to_another_route(fake_factory) -> None:
    """What was tried: the outer route's own agent fails, then the inner route (itself a
    fallback router) answers after its first agent failed too."""
    a, b, c = [await fake_factory("openai") for _ in range(3)]
    a.script(Fail(500))
    b.script(Fail(503))
    c.script(Reply(text="from c"))
    backup = AgentRouter([agent_for(b, "b"), agent_for(c, "c")], retries=0, name="backup")
    main = AgentRouter([agent_for(a, "a"), backup], retries=0, name="main")
    assert isinstance(backup, BaseAgent)

    response = await main.run_async("x")

    assert response.text == "from c"
    route = response.route
    assert route is not None
    assert [(x.agent, x.outcome) for x in route.attempts] == [("a", "error"), ("backup", "ok")]
    inner = route.attempts[1].route
    assert inner is not None and [(x.agent, x.outcome) for x in inner.attempts] == [
        ("b", "error"),
        ("c", "ok"),
    ]
    assert route.path == ["backup", "c"]
    assert "fell back to backup" in route.reason


def test_a_nested_route_streams_with_one_announcement(fake_openai_sync) -> None:
    """What was tried: a sync stream through an outer router whose first agent is an
    inner router. The caller must see one `Started`, naming the inner route and the
    agent that really answers, then the text."""
    fake_openai_sync.script(Fail(500), Reply(text="one two"))
    inner = AgentRouter(
        [agent_for(fake_openai_sync, "first"), agent_for(fake_openai_sync, "second")],
        retries=0,
        name="inner",
    )
    outer = AgentRouter([inner, agent_for(fake_openai_sync, "last")], name="outer")

    events = list(outer.stream("x"))

    starts = [e for e in events if isinstance(e, Started)]
    assert len(starts) == 1 and events[0] is starts[0]
    assert starts[0].agent == "inner" and starts[0].provider == "openai"
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "one two"
    done = events[-1]
    assert done.type == "done"
    assert done.response.route.path == ["inner", "second"]


async def test_an_inner_routes_failure_is_one_attempt_of_the_outer(fake_factory) -> None:
    a, b, c = [await fake_factory("openai") for _ in range(3)]
    for fake in (a, b, c):
        fake.set_default(Fail(500))
    inner = AgentRouter([agent_for(a, "a"), agent_for(b, "b")], retries=0, name="inner")
    outer = AgentRouter([inner, agent_for(c, "c")], retries=0, name="outer")

    with pytest.raises(RoutingError) as caught:
        await outer.run_async("x")

    errors = caught.value.errors
    assert isinstance(errors[0], RoutingError) and isinstance(errors[1], ServerError)
    assert [e.agent for e in errors[0].errors] == ["openai/gpt-4o", "openai/gpt-4o"]
    first = caught.value.attempts[0]
    assert first.agent == "inner" and first.route is not None
    assert [x.agent for x in first.route.attempts] == ["a", "b"]


def test_a_racing_route_inside_a_sequential_route_sync(fake_openai_sync) -> None:
    """What was tried: sync fallback whose second agent is a `fastest` router. The race
    runs on the outer router's loop thread; the answer and its route come back whole."""
    fake_openai_sync.script_for("gpt-4o-mini", Fail(401))
    broken = Agent(
        "openai", "gpt-4o-mini", base_url=fake_openai_sync.base_url, api_key="k", name="broken"
    )
    race = AgentRouter(
        [agent_for(fake_openai_sync, "r1"), agent_for(fake_openai_sync, "r2")],
        strategy="fastest",
        name="race",
    )
    with AgentRouter([broken, race], retries=0, name="outer") as outer:
        response = outer.run("x")
        events = list(outer.stream("x"))
    assert response.text.startswith("Hello from")
    assert response.route is not None and response.route.path[0] == "race"
    assert response.route.path[1] in ("r1", "r2")
    assert events[-1].type == "done" and isinstance(events[0], Started)


async def test_the_outer_routers_transport_reaches_the_inner_routes_agents(fake_openai) -> None:
    class Noting(HttpxTransport):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        async def send_async(self, request: WireRequest, timeout: float) -> WireReply:
            self.count += 1
            return await super().send_async(request, timeout)

    outer_t, inner_t = Noting(), Noting()
    plain = AgentRouter([agent_for(fake_openai, "p")], name="plain")
    own = AgentRouter([agent_for(fake_openai, "o")], name="own", transport=inner_t)
    outer = AgentRouter([plain, own], strategy="round_robin", transport=outer_t)
    await outer.run_async("x")  # plain: inherits the outer transport
    await outer.run_async("x")  # own: its own wins
    assert (outer_t.count, inner_t.count) == (1, 1)
    await outer_t.aclose()
    await inner_t.aclose()


async def test_the_outer_deadline_bounds_the_inner_route(fake_factory) -> None:
    """What was tried: an inner route of two hanging agents (30 s timeouts) under an
    outer deadline of 0.5 s: the inner route gets only the time left."""
    a, b = await fake_factory("openai"), await fake_factory("openai")
    a.set_default(Hang())
    b.set_default(Hang())
    inner = AgentRouter(
        [agent_for(a, "a", timeout=30), agent_for(b, "b", timeout=30)], retries=0, name="inner"
    )
    outer = AgentRouter([inner], deadline=0.5, retries=0, name="outer")
    with pytest.raises(RoutingError) as caught:
        await outer.run_async("x")
    assert "deadline" in caught.value.message
    assert len(b.requests) == 0, "the inner route's time ran out on its first agent"
