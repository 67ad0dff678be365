"""`BaseAgent`: what an `Agent` and an `AgentRouter` share, so that a router can stand
wherever an agent can (inside another router too).

Each of them says how one call goes as steps (`steps()`); the call surface (`run`,
`run_async`, `stream`, `stream_async`, `json`, `json_async`) drives those steps, and
the lifecycle (`close`, `aclose`, `with`, `async with`) closes what it owns.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar, overload

import pydantic

from agent import _steps
from agent._resources import Resources
from agent.errors import AgentError, InvalidRequestError
from agent.middleware import Middleware, overrides
from agent.tools import ToolLike, to_tool_specs
from agent.transport import AnyTransport, default_transport
from agent.types import Message, OutputSchema, Request, Response, StreamEvent, as_messages

if TYPE_CHECKING:
    from types import TracebackType

    from agent.catalog import Capabilities
    from agent.config import AgentLimitsConfig
    from agent.pricing import Price
    from agent.types import ToolSpec

__all__ = ["TOP", "BaseAgent", "Caller", "Prompt", "shortest"]

T = TypeVar("T")
Prompt = str | Sequence[Message | dict[str, Any]]
Self = TypeVar("Self", bound="BaseAgent")


@dataclass(frozen=True, slots=True)
class Caller:
    """What the caller of an agent's `steps()` hands it."""

    timeout: float | None = None  # at most this many seconds per wait (a router's time left)
    transport: AnyTransport | None = None  # for the requests of agents that name none
    nested: bool = False  # called by a router, which traces the call inside its decision
    # A stream's limits set by the routes around the agent (the agent's own may be shorter).
    first_token_timeout: float | None = None  # seconds to the first content
    stall_timeout: float | None = None  # longest silence between events after it

    def tighter(self, first_token: float | None, stall: float | None) -> Caller:
        """This caller with stream limits no looser than `first_token` and `stall`."""
        return replace(
            self,
            first_token_timeout=shortest(self.first_token_timeout, first_token),
            stall_timeout=shortest(self.stall_timeout, stall),
        )


TOP = Caller()


def shortest(*seconds: float | None) -> float | None:
    """The smallest limit of those set (None: none is)."""
    best = None
    for s in seconds:  # a loop, not min() over a generator: this runs several times a call
        if s is not None and (best is None or s < best):
            best = s
    return best


