"""How async calls reach the network: the `AsyncTransport` seam.

The engine's codecs turn a request into a `WireRequest` (method, URL, headers, body)
and read back bytes; a transport moves those bytes. The default is httpx (one pooled
`AsyncClient` per event loop). Another client plugs in by implementing two methods:

    class MyTransport:
        async def send(self, request: WireRequest, timeout: float) -> Reply: ...

        async def open_stream(
            self, request: WireRequest, timeout: float
        ) -> AsyncStreamResponse | Reply: ...

and is chosen per agent (`Agent(transport=...)`), per router (`AgentRouter(transport=...)`,
for every agent that names none) or for the process (`set_default_transport`). The agent's
wins over the router's, the router's over the process default.

The transport is used by the async calls (`run_async`, `stream_async`, `json_async`) and
by the racing strategies, which run on an event loop even when called synchronously.
Sync calls use the engine's httpx client directly: no event loop behind the sync API.

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

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from agent._transport import HttpxTransport
from agent.providers.base import Reply, WireRequest

__all__ = [
    "AsyncStreamResponse",
    "AsyncTransport",
    "HttpxTransport",
    "Reply",
    "WireRequest",
    "default_transport",
    "set_default_transport",
]


class AsyncStreamResponse(Protocol):
    """An open streaming answer with a success status: its body arrives by iterating."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Looked up with lower-case names, as `Reply.headers`."""
        ...

    def __aiter__(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (chunk boundaries do not matter)."""
        ...

    async def aclose(self) -> None:
        """Release the connection: back to the pool when the body was read to its end,
        else closed, so that the provider sees the caller go. Called exactly once."""
        ...


class AsyncTransport(Protocol):
    async def send(self, request: WireRequest, timeout: float) -> Reply:
        """Send a request and read the whole answer."""
        ...

    async def open_stream(
        self, request: WireRequest, timeout: float
    ) -> AsyncStreamResponse | Reply:
        """Send a streaming request: the open answer, or (status >= 400) the whole error."""
        ...


_default: AsyncTransport = HttpxTransport()


def default_transport() -> AsyncTransport:
    """The transport of async calls whose agent and router name none."""
    return _default


def set_default_transport(transport: AsyncTransport | None) -> AsyncTransport:
    """Make `transport` the process-wide default (None: back to httpx); returns the one
    it replaces, so that a caller can put it back."""
    global _default
    previous = _default
    _default = transport if transport is not None else HttpxTransport()
    return previous
