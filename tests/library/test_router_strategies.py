"""Each routing strategy's semantics, against fake providers over real sockets."""

from __future__ import annotations

import asyncio
import threading

import pytest
from fakes import Fail, Hang, Reply

from agent import Agent, AgentRouter, Price, TextDelta
from agent.errors import NoCapableAgentError, RoutingError
from agent.types import RouteResult


def agent_for(fake, model: str = "gpt-4o", **kw) -> Agent:
    """An agent pointed at a fake explicitly (several fakes of one kind in a test)."""
    return Agent(
        provider=fake.kind if fake.kind != "openai" else "openai",
        model=model,
        base_url=fake.base_url,
        api_key="test-key",
        **kw,
    )


async def test_fallback_goes_in_order_until_one_succeeds(fake_factory) -> None:
    first, second, third = [await fake_factory("openai") for _ in range(3)]
    first.script(Fail(500))
    second.script(Fail(401))
    third.script(Reply(text="third"))
    router = AgentRouter(
        [agent_for(first, name="a"), agent_for(second, name="b"), agent_for(third, name="c")],
        strategy="fallback",
        retries=0,
    )
    response = await router.run_async("Hi")
    assert response.text == "third"
    route = response.route
    assert route.strategy == "fallback"
    assert [(a.agent, a.outcome) for a in route.attempts] == [
        ("a", "error"),
        ("b", "error"),
        ("c", "ok"),
    ]
    assert "fell back to c after 2 failed attempt(s)" in route.reason
    assert (len(first.requests), len(second.requests), len(third.requests)) == (1, 1, 1)



async def test_a_retry_of_the_same_agent_is_not_called_a_fallback(fake_factory) -> None:
    only = await fake_factory("openai")
    only.script(Fail(503), Reply(text="second try"))
    router = AgentRouter([agent_for(only, name="a")], strategy="fallback", backoff=0)
    response = await router.run_async("Hi")
    assert response.text == "second try"
    assert response.route.reason == "in the given order; a answered after 1 failed attempt(s)"


def test_round_robin_rotates_like_the_docs(fake_openai_sync, fake_anthropic_sync) -> None:
    router = AgentRouter(
        [
            Agent(
                provider="openai",
                model="gpt-4o",
                base_url=fake_openai_sync.base_url,
                api_key="test-key",
            ),
            Agent(
                provider="anthropic",
                model="claude-sonnet",
                base_url=fake_anthropic_sync.url,
                api_key="test-key",
            ),
        ],
        strategy="round_robin",
    )
    assert [router.run(f"Request {i}").provider for i in (1, 2, 3)] == [
        "openai",
        "anthropic",
        "openai",
    ]


async def test_round_robin_is_exact_under_concurrent_tasks(fake_factory) -> None:
    a, b = await fake_factory("openai"), await fake_factory("openai")
    router = AgentRouter([agent_for(a, name="a"), agent_for(b, name="b")], strategy="round_robin")
    results = await asyncio.gather(*(router.run_async(str(i)) for i in range(40)))
    assert len(results) == 40
    assert (len(a.requests), len(b.requests)) == (20, 20)


def test_round_robin_is_exact_under_threads(fake_openai_sync) -> None:
    agents = [
        Agent(
            provider="openai",
            model="gpt-4o",
            base_url=fake_openai_sync.base_url,
            api_key="test-key",
            name=f"k{i}",
        )
        for i in range(3)
    ]
    router = AgentRouter(agents, strategy="round_robin")
    winners: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(10):
            r = router.run("x")
            with lock:
                winners.append(r.route.attempts[-1].agent)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(winners.count(n) for n in ("k0", "k1", "k2")) == [20, 20, 20]


async def test_round_robin_falls_back_over_the_rest(fake_factory) -> None:
    a, b = await fake_factory("openai"), await fake_factory("openai")
    a.set_default(Fail(500))
    router = AgentRouter(
        [agent_for(a, name="a"), agent_for(b, name="b")],
        strategy="round_robin",
        retries=0,
        circuit_breaker={"failures": 0},
    )
    providers = [(await router.run_async("x")).route.attempts[-1].agent for _ in range(4)]
    assert providers == ["b", "b", "b", "b"]


async def test_fastest_wins_and_losers_are_disconnected(fake_factory) -> None:
    slow, fast = await fake_factory("openai"), await fake_factory("anthropic")
    slow.script(Reply(text="slow", delay=5))
    fast.script(Reply(text="fast", delay=0.05))
    router = AgentRouter(
        [
            agent_for(slow, name="slow"),
            Agent(
                provider="anthropic",
                model="claude-haiku",
                base_url=fast.url,
                api_key="test-key",
                name="fast",
            ),
        ],
        strategy="fastest",
    )
    response = await router.run_async("Quick question")
    assert response.text == "fast" and response.provider == "anthropic"
    assert await slow.wait_disconnect(timeout=2) >= 1, "the loser's connection was closed"
    outcomes = {a.agent: a.outcome for a in response.route.attempts}
    assert outcomes == {"fast": "ok", "slow": "cancelled"}
    assert "fast answered first" in response.route.reason


