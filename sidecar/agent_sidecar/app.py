"""The app port: OpenAI- and Anthropic-compatible endpoints in front of the engine.

    POST /v1/chat/completions   OpenAI format, plain and streamed
    POST /v1/messages           Anthropic format, plain and streamed
    POST /v1/responses          OpenAI's Responses API, plain and streamed
    POST /v1/messages/count_tokens  the route's Anthropic agent's count, else an estimate
    GET  /v1/models[/{id}]      the routes (Anthropic's shape when `anthropic-version` is sent)

The request's `model` names a route. Each request takes the config snapshot current when
it starts and finishes on it. Errors come back in the caller's format, with the status
every agent's errors agree on (see `wire.describe_failure`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, cast

from aiohttp import web
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from agent.errors import AgentError, RoutingError
from agent.types import Attempt, Done, Relay, Response, Started, StreamEvent
from agent.wire.anthropic import AnthropicApi
from agent.wire.carry import ignored
from agent.wire.inbound import Api, Call, CallerError, Failure, StreamEncoder
from agent.wire.openai_chat import OpenAIApi
from agent.wire.openai_responses import ResponsesApi
from agent_sidecar import counting, eager, exchange
from agent_sidecar.bodies import LARGE, Body, BodyBudget, decode, parse_off_loop, read_body
from agent_sidecar.deadlines import Deadlines
from agent_sidecar.hosts import foreign
from agent_sidecar.metrics import Metrics
from agent_sidecar.relay import Relayed, forwarded
from agent_sidecar.routes import Loaded, Route
from agent_sidecar.settings import Settings
from agent_sidecar.state import ConfigStore
from agent_sidecar.wire import describe_failure, header_value, retry_after_header

log = logging.getLogger("agent_sidecar.app")

# The two servers' requests and answers (`--server`): the handlers serve either.
Request = web.Request | exchange.Request
Reply = web.StreamResponse | exchange.Stream
Handler = Callable[[Request], Awaitable[Reply]]

OPENAI = OpenAIApi()
ANTHROPIC = AnthropicApi()
RESPONSES = ResponsesApi()

_SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache"}
_CHAT_PATHS = (
    "/v1/chat/completions",
    "/chat/completions",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/responses",
    "/responses",
)


class _Outcome:
    """What the metrics need to know about one request, filled in as it goes."""

    __slots__ = ("code", "route", "stream")

    def __init__(self) -> None:
        self.route = ""
        self.stream = False
        self.code = 500


class AppHandlers:
    def __init__(
        self,
        store: ConfigStore,
        metrics: Metrics,
        settings: Settings,
        tracing: bool,
        draining: Callable[[], bool],
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.tracer = trace.get_tracer("agent_sidecar") if tracing else None
        self.budget = BodyBudget(max(settings.body_budget_bytes, LARGE))
        self.deadlines = Deadlines(settings.request_timeout)  # for an answer, a stream's start
        metrics.body_bytes.set_function(lambda: self.budget.used)
        self.draining = draining
        self.streams: set[asyncio.Task[Any]] = set()  # relaying now (cut at the drain timeout)

    # ---- endpoints ------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Reply:
        return await self._serve(request, OPENAI)

    async def messages(self, request: Request) -> Reply:
        return await self._serve(request, ANTHROPIC)

    async def responses(self, request: Request) -> Reply:
        return await self._serve(request, RESPONSES)

    async def count_tokens(self, request: Request) -> web.Response:
        s = self.settings
        try:
            body = await read_body(request, s.max_body_bytes, self.budget, s.read_timeout)
        except CallerError as exc:
            return self._failure(ANTHROPIC, exc.failure)
        headers: dict[str, str] = {}
        try:
            size = len(body.raw)
            data = decode(body.raw) if size < LARGE else await asyncio.to_thread(decode, body.raw)
            model = counting.checked(data)
            loaded = self.store.loaded
            if loaded is None:
                raise CallerError(_no_config())
            route = loaded.resolve(model)
            if route is None:
                raise CallerError(_unknown_route(model, loaded))
            headers.update(route.headers)
            counted, how = await counting.count(
                data, size, route, request.headers, self.store.transport
            )
        except CallerError as exc:
            log.info("refused a count_tokens request: %s", exc.failure.message)
            return self._failure(ANTHROPIC, exc.failure, headers)
        finally:
            body.release()
        return web.json_response({"input_tokens": counted}, headers={**headers, **how})

    async def list_models(self, request: Request) -> web.Response:
        api = _api_for(request)
        loaded = self.store.loaded
        if loaded is None:
            return self._failure(api, _no_config())
        body = api.models(loaded.names, int(loaded.loaded_at))
        return web.Response(body=body, content_type="application/json")

    async def get_model(self, request: Request) -> web.Response:
        api = _api_for(request)
        loaded = self.store.loaded
        if loaded is None:
            return self._failure(api, _no_config())
        name = request.match_info["model"]
        if name not in loaded.routes:
            return self._failure(api, _unknown_route(name, loaded))
        return web.Response(
            body=api.model(name, int(loaded.loaded_at)), content_type="application/json"
        )

    async def other(self, request: Request) -> web.Response:
        """Anything else, answered in the caller's format rather than aiohttp's text."""
        api = _api_for(request)
        if request.path in _CHAT_PATHS or request.path.startswith("/v1/models"):
            return self._failure(
                api, Failure("method_not_allowed", f"{request.method} is not allowed here")
            )
        return self._failure(
            api, Failure("not_found", f"no such endpoint: {request.method} {request.path}")
        )

    # ---- one routed call ------------------------------------------------------------------

    async def _serve(self, request: Request, api: Api) -> Reply:
        if self.tracer is None:
            return await self._measured(request, api)
        # Continue the caller's trace: the engine's decision span nests in this one.
        context = propagate.extract(request.headers)
        with self.tracer.start_as_current_span(
            f"POST {request.path}",
            context=context,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": request.method,
                "url.path": request.path,
                "http.route": request.path,
            },
        ) as span:
            response = await self._measured(request, api)
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            return response

    async def _measured(self, request: Request, api: Api) -> Reply:
        started = time.perf_counter()
        outcome = _Outcome()
        self.metrics.in_flight += 1
        try:
            response = await self._route(request, api, outcome)
            outcome.code = response.status
            return response
        except asyncio.CancelledError:
            outcome.code = 499  # the client went away (aiohttp cancels the handler)
            raise
        finally:
            self.metrics.in_flight -= 1
            seconds = time.perf_counter() - started
            self.metrics.request(outcome.route, api.name, outcome.stream, outcome.code, seconds)

    async def _route(self, request: Request, api: Api, outcome: _Outcome) -> Reply:
        s = self.settings
        try:
            body = await read_body(request, s.max_body_bytes, self.budget, s.read_timeout)
        except CallerError as exc:
            log.info("refused a request body: %s", exc.failure.message)
            if exc.failure.kind == "overloaded":
                self.metrics.bodies_refused.inc()
            return self._failure(api, exc.failure)
        try:  # the budget is held while the body's objects live: until the answer is sent
            return await self._parsed(request, api, outcome, body)
        finally:
            body.release()

    async def _parsed(
        self, request: Request, api: Api, outcome: _Outcome, body: Body
    ) -> Reply:
        try:
            loaded = self.store.loaded
            call = await parse_off_loop(api, body, functools.partial(_unread, loaded, api.name))
            if loaded is None:
                raise CallerError(_no_config())
            route = loaded.resolve(call.model)
            if route is None:
                raise CallerError(_unknown_route(call.model, loaded))
        except CallerError as exc:
            log.info("refused a request: %s", exc.failure.message)
            return self._failure(api, exc.failure)
        outcome.route, outcome.stream = route.name, call.request.stream
        headers = dict(route.headers)
        if call.relay_only is not None and route.wires != {api.name}:
            log.info("refused a request: %s", call.relay_only.message)
            return self._failure(api, call.relay_only, headers)
        if api.name in route.wires and not _continuable(route, call):
            # its agents of the caller's format send the body as it is
            call.request.relay = Relay(api.name, call.body, forwarded(request.headers))
        if call.extra and route.wires == {api.name}:
            call.request.extra = call.extra  # for an agent that must build its own body
        try:
            if call.request.stream:
                return await self._stream(request, api, call, route, headers)
            return await self._answer(api, call, route, headers)
        except Exception:
            log.exception("internal error routing %s", route.name)
            return self._failure(api, Failure("internal", "internal error in the sidecar"), headers)

    async def _answer(
        self, api: Api, call: Call, route: Route, headers: dict[str, str]
    ) -> web.Response:
        try:
            async with self.deadlines.limit():
                response = await route.router.run_request_async(call.request)
        except AgentError as exc:
            return self._routing_failed(api, route, exc, headers)
        except TimeoutError:
            return self._failure(api, self._timed_out(), headers)
        attempts = response.route.attempts if response.route else []
        self.metrics.routed(route.name, attempts, response)
        _describe(headers, response)
        answered = response.route.path[0] if response.route and response.route.path else ""
        _name_ignored(headers, call, route.wire_of(answered, response.provider))
        body = response.body if response.body is not None else api.render(response, call)
        return web.Response(body=body, headers=headers, content_type="application/json")

    async def _stream(
        self, request: Request, api: Api, call: Call, route: Route, headers: dict[str, str]
    ) -> Reply:
        batches = route.router.stream_batches(call.request)
        try:
            # The router announces its agent just before the first content: until then a
            # fallback is invisible (but in the headers), and a failure is an HTTP error.
            try:
                async with self.deadlines.limit():
                    first = await anext(batches)
                    while not first:  # a race's winner committing
                        first = await anext(batches)
            except AgentError as exc:
                return self._routing_failed(api, route, exc, headers)
            except TimeoutError:
                return self._failure(api, self._timed_out(), headers)
            started = first[0]
            assert isinstance(started, Started), "a router's stream starts with Started"
            _announce(headers, started)
            _name_ignored(headers, call, route.wire_of(started.agent, started.provider))
            strip_usage = api is OPENAI and not call.include_usage
            encoder = Relayed(functools.partial(api.encoder, call, started.model), strip_usage)
            task = asyncio.current_task()
            assert task is not None
            self.streams.add(task)
            try:
                return await self._relay(request, encoder, route, headers, first[1:], batches)
            finally:
                self.streams.discard(task)
        finally:
            await batches.aclose()  # type: ignore[attr-defined]

    async def _relay(
        self,
        request: Request,
        encoder: StreamEncoder,
        route: Route,
        headers: dict[str, str],
        events: list[StreamEvent],
        batches: AsyncIterator[list[StreamEvent]],
    ) -> Reply:
        # Frames not written yet: batches that arrive together leave in one write, made
        # just before the relay would wait for the next one. An answer that arrives
        # whole before any wait (short answers usually do) is one response with a length.
        pending = [encoder.start()]
        response: Reply | None = None
        unawaited: eager.Rest[list[StreamEvent]] | None = None  # a step begun, not awaited
        try:
            while not self._encode(events, encoder, route, pending):
                # anext's awaitable steps like a coroutine (send/throw)
                step = cast("Coroutine[Any, Any, list[StreamEvent]]", anext(batches))
                now, unawaited = eager.now(step)
                if unawaited is not None:
                    if response is None:
                        response = await _start_stream(request, headers)
                    await response.write(b"".join(pending))
                    pending.clear()
                    rest, unawaited = unawaited, None
                    now = await rest
                events = cast("list[StreamEvent]", now)  # finished: never None
        except AgentError as exc:  # after content: the stream ends with the error, in band
            self.metrics.stream_errors.labels(route.name).inc()
            pending.append(encoder.error(describe_failure(exc)))
        except StopAsyncIteration:  # the engine always ends with Done; be safe anyway
            pass
        except ConnectionError:  # the client went away between two writes
            assert response is not None
            return response
        except asyncio.CancelledError:
            if self.draining() and response is not None:
                await self._cut(response, encoder, route, pending)
            raise
        except Exception:  # the status is decided: report in band, like an engine error
            log.exception("internal error streaming %s", route.name)
            pending.append(encoder.error(Failure("internal", "internal error in the sidecar")))
        finally:
            if unawaited is not None:  # left while writing: unwind the step begun
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await unawaited.abandon()
        if response is None:
            return web.Response(body=b"".join(pending), headers=headers)
        with contextlib.suppress(ConnectionError):
            await response.write_eof(b"".join(pending))  # the last frames and the end, at once
        return response

    async def _cut(
        self,
        response: Reply,
        encoder: StreamEncoder,
        route: Route,
        pending: list[bytes],
    ) -> None:
        """A stream still running when the drain timeout ends: it ends with an error the
        app's SDK raises (not a silent close), and the log says so."""
        log.warning(
            "cutting a stream of route %s: still running at the drain timeout (%gs)",
            route.name,
            self.settings.drain_timeout,
        )
        self.metrics.stream_errors.labels(route.name).inc()
        pending.append(encoder.error(Failure("unavailable", "the sidecar is shutting down: retry")))
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(1.0):
                await response.write_eof(b"".join(pending))

    def cut_streams(self) -> None:
        """The drain timeout is up: end every stream still running, in band (their
        handlers write the error while the connection is still open)."""
        for task in self.streams:
            task.cancel()

    def _encode(
        self, events: list[StreamEvent], encoder: StreamEncoder, route: Route, out: list[bytes]
    ) -> bool:
        """Add a batch's frames to `out`; True once the stream's `Done` was among them."""
        for event in events:
            if isinstance(event, Done):
                out.append(self._done(encoder, route, event))
                return True
            out.append(encoder.event(event))
        return False

    def _done(self, encoder: StreamEncoder, route: Route, event: Done) -> bytes:
        done = event.response
        self.metrics.routed(route.name, done.route.attempts if done.route else [], done)
        return encoder.done(done)

    # ---- helpers --------------------------------------------------------------------------

    def _routing_failed(
        self, api: Api, route: Route, error: AgentError, headers: dict[str, str]
    ) -> web.Response:
        if isinstance(error, RoutingError):
            self.metrics.routed(route.name, error.attempts, None)
            headers["x-agent-attempts"] = str(_tried(error.attempts))
        return self._failure(api, describe_failure(error), headers)

    def _timed_out(self) -> Failure:
        return Failure("timeout", f"no answer within {self.settings.request_timeout:g}s")

    @staticmethod
    def _failure(api: Api, failure: Failure, headers: dict[str, str] | None = None) -> web.Response:
        out = {**(headers or {}), **retry_after_header(failure.retry_after)}
        return web.Response(
            status=api.status(failure),
            body=api.error_body(failure),
            headers=out,
            content_type="application/json",
        )


