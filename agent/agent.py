"""`Agent`: one provider and one model, called sync, async, streamed or for JSON."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import pydantic

from agent import _steps
from agent._base import (
    TOP,
    BaseAgent,
    Caller,
    Prompt,
    build_request,
    output_schema,
    shortest,
    with_middleware,
)
from agent._continuation import continuing
from agent._resources import Resources
from agent.catalog import PROVIDERS, Capabilities, capabilities_for, resolve_model
from agent.errors import (
    AgentError,
    APITimeoutError,
    ConfigurationError,
    OutputValidationError,
    url_credentials,
)
from agent.limits import ProviderLimits
from agent.middleware import Middleware
from agent.pricing import Price, lookup_price
from agent.providers import codec_for, wire_for
from agent.tools import ToolLike, record_result, to_tool_specs, tool_message
from agent.transport import AnyTransport, default_transport
from agent.types import (
    Message,
    OutputSchema,
    Relay,
    Request,
    Response,
    TextDelta,
    ToolCall,
    ToolResult,
    ToolSpec,
    Usage,
    WireBytes,
)
from agent.wire.base import Codec, Parsed, Relaying, Reply, StreamReader, Target

if TYPE_CHECKING:
    from agent.config import AgentConfig, AgentLimitsConfig

__all__ = ["Agent", "Prompt", "StreamLimits", "build_request", "output_schema"]

DEFAULT_TIMEOUT = 60.0


class Agent(BaseAgent):
    """One model at one provider.

    Constructing an Agent does no I/O and never fails for an unknown provider or a
    missing key: those surface as a `ConfigurationError` when it is called, so a
    router simply falls back past it.
    """

    def __init__(
        self,
        provider: str,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        tools: Iterable[ToolLike] | None = None,
        middleware: Iterable[Middleware] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_tool_rounds: int = 8,
        headers: dict[str, str] | None = None,
        price: Price | tuple[float, float] | None = None,
        capabilities: dict[str, Any] | None = None,
        name: str | None = None,
        weight: float = 1.0,
        extra: dict[str, Any] | None = None,
        transport: AnyTransport | None = None,
        limits: AgentLimitsConfig | dict[str, Any] | None = None,
        first_token_timeout: float | None = None,
        stall_timeout: float | None = None,
        api: str = "chat",
    ) -> None:
        """`limits`: the provider account's rpm, tpm and concurrent requests, which a
        router holds this agent to (see `agent.limits`). `first_token_timeout`: seconds
        a stream may take to its first content; `stall_timeout`: the longest silence
        between its events after that (see `StreamLimits`). `api`: for an OpenAI-format
        agent, "chat" (Chat Completions) or "responses" (OpenAI's Responses API)."""
        from agent.config import AgentLimitsConfig, validated

        self.limits = validated(AgentLimitsConfig, limits) if limits is not None else None
        self.provider = provider
        self.api = api
        self.model = resolve_model(model)
        self.requested_model = model
        self.base_url = base_url
        self.timeout = timeout
        self.first_token_timeout = first_token_timeout
        self.stall_timeout = stall_timeout
        self.max_tool_rounds = max_tool_rounds
        self.headers = dict(headers or {})
        self.name = name or f"{provider}/{model}"
        self.weight = weight
        self.extra = dict(extra or {})
        self.middleware = list(middleware or ())
        self.transport = transport  # None: the router's, the process default, or its own
        self._resources = Resources(self.name)
        self._api_key = api_key
        self._tool_input = list(tools or ())
        self._price_override = Price(*price) if isinstance(price, tuple) else price
        self._capability_overrides = capabilities

    def __repr__(self) -> str:
        return f"Agent(provider={self.provider!r}, model={self.model!r})"

    # ---- what routers ask ---------------------------------------------------------------

    @classmethod
    def from_config(cls, config: AgentConfig | dict[str, Any], **options: Any) -> Agent:
        """The agent a config document's `agents:` entry describes (validated here);
        `options`: what a document cannot carry (`transport=`, `middleware=`, `tools=`)."""
        from agent.config import AgentConfig, validated

        return validated(AgentConfig, config).build(**options)

    @functools.cached_property
    def tools(self) -> list[ToolSpec]:
        return to_tool_specs(self._tool_input)

    @functools.cached_property
    def capabilities(self) -> Capabilities:
        return capabilities_for(self.model).with_overrides(self._capability_overrides)

    @property
    def price(self) -> Price | None:
        if self._price_override is not None:
            return self._price_override
        preset = PROVIDERS.get(self.provider)
        return lookup_price(preset.price_id if preset else None, self.model)

    def estimate_cost(self, request: Request) -> float | None:
        """USD for this request, guessing the answer is as long as max_tokens or 500."""
        price = self.price
        if price is None:
            return None
        out = request.max_tokens or 500
        return price.cost(Usage(request.approx_input_tokens(), out))

    @property
    def relays(self) -> bool:
        """Whether a caller's body in this agent's format goes upstream as it came, read
        by nothing on the way: it can be relayed (`_relays_with`) and no middleware of
        the agent's (a hook may read the request) sees it first."""
        return not self.middleware and self._relays_with(codec_for(self.provider, self.api))

    def _relays_with(self, codec: Codec) -> bool:
        """The agent runs no tools of its own (a tool round would need a body of its
        making) and its codec can send a caller's body on."""
        # Not isinstance(codec, Relaying): a runtime protocol check walks the protocol's
        # members on every call (tens of microseconds on Python 3.11, per request).
        return not self.tools and callable(getattr(codec, "relay", None))

    @property
    def wire(self) -> str:
        """The wire format this agent speaks ("openai", "responses", "anthropic", ...)."""
        return wire_for(self.provider, self.api)

    def _secrets(self) -> tuple[str | None, ...]:
        """What an upstream may echo back that must never reach an error: the key, every
        header value (a gateway's token hides in any of them), the base URL's credentials."""
        preset = PROVIDERS.get(self.provider)
        base_url = self.base_url or (preset.base_url_from_env() if preset else None)
        return (
            self._api_key,
            preset.api_key_from_env() if preset else None,
            *self.headers.values(),
            *url_credentials(base_url),
        )

    def target(self) -> Target:
        """Resolve provider, base URL and key now (environment variables included)."""
        preset = PROVIDERS.get(self.provider)
        if preset is None:
            known = ", ".join(sorted(PROVIDERS))
            raise ConfigurationError(
                f"unknown provider {self.provider!r} (known: {known}; or use "
                "'openai_compatible' with base_url=)",
                provider=self.provider,
                model=self.model,
            )
        base_url = self.base_url or preset.base_url_from_env()
        if not base_url:
            raise ConfigurationError(
                f"no base URL for {self.provider}: pass base_url= or set {preset.base_url_env}",
                provider=self.provider,
                model=self.model,
            )
        key = self._api_key or preset.api_key_from_env()
        if not key and preset.key_required:
            raise ConfigurationError(
                f"no API key for {self.provider}: pass api_key= or set "
                f"{' or '.join(preset.key_env)}",
                provider=self.provider,
                model=self.model,
            )
        return Target(self.provider, self.model, base_url, key, self.headers)

    # ---- requests -----------------------------------------------------------------------

    def steps(
        self,
        request: Request,
        caller: Caller = TOP,
    ) -> _steps.Steps[Response[Any]]:
        """This agent's whole call as steps: middleware, exchange(s), tools, validation."""
        transport = (
            self.transport or caller.transport or default_transport() or self._resources.pool()
        )
        seconds = caller.timeout or self.timeout
        first_token = shortest(self.first_token_timeout, caller.first_token_timeout)
        stall = shortest(self.stall_timeout, caller.stall_timeout)
        limits = NO_STREAM_LIMITS if first_token is None and stall is None else StreamLimits(
            first_token, stall
        )
        if not self.middleware:
            return self._exchange(request, seconds, transport, limits)
        return with_middleware(
            self.middleware, request, lambda r: self._exchange(r, seconds, transport, limits)
        )

    def _exchange(
        self, request: Request, timeout: float, transport: AnyTransport, limits: StreamLimits
    ) -> _steps.Steps[Response[Any]]:
        delivered: list[str] = []  # the text a stream handed to the caller
        try:
            return (yield from self._rounds(request, timeout, transport, limits, delivered))
        except AgentError as error:
            error.at(self.provider, self.model).redact(*self._secrets())
            if delivered:
                error.partial_text = "".join(delivered)
            raise

    def _rounds(
        self,
        request: Request,
        timeout: float,
        transport: AnyTransport,
        limits: StreamLimits,
        delivered: list[str],
    ) -> _steps.Steps[Response[Any]]:
        target = self.target()
        codec = codec_for(self.provider, self.api)
        if request.continues is not None:
            request = continuing(request, request.continues, codec.wire)
        relay = self._relay(request, codec)
        tools: dict[str, ToolSpec] = {}
        if relay is None:  # a relayed body is the caller's: its tools and extras are in it
            tools = {t.name: t for t in (*self.tools, *request.tools)}
            if self.extra:
                request = request.copy(extra={**self.extra, **request.extra})
            if tools and len(tools) != len(request.tools):
                request = request.copy(tools=list(tools.values()))
        messages = list(request.messages)
        calls: list[ToolCall] = []
        usage = NO_USAGE
        start = time.perf_counter()
        first: list[float] = []  # time of the first content event, when streaming
        body: bytes | None = None  # the answer's bytes, when relayed
        heard: list[ProviderLimits] = []  # the provider's rate-limit headers, last answer
        for round_ in range(self.max_tool_rounds + 1):
            if round_:
                request = request.copy(messages=messages)
            if relay is not None:
                wire = cast(Relaying, codec).relay(relay, self.extra, target)
            else:
                wire = codec.build(request, target)
            if request.stream:
                opening = _steps.Open(wire, timeout, transport, limits.watched)
                parsed = yield from _stream_once(
                    codec, opening, start, first, relay is not None, heard, limits, delivered
                )
            else:
                reply: Reply = yield _steps.Send(wire, timeout, transport)
                if reply.status >= 400:
                    raise codec.error(reply.status, reply.headers, reply.body)
                parsed = codec.parse(reply.body)
                body = reply.body if relay is not None else None
                _heard(reply.headers, heard)
            usage = usage + parsed.usage if round_ else parsed.usage
            calls += parsed.tool_calls
            if relay is not None:
                break  # the caller's own body: its tools are the caller's to run
            runnable = [tools.get(c.name) for c in parsed.tool_calls]
            if not parsed.tool_calls or any(s is None or s.function is None for s in runnable):
                break  # nothing to run, or the caller runs these tools itself
            if round_ == self.max_tool_rounds:
                break
            messages.append(Message("assistant", parsed.text, parsed.tool_calls))
            for call, spec in zip(parsed.tool_calls, runnable, strict=True):
                assert spec is not None and spec.function is not None
                try:
                    result = yield _steps.Invoke(
                        functools.partial(spec.function, **call.arguments), ()
                    )
                    record_result(call, result)
                except Exception as exc:  # the model hears about a failing tool and adapts
                    record_result(call, error=exc)
                messages.append(tool_message(call))
                if request.stream:
                    yield _steps.Emit([ToolResult(call)])
        messages.append(Message("assistant", parsed.text, parsed.tool_calls))
        response = self._response(
            target, parsed, usage, calls, start, first, messages, request.output_schema
        )
        response.body = body
        response.provider_limits = heard[-1] if heard else None
        return response

    def _relay(self, request: Request, codec: Codec) -> Relay | None:
        """The caller's own body, when this agent speaks its format and runs no tools of
        its own (a tool round would need a body of the agent's making)."""
        relay = request.relay
        if relay is None or relay.wire != codec.wire or not self._relays_with(codec):
            return None
        return relay

    def _response(
        self,
        target: Target,
        parsed: Parsed,
        usage: Usage,
        calls: list[ToolCall],
        start: float,
        first: list[float],
        messages: list[Message],
        schema: OutputSchema | None,
    ) -> Response[Any]:
        price = self.price
        output: Any = parsed.text
        if schema is not None and schema.parse is not None:
            output = validate_output(schema, parsed.text, self.provider, self.model)
        return Response(
            output=output,
            text=parsed.text,
            provider=self.provider,
            model=parsed.model or target.model,
            latency_ms=round((time.perf_counter() - start) * 1000, 3),
            usage=usage,
            cost_estimate=price.cost(usage) if price else 0.0,
            cost_known=price is not None,
            finish_reason=parsed.finish_reason,
            tool_calls=calls,
            raw=parsed.raw,
            id=parsed.id,
            reasoning=parsed.reasoning,
            time_to_first_token_ms=round((first[0] - start) * 1000, 3) if first else None,
            messages=messages,
        )


def _heard(headers: Any, heard: list[ProviderLimits]) -> None:
    if (limits := ProviderLimits.from_headers(headers)) is not None:
        heard.append(limits)


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """How long a stream may keep its caller waiting, beside the per-wait `timeout`:
    `first_token` seconds from sending the request to the first content event (what
    comes before it, a role chunk, message_start, pings, does not count), and `stall`
    seconds of silence between events after it. Either ends the attempt as an
    `APITimeoutError` and closes its connection at once: before the first content the
    router falls back; after it the stream fails (or continues elsewhere)."""

    first_token: float | None = None
    stall: float | None = None

    @property
    def watched(self) -> bool:
        return self.first_token is not None or self.stall is not None

    def within(self, first_by: float | None, content: bool) -> float | None:
        """Seconds the next wait may take (None: only the per-wait timeout bounds it)."""
        if content:
            return self.stall
        return None if first_by is None else max(0.0, first_by - time.monotonic())

    def expired(self, content: bool) -> APITimeoutError:
        if content:
            return APITimeoutError(
                f"the stream stalled: no event for {self.stall:g}s (stall_timeout)"
            )
        return APITimeoutError(
            f"no content within {self.first_token:g}s of the request (first_token_timeout)"
        )


NO_STREAM_LIMITS = StreamLimits()  # most calls: one object, not one a call
NO_USAGE = Usage()


def _stream_once(
    codec: Codec,
    open_: _steps.Open,
    start: float,
    first: list[float],
    relay: bool,
    heard: list[ProviderLimits],
    limits: StreamLimits,
    delivered: list[str],
) -> _steps.Steps[Parsed]:
    """One streamed exchange. Relayed (`relay`), the provider's bytes go to the caller
    instead of the events decoded from them; bytes before the first
    content event (message_start, pings) wait for it, so a stream that fails before any
    content can still fall back to another agent unseen. The text handed on is added to
    `delivered`."""
    first_by = None if limits.first_token is None else time.monotonic() + limits.first_token
    open_.within = limits.within(first_by, bool(first))
    try:
        opened = yield open_
    except TimeoutError:
        raise limits.expired(bool(first)) from None
    if isinstance(opened, Reply):
        raise codec.error(opened.status, opened.headers, opened.body)
    _heard(getattr(opened.response, "headers", {}), heard)
    reader = StreamReader(codec, relay)
    held: list[bytes] = []  # relayed bytes not handed on yet
    chunk = opened.first  # what came with the headers (see _steps)
    try:
        while True:
            if not chunk:
                if opened.ended:
                    break
                try:
                    chunk = yield _steps.Read(opened, limits.within(first_by, bool(first)))
                except TimeoutError:
                    raise limits.expired(bool(first)) from None
                if not chunk:
                    break
            events = reader.feed(chunk)
            delivered += [e.text for e in events if isinstance(e, TextDelta)]
            if relay:
                held.append(reader.relayed())
                if events or first:
                    # The caller gets the provider's bytes; the events decoded from them
                    # stay here (they said whether content came, and what text).
                    events = [WireBytes(b"".join(held))]
                    held.clear()
            if events:
                if not first:
                    first.append(time.perf_counter())
                yield _steps.Emit(events)
            reader.check()
            chunk = b""  # the next one is read, unless the transport saw the end (_steps)
        last, parsed = reader.close()
        delivered += [e.text for e in last if isinstance(e, TextDelta)]
        if relay:
            held.append(reader.relayed())
            last = [WireBytes(b"".join(held))] if any(held) else []
        if last:
            if not first:
                first.append(time.perf_counter())
            yield _steps.Emit(last)
    except GeneratorExit:
        raise
    except BaseException:
        yield _steps.Close(opened)  # free the connection before a fallback starts
        raise
    if not opened.ended:  # an ended stream's connection is free already
        yield _steps.Close(opened)
    return parsed


def validate_output(schema: OutputSchema, text: str, provider: str, model: str) -> Any:
    body = text.strip()
    if body.startswith("```"):  # some models fence JSON even when asked not to
        body = body.strip("`").removeprefix("json").strip()
    assert schema.parse is not None
    try:
        return schema.parse(body)
    except pydantic.ValidationError as exc:
        raise OutputValidationError(
            f"the output does not match {schema.name}: {exc.error_count()} error(s): "
            + "; ".join(
                f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()[:5]
            ),
            raw_text=text,
            provider=provider,
            model=model,
        ) from exc
