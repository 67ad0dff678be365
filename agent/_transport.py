"""HTTP I/O with httpx: pooled clients shared by every agent, and the one place where
httpx exceptions become `agent.errors` (nothing from httpx escapes).

The sync functions serve the sync API; `HttpxTransport` is the default
`agent.transport.AsyncTransport` of the async one."""

from __future__ import annotations

import asyncio
import functools
import ssl
import threading
import weakref
from collections.abc import AsyncIterator, Iterator

import httpx

from agent.errors import AgentError, APIConnectionError, APITimeoutError, ConfigurationError
from agent.providers.base import Reply, WireRequest

# Keep-alive matters more than anything else for latency; allow many connections because
# a sidecar multiplexes a whole pod's traffic through these pools.
_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=60)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Building a context loads the CA bundle (~10 ms); every client shares one.
    return httpx.create_ssl_context()


def timeout_for(seconds: float) -> httpx.Timeout:
    return httpx.Timeout(seconds, connect=min(seconds, 10.0))


def map_error(exc: Exception) -> AgentError:
    """The single mapping from transport exceptions to the library's error tree."""
    if isinstance(exc, AgentError):
        return exc
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"no answer in time ({type(exc).__name__})")
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return ConfigurationError(f"bad base URL: {exc}")
    if isinstance(exc, httpx.TransportError | OSError):
        detail = str(exc) or type(exc).__name__
        return APIConnectionError(f"connection failed: {detail}")
    return APIConnectionError(f"transport error: {type(exc).__name__}: {exc}")


class SyncStream:
    """An open streaming response (sync)."""

    __slots__ = ("_chunks", "headers", "response", "status")

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status = response.status_code
        self.headers = response.headers
        self._chunks: Iterator[bytes] = response.iter_raw()

    def read(self) -> bytes:
        try:
            return next(self._chunks, b"")
        except Exception as exc:
            raise map_error(exc) from exc

    def close(self) -> None:
        self.response.close()


class AsyncStream:
    """An open streaming response (async): an `agent.transport.AsyncStreamResponse`."""

    __slots__ = ("_chunks", "headers", "response", "status")

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status = response.status_code
        self.headers = response.headers
        self._chunks: AsyncIterator[bytes] = response.aiter_raw()

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            raise
        except Exception as exc:
            raise map_error(exc) from exc

    async def aclose(self) -> None:
        await self.response.aclose()


_sync_client: httpx.Client | None = None
_sync_lock = threading.Lock()
# One async client per event loop: httpx's pools belong to the loop that made them.
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


def sync_client() -> httpx.Client:
    global _sync_client
    if _sync_client is None:
        with _sync_lock:
            if _sync_client is None:
                _sync_client = httpx.Client(verify=_ssl_context(), limits=_LIMITS)
    return _sync_client


def async_client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = httpx.AsyncClient(verify=_ssl_context(), limits=_LIMITS)
        _async_clients[loop] = client
    return client


def _request(
    client: httpx.Client | httpx.AsyncClient, wire: WireRequest, timeout: float
) -> httpx.Request:
    return client.build_request(
        wire.method,
        wire.url,
        headers=wire.headers,
        content=wire.body,
        timeout=timeout_for(timeout),
    )


def send(wire: WireRequest, timeout: float) -> Reply:
    client = sync_client()
    try:
        r = client.send(_request(client, wire, timeout))
    except Exception as exc:
        raise map_error(exc) from exc
    return Reply(r.status_code, r.headers, r.content)


def open_stream(wire: WireRequest, timeout: float) -> SyncStream | Reply:
    """A stream to read from, or (for an HTTP error) the whole error reply."""
    client = sync_client()
    try:
        r = client.send(_request(client, wire, timeout), stream=True)
        if r.status_code >= 400:
            try:
                return Reply(r.status_code, r.headers, r.read())
            finally:
                r.close()
    except Exception as exc:
        raise map_error(exc) from exc
    return SyncStream(r)


class HttpxTransport:
    """The engine's default async transport: one pooled httpx client per event loop
    (httpx's pools belong to the loop that made them), shared by every instance."""

    async def send(self, request: WireRequest, timeout: float) -> Reply:
        client = async_client()
        try:
            r = await client.send(_request(client, request, timeout))
        except Exception as exc:
            raise map_error(exc) from exc
        return Reply(r.status_code, r.headers, r.content)

    async def open_stream(self, request: WireRequest, timeout: float) -> AsyncStream | Reply:
        client = async_client()
        try:
            r = await client.send(_request(client, request, timeout), stream=True)
            if r.status_code >= 400:
                try:
                    return Reply(r.status_code, r.headers, await r.aread())
                finally:
                    await r.aclose()
        except Exception as exc:
            raise map_error(exc) from exc
        return AsyncStream(r)


def close_all() -> None:
    """Close the shared sync client (tests and short scripts; not needed otherwise)."""
    global _sync_client
    if _sync_client is not None:
        _sync_client.close()
        _sync_client = None
