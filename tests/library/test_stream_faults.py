"""Streams that never lie, in the library, over real sockets: every way a provider's
stream fails (cut, stall, in-band error event, clean end without its finish, broken
event), before and after the first content, for each wire format. Before the first
content the router falls back unseen; after it the stream raises the agent's typed
error carrying the text the caller holds, and never ends like a complete answer."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fakes import (
    STREAM_FAULTS,
    CutStream,
    FakeProvider,
    Reply,
    Stall,
    StreamError,
)

from agent import Agent, AgentRouter
from agent.config import parse_config
from agent.errors import AgentError, APIConnectionError, APITimeoutError, InvalidResponseError
from agent.types import Done, Started, TextDelta

TEXT = "one two three four"
FAULTS = STREAM_FAULTS
# What each fault is raised as, after the first content.
RAISED: dict[str, type[AgentError]] = {
    "cut": APIConnectionError,
    "stall": APITimeoutError,
    "error_event": AgentError,
    "no_finish": APIConnectionError,
    "malformed": InvalidResponseError,
}
# The provider formats; "openai-responses" is an OpenAI agent on the Responses API (the
# OpenAI fake serves both).
KINDS = ("openai", "anthropic", "gemini", "openai-responses")
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}
# Generous next to the stream timeouts, far below the per-attempt timeout (30 s): a stall
# ended by anything but the stream timeouts would show.
BOUND = 15.0


def agent(fake: FakeProvider, name: str, **kw: Any) -> Agent:
    return Agent(fake.kind, MODELS[fake.kind], base_url=fake.base_url, api_key="test-key",
                 name=name, timeout=30, **kw)


async def pair(fake_factory: Any, kind: str) -> tuple[Agent, Agent, FakeProvider, FakeProvider]:
    """Agents "a" and "b" of `kind`, each on a fake of its own."""
    fake_kind, _, api = kind.partition("-")
    a, b = await fake_factory(fake_kind), await fake_factory(fake_kind)
    extra = {"api": api} if api else {}
    return agent(a, "a", **extra), agent(b, "b", **extra), a, b


def router(*agents: Agent, **kw: Any) -> AgentRouter:
    kw.setdefault("first_token_timeout", 2.0)
    kw.setdefault("stall_timeout", 1.0)
    return AgentRouter(list(agents), retries=0, **kw)


async def collect(r: AgentRouter, prompt: str = "hi") -> tuple[list[Any], BaseException | None]:
    events: list[Any] = []
    try:
        async for event in await r.stream_async(prompt):
            events.append(event)
    except AgentError as exc:
        return events, exc
    return events, None


def text_of(events: list[Any]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("recovery", ["error", "continue"])
async def test_a_fault_before_the_first_content_falls_back_unseen(
    fake_factory: Any, kind: str, fault: str, recovery: str
) -> None:
    """What was tried, with and without recovery: the first agent's stream fails
    before any content (after its role chunk / message_start, where the format has
    one); the second answers. The caller sees one clean stream from the second agent,
    announced once, and the first agent's attempt is recorded with its error."""
    agent_a, agent_b, a, b = await pair(fake_factory, kind)
    a.script(FAULTS[fault](after=0, reply=Reply(text=TEXT)))
    b.script(Reply(text="from b"))
    t0 = time.monotonic()
    events, error = await collect(router(agent_a, agent_b, stream_recovery=recovery))
    assert error is None
    assert time.monotonic() - t0 < BOUND
    started = [e for e in events if isinstance(e, Started)]
    assert [s.agent for s in started] == ["b"]
    assert text_of(events) == "from b"
    done = events[-1]
    assert isinstance(done, Done) and done.response.text == "from b"
    assert [(x.agent, x.outcome) for x in done.response.route.attempts] == [("a", "error"), ("b", "ok")]
    if fault == "stall":  # the silent connection was closed by us, at once
        assert isinstance(done.response.route.attempts[0].error, APITimeoutError)
        assert await a.wait_disconnect(5) == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_fault_after_the_first_content_raises_with_the_partial_text(
    fake_factory: Any, kind: str, fault: str
) -> None:
    """What was tried: the first agent sends one word, then fails. The stream raises
    that agent's typed error carrying exactly the text delivered; it never ends with
    Done (a truncated answer never looks complete), and the second agent is not asked."""
    agent_a, agent_b, a, b = await pair(fake_factory, kind)
    a.script(FAULTS[fault](after=1, reply=Reply(text=TEXT)))
    t0 = time.monotonic()
    events, error = await collect(router(agent_a, agent_b))
    assert time.monotonic() - t0 < BOUND
    assert isinstance(error, RAISED[fault]), repr(error)
    assert text_of(events) == "one"
    assert error.partial_text == "one"
    assert error.agent == f"{a.kind}/{MODELS[a.kind]}"
    assert not any(isinstance(e, Done) for e in events)
    assert b.requests == []
    if fault == "stall":
        assert await a.wait_disconnect(5) == 1


