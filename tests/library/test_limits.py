"""Limits and budgets in one process (no Redis), over real sockets: an agent whose limit
is used up is skipped like an open circuit, a route whose limit is used up answers
nothing, reservations are settled on the real usage, and a provider's rate-limit
headers stop the router before the provider says 429."""

from __future__ import annotations

import asyncio

import pytest
from fakes import Fail, Reply

from agent import Agent, AgentRouter
from agent.config import AgentLimitsConfig, parse_config
from agent.errors import ConfigurationError, RoutingError
from agent.limits import MemoryStore, ProviderLimits, QuotaExhaustedError
from agent.testing import TestAgent


def agent_for(fake, name: str, **kw) -> Agent:  # type: ignore[no-untyped-def]
    return Agent("openai", "gpt-4o", base_url=fake.base_url, api_key="test-key", name=name, **kw)


async def test_an_agent_out_of_requests_is_skipped_and_the_route_falls_back(fake_factory) -> None:
    """What was tried: agent a allows 3 requests a minute; 5 calls. The first 3 go to a,
    the next 2 skip a (no request reaches it) and are answered by b, and the route's
    reason says a was skipped for its quota."""
    a, b = await fake_factory("openai"), await fake_factory("openai")
    router = AgentRouter([agent_for(a, "a", limits={"rpm": 3}), agent_for(b, "b")], retries=0)

    answers = [await router.run_async("hi") for _ in range(5)]

    assert [r.route.path[0] for r in answers] == ["a", "a", "a", "b", "b"]
    assert len(a.requests) == 3
    last = answers[-1].route
    assert [(x.agent, x.outcome) for x in last.attempts] == [("a", "skipped"), ("b", "ok")]
    assert isinstance(last.attempts[0].error, QuotaExhaustedError)
    assert "skipped a: quota exhausted" in last.reason
    assert router.health()["a"]["quota"] == {"rpm": {"limit": 3, "remaining": 0.0}}


async def test_every_agent_exhausted_fails_at_once_with_the_earliest_refill(fake_factory) -> None:
    """What was tried: two agents of 1 request a minute each, three calls. The third
    reaches no provider and raises a RoutingError of quota errors whose retry-after is
    within the minute (the earliest refill), not a wait."""
    a, b = await fake_factory("openai"), await fake_factory("openai")
    router = AgentRouter(
        [agent_for(a, "a", limits={"rpm": 1}), agent_for(b, "b", limits={"rpm": 1})], retries=0
    )
    await router.run_async("1")
    await router.run_async("2")

    with pytest.raises(RoutingError) as caught:
        await router.run_async("3")

    errors = caught.value.errors
    assert all(isinstance(e, QuotaExhaustedError) for e in errors) and len(errors) == 2
    assert all(e.retry_after is not None and 0 < e.retry_after <= 120 for e in errors)
    assert len(a.requests) + len(b.requests) == 2


async def test_a_route_budget_holds_under_concurrency(fake_factory) -> None:
    """What was tried: a route with an hourly budget of $0.01 at $10 per million output
    tokens (reserving 100 output tokens, $0.001 a request), 30 concurrent calls that are
    slow to answer. All reserve before any settles, so no more than 10 are admitted: the
    spend cannot pass the budget by more than what was reserved in flight."""
    fake = await fake_factory("openai")
    fake.set_default(Reply(text="ok", usage=(1, 100), delay=0.2))
    router = AgentRouter(
        [agent_for(fake, "a", price=(0.0, 10.0))],
        retries=0,
        limits={"budget": {"hourly": 0.01}, "output_tokens": 100},
    )

    results = await asyncio.gather(
        *(router.run_async("x", max_tokens=100) for _ in range(30)), return_exceptions=True
    )

    answered = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, RoutingError)]
    assert len(answered) + len(refused) == 30
    assert 1 <= len(answered) <= 10
    spent = sum(r.cost_estimate for r in answered)
    assert spent <= 0.01 + 1e-9
    assert "route quota exhausted" in str(refused[0])
    remaining = router.quota()["route"]["usd_per_hour"]  # type: ignore[index]
    assert remaining["remaining"] == pytest.approx(0.01 - spent, abs=1e-9)


async def test_tokens_are_settled_on_the_real_usage(fake_factory) -> None:
    """What was tried: tpm 1000, each call reserving ~500 output tokens but using 10.
    After settling, many more calls fit than the reservations alone would allow."""
    fake = await fake_factory("openai")
    fake.set_default(Reply(text="ok", usage=(5, 5)))
    router = AgentRouter([agent_for(fake, "a", limits={"tpm": 1000})], retries=0)

    for _ in range(10):  # 10 x 500 reserved would be 5000: settled at 10 each
        await router.run_async("x")

    remaining = router.health()["a"]["quota"]["tpm"]["remaining"]  # type: ignore[index]
    assert remaining == pytest.approx(1000 - 10 * 10)


