"""Test doubles for your own tests: no network, no servers.

* `TestAgent`: an agent with canned answers (text, streams, tool calls, failures,
  delays) that records what it was asked. It stands wherever an agent can, inside
  routers too, so your code's routing, middleware and error handling run for real.
* `MockTransport`: a transport (both protocols) that answers every HTTP request with
  your function, so a real `Agent` runs its real codec against bytes you choose.

    from agent import AgentRouter
    from agent.errors import RateLimitError
    from agent.testing import TestAgent

    router = AgentRouter([TestAgent(RateLimitError("slow down"), name="a"),
                          TestAgent("hello", name="b")], retries=0)
    assert router.run("hi").text == "hello"
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from agent import _steps
from agent._base import TOP, BaseAgent, Caller, with_middleware
from agent._resources import Resources
from agent.agent import validate_output
from agent.catalog import Capabilities
from agent.errors import AgentError, APIConnectionError, APITimeoutError
from agent.middleware import Middleware
from agent.types import (
    FinishReason,
    Request,
    Response,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from agent.wire.base import Reply, WireRequest

__all__ = ["Answer", "MockTransport", "TestAgent"]


@dataclass(slots=True)
class Answer:
    """One canned answer: text and/or tool calls, after `delay` seconds."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage | None = None  # None: one token per word of the prompt and the answer
    finish_reason: FinishReason | None = None  # None: "tool_calls" when there are some
    delay: float = 0.0


AnswerLike = str | Answer | AgentError | Callable[[Request], "str | Answer | AgentError"]


