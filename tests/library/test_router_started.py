"""`Started`: a router's stream names the agent answering before any of its content."""

from __future__ import annotations

from fakes import CutStream, Fail, Reply

from agent import Agent, AgentRouter, Started, TextDelta
from agent.errors import APIConnectionError


def agent_for(fake, name: str, model: str = "gpt-4o") -> Agent:  # type: ignore[no-untyped-def]
    return Agent("openai", model, base_url=fake.base_url, api_key="test-key", name=name)


async def test_started_comes_first_and_names_the_agent_after_a_fallback(fake_factory) -> None:
    a, b = await fake_factory("openai"), await fake_factory("openai")
    a.script(Fail(503), Fail(503))
    b.script(Reply(text="from b"))
    router = AgentRouter([agent_for(a, "a"), agent_for(b, "b", model="gpt-4o-mini")])
    events = [e async for e in await router.stream_async("x")]
    started = events[0]
    assert isinstance(started, Started) and started.type == "started"
    assert (started.agent, started.provider, started.model) == ("b", "openai", "gpt-4o-mini")
    assert started.route.reason == "in the given order; fell back to b after 2 failed attempt(s)"
    assert [(x.agent, x.outcome) for x in started.route.attempts] == [
        ("a", "error"),
        ("a", "error"),
    ]
    assert isinstance(events[1], TextDelta), "the content follows at once"
    assert sum(isinstance(e, Started) for e in events) == 1
    done = events[-1].response
    assert done.route.reason == started.route.reason
    assert [x.outcome for x in done.route.attempts] == ["error", "error", "ok"]


def test_an_answer_without_content_still_starts_before_done(fake_openai_sync) -> None:
    fake_openai_sync.script(Reply(text=""))
    router = AgentRouter([agent_for(fake_openai_sync, "only")])
    assert [e.type for e in router.stream("x")] == ["started", "done"]


async def test_after_started_the_router_is_committed(fake_factory) -> None:
    a, b = await fake_factory("openai"), await fake_factory("openai")
    a.script(CutStream(after=1, reply=Reply(text="one two three")))
    router = AgentRouter([agent_for(a, "a"), agent_for(b, "b")])
    seen = []
    try:
        async for event in await router.stream_async("x"):
            seen.append(event.type)
    except APIConnectionError:
        seen.append("error")
    assert seen == ["started", "text_delta", "error"]
    assert len(b.requests) == 0


async def test_a_race_announces_its_winner(fake_factory) -> None:
    slow, fast = await fake_factory("openai"), await fake_factory("openai")
    slow.script(Reply(text="slow", delay=3))
    fast.script(Reply(text="fast"))
    router = AgentRouter([agent_for(slow, "slow"), agent_for(fast, "fast")], strategy="fastest")
    events = [e async for e in await router.stream_async("x")]
    started = events[0]
    assert isinstance(started, Started) and started.agent == "fast"
    assert started.route.reason.endswith("fast answered first")
    assert [(x.agent, x.outcome) for x in started.route.attempts] == [("slow", "cancelled")]


def test_a_plain_agent_stream_has_no_started(fake_openai_sync) -> None:
    agent = agent_for(fake_openai_sync, "only")
    types = [e.type for e in agent.stream("x")]
    assert "started" not in types and types[-1] == "done"
