"""OpenTelemetry: one span per routing decision, a child span per attempt.

Spans are written when the decision is over, from the attempts the router already
records (each with its start and duration), so routing code never juggles span
contexts across sync and async paths, and nothing at all happens while no tracer
provider is installed. Attempt spans follow the GenAI semantic conventions. Prompts,
completions and keys are never recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from agent.catalog import PROVIDERS
from agent.errors import ConfigurationError
from agent.types import Attempt, Continuation, Request, Response
from agent.wire.carry import ignored

_NOT_TRACING = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
# One tracer per provider seen (a router's own, or the global one): a tracer is made
# once, not per decision.
_tracers: dict[int, tuple[trace.TracerProvider, trace.Tracer]] = {}


def provider_in_use(given: trace.TracerProvider | None = None) -> trace.TracerProvider | None:
    """`given`, else OpenTelemetry's global provider; None while that is the API's
    default (nothing installed: tracing is off and costs nothing more)."""
    provider = given if given is not None else trace.get_tracer_provider()
    return None if isinstance(provider, _NOT_TRACING) else provider


def enabled(given: trace.TracerProvider | None = None) -> bool:
    return provider_in_use(given) is not None


def _active_tracer(given: trace.TracerProvider | None) -> trace.Tracer | None:
    """The tracer to record with, or None when tracing is off."""
    provider = provider_in_use(given)
    if provider is None:
        return None
    known = _tracers.get(id(provider))
    if known is None or known[0] is not provider:
        known = provider, provider.get_tracer("agent-router")
        _tracers[id(provider)] = known
    return known[1]


def record_decision(
    route_name: str,
    strategy: str,
    request: Request,
    attempts: Sequence[Attempt],
    agents: Sequence[Any],
    started_ns: int,
    reason: str,
    response: Response[Any] | None = None,
    error: BaseException | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    extra: Callable[[], dict[str, Any]] | None = None,
) -> None:
    """Write the decision span and its attempt spans (no-op when tracing is off). An
    attempt of a nested router is that router's decision span, with its own attempts
    inside: one trace for the whole call. `extra` gives more attributes of the decision
    (asked only when tracing is on)."""
    tracer = _active_tracer(tracer_provider)
    if tracer is None:
        return
    continued = response.route.continuations if response and response.route else []
    decision = _Decision(route_name, strategy, reason, attempts, agents, continued)
    decision.write(
        tracer, None, request, started_ns, time.time_ns(), response, error, extra() if extra else {}
    )


class _Decision:
    __slots__ = ("agents", "attempts", "continued", "reason", "route_name", "strategy")

    def __init__(
        self,
        route_name: str,
        strategy: str,
        reason: str,
        attempts: Sequence[Attempt],
        agents: Sequence[Any],
        continued: Sequence[Continuation] = (),
    ) -> None:
        self.route_name, self.strategy, self.reason = route_name, strategy, reason
        self.attempts, self.agents, self.continued = attempts, agents, continued

    def write(
        self,
        tracer: trace.Tracer,
        context: Context | None,
        request: Request,
        started_ns: int,
        ended_ns: int,
        response: Response[Any] | None,
        error: BaseException | None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        attempts = self.attempts
        decision = tracer.start_span(
            f"route {self.route_name}",
            context=context,
            kind=SpanKind.INTERNAL,
            start_time=started_ns,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": self.route_name,
                "gen_ai.request.stream": request.stream,
                "agent_router.route": self.route_name,
                "agent_router.strategy": self.strategy,
                "agent_router.reason": self.reason,
                "agent_router.candidates": [a.agent for a in attempts] or [],
                "agent_router.attempts": len([a for a in attempts if a.outcome != "skipped"]),
                "agent_router.fallbacks": sum(1 for a in attempts if a.outcome == "error"),
                "agent_router.outcome": "ok" if response is not None else "error",
                **(extra or {}),
            },
        )
        if response is not None:
            decision.set_attribute("agent_router.chosen", f"{response.provider}/{response.model}")
            decision.set_attribute("agent_router.cost_usd", response.cost_estimate)
        if error is not None:
            decision.set_attribute("error.type", type(error).__name__)
            decision.set_status(Status(StatusCode.ERROR, type(error).__name__))
        for c in self.continued:  # a stream broke off and the next agent went on with it
            decision.add_event(
                "agent_router.stream.continued",
                {
                    "agent_router.continued.failed": c.failed,
                    "agent_router.continued.agent": c.agent,
                    "agent_router.continued.offset": c.offset,
                    # the error's own (scrubbed) words: never prompt text or keys
                    "agent_router.continued.reason": c.reason[:300],
                },
            )
        parent = trace.set_span_in_context(decision)
        for attempt in attempts:
            agent = self.agents[attempt.index]
            start = attempt.started_ns or started_ns
            end = start + int(attempt.latency_ms * 1e6)
            won = response if attempt.outcome == "ok" else None
            if attempt.route is not None and hasattr(agent, "agents"):  # a nested router
                inner = _Decision(
                    agent.name,
                    attempt.route.strategy,
                    attempt.route.reason,
                    attempt.route.attempts,
                    agent.agents,
                    attempt.route.continuations,
                )
                inner.write(tracer, parent, request, start, end, won, attempt.error)
                continue
            _attempt_span(tracer, parent, request, agent, attempt, start, end, won)
        decision.end(end_time=ended_ns)


def _attempt_span(
    tracer: trace.Tracer,
    parent: Context,
    request: Request,
    agent: Any,
    attempt: Attempt,
    start: int,
    end: int,
    response: Response[Any] | None,
) -> None:
    preset = PROVIDERS.get(agent.provider)
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": preset.otel_name if preset else agent.provider,
        "gen_ai.request.model": agent.model,
        "agent_router.agent": attempt.agent,
        "agent_router.attempt.outcome": attempt.outcome,
        "agent_router.attempt.retry": attempt.retry,
    }
    if wire := _wire(agent):
        # What of the caller's request this agent went without (another wire format).
        if names := ignored(request, wire):
            attrs["agent_router.attempt.ignored_fields"] = sorted(names)
    if request.max_tokens is not None:
        attrs["gen_ai.request.max_tokens"] = request.max_tokens
    if request.temperature is not None:
        attrs["gen_ai.request.temperature"] = request.temperature
    if response is not None:
        attrs["gen_ai.response.model"] = response.model
        attrs["gen_ai.usage.input_tokens"] = response.usage.input_tokens
        attrs["gen_ai.usage.output_tokens"] = response.usage.output_tokens
        attrs["gen_ai.response.finish_reasons"] = [response.finish_reason]
        if response.id:
            attrs["gen_ai.response.id"] = response.id
    span = tracer.start_span(
        f"chat {agent.model}",
        context=parent,
        kind=SpanKind.CLIENT,
        start_time=start,
        attributes=attrs,
    )
    if attempt.error is not None:
        span.set_attribute("error.type", type(attempt.error).__name__)
        if attempt.error.status:
            span.set_attribute("http.response.status_code", attempt.error.status)
        # The message is ours or a scrubbed provider message: never prompt text or keys.
        span.set_status(Status(StatusCode.ERROR, str(attempt.error)[:300]))
    span.end(end_time=end)


def _wire(agent: Any) -> str | None:
    """The wire format an agent speaks; None for an agent of the caller's own making or
    of an unknown provider (its call fails; its span says why)."""
    try:
        wire = agent.wire
    except (AttributeError, KeyError, ConfigurationError):
        return None
    return wire if isinstance(wire, str) else None
