"""Racing strategies (fastest, hedged) under the shared machinery: each racer is retried
by the router's RetryPolicy, and a race that runs out of time says what every agent did."""

from __future__ import annotations

import pytest
from fakes import Fail, Hang, Reply

from agent import Agent, AgentRouter
from agent.errors import APITimeoutError, AuthenticationError, RoutingError, ServerError


def agent_for(fake, name: str) -> Agent:  # type: ignore[no-untyped-def]
    return Agent("openai", "gpt-4o", base_url=fake.base_url, api_key="test-key", name=name)


async def test_a_racer_is_retried_by_the_retry_policy(fake_factory) -> None:
    flaky, stuck = await fake_factory("openai"), await fake_factory("openai")
    flaky.script(Fail(500), Reply(text="second try"))
    stuck.set_default(Hang())
    router = AgentRouter(
        [agent_for(flaky, "flaky"), agent_for(stuck, "stuck")],
        strategy="fastest",
        retries=1,
        backoff=0.01,
    )
    response = await router.run_async("x")
    assert response.text == "second try"
    assert sorted((a.agent, a.outcome, a.retry) for a in response.route.attempts) == [
        ("flaky", "error", 0),
        ("flaky", "ok", 1),
        ("stuck", "cancelled", 0),
    ]
    assert response.route.reason.endswith("flaky answered first, 1 failed")


async def test_retries_zero_gives_each_racer_one_try(fake_factory) -> None:
    a, b = await fake_factory("openai"), await fake_factory("openai")
    a.script(Fail(500), Reply(text="never asked"))
    b.script(Fail(503))
    router = AgentRouter([agent_for(a, "a"), agent_for(b, "b")], strategy="fastest", retries=0)
    with pytest.raises(RoutingError) as caught:
        await router.run_async("x")
    assert len(a.requests) == 1 and len(b.requests) == 1
    assert {e.agent for e in caught.value.errors} == {"openai/gpt-4o"}
    assert len(caught.value.errors) == 2


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_a_race_deadline_lists_every_agents_attempt_and_error(fake_factory, stream) -> None:
    refused, slow, stuck = [await fake_factory("openai") for _ in range(3)]
    refused.script(Fail(401))
    slow.set_default(Reply(text="too late", delay=5))
    stuck.set_default(Hang())
    router = AgentRouter(
        [agent_for(refused, "refused"), agent_for(slow, "slow"), agent_for(stuck, "stuck")],
        strategy="fastest",
        deadline=0.4,
    )
    with pytest.raises(RoutingError) as caught:
        if stream:
            [e async for e in await router.stream_async("x")]
        else:
            await router.run_async("x")
    error = caught.value
    assert "router deadline of 0.4s passed" in str(error)
    assert sorted((a.agent, a.outcome) for a in error.attempts) == [
        ("refused", "error"),
        ("slow", "error"),
        ("stuck", "error"),
    ]
    by_agent = {a.agent: a.error for a in error.attempts}
    assert isinstance(by_agent["refused"], AuthenticationError)
    assert isinstance(by_agent["slow"], APITimeoutError)
    assert isinstance(by_agent["stuck"], APITimeoutError)
    assert sorted(type(e).__name__ for e in error.errors) == [
        "APITimeoutError",
        "APITimeoutError",
        "AuthenticationError",
    ]
    assert all(e.agent == "openai/gpt-4o" for e in error.errors), "each names its agent"
    assert await stuck.wait_disconnect() == 1, "the racers still running were closed"


async def test_a_racer_retried_within_the_deadline_then_cut_by_it(fake_factory) -> None:
    limited, stuck = await fake_factory("openai"), await fake_factory("openai")
    limited.script(Fail(429, retry_after=0.3), Hang())
    stuck.set_default(Hang())
    router = AgentRouter(
        [agent_for(limited, "limited"), agent_for(stuck, "stuck")],
        strategy="fastest",
        deadline=0.5,
    )
    with pytest.raises(RoutingError) as caught:
        await router.run_async("x")
    # The retry after 0.3 s fits the deadline; it hangs like the other until 0.5 s.
    assert [
        (a.agent, a.outcome, a.retry) for a in caught.value.attempts if a.agent == "limited"
    ] == [
        ("limited", "error", 0),
        ("limited", "error", 1),
    ]
    assert len(limited.requests) == 2


async def test_hedged_at_the_deadline_names_the_racers_it_started(fake_factory) -> None:
    first, second = await fake_factory("openai"), await fake_factory("openai")
    first.set_default(Hang())
    router = AgentRouter(
        [agent_for(first, "first"), agent_for(second, "second")],
        strategy="hedged",
        hedge_delay=10,
        deadline=0.3,
    )
    with pytest.raises(RoutingError) as caught:
        await router.run_async("x")
    assert [(a.agent, a.outcome) for a in caught.value.attempts] == [("first", "error")]
    assert [type(e) for e in caught.value.errors] == [APITimeoutError]
    assert len(second.requests) == 0


async def test_a_retry_that_would_pass_the_deadline_is_not_made(fake_factory) -> None:
    a = await fake_factory("openai")
    a.script(Fail(500), Reply(text="never"))
    router = AgentRouter([agent_for(a, "a")], strategy="fastest", deadline=0.3, backoff=5)
    with pytest.raises(RoutingError) as caught:
        await router.run_async("x")
    assert [type(e) for e in caught.value.errors] == [ServerError]
    assert len(a.requests) == 1


def test_a_sync_racing_stream_closed_early_disconnects_every_racer(fake_openai_sync) -> None:
    """What was tried: a sync `fastest` stream (run on the router's loop thread) that the
    caller leaves after its first text. Closing the iterator must close the winner's
    upstream connection at once, and the router's thread must stay usable."""
    fake_openai_sync.set_default(Reply(text="one two three four five six", chunk_delay=0.05))
    with AgentRouter(
        [agent_for(fake_openai_sync, "a"), agent_for(fake_openai_sync, "b")], strategy="fastest"
    ) as router:
        events = router.stream("x")
        for event in events:
            if event.type == "text_delta":
                break
        events.close()  # type: ignore[attr-defined]
        # The winner's stream, cut by the caller (the loser may have been cancelled before
        # the fake read its request: then it saw no request to count as a disconnect).
        assert fake_openai_sync.wait_disconnect_sync(5, count=1) >= 1
        fake_openai_sync.set_default(Reply(text="again"))
        assert router.run("x").text == "again"