async def test_fastest_ignores_a_quick_failure(fake_factory) -> None:
    broken, ok = await fake_factory("openai"), await fake_factory("openai")
    broken.script(Fail(500))
    ok.script(Reply(text="ok", delay=0.1))
    router = AgentRouter(
        [agent_for(broken, name="broken"), agent_for(ok, name="ok")], strategy="fastest"
    )
    assert (await router.run_async("x")).text == "ok"


async def test_fastest_stream_first_content_wins(fake_factory) -> None:
    slow, fast = await fake_factory("openai"), await fake_factory("openai")
    slow.script(Reply(text="slow words here", delay=3))
    fast.script(Reply(text="fast words here", chunk_delay=0.01))
    router = AgentRouter(
        [agent_for(slow, name="slow"), agent_for(fast, name="fast")], strategy="fastest"
    )
    events = [e async for e in await router.stream_async("x")]
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "fast words here"
    assert events[-1].response.route.attempts[-1].agent == "fast"
    assert await slow.wait_disconnect(timeout=2) >= 1


def test_fastest_works_from_sync_code(fake_openai_sync) -> None:
    router = AgentRouter(
        [agent_for(fake_openai_sync, name="a"), agent_for(fake_openai_sync, name="b")],
        strategy="fastest",
    )
    assert router.run("x").text == "Hello from openai"
    assert list(router.stream("x"))[-1].type == "done"


async def test_hedged_starts_the_next_only_after_the_delay(fake_factory) -> None:
    first, second = await fake_factory("openai"), await fake_factory("openai")
    first.script(Reply(text="first", delay=0.02))
    router = AgentRouter(
        [agent_for(first, name="first"), agent_for(second, name="second")],
        strategy="hedged",
        hedge_delay=1.0,
    )
    response = await router.run_async("x")
    assert response.text == "first"
    assert len(second.requests) == 0, "answered within the hedge delay: no second request"
    first.script(Hang())
    second.script(Reply(text="second"))
    hedged = AgentRouter(
        [agent_for(first, name="first"), agent_for(second, name="second")],
        strategy="hedged",
        hedge_delay=0.1,
    )
    response = await hedged.run_async("x")
    assert response.text == "second"
    assert await first.wait_disconnect(timeout=2) >= 1


def test_cheapest_orders_by_estimated_cost(fake_openai_sync, fake_anthropic_sync) -> None:
    base = {"base_url": fake_openai_sync.base_url, "api_key": "test-key"}
    router = AgentRouter(
        [
            Agent(provider="openai", model="gpt-4o", **base),
            Agent(provider="openai", model="gpt-4o-mini", **base),
            Agent(
                provider="anthropic",
                model="claude-haiku",
                base_url=fake_anthropic_sync.url,
                api_key="test-key",
            ),
        ],
        strategy="cheapest",
    )
    response = router.run("Simple question")
    assert response.model == "gpt-4o-mini"
    assert response.route.candidates == [
        "openai/gpt-4o-mini",
        "anthropic/claude-haiku",
        "openai/gpt-4o",
    ]
    assert "lowest estimated cost: openai/gpt-4o-mini ($0.0" in response.route.reason


def test_cheapest_honours_price_overrides(fake_openai_sync) -> None:
    base = {"base_url": fake_openai_sync.base_url, "api_key": "test-key"}
    router = AgentRouter(
        [
            Agent(provider="openai", model="gpt-4o", price=Price(0.01, 0.01), **base),
            Agent(provider="openai", model="gpt-4o-mini", **base),
        ],
        strategy="cheapest",
    )
    assert router.run("x").model == "gpt-4o"


def my_tool(query: str) -> str:
    """Search for something."""
    return "found"


def test_capability_routes_to_agents_that_can_serve(fake_openai_sync) -> None:
    base = {"base_url": fake_openai_sync.base_url, "api_key": "test-key"}
    router = AgentRouter(
        [
            Agent(
                provider="openai",
                model="gpt-4o",
                capabilities={"tools": False},
                **base,
                name="no-tools",
            ),
            Agent(provider="openai", model="gpt-4o", **base, name="tools"),
        ],
        strategy="capability",
    )
    response = router.run("Use the tool", tools=[my_tool])
    assert response.route.attempts[-1].agent == "tools"
    assert response.route.candidates == ["tools"]
    assert "capable of tools" in response.route.reason