class TestAgent(BaseAgent):
    """An agent that answers from `answers`, in order (the last one repeats).

    An answer is a string (the text), an `Answer` (tool calls, usage, a delay), an
    `AgentError` instance (raised, as a provider's failure would be), or a function of
    the `Request` returning one of those. Streams send the text word by word. Every
    request is kept in `requests`. An answer slower than the call's timeout fails with
    `APITimeoutError` after the timeout, as a hung provider would.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        *answers: AnswerLike,
        name: str = "test",
        provider: str = "test",
        model: str = "test-model",
        timeout: float = 60.0,
        weight: float = 1.0,
        middleware: Iterable[Middleware] | None = None,
        capabilities: Capabilities | None = None,
        cost: float | None = None,
    ) -> None:
        self.name, self.provider, self.model = name, provider, model
        self.timeout = timeout
        self.weight = weight
        self.middleware = list(middleware or ())
        self._answers = list(answers) or ["ok"]
        self._capabilities = capabilities or Capabilities()
        self._cost = cost
        self._resources = Resources(name)
        self.requests: list[Request] = []

    def __repr__(self) -> str:
        return f"TestAgent(name={self.name!r})"

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    def estimate_cost(self, request: Request) -> float | None:
        return self._cost

    def steps(
        self,
        request: Request,
        caller: Caller = TOP,
    ) -> _steps.Steps[Response[Any]]:
        seconds = caller.timeout or self.timeout
        return with_middleware(self.middleware, request, lambda r: self._answer(r, seconds))

    def _next(self, request: Request) -> str | Answer | AgentError:
        self.requests.append(request)
        answer = self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]
        return answer(request) if callable(answer) else answer

    def _answer(self, request: Request, timeout: float) -> _steps.Steps[Response[Any]]:
        start = time.perf_counter()
        answer = self._next(request)
        if isinstance(answer, str):
            answer = Answer(answer)
        delay = answer.delay if isinstance(answer, Answer) else 0.0
        if delay:
            yield _steps.Sleep(min(delay, timeout))
            if delay > timeout:
                raise APITimeoutError("no answer in time").at(self.provider, self.model)
        if isinstance(answer, AgentError):
            raise answer.at(self.provider, self.model)
        first: float | None = None
        if request.stream:
            events = list(_stream_events(answer))
            if events:
                first = time.perf_counter()
                yield _steps.Emit(events)
        output: Any = answer.text
        if request.output_schema is not None and request.output_schema.parse is not None:
            output = validate_output(request.output_schema, answer.text, self.provider, self.model)
        words = sum(len(m.text.split()) for m in request.messages)
        return Response(
            output=output,
            text=answer.text,
            provider=self.provider,
            model=self.model,
            latency_ms=round((time.perf_counter() - start) * 1000, 3),
            usage=answer.usage or Usage(words, len(answer.text.split())),
            cost_estimate=self._cost or 0.0,
            cost_known=self._cost is not None,
            finish_reason=answer.finish_reason or ("tool_calls" if answer.tool_calls else "stop"),
            tool_calls=list(answer.tool_calls),
            time_to_first_token_ms=None if first is None else round((first - start) * 1000, 3),
        )


def _stream_events(answer: Answer) -> Iterator[StreamEvent]:
    words = answer.text.split(" ")
    for i, word in enumerate(words):
        if word or len(words) == 1:
            yield TextDelta(word if i == 0 else " " + word)
    for i, call in enumerate(answer.tool_calls):
        yield ToolCallDelta(i, call.id, call.name, json.dumps(call.arguments))


# ---- MockTransport ----------------------------------------------------------------------

Handler = Callable[[WireRequest], Reply | Awaitable[Reply]]


class MockTransport:
    """A transport that answers each request with `handler(request)`: a `Reply`
    (status, headers, body), or an awaitable of one when called from async code.

    A streamed answer's body is delivered event by event (split after each blank
    line), as a server sends SSE. `handler` may raise an `AgentError` to fail the way a
    transport does (`APIConnectionError`, `APITimeoutError`); anything else it raises
    becomes an `APIConnectionError`. Every request is kept in `requests`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[WireRequest] = []
        self.closed = False

    def __repr__(self) -> str:
        return f"MockTransport({getattr(self.handler, '__name__', 'handler')})"

    def _reply(self, result: Any) -> Reply:
        if not isinstance(result, Reply):
            raise TypeError(f"a MockTransport handler returns a Reply, not {result!r}")
        return result

    def _call(self, request: WireRequest) -> Any:
        self.requests.append(request)
        try:
            return self.handler(request)
        except AgentError:
            raise
        except Exception as exc:
            raise APIConnectionError(f"transport error: {type(exc).__name__}: {exc}") from exc

    def send(self, request: WireRequest, timeout: float) -> Reply:
        result = self._call(request)
        if inspect.isawaitable(result):
            raise TypeError("an async MockTransport handler cannot serve a sync call")
        return self._reply(result)

    def open_stream(self, request: WireRequest, timeout: float) -> _MockStream | Reply:
        reply = self.send(request, timeout)
        return reply if reply.status >= 400 else _MockStream(reply)

    def close(self) -> None:
        self.closed = True

    async def send_async(self, request: WireRequest, timeout: float) -> Reply:
        result = self._call(request)
        if inspect.isawaitable(result):
            result = await result
        return self._reply(result)

    async def open_stream_async(self, request: WireRequest, timeout: float) -> _MockStream | Reply:
        reply = await self.send_async(request, timeout)
        return reply if reply.status >= 400 else _MockStream(reply)

    async def aclose(self) -> None:
        self.closed = True


class _MockStream:
    """A reply's body as a stream: sync and async iteration, one SSE event per chunk."""

    def __init__(self, reply: Reply) -> None:
        self.status, self.headers = reply.status, reply.headers
        body = reply.body
        self._chunks = [c + b"\n\n" for c in body.split(b"\n\n") if c] if body else []
        if body and not body.endswith(b"\n\n"):
            self._chunks[-1] = self._chunks[-1][:-2]

    def __iter__(self) -> Iterator[bytes]:
        while self._chunks:
            yield self._chunks.pop(0)

    def __aiter__(self) -> _MockStream:
        return self

    async def __anext__(self) -> bytes:
        if not self._chunks:
            raise StopAsyncIteration
        return self._chunks.pop(0)

    def close(self) -> None:
        self._chunks.clear()

    async def aclose(self) -> None:
        self._chunks.clear()
