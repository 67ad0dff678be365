"""`FakeProvider`: an aiohttp server on 127.0.0.1 speaking one provider's wire format."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiohttp import web
from multidict import CIMultiDict

from ._anthropic import AnthropicWire
from ._common import Call, Rendered, new_core, parse_json_body
from ._gemini import GeminiWire
from ._openai import OpenAIWire
from ._responses import ResponsesWire
from ._wire import Wire
from .behaviours import (
    BEHAVIOUR_TYPES,
    Behaviour,
    BehaviourLike,
    CutStream,
    EndWithoutFinish,
    Fail,
    Hang,
    Malformed,
    MalformedEvent,
    Reply,
    Reset,
    Stall,
    StreamError,
)

# kind -> (wire, default model, env prefix, base-url suffix as the real provider's base URL)
_KINDS: dict[str, tuple[type[Wire], str, str, str]] = {
    "openai": (ResponsesWire, "gpt-4o-mini", "OPENAI", "/v1"),
    "anthropic": (AnthropicWire, "claude-haiku-4-5", "ANTHROPIC", ""),
    "gemini": (GeminiWire, "gemini-2.5-flash", "GEMINI", ""),
    # OpenAI-compatible providers: the OpenAI format under their own env names and base paths
    "deepseek": (OpenAIWire, "deepseek-chat", "DEEPSEEK", ""),
    "groq": (OpenAIWire, "llama-3.3-70b-versatile", "GROQ", "/openai/v1"),
    "mistral": (OpenAIWire, "mistral-small-latest", "MISTRAL", "/v1"),
    "together": (OpenAIWire, "meta-llama/Llama-3.3-70B-Instruct-Turbo", "TOGETHER", "/v1"),
    "openrouter": (OpenAIWire, "openai/gpt-4o-mini", "OPENROUTER", "/api/v1"),
    "ollama": (OpenAIWire, "llama3.2", "OLLAMA", "/v1"),
    "vllm": (OpenAIWire, "Qwen/Qwen2.5-0.5B-Instruct", "VLLM", "/v1"),
    "openai_compatible": (OpenAIWire, "local-model", "OPENAI_COMPATIBLE", "/v1"),
}
_OPENAI_LIKE = tuple(k for k, v in _KINDS.items() if issubclass(v[0], OpenAIWire))
KINDS = tuple(_KINDS)


@dataclass(frozen=True)
class Recorded:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    json: Any
    raw: bytes
    model: str | None = None
    stream: bool = False
    time: float = field(default_factory=time.time)

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)


class _State:
    __slots__ = ("counted", "done", "expected_close")

    def __init__(self) -> None:
        self.done = False  # the response was completely handed to aiohttp
        self.expected_close = False  # we closed the connection on purpose (Reset/CutStream)
        self.counted = False  # this request's disconnect was counted


class FakeProvider:
    """A fake LLM provider server. See `fakes/__init__.py` for the overview."""

    def __init__(
        self,
        kind: str = "openai",
        *,
        api_key: str | None = "test-key",
        model_default: str | None = None,
        models: list[str] | None = None,
        default: BehaviourLike | None = None,
        record: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if kind not in _KINDS:
            raise ValueError(f"unknown provider kind {kind!r}; expected one of {sorted(_KINDS)}")
        wire_cls, model, _, _ = _KINDS[kind]
        self.kind = kind
        self.format = "openai" if kind in _OPENAI_LIKE else kind
        self.api_key = api_key
        self.model_default = model_default or model
        self.models = list(models) if models else [self.model_default]
        self.record = record
        self.host = host
        self._port = port
        self._wire: Wire = wire_cls()
        self._default: BehaviourLike = default or Reply(text=f"Hello from {self.format}")
        self._model_defaults: dict[str, BehaviourLike] = {}
        self._queue: deque[BehaviourLike] = deque()
        self._model_queues: dict[str, deque[BehaviourLike]] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.requests: list[Recorded] = []
        self.disconnects = 0
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._cache: dict[tuple[Any, ...], tuple[object, Rendered]] = {}
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ addresses & env
    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the fake is not started")
        return self._port

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`"""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What an official client takes as `base_url` (OpenAI: with `/v1`)."""
        return self.url + _KINDS[self.kind][3]

    def env(self, kind: str | None = None) -> dict[str, str]:
        """The standard env vars pointing a client at this fake, e.g. OPENAI_BASE_URL and
        OPENAI_API_KEY. `kind` lets an OpenAI-format fake pose as "deepseek", "groq" or any
        other OpenAI-compatible kind in `KINDS` (their base paths mirror the real ones)."""
        kind = kind or self.kind
        if kind not in _KINDS:
            raise ValueError(f"unknown provider kind {kind!r}")
        if (kind in _OPENAI_LIKE) != (self.format == "openai"):
            raise ValueError(f"a {self.kind} fake cannot serve as {kind}")
        prefix = _KINDS[kind][2]
        return {
            f"{prefix}_BASE_URL": self.url + _KINDS[kind][3],
            f"{prefix}_API_KEY": self.api_key or "test-key",
        }

    @property
    def last_request(self) -> Recorded:
        with self._lock:
            if not self.requests:
                raise LookupError("no request recorded")
            return self.requests[-1]

    def __repr__(self) -> str:
        where = self.url if self._port and self._runner else "stopped"
        return f"<FakeProvider {self.kind} {where}>"

    # ------------------------------------------------------------------ scripting
    def script(self, *behaviours: BehaviourLike) -> Self:
        """Queue behaviours; each answers one request (FIFO), then the default applies."""
        self._check(behaviours)
        with self._lock:
            self._queue.extend(behaviours)
        return self

    def script_for(self, model: str, *behaviours: BehaviourLike) -> Self:
        """Queue behaviours used only by requests for `model` (before the general queue)."""
        self._check(behaviours)
        with self._lock:
            self._model_queues.setdefault(model, deque()).extend(behaviours)
        return self

    @property
    def default(self) -> BehaviourLike:
        return self._default

    @default.setter
    def default(self, behaviour: BehaviourLike) -> None:
        self.set_default(behaviour)

    def set_default(self, behaviour: BehaviourLike, model: str | None = None) -> Self:
        """The behaviour used when the queues are empty (for every model, or for `model`)."""
        self._check((behaviour,))
        with self._lock:
            if model is None:
                self._default = behaviour
            else:
                self._model_defaults[model] = behaviour
        return self

    @property
    def pending(self) -> int:
        """Scripted behaviours not used yet."""
        with self._lock:
            return len(self._queue) + sum(len(q) for q in self._model_queues.values())

    def reset(self) -> None:
        """Clear the queues, per-model defaults, recorded requests and counters."""
        with self._lock:
            self._queue.clear()
            self._model_queues.clear()
            self._model_defaults.clear()
            self.requests.clear()
            self.disconnects = 0

    @staticmethod
    def _check(behaviours: tuple[BehaviourLike, ...]) -> None:
        for b in behaviours:
            if not isinstance(b, BEHAVIOUR_TYPES) and not callable(b):
                raise TypeError(f"not a behaviour: {b!r}")

    def _next(self, model: str | None, rec: Recorded) -> Behaviour:
        with self._lock:
            q = self._model_queues.get(model) if model is not None else None
            if q:
                b = q.popleft()
            elif self._queue:
                b = self._queue.popleft()
            elif model is not None and model in self._model_defaults:
                b = self._model_defaults[model]
            else:
                b = self._default
        if isinstance(b, BEHAVIOUR_TYPES):
            return b  # type: ignore[return-value]
        return b(rec)  # a callable computing the behaviour

    # ------------------------------------------------------------------ disconnects
    def _count_disconnect(self, st: _State) -> None:
        if st.counted or st.expected_close or self._stopping:
            return
        st.counted = True
        with self._cond:
            self.disconnects += 1
            self._cond.notify_all()

    async def wait_disconnect(self, timeout: float = 5.0, count: int = 1) -> int:
        """Wait until at least `count` disconnects were seen; returns the count, raises
        TimeoutError after `timeout` seconds. Works whichever loop/thread runs the server."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self.disconnects >= count:
                    return self.disconnects
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self!r}: {self.disconnects} disconnect(s) after {timeout}s, wanted {count}")
            await asyncio.sleep(0.005)

    def wait_disconnect_sync(self, timeout: float = 5.0, count: int = 1) -> int:
        """Blocking variant of `wait_disconnect` (for `running()` fakes; never call it on the
        loop that runs the server)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.disconnects >= count, timeout):
                raise TimeoutError(f"{self!r}: {self.disconnects} disconnect(s) after {timeout}s, wanted {count}")
            return self.disconnects

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> Self:
        if self._runner is not None:
            raise RuntimeError("already started")
        self._stopping = False
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping = True
        for t in list(self._tasks):
            t.cancel()
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @contextlib.contextmanager
    def running(self) -> Iterator[Self]:
        """Run the server on its own event loop in a background thread (for sync code)."""
        if self._runner is not None or self._thread is not None:
            raise RuntimeError("already started")
        ready = threading.Event()
        errors: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as e:  # pragma: no cover - startup failure
                errors.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.stop())
                loop.close()

        self._thread_loop = loop
        self._thread = threading.Thread(target=run, name=f"fake-{self.kind}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            self._thread = None
            raise errors[0]
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10)
            self._thread = None
            self._thread_loop = None

    # ------------------------------------------------------------------ request handling
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        st = _State()
        try:
            return await self._serve(request, st)
        except asyncio.CancelledError:
            self._count_disconnect(st)
            raise
        finally:
            self._tasks.discard(task)

    async def _serve(self, request: web.Request, st: _State) -> web.StreamResponse:
        raw = await request.read()
        method = request.method
        path = request.path
        query = dict(request.query)
        headers = request.headers
        wire = self._wire
        body = parse_json_body(raw)
        route = wire.route(method, path, query)
        call: Call | None = None
        if route is not None:
            endpoint, path_model = route
            call = wire.call(endpoint, body, query, path_model, self.model_default)
        rec = Recorded(
            method=method,
            path=path,
            query=query,
            headers=CIMultiDict(headers) if self.record else CIMultiDict(),
            json=body,
            raw=raw if self.record else b"",
            model=call.model if call and call.endpoint in ("chat", "responses") else None,
            stream=bool(call and call.stream),
        )
        if self.record:
            with self._lock:
                self.requests.append(rec)

        err = wire.check_auth(headers, query, self.api_key)
        if err is None and route is None:
            err = wire.not_found(method, path)
        if err is None and call is not None:
            err = wire.validate(route[0] if route else "", headers, body, raw)
        if err is not None:
            return self._plain(err.with_core(new_core()), st)
        assert call is not None
        if call.endpoint == "models":
            return self._plain(wire.models(self.models), st)
        if call.endpoint == "model":
            return self._plain(wire.model(call.model), st)
        if call.endpoint == "count_tokens":
            return self._plain(wire.count_tokens(call), st)

        behaviour = self._next(call.model, rec)
        return await self._perform(request, behaviour, call, st)

    def _plain(self, r: Rendered, st: _State, extra: dict[str, str] | None = None) -> web.Response:
        headers = dict(r.headers)
        headers.update(self._id_headers())
        if extra:
            headers.update(extra)
        st.done = True
        return web.Response(status=r.status, body=r.body, headers=headers)

    def _id_headers(self) -> dict[str, str]:
        rid = "req_" + new_core()
        if self.format == "openai":
            return {"x-request-id": rid, "Server": "cloudflare"}
        if self.format == "anthropic":
            return {"request-id": rid, "Server": "cloudflare"}
        return {"Server": "scaffolding on HTTPServer2"}

    def _rendered(self, reply: Reply, call: Call) -> Rendered:
        key = (id(reply), call.model, call.stream, call.include_usage, call.include_obfuscation,
               call.sse, call.input_tokens, repr(call.request) if call.request else None)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is reply:
            r = hit[1]
        else:
            r = self._wire.render(reply, call)
            if len(self._cache) > 512:
                self._cache.clear()
            self._cache[key] = (reply, r)
        core = new_core()
        self._wire.issued(call, core)
        return r.with_core(core)

    async def _perform(self, request: web.Request, b: Behaviour, call: Call, st: _State) -> web.StreamResponse:
        if isinstance(b, Reply):
            if b.delay > 0:
                await asyncio.sleep(b.delay)
            r = self._rendered(b, call)
            if not r.is_stream:
                return self._plain(r, st, dict(b.headers))
            return await self._stream(request, r, r.batches(), b.chunk_delay, st, dict(b.headers))

        if isinstance(b, Fail):
            if b.delay > 0:
                await asyncio.sleep(b.delay)
            extra = dict(b.headers)
            if b.should_retry is not None:
                extra["x-should-retry"] = "true" if b.should_retry else "false"
            return self._plain(self._wire.fail(b, call).with_core(new_core()), st, extra)

        if isinstance(b, Hang):
            await asyncio.sleep(24 * 3600)
            raise asyncio.CancelledError

        if isinstance(b, Reset):
            if b.delay > 0:
                await asyncio.sleep(b.delay)
            st.expected_close = True
            transport = request.transport
            if transport is not None:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
            await self._park()

        if isinstance(b, Malformed):
            st.done = True
            headers = {"Content-Type": b.content_type, **self._id_headers()}
            return web.Response(status=b.status, body=b.body, headers=headers)

        if isinstance(b, CutStream):
            if b.reply.delay > 0:
                await asyncio.sleep(b.reply.delay)
            r = self._rendered(b.reply, call)
            if not r.is_stream:
                assert r.body is not None
                resp = web.StreamResponse(status=r.status, headers={**r.headers, **self._id_headers()})
                resp.content_length = len(r.body)
                await self._write(request, resp, [r.body[: len(r.body) // 2]], 0.0, st)
            else:
                resp = web.StreamResponse(status=r.status, headers={**r.headers, **self._id_headers()})
                frames = r.frames[: r.prefix_len(b.after)]
                await self._write(request, resp, r.batches(frames), b.reply.chunk_delay, st)
            st.expected_close = True
            if request.transport is not None:
                request.transport.close()
            await self._park()

        if isinstance(b, StreamError):
            if not call.stream:
                _, fail = self._wire.stream_error(b.error_type, b.message)
                return self._plain(self._wire.fail(fail, call).with_core(new_core()), st)
            if b.reply.delay > 0:
                await asyncio.sleep(b.reply.delay)
            r = self._rendered(b.reply, call)
            sent = r.prefix_len(b.after)
            frame, _ = self._wire.stream_error_for(call, b.error_type, b.message, sent)
            frames = [*r.frames[:sent], frame]
            batches = r.batches(frames)
            return await self._stream(request, r, batches, b.reply.chunk_delay, st)

        if isinstance(b, Stall | EndWithoutFinish | MalformedEvent):
            if not call.stream:  # a plain request is answered whole: the fault is a stream's
                return await self._perform(request, b.reply, call, st)
            if b.reply.delay > 0:
                await asyncio.sleep(b.reply.delay)
            r = self._rendered(b.reply, call)
            cut = r.prefix_len(b.after)
            frames = r.frames[:cut]
            if isinstance(b, MalformedEvent):
                frames.append(_broken(r.frames[cut] if cut < len(r.frames) else r.frames[-1]))
            if not isinstance(b, Stall):
                return await self._stream(request, r, r.batches(frames), b.reply.chunk_delay, st)
            resp = web.StreamResponse(status=r.status, headers={**r.headers, **self._id_headers()})
            await self._write(request, resp, r.batches(frames), b.reply.chunk_delay, st)
            await asyncio.sleep(24 * 3600)  # silent until the client gives up (a disconnect)
            raise asyncio.CancelledError

        raise TypeError(f"not a behaviour: {b!r}")

    async def _stream(
        self, request: web.Request, r: Rendered, batches: list[bytes], chunk_delay: float, st: _State,
        extra: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        headers = {**r.headers, **self._id_headers(), **(extra or {})}
        resp = web.StreamResponse(status=r.status, headers=headers)
        await self._write(request, resp, batches, chunk_delay, st)
        try:
            await resp.write_eof()
        except ConnectionError:
            self._count_disconnect(st)
            raise asyncio.CancelledError from None
        st.done = True
        return resp

    async def _write(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        batches: list[bytes],
        chunk_delay: float,
        st: _State,
    ) -> None:
        try:
            await resp.prepare(request)
            if chunk_delay <= 0:
                if batches:
                    await resp.write(b"".join(batches))
            else:
                for i, part in enumerate(batches):
                    if i:
                        await asyncio.sleep(chunk_delay)
                    await resp.write(part)
        except ConnectionError:
            self._count_disconnect(st)
            raise asyncio.CancelledError from None

    @staticmethod
    async def _park() -> None:
        """Wait for the connection-lost cancellation after closing the connection on purpose."""
        await asyncio.sleep(30)
        raise asyncio.CancelledError


def _broken(frame: bytes) -> bytes:
    """An event with its JSON cut in half, still framed as a whole event (the blank line
    that ends it kept): what a provider's broken serializer or proxy sends."""
    body = frame.rstrip(b"\r\n")
    end = frame[len(body) :]
    head, sep, data = body.rpartition(b"data: ")
    return head + sep + data[: max(1, len(data) // 2)] + end


@contextlib.asynccontextmanager
async def serving(kind: str = "openai", **kwargs: Any) -> AsyncIterator[FakeProvider]:
    """`async with serving("anthropic") as fake:` (same as `async with FakeProvider(...)`)."""
    async with FakeProvider(kind, **kwargs) as fake:
        yield fake