def test_capability_names_what_is_missing() -> None:
    router = AgentRouter(
        [
            Agent(provider="deepseek", model="deepseek-reasoner"),
            Agent(provider="openai", model="gpt-4o", capabilities={"tools": False}),
        ],
        strategy="capability",
    )
    with pytest.raises(NoCapableAgentError) as info:
        router.run("x", tools=[my_tool])
    assert info.value.missing == {
        "deepseek/deepseek-reasoner": ["tools"],
        "openai/gpt-4o": ["tools"],
    }
    assert "lacks tools" in str(info.value)


def test_capability_checks_vision_and_context_window() -> None:
    router = AgentRouter([Agent(provider="deepseek", model="deepseek-chat")], strategy="capability")
    image = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ],
        }
    ]
    with pytest.raises(NoCapableAgentError, match="vision"):
        router.run(image)
    with pytest.raises(NoCapableAgentError, match="context window"):
        router.run("word " * 200_000)


async def test_custom_router_reason_and_fallback(fake_factory) -> None:
    claude, gpt = await fake_factory("anthropic"), await fake_factory("openai")
    agents = [
        Agent(provider="openai", model="gpt-4o", base_url=gpt.base_url, api_key="test-key"),
        Agent(provider="anthropic", model="claude-sonnet", base_url=claude.url, api_key="test-key"),
    ]

    def smart_router(request, agents):
        if "code" in (request.input or "").lower():
            return RouteResult(agent=agents[1], reason="coding task")
        return RouteResult(agent=agents[0], reason="default")

    router = AgentRouter(agents, strategy="custom", custom_router=smart_router)
    response = await router.run_async("Write code for me")
    assert response.provider == "anthropic" and response.route.reason == "coding task"
    claude.script(Fail(500))
    fallback = AgentRouter(agents, strategy="custom", custom_router=smart_router, retries=0)
    response = await fallback.run_async("more code")
    assert response.provider == "openai"
    assert response.route.reason.startswith("coding task; fell back to openai/gpt-4o")


async def pick(request, agents):
    await asyncio.sleep(0)
    return RouteResult(agent=agents[0], reason=f"async pick for {len(request.input)} chars")


async def test_async_custom_router(fake_openai) -> None:
    router = AgentRouter([agent_for(fake_openai)], strategy="custom", custom_router=pick)
    assert (await router.run_async("abc")).route.reason == "async pick for 3 chars"


def test_async_custom_router_from_sync_code(fake_openai_sync) -> None:
    router = AgentRouter([agent_for(fake_openai_sync)], strategy="custom", custom_router=pick)
    assert router.run("abcd").route.reason == "async pick for 4 chars"


def test_weighted_never_leads_with_weight_zero(fake_openai_sync) -> None:
    base = {"base_url": fake_openai_sync.base_url, "api_key": "test-key"}
    router = AgentRouter(
        [
            Agent(provider="openai", model="gpt-4o", weight=0, name="never", **base),
            Agent(provider="openai", model="gpt-4o", weight=3, name="often", **base),
            Agent(provider="openai", model="gpt-4o", weight=1, name="some", **base),
        ],
        strategy="weighted",
    )
    firsts = [router.run("x").route.attempts[0].agent for _ in range(40)]
    assert "never" not in firsts
    assert firsts.count("often") > firsts.count("some")


async def test_latency_prefers_the_faster_agent(fake_factory) -> None:
    slow, fast = await fake_factory("openai"), await fake_factory("openai")
    slow.set_default(Reply(text="slow", delay=0.15))
    router = AgentRouter(
        [agent_for(slow, name="slow"), agent_for(fast, name="fast")], strategy="latency"
    )
    for _ in range(2):  # both measured once (unmeasured agents go first, to learn)
        await router.run_async("x")
    picks = [(await router.run_async("x")).route.attempts[0].agent for _ in range(3)]
    assert picks == ["fast", "fast", "fast"]
    health = router.health()
    assert health["slow"]["latency_ms"] > health["fast"]["latency_ms"]


def test_unknown_strategy_is_a_clear_error() -> None:
    from agent.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="unknown strategy 'quickest'"):
        AgentRouter([Agent(provider="openai", model="gpt-4o")], strategy="quickest")
    with pytest.raises(ConfigurationError, match="custom_router"):
        AgentRouter([Agent(provider="openai", model="gpt-4o")], strategy="custom")


def test_routing_error_lists_every_agent() -> None:
    router = AgentRouter(
        [Agent(provider="invalid", model="x"), Agent(provider="openai", model="gpt-4o")], retries=0
    )
    with pytest.raises(RoutingError) as info:
        router.run("Hello")
    e = info.value
    assert e.message == "all 2 agent(s) failed (fallback)"
    assert len(e.errors) == 2
    assert e.errors[0].provider == "invalid" and "unknown provider" in str(e.errors[0])
    assert "OPENAI_API_KEY" in str(e.errors[1])
    text = str(e)
    assert "agent 0: invalid/x: ConfigurationError" in text
    assert "agent 1: openai/gpt-4o: ConfigurationError" in text