async def test_a_stream_settles_when_it_ends(fake_factory) -> None:
    """What was tried: a streamed call under a tpm limit; once the stream is read to its
    end, the tokens counted are its real usage, not the reservation."""
    fake = await fake_factory("openai")
    fake.set_default(Reply(text="one two three", usage=(3, 3)))
    router = AgentRouter([agent_for(fake, "a", limits={"tpm": 10_000})], retries=0)

    events = [
        e async for e in await router.stream_async("x", stream_options={"include_usage": True})
    ]

    assert events
    remaining = router.health()["a"]["quota"]["tpm"]["remaining"]  # type: ignore[index]
    assert remaining == pytest.approx(10_000 - 6)


async def test_a_stream_left_after_its_start_frees_its_place() -> None:
    """What was tried: a allows 1 request at a time; a short stream (all there at once,
    so the engine runs on to its settlement before the caller reads a thing) is left
    after its first event and closed. Its place is free: the next call gets a."""
    agent = TestAgent("hello there world", name="a")
    agent.limits = AgentLimitsConfig(concurrent=1)
    router = AgentRouter([agent], retries=0)

    stream = await router.stream_async("x")
    async for _ in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]
    await asyncio.sleep(0.05)  # the release runs in a task of its own

    assert router.health()["a"]["quota"]["concurrent"] == {"limit": 1, "in_flight": 0}  # type: ignore[index]
    assert (await router.run_async("again")).route.path == ["a"]


async def test_concurrent_requests_beyond_the_limit_fall_back(fake_factory) -> None:
    """What was tried: a allows 1 request at a time and answers slowly; two calls at
    once. One is answered by a, the other skips it for b; afterwards a's place is free."""
    a, b = await fake_factory("openai"), await fake_factory("openai")
    a.set_default(Reply(text="slow", delay=0.3))
    router = AgentRouter(
        [agent_for(a, "a", limits={"concurrent": 1}), agent_for(b, "b")], retries=0
    )

    first, second = await asyncio.gather(router.run_async("1"), router.run_async("2"))

    assert sorted([first.route.path[0], second.route.path[0]]) == ["a", "b"]
    assert router.health()["a"]["quota"]["concurrent"] == {"limit": 1, "in_flight": 0}  # type: ignore[index]
    assert (await router.run_async("3")).route.path == ["a"]


async def test_a_failed_attempt_gives_its_tokens_back(fake_factory) -> None:
    """What was tried: a fails with 500 (no tokens used) under a tpm limit; its
    reservation is released, the request still counts against rpm."""
    a, b = await fake_factory("openai"), await fake_factory("openai")
    a.set_default(Fail(500))
    router = AgentRouter(
        [agent_for(a, "a", limits={"tpm": 5000, "rpm": 10}), agent_for(b, "b")], retries=0
    )

    await router.run_async("x")

    quota = router.health()["a"]["quota"]
    assert quota["tpm"]["remaining"] == 5000  # type: ignore[index]
    assert quota["rpm"]["remaining"] == 9  # type: ignore[index]


async def test_provider_headers_stop_the_router_before_a_429(fake_factory) -> None:
    """What was tried: a answers once saying `x-ratelimit-remaining-requests: 0` with a
    reset in 20s. The next call does not send to a at all (so a never gets to say 429)
    and b answers; health shows what the provider said."""
    a, b = await fake_factory("openai"), await fake_factory("openai")
    a.script(
        Reply(
            text="ok",
            headers={"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20s"},
        )
    )
    a.set_default(Fail(429, retry_after=20))
    router = AgentRouter([agent_for(a, "a"), agent_for(b, "b")], retries=0)

    await router.run_async("1")
    second = await router.run_async("2")

    assert second.route.path == ["b"]
    assert len(a.requests) == 1
    skipped = second.route.attempts[0]
    assert skipped.outcome == "skipped" and skipped.error is not None
    assert skipped.error.retry_after == pytest.approx(20, abs=1)  # type: ignore[attr-defined]
    assert router.health()["a"]["quota"]["provider"]["remaining_requests"] == 0  # type: ignore[index]


def test_provider_headers_of_each_format_are_read() -> None:
    """What was tried: OpenAI's durations and Anthropic's RFC 3339 resets, and an answer
    with no rate-limit headers at all."""
    openai = ProviderLimits.from_headers(
        {
            "x-ratelimit-remaining-requests": "7",
            "x-ratelimit-remaining-tokens": "900",
            "x-ratelimit-reset-requests": "1m30s",
            "x-ratelimit-reset-tokens": "250ms",
        }
    )
    assert openai == ProviderLimits(7, 900, 90.0, 0.25)
    anthropic = ProviderLimits.from_headers(
        {
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": "2000-01-01T00:00:00Z",
        }
    )
    assert anthropic is not None and anthropic.remaining_requests == 0
    assert anthropic.reset_requests == 0.0  # a reset in the past: room now
    assert ProviderLimits.from_headers({"content-type": "application/json"}) is None


