"""An aiohttp transport for the engine's async calls (`agent.transport.AsyncTransport`;
it has no sync protocol: the sidecar makes only async calls).

The engine does its HTTP with httpx by default. In a sidecar that multiplexes a pod's
traffic that costs most of the budget: httpcore's pool walks every pooled connection,
polling each socket, for every request (measured: 724 us a request at one connection
and 815 req/s at 32 against a zero-delay upstream; aiohttp's client: 139 us and
12,000 req/s). The sidecar's own client (`agent_sidecar.upstream`) costs less still
and is its default; this one serves `--transport aiohttp` and the requests that go
through a proxy from the environment. Semantics are the engine's: timeouts per wait
(like httpx's), HTTP errors returned as a `Reply`, and every aiohttp exception mapped
to `agent.errors` here, at this one boundary.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import weakref

import aiohttp
import aiohttp.payload
import yarl
from aiohttp.helpers import get_env_proxy_for_url

from agent.errors import AgentError, APIConnectionError, APITimeoutError, ConfigurationError
from agent.transport import Reply, WireRequest


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    import certifi  # the CA bundle httpx uses, so both transports trust the same roots

    return ssl.create_default_context(cafile=certifi.where())


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


@functools.lru_cache(maxsize=64)
def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    # Like the engine's httpx.Timeout(seconds, connect=min(seconds, 10)): a bound on each
    # wait (connecting, each read), not on a whole stream.
    return aiohttp.ClientTimeout(total=None, sock_connect=min(seconds, 10.0), sock_read=seconds)


_SLICE = 256 * 1024  # bodies larger than this are written a slice at a time


class _LargeBody(aiohttp.payload.Payload):
    """A large request body written in slices of the one buffer. aiohttp writes a bytes
    body in one call which, on Python 3.11, first joins it with the headers (one more
    copy of the whole body) and leaves what the socket did not take in the transport's
    buffer (another): a 30 MB body would cost two extra 30 MB copies per attempt."""

    _value: bytes

    def __init__(self, value: bytes) -> None:
        super().__init__(value, content_type="application/json")
        self._size = len(value)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self._value.decode(encoding, errors)

    async def write(self, writer: aiohttp.abc.AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: aiohttp.abc.AbstractStreamWriter, content_length: int | None
    ) -> None:
        view = memoryview(self._value)[:content_length]
        for start in range(0, len(view), _SLICE):
            await writer.write(view[start : start + _SLICE])  # drains past its buffer limit


def _mapped(exc: BaseException) -> AgentError:
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return APITimeoutError(f"no answer in time ({type(exc).__name__})")
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError | ValueError):
        return ConfigurationError(f"bad base URL: {exc}")
    detail = str(exc) or type(exc).__name__
    return APIConnectionError(f"connection failed: {detail}")


class AiohttpTransport:
    """An `agent.transport.AsyncTransport` on aiohttp's client: one session per event
    loop (a session belongs to the loop that made it), closed by `aclose()`."""

    def __init__(self) -> None:
        self._sessions: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, aiohttp.ClientSession
        ] = weakref.WeakKeyDictionary()

    async def send_async(self, request: WireRequest, timeout: float) -> Reply:
        try:
            async with self._request(request, timeout) as response:
                return Reply(response.status, response.headers, await response.read())
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            raise _mapped(exc) from exc

    async def open_stream_async(self, request: WireRequest, timeout: float) -> Stream | Reply:
        try:
            response = await self._request(request, timeout)
            if response.status >= 400:
                try:
                    return Reply(response.status, response.headers, await response.read())
                finally:
                    response.release()
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            raise _mapped(exc) from exc
        return Stream(response)

    def __repr__(self) -> str:
        return "AiohttpTransport()"

    async def aclose(self) -> None:
        """Close this loop's session (its pooled connections)."""
        session = self._sessions.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.close()

    def _request(self, wire: WireRequest, timeout: float) -> aiohttp.client._RequestContextManager:
        url, proxy, proxy_auth = _url(wire.url)
        return self._session().request(
            wire.method,
            url,
            data=_LargeBody(wire.body) if len(wire.body) > _SLICE else wire.body,
            headers=wire.headers,
            timeout=_timeout(timeout),
            proxy=proxy,
            proxy_auth=proxy_auth,
        )

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=1000, limit_per_host=0, keepalive_timeout=60, ssl=_ssl_context()
            )
            # Proxies from the environment are looked up once per origin (`_proxy`), not
            # by trust_env=True, which costs a thread hop on every request.
            session = aiohttp.ClientSession(connector=connector)
            self._sessions[loop] = session
        return session


class Stream:
    """An open streaming response: an `agent.transport.AsyncStreamResponse`."""

    __slots__ = ("headers", "status", "upstream")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.upstream = response
        self.status = response.status
        self.headers = response.headers

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self.upstream.content.readany()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _mapped(exc) from exc
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        response = self.upstream
        if response.content.at_eof():
            response.release()  # the connection goes back to the pool
        else:
            response.close()  # mid-stream: drop the connection, the upstream sees it at once