def _unread(loaded: Loaded | None, wire: str, data: Any) -> bool:
    """Whether a decoded body's conversation can go unread: the route it names sends
    bodies of its format on as they came (`Route.unread`)."""
    model = data.get("model") if isinstance(data, dict) else None
    route = loaded.resolve(model) if loaded is not None and isinstance(model, str) else None
    return route is not None and route.unread == wire


def _continuable(route: Route, call: Call) -> bool:
    """A stream the route may continue on another agent: it must be framed by the
    sidecar (one id, one format), never relayed (a provider's frames cannot be spliced
    with another's), unless only the caller's own format can answer it at all."""
    return (
        call.request.stream
        and route.router.stream_recovery == "continue"
        and call.relay_only is None
    )


def _describe(headers: dict[str, str], response: Response[Any]) -> None:
    info = response.route
    headers["x-agent-provider"] = response.provider
    headers["x-agent-model"] = header_value(response.model)
    headers["x-agent-cost-usd"] = _usd(response)
    if info is not None:
        headers["x-agent-route-reason"] = header_value(info.reason)
        headers["x-agent-attempts"] = str(_tried(info.attempts))


def _announce(headers: dict[str, str], started: Started) -> None:
    """A stream's headers: who answers, known before its first content."""
    headers.update(_SSE_HEADERS)
    headers["x-agent-provider"] = started.provider
    headers["x-agent-model"] = header_value(started.model)
    headers["x-agent-route-reason"] = header_value(started.route.reason)
    headers["x-agent-attempts"] = str(_tried(started.route.attempts) + 1)  # and this one