class BaseAgent:
    """The call surface of every agent. Subclasses set the attributes below and
    implement `steps()`; `agent.testing.TestAgent` is one, a router is another."""

    name: str
    provider: str
    model: str
    timeout: float
    weight: float = 1.0
    transport: AnyTransport | None = None
    limits: AgentLimitsConfig | None = None  # a provider account's limits (an Agent's)
    middleware: list[Middleware]
    _resources: Resources
    _own_caller: Caller | None = None  # what `_call` hands `steps()`, kept while it fits

    # ---- what routers ask ---------------------------------------------------------------

    @property
    def tools(self) -> list[ToolSpec]:
        return []

    @property
    def capabilities(self) -> Capabilities:
        raise NotImplementedError

    @property
    def price(self) -> Price | None:
        return None

    def estimate_cost(self, request: Request) -> float | None:
        """USD for this request, or None when unknown."""
        return None

    def steps(
        self,
        request: Request,
        caller: Caller = TOP,
    ) -> _steps.Steps[Response[Any]]:
        """This agent's whole call as steps, for `caller` (see `Caller`)."""
        raise NotImplementedError

    # ---- the public call surface --------------------------------------------------------

    def request(self, prompt: Prompt, **options: Any) -> Request:
        """Normalize a call's arguments (see `build_request`)."""
        return build_request(prompt, **options)

    def _call(self, request: Request) -> _steps.Steps[Response[Any]]:
        """A call made on this object itself: it brings the transport of last resort."""
        transport = self.transport or default_transport() or self._resources.pool()
        caller = self._own_caller
        if caller is None or caller.transport is not transport:
            caller = self._own_caller = Caller(transport=transport)  # one per transport
        return self.steps(request, caller)

    def run(self, prompt: Prompt, **options: Any) -> Response[str]:
        return _steps.run(self._call(self.request(prompt, **options)), self._resources)

    async def run_async(self, prompt: Prompt, **options: Any) -> Response[str]:
        return await _steps.run_async(self._call(self.request(prompt, **options)), self._resources)

    def stream(self, prompt: Prompt, **options: Any) -> Iterator[StreamEvent]:
        request = self.request(prompt, stream=True, **options)
        return _steps.iterate(self._call(request), self._resources)

    async def stream_async(self, prompt: Prompt, **options: Any) -> AsyncIterator[StreamEvent]:
        return self.stream_request(self.request(prompt, stream=True, **options))

    @overload
    def json(self, prompt: Prompt, schema: type[T], **options: Any) -> Response[T]: ...
    @overload
    def json(self, prompt: Prompt, schema: Any, **options: Any) -> Response[Any]: ...
    def json(self, prompt: Prompt, schema: Any, **options: Any) -> Response[Any]:
        return self.run_request(self.request(prompt, schema=schema, **options))

    async def json_async(self, prompt: Prompt, schema: Any, **options: Any) -> Response[Any]:
        return await self.run_request_async(self.request(prompt, schema=schema, **options))

    # Entry points for a request already normalized (the sidecar's).

    def run_request(self, request: Request) -> Response[Any]:
        return _steps.run(self._call(request), self._resources)

    async def run_request_async(self, request: Request) -> Response[Any]:
        return await _steps.run_async(self._call(request), self._resources)

    def stream_request(self, request: Request) -> AsyncIterator[StreamEvent]:
        """Stream a normalized request (async)."""
        return _steps.iterate_async(self._call(request), self._resources)

    def stream_batches(self, request: Request) -> AsyncIterator[list[StreamEvent]]:
        """`stream_request`'s events in the batches they arrive in (see
        `_steps.batches_async`): the sidecar's entry point."""
        return _steps.batches_async(self._call(request), self._resources)

    # ---- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pools this object made, stop its loop thread and its
        background probes. Transports given to it are left open (they are yours)."""
        self._resources.close()

    async def aclose(self) -> None:
        """`close()` from async code (the running loop's pools too)."""
        await self._resources.aclose()

    def __enter__(self: Self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self: Self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def build_request(
    prompt: Prompt,
    *,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    stop: str | Sequence[str] | None = None,
    tools: Iterable[ToolLike] | None = None,
    schema: Any = None,
    stream: bool = False,
    metadata: dict[str, Any] | None = None,
    **extra: Any,
) -> Request:
    """A call's arguments as one normalized `Request` (built once for every agent)."""
    if stop is not None and not isinstance(stop, str | list | tuple):
        raise InvalidRequestError(f"stop= takes a string or a list of strings, not {stop!r}")
    if system is not None and not isinstance(system, str):
        raise InvalidRequestError(f"system= takes a string, not {type(system).__name__}")
    return Request(
        messages=as_messages(prompt),
        system=system,
        temperature=temperature,
        max_tokens=max_tokens,
        stop=[stop] if isinstance(stop, str) else list(stop) if stop else None,
        tools=to_tool_specs(tools),
        output_schema=output_schema(schema) if schema is not None else None,
        stream=stream,
        extra=extra,
        metadata=metadata or {},
    )


def output_schema(schema: Any) -> OutputSchema:
    """The JSON schema and validator for `json(schema=...)`: a pydantic model or any type."""
    try:
        adapter = pydantic.TypeAdapter(schema)
        json_schema = adapter.json_schema()
    except (pydantic.PydanticSchemaGenerationError, pydantic.PydanticUserError) as exc:
        raise InvalidRequestError(f"schema= is not a type pydantic can validate: {exc}") from exc
    name = getattr(schema, "__name__", "output")
    return OutputSchema(name, json_schema, adapter.validate_json)


def with_middleware(
    middleware: list[Middleware],
    request: Request,
    make: Callable[[Request], _steps.Steps[Response[Any]]],
) -> _steps.Steps[Response[Any]]:
    """`make(request)`'s steps inside the hooks of `middleware`: `before` may change the
    request, `on_error` hears an AgentError (which is then raised on), `after` may
    change the response."""
    for mw in middleware:
        if overrides(mw, "before"):
            request = (yield _steps.Invoke(mw.before, (request,))) or request
    try:
        response = yield from make(request)
    except AgentError as error:
        for mw in middleware:
            if overrides(mw, "on_error"):
                yield _steps.Invoke(mw.on_error, (request, error))
        raise
    for mw in middleware:
        if overrides(mw, "after"):
            response = (yield _steps.Invoke(mw.after, (request, response))) or response
    return response