def test_a_sync_stream_stall_is_cut_too(fake_openai_sync: FakeProvider) -> None:
    """What was tried: a sync stream (iterated without an event loop) whose provider goes
    silent after one word: the stall timeout ends it (the wait is cut short on the
    router's loop thread) and the provider sees its connection closed."""
    fake_openai_sync.script(Stall(after=1, reply=Reply(text=TEXT)))
    r = router(agent(fake_openai_sync, "a"))
    got: list[str] = []
    with pytest.raises(APITimeoutError, match="stall_timeout") as ei:
        for event in r.stream("hi"):
            if isinstance(event, TextDelta):
                got.append(event.text)
    r.close()
    assert got == ["one"] and ei.value.partial_text == "one"
    assert fake_openai_sync.wait_disconnect_sync(5) == 1


async def test_first_token_timeout_counts_from_the_request(fake_factory: Any) -> None:
    """What was tried: the provider takes 3 s to send its headers; the route allows 0.5 s
    to the first content. The attempt is cut (its connection closed) and the next agent
    answers; a stream whose pieces come 0.3 s apart within a 1 s stall limit is not cut."""
    a, b = await fake_factory("anthropic"), await fake_factory("anthropic")
    a.script(Reply(text=TEXT, delay=3.0))
    b.script(Reply(text=TEXT, chunk_delay=0.3))
    events, error = await collect(router(agent(a, "a"), agent(b, "b"), first_token_timeout=0.5))
    assert error is None and text_of(events) == TEXT
    attempt = events[-1].response.route.attempts[0]
    assert isinstance(attempt.error, APITimeoutError) and "first_token_timeout" in attempt.error.message
    assert await a.wait_disconnect(5) == 1


async def test_an_agents_own_stall_timeout_applies_without_a_routes(fake_factory: Any) -> None:
    """What was tried: the route sets no stream limits, the agent a 0.5 s stall limit."""
    a = await fake_factory("gemini")
    a.script(Stall(after=1, reply=Reply(text=TEXT)))
    r = AgentRouter([agent(a, "a", stall_timeout=0.5)], retries=0)
    _, error = await collect(r)
    assert isinstance(error, APITimeoutError) and error.partial_text == "one"
    assert await a.wait_disconnect(5) == 1


def test_the_stream_limits_come_from_the_config_document() -> None:
    """What was tried: the limits set in a document, per agent and per route."""
    doc = parse_config(
        {
            "agents": [{"name": "a", "provider": "openai", "model": "gpt-4o", "stall_timeout": 3}],
            "routes": [
                {"name": "r", "agents": ["a"], "first_token_timeout": 5, "stall_timeout": 2,
                 "stream_recovery": "continue"}
            ],
        }
    )
    r = doc.router("r")
    assert (r.first_token_timeout, r.stall_timeout, r.stream_recovery) == (5, 2, "continue")
    assert r.agents[0].stall_timeout == 3
    with pytest.raises(Exception, match="stream_recovery"):
        parse_config({"agents": [], "routes": [{"name": "r", "agents": ["a"], "stream_recovery": "x"}]})


# ---- stream_recovery: continue ------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_recovery_continues_the_answer_on_the_next_agent(
    fake_factory: Any, kind: str, fault: str
) -> None:
    """What was tried: agent a sends "one two", then fails; the route continues on b,
    which repeats the last word before going on (as models asked to continue do). The
    caller reads one stream, announced once, with every word exactly once and a proper
    end; b was asked with the answer so far (Anthropic: as the assistant's prefill; the
    others: as an assistant turn and an instruction); usage adds both attempts."""
    agent_a, agent_b, a, b = await pair(fake_factory, kind)
    a.script(FAULTS[fault](after=2, reply=Reply(text=TEXT)))
    b.script(Reply(text=" two three four", usage=(10, 3)))
    r = router(agent_a, agent_b, stream_recovery="continue")
    events, error = await collect(r)
    assert error is None
    assert [e.agent for e in events if isinstance(e, Started)] == ["a"]
    assert text_of(events) == TEXT
    done = events[-1]
    assert isinstance(done, Done)
    response = done.response
    assert response.text == TEXT and response.messages[-1].text == TEXT
    assert response.usage.input_tokens > 10 and response.usage.output_tokens > 3
    (continued,) = response.route.continuations
    assert (continued.failed, continued.agent, continued.offset) == ("a", "b", len("one two"))
    assert "continued the answer" in response.route.reason
    asked = b.requests[0].json
    if kind == "anthropic":
        assert asked["messages"][-1] == {"role": "assistant", "content": "one two"}
    elif kind in ("openai", "openai-responses"):
        turns = asked["messages" if kind == "openai" else "input"]
        assert turns[-2] == {"role": "assistant", "content": "one two"}
        assert "Continue" in turns[-1]["content"]
    else:
        assert asked["contents"][-2] == {"role": "model", "parts": [{"text": "one two"}]}
    if fault == "stall":
        assert await a.wait_disconnect(5) == 1


