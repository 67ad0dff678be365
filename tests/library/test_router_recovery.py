"""Fallback that recovers, over real sockets: health probes run in the background (never
on a user's request), a route whose circuits are all open still tries the agent most
likely to have recovered, retries leave time for the agents not yet tried, and errors
name only the agents really tried."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from fakes import Fail, Hang, Reply

from agent import Agent, AgentRouter
from agent.errors import APITimeoutError, RoutingError
from agent.router import PROBE_PROMPT


def agent_for(fake, name: str, **kw) -> Agent:  # type: ignore[no-untyped-def]
    return Agent("openai", "gpt-4o", base_url=fake.base_url, api_key="test-key", name=name, **kw)


async def until(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    ends = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < ends, "timed out waiting"
        await asyncio.sleep(0.01)


async def opened(router: AgentRouter, label: str) -> None:
    await router.run_async("x")
    assert router.health()[label]["state"] == "open"


async def test_a_probe_runs_in_the_background_not_on_a_users_request(fake_factory) -> None:
    """What was tried: the primary fails (its breaker opens), then hangs. Once the
    cooldown is over, a user request must not be the probe that waits out the hang: it
    is answered by the secondary, and one small probe request reaches the primary
    beside it. Closing the router cancels the probe (the primary sees it go)."""
    a, b = await fake_factory("openai"), await fake_factory("openai")
    a.script(Fail(500))
    a.set_default(Hang())
    router = AgentRouter(
        [agent_for(a, "a", timeout=30), agent_for(b, "b")],
        retries=0,
        circuit_breaker={"failures": 1, "cooldown": 0.1},
    )
    await opened(router, "a")
    await asyncio.sleep(0.15)

    response = await router.run_async("x")

    assert [(x.agent, x.outcome) for x in response.route.attempts] == [
        ("a", "skipped"),
        ("b", "ok"),
    ]
    await until(lambda: len(a.requests) == 2)
    probe = a.requests[1].json
    assert probe["max_completion_tokens"] == 1
    assert probe["messages"] == [{"role": "user", "content": PROBE_PROMPT}]
    assert router.health()["a"]["state"] == "half_open"
    await router.aclose()
    assert await a.wait_disconnect() == 1


async def test_a_successful_probe_closes_the_breaker(fake_factory) -> None:
    a, b = await fake_factory("openai"), await fake_factory("openai")
    a.script(Fail(500))
    a.set_default(Reply(text="healed"))
    async with AgentRouter(
        [agent_for(a, "a"), agent_for(b, "b")], retries=0, circuit_breaker={"failures": 1, "cooldown": 0.1}
    ) as router:
        await opened(router, "a")
        await asyncio.sleep(0.15)
        assert (await router.run_async("x")).route.attempts[0].outcome == "skipped"
        await until(lambda: router.health()["a"]["state"] == "closed")
        assert (await router.run_async("x")).text == "healed"


async def test_a_failed_probe_opens_it_for_another_cooldown(fake_factory) -> None:
    a, b = await fake_factory("openai"), await fake_factory("openai")
    a.set_default(Fail(500))
    async with AgentRouter(
        [agent_for(a, "a"), agent_for(b, "b")],
        retries=0,
        circuit_breaker={"failures": 1, "cooldown": 1.0},
    ) as router:
        await opened(router, "a")
        await asyncio.sleep(1.05)
        await router.run_async("x")  # starts the probe
        await until(lambda: len(a.requests) == 2 and router.health()["a"]["state"] == "open")
        await router.run_async("x")  # within the new cooldown (a second): no probe
        await asyncio.sleep(0.05)
        assert len(a.requests) == 2


async def test_without_probes_one_user_request_is_let_through(fake_factory) -> None:
    """probe=False: the old half-open breaker, where the next user request probes."""
    a, b = await fake_factory("openai"), await fake_factory("openai")
    a.script(Fail(500), Reply(text="healed"))
    router = AgentRouter(
        [agent_for(a, "a"), agent_for(b, "b")],
        retries=0,
        circuit_breaker={"failures": 1, "cooldown": 0.1, "probe": False},
    )
    await router.run_async("x")  # a fails: its breaker opens
    await asyncio.sleep(0.15)
    assert router.health()["a"]["state"] == "half_open"
    assert (await router.run_async("x")).text == "healed"
    assert router.health()["a"]["state"] == "closed"


def test_a_sync_routers_probe_runs_on_its_thread_until_close(fake_openai_sync) -> None:
    """What was tried: the same as above from sync code. The probe runs on the router's
    own loop thread (nothing else runs one), and `close()` stops that thread."""
    fake_openai_sync.script_for("gpt-4o-mini", Fail(500))
    fake_openai_sync.set_default(Hang(), model="gpt-4o-mini")
    primary = Agent(
        "openai", "gpt-4o-mini", base_url=fake_openai_sync.base_url, api_key="test-key", name="a"
    )
    router = AgentRouter(
        [primary, agent_for(fake_openai_sync, "b")],
        retries=0,
        circuit_breaker={"failures": 1, "cooldown": 0.1},
    )
    router.run("x")
    time.sleep(0.15)
    assert router.run("x").route.attempts[0].outcome == "skipped"
    ends = time.monotonic() + 10
    while sum(r.model == "gpt-4o-mini" for r in fake_openai_sync.requests) < 2:
        assert time.monotonic() < ends
        time.sleep(0.01)
    thread = router._resources._thread
    assert thread is not None and thread.is_alive()
    router.close()
    assert not thread.is_alive()
    assert fake_openai_sync.wait_disconnect_sync(5) == 1


async def test_every_circuit_open_still_tries_the_one_open_longest(fake_factory) -> None:
    """What was tried: both agents fail (both circuits open, 30 s cooldowns), then both
    recover. The next request is not refused for the rest of the cooldown: the agent
    whose circuit opened first is tried, answers, and its circuit closes."""
    a, b = await fake_factory("openai"), await fake_factory("openai")
    a.script(Fail(500))
    b.script(Fail(500))
    router = AgentRouter(
        [agent_for(a, "a"), agent_for(b, "b")], retries=0, circuit_breaker={"failures": 1, "cooldown": 30}
    )
    with pytest.raises(RoutingError):
        await router.run_async("x")
    assert {s["state"] for s in router.health().values()} == {"open"}

    response = await router.run_async("x")

    assert response.text == "Hello from openai"
    assert [(x.agent, x.outcome) for x in response.route.attempts] == [
        ("b", "skipped"),
        ("a", "ok"),
    ]
    assert "every circuit open: tried a" in response.route.reason
    assert router.health()["a"]["state"] == "closed"


async def test_a_retry_that_would_leave_no_time_for_the_next_agent_is_not_made(
    fake_factory,
) -> None:
    """What was tried: a hung primary (1 s timeout), a healthy secondary, a 1.9 s
    deadline and retries=2. Retrying the primary would time out again and leave the
    secondary nothing; the router falls back instead, and the secondary answers."""
    a, b = await fake_factory("openai"), await fake_factory("openai")
    a.set_default(Hang())
    router = AgentRouter(
        [agent_for(a, "a", timeout=1.0), agent_for(b, "b")], retries=2, backoff=0.01, deadline=1.9
    )
    response = await router.run_async("x")
    assert response.text == "Hello from openai"
    assert [(x.agent, x.outcome) for x in response.route.attempts] == [("a", "error"), ("b", "ok")]
    assert len(a.requests) == 1


async def test_a_deadline_error_names_only_the_agents_tried(fake_factory) -> None:
    a, b = await fake_factory("openai"), await fake_factory("openai")
    a.set_default(Hang())
    router = AgentRouter([agent_for(a, "a", timeout=30), agent_for(b, "b")], deadline=0.3)
    with pytest.raises(RoutingError) as caught:
        await router.run_async("x")
    error = caught.value
    assert error.message == "router deadline of 0.3s passed (not tried: b) (fallback)"
    assert len(error.errors) == 1 and isinstance(error.errors[0], APITimeoutError)
    assert error.errors[0].agent == "openai/gpt-4o"
    assert [x.agent for x in error.attempts] == ["a"]
    assert len(b.requests) == 0
