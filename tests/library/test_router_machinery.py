"""The machinery shared by every strategy: retries, retry-after, circuit breakers,
deadlines, streaming fallback, middleware, route info."""

from __future__ import annotations

import time

import pytest
from fakes import CutStream, Fail, Hang, Reply, StreamError

from agent import Agent, AgentRouter, Done, Middleware, TextDelta, _steps
from agent._resources import Resources
from agent.errors import (
    APIConnectionError,
    APITimeoutError,
    OverloadedError,
    RoutingError,
)


def agent_for(fake, name: str, model: str = "gpt-4o", **kw) -> Agent:
    if fake.kind == "anthropic":
        return Agent(
            provider="anthropic",
            model="claude-haiku",
            base_url=fake.url,
            api_key="test-key",
            name=name,
            **kw,
        )
    return Agent(
        provider="openai", model=model, base_url=fake.base_url, api_key="test-key", name=name, **kw
    )


async def test_retry_after_is_honoured_on_the_same_agent(fake_factory) -> None:
    a, b = await fake_factory("openai"), await fake_factory("openai")
    a.script(Fail(429, retry_after=0.3), Reply(text="after the wait"))
    router = AgentRouter([agent_for(a, "a"), agent_for(b, "b")], retries=1)
    started = time.monotonic()
    response = await router.run_async("x")
    assert response.text == "after the wait"
    assert time.monotonic() - started >= 0.3, "waited as the provider asked"
    assert [(x.agent, x.outcome, x.retry) for x in response.route.attempts] == [
        ("a", "error", 0),
        ("a", "ok", 1),
    ]
    assert len(b.requests) == 0


async def test_a_retry_after_beyond_the_bound_falls_back_at_once(fake_factory) -> None:
    a, b = await fake_factory("openai"), await fake_factory("openai")
    a.script(Fail(429, retry_after=3600))
    router = AgentRouter([agent_for(a, "a"), agent_for(b, "b")], retries=3, max_retry_after=5)
    response = await router.run_async("x")
    assert response.route.attempts[-1].agent == "b"
    assert len(a.requests) == 1


async def test_non_retryable_errors_fall_back_without_retrying(fake_factory) -> None:
    a, b = await fake_factory("openai"), await fake_factory("openai")
    a.script(Fail(401))
    router = AgentRouter([agent_for(a, "a"), agent_for(b, "b")], retries=3)
    await router.run_async("x")
    assert len(a.requests) == 1


async def test_server_errors_are_retried_with_backoff(fake_factory) -> None:
    a = await fake_factory("openai")
    a.script(Fail(500), Fail(503), Reply(text="third time"))
    router = AgentRouter([agent_for(a, "a")], retries=2, backoff=0.01)
    response = await router.run_async("x")
    assert response.text == "third time"
    assert [x.retry for x in response.route.attempts] == [0, 1, 2]


async def test_deadline_bounds_the_whole_call(fake_factory) -> None:
    a, b = await fake_factory("openai"), await fake_factory("openai")
    a.script(Hang())
    b.script(Hang())
    router = AgentRouter(
        [agent_for(a, "a", timeout=30), agent_for(b, "b", timeout=30)], deadline=0.5
    )
    started = time.monotonic()
    with pytest.raises(RoutingError) as info:
        await router.run_async("x")
    assert time.monotonic() - started < 5, "the deadline, not the 30 s timeouts, ended it"
    assert any(isinstance(e, APITimeoutError) for e in info.value.errors)


async def test_stream_falls_back_before_the_first_token(fake_factory) -> None:
    a, b, c = [await fake_factory("openai") for _ in range(3)]
    a.script(Fail(500))  # an HTTP error
    b.script(StreamError(after=0, reply=Reply(text="never")))  # an error event before content
    c.script(Reply(text="from c only"))
    router = AgentRouter([agent_for(a, "a"), agent_for(b, "b"), agent_for(c, "c")], retries=0)
    events = [e async for e in await router.stream_async("x")]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "from c only"
    route = events[-1].response.route
    assert [(x.agent, x.outcome) for x in route.attempts] == [
        ("a", "error"),
        ("b", "error"),
        ("c", "ok"),
    ]


def test_stream_falls_back_on_connection_errors_sync(fake_openai_sync) -> None:
    dead = Agent(
        provider="openai",
        model="gpt-4o",
        api_key="k",
        base_url="http://127.0.0.1:9/v1",
        name="dead",
    )
    router = AgentRouter([dead, agent_for(fake_openai_sync, "live")], retries=0)
    text = "".join(e.text for e in router.stream("x") if e.type == "text_delta")
    assert text == "Hello from openai"