async def test_recovery_never_continues_a_tool_call(fake_factory: Any) -> None:
    """What was tried: a stream that fails inside a tool call, on a route that continues
    streams: it ends with the error (b is never asked)."""
    a, b = await fake_factory("openai"), await fake_factory("openai")
    call = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
    a.script(CutStream(after=2, reply=Reply(tool_calls=[call])))
    r = router(agent(a, "a"), agent(b, "b"), stream_recovery="continue")
    request = r.request("weather?", stream=True)
    events: list[Any] = []
    with pytest.raises(APIConnectionError):
        async for event in r.stream_request(request):
            events.append(event)
    assert b.requests == []


async def test_recovery_never_continues_a_structured_answer(fake_factory: Any) -> None:
    """What was tried: a structured-output stream cut after content: it ends with the
    error rather than be spliced from two models' JSON."""
    a, b = await fake_factory("openai"), await fake_factory("openai")
    a.script(CutStream(after=2, reply=Reply(text='{"city": "Paris", "temp": 21}', chunks=4)))
    r = router(agent(a, "a"), agent(b, "b"), stream_recovery="continue")
    request = r.request("weather?", stream=True, schema=dict)
    with pytest.raises(APIConnectionError) as ei:
        async for _ in r.stream_request(request):
            pass
    assert ei.value.partial_text and b.requests == []


async def test_a_failing_continuation_is_the_last_error_with_all_the_text(fake_factory: Any) -> None:
    """What was tried: a breaks off, b continues with a few words then breaks off too,
    and no agent is left: the stream raises b's error carrying all the text delivered."""
    a, b = await fake_factory("anthropic"), await fake_factory("anthropic")
    a.script(CutStream(after=1, reply=Reply(text=TEXT)))
    b.script(StreamError(after=1, reply=Reply(text=" two three four")))
    events, error = await collect(router(agent(a, "a"), agent(b, "b"), stream_recovery="continue"))
    assert text_of(events) == "one two"
    assert error is not None and error.partial_text == "one two"
    assert error.agent.startswith("anthropic/") and not any(isinstance(e, Done) for e in events)


@pytest.mark.parametrize(
    ("so_far", "new", "kept"),
    [
        ("The quick brown fo", "fox jumps", "x jumps"),  # the cut word, restarted
        ("The quick brown fox", " brown fox jumps", " jumps"),  # a repeat of 10 characters
        ("I have two apples", "I have two apples and a pear", " and a pear"),  # all again
        ("aa", "ab", "ab"),  # one letter is no repeat inside a word
        ("one two ", " three", "three"),  # the space is not doubled
        ("one two", "one", "one"),  # ended inside the answer so far, not at its end
    ],
)
def test_the_overlap_cut(so_far: str, new: str, kept: str) -> None:
    """What was tried: continuations that repeat some, all or none of the answer so far,
    arriving a character at a time."""
    from agent._continuation import Overlap

    overlap = Overlap(so_far)
    out = "".join(overlap.feed(c) for c in new) + overlap.flush()
    assert out == kept


async def test_a_continuation_is_an_event_on_the_route_span(fake_factory: Any) -> None:
    """What was tried: a continued stream, traced by the router's own provider: the
    route span carries one `agent_router.stream.continued` event naming both agents,
    the offset and the reason, and no prompt or key."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    a, b = await fake_factory("openai"), await fake_factory("openai")
    a.script(CutStream(after=2, reply=Reply(text=TEXT)))
    b.script(Reply(text=" three four"))
    r = router(agent(a, "a"), agent(b, "b"), stream_recovery="continue", name="chat",
               tracer_provider=provider)
    events, error = await collect(r, "the secret prompt")
    assert error is None and text_of(events) == TEXT
    (route,) = [s for s in exporter.get_finished_spans() if s.name == "route chat"]
    (event,) = route.events
    assert event.name == "agent_router.stream.continued"
    attrs = dict(event.attributes or {})
    assert (attrs["agent_router.continued.failed"], attrs["agent_router.continued.agent"]) == ("a", "b")
    assert attrs["agent_router.continued.offset"] == len("one two")
    assert "APIConnectionError" in str(attrs["agent_router.continued.reason"])
    assert "secret prompt" not in str(attrs) and "test-key" not in str(attrs)
    provider.shutdown()


def test_a_plain_agents_sync_stream_stall_is_cut(fake_anthropic_sync: FakeProvider) -> None:
    """What was tried: an Agent (no router) streamed synchronously, its provider silent
    after one word: the agent's own stall limit ends it, its connection closed."""
    fake_anthropic_sync.script(Stall(after=1, reply=Reply(text=TEXT)))
    with agent(fake_anthropic_sync, "a", stall_timeout=0.5) as solo:
        with pytest.raises(APITimeoutError) as ei:
            for _ in solo.stream("hi"):
                pass
    assert ei.value.partial_text == "one"
    assert fake_anthropic_sync.wait_disconnect_sync(5) == 1
