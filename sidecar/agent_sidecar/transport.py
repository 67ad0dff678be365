"""An aiohttp transport for the engine's async calls.

The engine does its HTTP with httpx. In a sidecar that multiplexes a pod's traffic that
costs most of the budget: httpcore's pool walks every pooled connection, polling each
socket, for every request (measured: 724 us a request at one connection and 815 req/s
at 32 against a zero-delay upstream; aiohttp's client: 139 us and 12,000 req/s). The
design lets the sidecar use aiohttp's client; the engine has no transport seam yet, so
`acquire()` swaps its two async entry points (`send_async`, `open_stream_async`) for
these while a sidecar runs, and puts them back after. Semantics are the engine's: the
same `Reply` and stream objects, timeouts per read (like httpx's), and every aiohttp
exception mapped to `agent.errors` here, at this one boundary.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import weakref

import aiohttp
import yarl
from aiohttp.helpers import get_env_proxy_for_url

from agent import _transport as engine
from agent.errors import AgentError, APIConnectionError, APITimeoutError, ConfigurationError
from agent.providers.base import WireRequest

_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = (
    weakref.WeakKeyDictionary()
)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    import certifi  # the CA bundle httpx uses, so both transports trust the same roots

    return ssl.create_default_context(cafile=certifi.where())


def _session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None or session.closed:
        connector = aiohttp.TCPConnector(
            limit=1000, limit_per_host=0, keepalive_timeout=60, ssl=_ssl_context()
        )
        # Proxies from the environment are looked up once per origin (`_proxy`), not by
        # trust_env=True, which costs a thread hop on every request.
        session = aiohttp.ClientSession(connector=connector)
        _sessions[loop] = session
    return session


@functools.lru_cache(maxsize=256)
def _proxy(scheme: str, host: str) -> tuple[yarl.URL | None, aiohttp.BasicAuth | None]:
    """HTTPS_PROXY / HTTP_PROXY / NO_PROXY, as httpx would apply them."""
    try:
        return get_env_proxy_for_url(yarl.URL.build(scheme=scheme, host=host))
    except LookupError:
        return None, None


@functools.lru_cache(maxsize=1024)
def _url(url: str) -> tuple[yarl.URL, yarl.URL | None, aiohttp.BasicAuth | None]:
    """The parsed URL and its proxy: the same few URLs come back on every request."""
    parsed = yarl.URL(url)
    return (parsed, *_proxy(parsed.scheme, parsed.host or ""))


def _request(wire: WireRequest, timeout: float) -> aiohttp.client._RequestContextManager:
    url, proxy, proxy_auth = _url(wire.url)
    return _session().request(
        wire.method,
        url,
        data=wire.body,
        headers=wire.headers,
        timeout=_timeout(timeout),
        proxy=proxy,
        proxy_auth=proxy_auth,
    )


@functools.lru_cache(maxsize=64)
def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    # Like the engine's httpx.Timeout(seconds, connect=min(seconds, 10)): a bound on each
    # wait (connecting, each read), not on a whole stream.
    return aiohttp.ClientTimeout(total=None, sock_connect=min(seconds, 10.0), sock_read=seconds)


def _mapped(exc: BaseException) -> AgentError:
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return APITimeoutError(f"no answer in time ({type(exc).__name__})")
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError | ValueError):
        return ConfigurationError(f"bad base URL: {exc}")
    detail = str(exc) or type(exc).__name__
    return APIConnectionError(f"connection failed: {detail}")


async def send(wire: WireRequest, timeout: float) -> engine.Reply:
    try:
        async with _request(wire, timeout) as response:
            body = await response.read()
            return engine.Reply(response.status, response.headers, body)  # type: ignore[arg-type]
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
        raise _mapped(exc) from exc


class Stream(engine.AsyncStream):
    """An open streaming response, read chunk by chunk."""

    # The engine registers a stream for closing by its class, so this is an AsyncStream;
    # its httpx-typed slots stay unused (the engine only calls read and close).
    def __init__(self, response: aiohttp.ClientResponse) -> None:  # no super(): no httpx
        self.upstream = response
        self.status = response.status

    async def read(self) -> bytes:
        try:
            return await self.upstream.content.readany()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _mapped(exc) from exc

    async def close(self) -> None:
        response = self.upstream
        if response.content.at_eof():
            response.release()  # the connection goes back to the pool
        else:
            response.close()  # mid-stream: drop the connection, the upstream sees it at once


async def open_stream(wire: WireRequest, timeout: float) -> engine.AsyncStream | engine.Reply:
    try:
        response = await _request(wire, timeout)
        if response.status >= 400:
            try:
                return engine.Reply(response.status, response.headers, await response.read())  # type: ignore[arg-type]
            finally:
                response.release()
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
        raise _mapped(exc) from exc
    return Stream(response)


_users = 0
_saved: tuple[object, object] | None = None


def acquire() -> None:
    """Route the engine's async calls through aiohttp (until the last `release()`)."""
    global _users, _saved
    if _users == 0:
        _saved = (engine.send_async, engine.open_stream_async)
        engine.send_async = send
        engine.open_stream_async = open_stream
    _users += 1


async def release() -> None:
    """Undo one `acquire()`; the last one restores the engine's httpx calls and closes
    this loop's aiohttp session."""
    global _users, _saved
    _users -= 1
    if _users > 0 or _saved is None:
        return
    engine.send_async, engine.open_stream_async = _saved  # type: ignore[assignment]
    _saved = None
    session = _sessions.pop(asyncio.get_running_loop(), None)
    if session is not None:
        await session.close()