@pytest.mark.parametrize(
    "behaviour",
    [
        CutStream(after=2, reply=Reply(text="one two three four")),
        StreamError(after=2, reply=Reply(text="one two three four"), error_type="overloaded_error"),
    ],
    ids=["cut", "error-event"],
)
async def test_after_the_first_token_a_failure_ends_the_stream(fake_factory, behaviour) -> None:
    a, b = await fake_factory("anthropic"), await fake_factory("openai")
    a.script(behaviour)
    router = AgentRouter([agent_for(a, "a"), agent_for(b, "b")], retries=1)
    texts = []
    with pytest.raises((APIConnectionError, OverloadedError)):
        async for event in await router.stream_async("x"):
            if isinstance(event, TextDelta):
                texts.append(event.text)
    assert "".join(texts).split() == ["one", "two"], "what was sent is never repeated"
    assert len(b.requests) == 0, "no silent switch to another agent mid-answer"
    assert len(a.requests) == 1, "no retry after content was sent"


class Recorder(Middleware):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def before(self, request):
        self.seen.append("before")
        return request

    def after(self, request, response):
        self.seen.append(f"after {response.provider}/{response.model} {response.cost_estimate:.6f}")
        return response

    def on_error(self, request, error):
        self.seen.append(f"error {type(error).__name__}")


class AsyncTag(Middleware):
    async def before(self, request):
        request.metadata["tagged"] = True
        return request

    async def after(self, request, response):
        response.text = response.text + " [checked]"
        return response


async def test_middleware_per_agent_and_router(fake_factory) -> None:
    a, b = await fake_factory("openai"), await fake_factory("openai")
    a.script(Fail(401))
    per_a, per_b, top = Recorder(), Recorder(), Recorder()
    router = AgentRouter(
        [agent_for(a, "a", middleware=[per_a]), agent_for(b, "b", middleware=[per_b, AsyncTag()])],
        middleware=[top],
        retries=0,
    )
    response = await router.run_async("x")
    assert per_a.seen == ["before", "error AuthenticationError"]
    assert per_b.seen[0] == "before" and per_b.seen[1].startswith("after openai/gpt-4o 0.0")
    assert top.seen[0] == "before" and top.seen[1].startswith("after openai/gpt-4o")
    assert response.text.endswith("[checked]")


async def test_middleware_after_sees_the_assembled_stream(fake_openai) -> None:
    rec = Recorder()
    router = AgentRouter([agent_for(fake_openai, "a", middleware=[rec])])
    events = [e async for e in await router.stream_async("x")]
    assert rec.seen[-1].startswith("after openai/gpt-4o")
    assert events[-1].response.text == "Hello from openai"


def test_router_on_error_sees_the_routing_error() -> None:
    rec = Recorder()
    router = AgentRouter([Agent(provider="invalid", model="x")], middleware=[rec])
    with pytest.raises(RoutingError):
        router.run("x")
    assert rec.seen == ["before", "error RoutingError"]


async def test_what_follows_an_emit_without_waiting_joins_its_batch() -> None:
    # The async driver hands a consumer (the sidecar's relay) one batch per wait: emits
    # that follow each other and the return travel together, Done included; a step that
    # waits, and an error, come only after the events before them were taken.
    owner = Resources("test")
    a, b, c = TextDelta("a"), TextDelta("b"), TextDelta("c")

    def whole() -> _steps.Steps[str]:
        yield _steps.Emit([a])
        yield _steps.Emit([b])
        return "the answer"

    batches = [batch async for batch in _steps.batches_async(whole(), owner)]
    assert len(batches) == 1
    assert batches[0][:2] == [a, b] and isinstance(batches[0][2], Done)
    assert batches[0][2].response == "the answer"

    def waits() -> _steps.Steps[str]:
        yield _steps.Emit([a])
        yield _steps.Sleep(0)
        yield _steps.Emit([b, c])
        return "later"

    got = [batch async for batch in _steps.batches_async(waits(), owner)]
    assert got[0] == [a] and got[1][:2] == [b, c] and len(got) == 2

    def breaks() -> _steps.Steps[str]:
        yield _steps.Emit([a])
        raise APIConnectionError("cut")

    failing = _steps.batches_async(breaks(), owner)
    assert await anext(failing) == [a]  # the content first,
    with pytest.raises(APIConnectionError, match="cut"):  # then the error
        await anext(failing)