def _name_ignored(headers: dict[str, str], call: Call, wire: str) -> None:
    """The caller's fields the answering agent could not carry: it speaks another wire
    format, so it got the engine's request, without them (and without what of the
    engine's request its own format has no place for)."""
    if names := ignored(call.request, wire):
        headers["x-agent-ignored-fields"] = header_value(",".join(sorted(names)))


def _tried(attempts: Sequence[Attempt]) -> int:
    """Attempts made: retries count, agents skipped by an open circuit do not."""
    return sum(1 for a in attempts if a.outcome != "skipped")


def _usd(response: Response[Any]) -> str:
    if not response.cost_known:
        return "unknown"
    return f"{response.cost_estimate:.10f}".rstrip("0").rstrip(".") or "0"


async def _start_stream(request: Request, headers: dict[str, str]) -> Reply:
    """A 200 answer whose body follows in parts, on either server."""
    if isinstance(request, web.Request):
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        return response
    return await request.start_stream(headers)


def _api_for(request: Request) -> Api:
    if request.path.startswith("/v1/messages") or "anthropic-version" in request.headers:
        return ANTHROPIC
    if request.path.startswith(("/v1/responses", "/responses")):
        return RESPONSES
    return OPENAI


def _no_config() -> Failure:
    return Failure(
        "unavailable",
        "no routing config is loaded yet: the sidecar is waiting for one "
        "(--config FILE, or PUT /config on the admin port)",
    )