def test_limits_in_a_config_document_are_shared_by_routes_using_an_agent(fake_openai_sync) -> None:
    """What was tried: two routes over one agent limited to 2 rpm, built from one
    document (one store): the agent's limit holds across both routes."""
    config = parse_config(
        {
            "agents": [
                {
                    "name": "a",
                    "provider": "openai",
                    "model": "gpt-4o",
                    "base_url": fake_openai_sync.base_url,
                    "api_key": "test-key",
                    "limits": {"rpm": 2},
                },
            ],
            "routes": [
                {"name": "one", "agents": ["a"], "retries": 0},
                {"name": "two", "agents": ["a"], "retries": 0, "limits": {"rpm": 100}},
            ],
        }
    )
    routers = config.build()
    routers["one"].run("1")
    routers["two"].run("2")

    with pytest.raises(RoutingError):
        routers["one"].run("3")
    assert isinstance(routers["one"].limits_store, MemoryStore)
    assert routers["one"].limits_store is routers["two"].limits_store


@pytest.mark.parametrize(
    ("limits", "where"),
    [
        ({"rpm": 0}, "agents.0.limits.rpm"),
        ({"tpm": -5}, "agents.0.limits.tpm"),
        ({"rpm": 10, "burst": 3}, "agents.0.limits.burst"),
    ],
)
def test_bad_limits_are_refused_naming_the_field(limits: dict, where: str) -> None:
    """What was tried: a zero rpm, a negative tpm and an unknown field; each is a
    ConfigurationError naming the field."""
    with pytest.raises(ConfigurationError) as caught:
        parse_config(
            {"agents": [{"name": "a", "provider": "openai", "model": "gpt-4o", "limits": limits}]}
        )
    assert where in str(caught.value)


async def test_the_decision_span_carries_the_remaining_quota(fake_factory) -> None:
    """What was tried: a route with an rpm of 5 over an agent with an rpm of 2, traced
    with the router's own provider; after one call the decision span says 4 and 1 left."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    fake = await fake_factory("openai")
    router = AgentRouter(
        [agent_for(fake, "a", limits={"rpm": 2})],
        limits={"rpm": 5},
        name="traced",
        tracer_provider=provider,
    )

    await router.run_async("x")

    decision = next(s for s in exporter.get_finished_spans() if s.name == "route traced")
    assert decision.attributes is not None
    assert decision.attributes["agent_router.quota.route.rpm.remaining"] == 4
    assert decision.attributes["agent_router.quota.a.rpm.remaining"] == 1


def test_without_redis_each_process_counts_its_share(fake_openai_sync) -> None:
    """What was tried: a document saying 3 processes share an agent's 6 requests a
    minute, and no Redis: this process admits its share, 2, then refuses."""
    config = parse_config(
        {
            "agents": [
                {
                    "name": "a",
                    "provider": "openai",
                    "model": "gpt-4o",
                    "base_url": fake_openai_sync.base_url,
                    "api_key": "test-key",
                    "limits": {"rpm": 6},
                },
            ],
            "routes": [{"name": "one", "agents": ["a"], "retries": 0}],
            "limits_store": {"shares": 3},
        }
    )
    router = config.router()
    router.run("1")
    router.run("2")

    with pytest.raises(RoutingError):
        router.run("3")
    assert len(fake_openai_sync.requests) == 2


async def test_a_failing_hook_frees_the_concurrency_it_held(fake_factory) -> None:
    """What was tried: an agent allowing 1 request at a time whose middleware raises a
    plain exception (a bug, which ends the call as is); afterwards its place is free."""
    from agent import Middleware

    class Broken(Middleware):
        def after(self, request, response):  # type: ignore[no-untyped-def]
            raise ValueError("a bug in a hook")

    fake = await fake_factory("openai")
    router = AgentRouter([agent_for(fake, "a", limits={"concurrent": 1}, middleware=[Broken()])])

    with pytest.raises(ValueError):
        await router.run_async("x")
    await asyncio.sleep(0)  # the lease is given back by a task of its own

    assert router.health()["a"]["quota"]["concurrent"] == {"limit": 1, "in_flight": 0}  # type: ignore[index]
    with pytest.raises(ValueError):  # reached the agent again: not skipped for its quota
        await router.run_async("y")
    assert len(fake.requests) == 2
