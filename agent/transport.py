"""How calls reach the network: the `Transport` and `AsyncTransport` protocols.

The engine's codecs turn a request into a `WireRequest` (method, URL, headers, body)
and read back bytes; a transport moves those bytes. As in httpx, there are two
protocols, one for sync calls and one for async calls; a transport may implement
either or both (the engine's `HttpxTransport` and `agent.testing.MockTransport` do both):

    class MyTransport:                                   # Transport (sync calls)
        def send(self, request: WireRequest, timeout: float) -> Reply: ...
        def open_stream(self, request, timeout) -> StreamResponse | Reply: ...
        def close(self) -> None: ...

        async def send_async(self, request, timeout) -> Reply: ...          # AsyncTransport
        async def open_stream_async(self, request, timeout) -> AsyncStreamResponse | Reply: ...
        async def aclose(self) -> None: ...

Which transport a call uses: the agent's own (`Agent(transport=...)`), else the nearest
router's (`AgentRouter(transport=...)`, for every agent inside it, nested routers
included), else the process default (`set_default_transport`), else the connection
pools of the agent or router you called, which it makes when first needed and closes in
`close()` / `aclose()` (or `with` / `async with`). Transports you pass in are yours: a
router never closes them.

Racing strategies (`fastest`, `hedged`), streams with a `first_token_timeout` or a
`stall_timeout` (a wait cut short needs a loop) and background probes run on an event
loop even when called synchronously (the router's own loop thread, see
`AgentRouter.close`), so they need the async protocol. A call that reaches a transport without the protocol it
needs fails with a `ConfigurationError` naming it (and a router falls back past it).

Contract:

* `timeout` bounds each wait (connecting, each read), not a whole streamed answer.
* Failures are raised as `agent.errors`: `APITimeoutError` for a timeout,
  `APIConnectionError` for a refused, reset or broken connection, `ConfigurationError`
  for a URL that cannot be used. The client's own exceptions must not escape: the
  router retries and falls back on these types, and stops on anything else.
* An HTTP error status is not an exception: `send` returns it as a `Reply`, and so does
  `open_stream` (with the whole error body read and the connection released), so that
  the provider's codec can turn it into the right typed error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from agent.wire.base import Reply, WireRequest

if TYPE_CHECKING:
    from agent._transport import HttpxTransport

__all__ = [
    "AsyncStreamResponse",
    "AsyncTransport",
    "HttpxTransport",
    "Reply",
    "StreamResponse",
    "Transport",
    "WireRequest",
    "default_transport",
    "set_default_transport",
]


class StreamResponse(Protocol):
    """An open streaming answer with a success status: its body arrives by iterating."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Looked up with lower-case names, as `Reply.headers`."""
        ...

    def __iter__(self) -> Iterator[bytes]:
        """The body's bytes as they arrive (chunk boundaries do not matter)."""
        ...

    def close(self) -> None:
        """Release the connection: back to the pool when the body was read to its end,
        else closed, so that the provider sees the caller go. Called exactly once."""
        ...


class AsyncStreamResponse(Protocol):
    """`StreamResponse` for async calls."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Transport(Protocol):
    def send(self, request: WireRequest, timeout: float) -> Reply:
        """Send a request and read the whole answer."""
        ...

    def open_stream(self, request: WireRequest, timeout: float) -> StreamResponse | Reply:
        """Send a streaming request: the open answer, or (status >= 400) the whole error."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class AsyncTransport(Protocol):
    async def send_async(self, request: WireRequest, timeout: float) -> Reply: ...

    async def open_stream_async(
        self, request: WireRequest, timeout: float
    ) -> AsyncStreamResponse | Reply: ...

    async def aclose(self) -> None: ...


AnyTransport = Transport | AsyncTransport

_default: AnyTransport | None = None


def default_transport() -> AnyTransport | None:
    """The process-wide transport, if one was set (None: each agent and router uses
    its own pools)."""
    return _default


def set_default_transport(transport: AnyTransport | None) -> AnyTransport | None:
    """Make `transport` the process-wide default (None: back to each agent's and
    router's own pools); returns the one it replaces, so that a caller can put it back.
    The process default is never closed by the library."""
    global _default
    previous = _default
    _default = transport
    return previous


def __getattr__(name: str) -> Any:
    # httpx and httpcore cost a process about 3 MB: loaded when the engine's own
    # transport is first asked for, not by every import (the sidecar has its own client).
    if name == "HttpxTransport":
        from agent._transport import HttpxTransport

        return HttpxTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