def _unknown_route(model: str, loaded: Loaded) -> Failure:
    routes = f"routes: {', '.join(loaded.names)}" if loaded.routes else "it serves no routes"
    return Failure(
        "not_found",
        f"model {model!r} is not a route of this sidecar; {routes}",
        param="model",
        code="model_not_found",
    )


HANDLERS = web.AppKey("handlers", AppHandlers)


def _local_only(settings: Settings) -> Callable[[Handler], Handler]:
    """Refuse what a web page could send: a `Host` that is not a loopback name (DNS
    rebinding: a page's own name resolving to 127.0.0.1) or any `Origin` (browsers send
    one with every cross-site POST; SDKs and servers never do). A page could otherwise
    spend the pod's keys through a developer's local sidecar.

    A wrapper of each handler rather than an aiohttp middleware: a middleware costs a
    partial and a wrapped function per request, on every request."""
    allowed = {settings.host.lower()}

    def guarded(handler: Handler) -> Handler:
        async def local_only(request: Request) -> Reply:
            why = foreign(request.headers, allowed)
            if why is not None:
                log.info("refused a request from a browser or a foreign host: %s", why)
                return AppHandlers._failure(_api_for(request), Failure("forbidden", why))
            return await handler(request)

        return local_only

    return guarded


class Routes:
    """Which handler answers a method and a path: one table for both servers."""

    def __init__(self, handlers: AppHandlers, settings: Settings) -> None:
        guarded = _local_only(settings)
        chat, responses = guarded(handlers.chat_completions), guarded(handlers.responses)
        self.post = {
            "/v1/chat/completions": chat,
            "/chat/completions": chat,
            "/v1/messages": guarded(handlers.messages),
            "/v1/messages/count_tokens": guarded(handlers.count_tokens),
            "/v1/responses": responses,
            "/responses": responses,
        }
        self.models = guarded(handlers.list_models)
        self.model = guarded(handlers.get_model)
        self.other = guarded(handlers.other)

    def find(self, method: str, path: str) -> tuple[Handler, Mapping[str, str]]:
        if method == "POST":
            return self.post.get(path, self.other), _NO_MATCH
        if method in ("GET", "HEAD"):  # aiohttp answers HEAD wherever it answers GET
            if path == "/v1/models":
                return self.models, _NO_MATCH
            name = path.removeprefix("/v1/models/")
            if name != path and name and "/" not in name:
                return self.model, {"model": name}
        return self.other, _NO_MATCH


_NO_MATCH: Mapping[str, str] = {}


def create_app(
    store: ConfigStore,
    metrics: Metrics,
    settings: Settings,
    *,
    tracing: bool = False,
    draining: Callable[[], bool] = lambda: False,
) -> web.Application:
    """The app port on aiohttp (`--server aiohttp`)."""
    handlers = AppHandlers(store, metrics, settings, tracing, draining)
    routes = Routes(handlers, settings)
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[HANDLERS] = handlers
    for path, handler in routes.post.items():
        app.router.add_post(path, _on_aiohttp(handler))
    app.router.add_get("/v1/models", _on_aiohttp(routes.models))
    app.router.add_get("/v1/models/{model}", _on_aiohttp(routes.model))
    app.router.add_route("*", "/{tail:.*}", _on_aiohttp(routes.other))
    return app


def _on_aiohttp(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    # On aiohttp a handler gets aiohttp's request, so it answers with aiohttp's responses.
    return cast("Callable[[web.Request], Awaitable[web.StreamResponse]]", handler)
