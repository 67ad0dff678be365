"""The test doubles users get (`agent.testing`): TestAgent and MockTransport, each
doing what its documentation promises, inside real routers."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from agent import Agent, AgentRouter, Middleware, Started, TextDelta, ToolCall, ToolCallDelta
from agent.errors import (
    APIConnectionError,
    APITimeoutError,
    OutputValidationError,
    RateLimitError,
    RoutingError,
)
from agent.testing import Answer, MockTransport, TestAgent
from agent.transport import Reply, WireRequest


def test_canned_text_in_order_the_last_repeats() -> None:
    agent = TestAgent("one", "two")
    assert [agent.run("x").text for _ in range(3)] == ["one", "two", "two"]
    assert [r.input for r in agent.requests] == ["x", "x", "x"]


async def test_streams_tool_calls_and_usage() -> None:
    call = ToolCall("call_1", "get_weather", {"city": "Paris"})
    agent = TestAgent(Answer("it is sunny", tool_calls=[call]))
    events = [e async for e in await agent.stream_async("weather?")]
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["it", " is", " sunny"]
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert json.loads(deltas[0].arguments) == {"city": "Paris"} and deltas[0].name == "get_weather"
    response = events[-1].response
    assert response.tool_calls == [call] and response.finish_reason == "tool_calls"
    assert response.usage.input_tokens == 1 and response.usage.output_tokens == 3


def test_failures_drive_a_real_router_fallback() -> None:
    """What was tried: a TestAgent failing with a rate limit, then one answering; the
    router retries, falls back and reports both, as with real providers."""
    flaky = TestAgent(RateLimitError("slow down", retry_after=0.01), name="flaky")
    steady = TestAgent("hello", name="steady")
    router = AgentRouter([flaky, steady], retries=1)
    response = router.run("hi")
    assert response.text == "hello"
    assert [(a.agent, a.outcome) for a in response.route.attempts] == [
        ("flaky", "error"),
        ("flaky", "error"),
        ("steady", "ok"),
    ]
    assert len(flaky.requests) == 2


def test_a_slow_answer_times_out_like_a_hung_provider() -> None:
    slow = TestAgent(Answer("late", delay=5), name="slow", timeout=0.05)
    with pytest.raises(APITimeoutError):
        slow.run("x")
    router = AgentRouter([slow, TestAgent("fast", name="fast")], retries=0)
    assert router.run("x").text == "fast"


async def test_a_race_of_test_agents_and_the_winner_is_announced() -> None:
    router = AgentRouter(
        [TestAgent(Answer("slow", delay=1), name="slow"), TestAgent("quick", name="quick")],
        strategy="fastest",
    )
    events = [e async for e in await router.stream_async("x")]
    assert isinstance(events[0], Started) and events[0].agent == "quick"
    assert events[-1].response.text == "quick"


def test_json_and_middleware_run_for_real() -> None:
    class Out(BaseModel):
        n: int

    seen: list[str] = []

    class Note(Middleware):
        def after(self, request, response):  # type: ignore[no-untyped-def]
            seen.append(response.text)
            return response

    agent = TestAgent('{"n": 3}', "not json", middleware=[Note()])
    assert agent.json("x", schema=Out).output == Out(n=3)
    with pytest.raises(OutputValidationError):
        agent.json("x", schema=Out)
    assert seen == ['{"n": 3}']


def test_an_answer_may_depend_on_the_request() -> None:
    agent = TestAgent(lambda request: request.input.upper())
    assert agent.run("shout").text == "SHOUT"


OPENAI_BODY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "mocked"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def openai_handler(request: WireRequest) -> Reply:
    if json.loads(request.body).get("stream"):
        chunk = {"id": "c", "model": "gpt-4o", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
        end = {"id": "c", "model": "gpt-4o", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        body = f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(end)}\n\ndata: [DONE]\n\n"
        return Reply(200, {"content-type": "text/event-stream"}, body.encode())
    return Reply(200, {"content-type": "application/json"}, json.dumps(OPENAI_BODY).encode())


def test_mock_transport_serves_a_real_agent_sync_and_async() -> None:
    """What was tried: a real Agent (real OpenAI codec) whose bytes come from a
    MockTransport: a plain call, a stream, and the request it saw."""
    mock = MockTransport(openai_handler)
    agent = Agent("openai", "gpt-4o", api_key="sk-test-123456", transport=mock)
    assert agent.run("x").text == "mocked"
    assert [e.text for e in agent.stream("x") if isinstance(e, TextDelta)] == ["hi"]
    sent = mock.requests[0]
    assert sent.url == "https://api.openai.com/v1/chat/completions"
    assert json.loads(sent.body)["model"] == "gpt-4o"

    import asyncio

    assert asyncio.run(agent.run_async("x")).text == "mocked"


async def test_mock_transport_failures_are_typed() -> None:
    """What was tried: a handler answering 429, one raising a transport error, one
    with a bug (a KeyError): each reaches the caller as a typed AgentError."""

    def limited(request: WireRequest) -> Reply:
        body = {"error": {"message": "slow down", "type": "rate_limit"}}
        return Reply(429, {"retry-after": "2"}, json.dumps(body).encode())

    def cut(request: WireRequest) -> Reply:
        raise APIConnectionError("connection reset")

    def buggy(request: WireRequest) -> Reply:
        return {}["missing"]  # type: ignore[no-any-return]

    agents = [
        Agent("openai", "gpt-4o", api_key="k", transport=MockTransport(h), name=h.__name__)
        for h in (limited, cut, buggy)
    ]
    with pytest.raises(RoutingError) as caught:
        await AgentRouter(agents, retries=0).run_async("x")
    kinds = [type(e) for e in caught.value.errors]
    assert kinds == [RateLimitError, APIConnectionError, APIConnectionError]
    assert caught.value.errors[0].retry_after == 2
    assert "KeyError" in str(caught.value.errors[2])
