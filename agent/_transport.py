"""HTTP I/O with httpx: the engine's own transport, and the one place where httpx
exceptions become `agent.errors` (nothing from httpx escapes).

An `HttpxTransport` serves both protocols of `agent.transport`: one pooled sync client,
and one pooled async client per event loop (httpx's async pools belong to the loop that
made them). Every agent and router that is given no transport makes one when first
called, and closes it in `close()` / `aclose()`.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import threading
import weakref
from collections.abc import AsyncIterator, Iterator

import httpx

from agent.errors import AgentError, APIConnectionError, APITimeoutError, ConfigurationError
from agent.wire.base import Reply, WireRequest

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
    """The single mapping from httpx's exceptions to the library's error tree."""
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
    """An open streaming response (sync): an `agent.transport.StreamResponse`."""

    __slots__ = ("_chunks", "headers", "response", "status")

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status = response.status_code
        self.headers = response.headers
        self._chunks: Iterator[bytes] = response.iter_raw()

    def __iter__(self) -> SyncStream:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._chunks)
        except StopIteration:
            raise
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


def _request(
    client: httpx.Client | httpx.AsyncClient, wire: WireRequest, timeout: float
) -> httpx.Request:
    return client.build_request(
        wire.method, wire.url, headers=wire.headers, content=wire.body, timeout=timeout_for(timeout)
    )


class HttpxTransport:
    """The engine's transport: `agent.transport.Transport` and `AsyncTransport` on httpx.

    Its pools are made when first used and closed by `close()` (the sync pool, and async
    pools whose loop has ended) and `aclose()` (the running loop's pool too)."""

    def __init__(self) -> None:
        self._sync: httpx.Client | None = None
        self._lock = threading.Lock()
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return "HttpxTransport()"

    # ---- sync ----------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        if self._sync is None:
            with self._lock:
                if self._sync is None:
                    self._sync = httpx.Client(verify=_ssl_context(), limits=_LIMITS)
        return self._sync

    def send(self, request: WireRequest, timeout: float) -> Reply:
        client = self._client()
        try:
            r = client.send(_request(client, request, timeout))
        except Exception as exc:
            raise map_error(exc) from exc
        return Reply(r.status_code, r.headers, r.content)

    def open_stream(self, request: WireRequest, timeout: float) -> SyncStream | Reply:
        client = self._client()
        try:
            r = client.send(_request(client, request, timeout), stream=True)
            if r.status_code >= 400:
                try:
                    return Reply(r.status_code, r.headers, r.read())
                finally:
                    r.close()
        except Exception as exc:
            raise map_error(exc) from exc
        return SyncStream(r)

    def close(self) -> None:
        with self._lock:
            client, self._sync = self._sync, None
        if client is not None:
            client.close()

    # ---- async ---------------------------------------------------------------------------

    def _async_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            client = httpx.AsyncClient(verify=_ssl_context(), limits=_LIMITS)
            self._async[loop] = client
        return client

    async def send_async(self, request: WireRequest, timeout: float) -> Reply:
        client = self._async_client()
        try:
            r = await client.send(_request(client, request, timeout))
        except Exception as exc:
            raise map_error(exc) from exc
        return Reply(r.status_code, r.headers, r.content)

    async def open_stream_async(self, request: WireRequest, timeout: float) -> AsyncStream | Reply:
        client = self._async_client()
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

    async def aclose(self) -> None:
        client = self._async.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
        self.close()

    def pools(self) -> int:
        """How many connection pools are open (one sync, one per event loop in use)."""
        return (self._sync is not None) + len(self._async)
