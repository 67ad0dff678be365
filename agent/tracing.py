"""OpenTelemetry: one span per routing decision, a child span per attempt.

Spans are written when the decision is over, from the attempts the router already
records (each with its start and duration), so routing code never juggles span
contexts across sync and async paths, and nothing at all happens while no tracer
provider is installed. Attempt spans follow the GenAI semantic conventions. Prompts,
completions and keys are never recorded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from agent.catalog import PROVIDERS
from agent.types import Attempt, Request, Response

# The tracer of the installed provider, and that provider. OpenTelemetry installs a
# global provider once per process; tests that swap it reset `_tracer`.
_tracer: trace.Tracer | None = None
_traced_by: object = None
_NOT_TRACING = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_UNKNOWN = object()

if "OTEL_PYTHON_TRACER_PROVIDER" in os.environ:  # OpenTelemetry loads that one lazily
    trace.get_tracer_provider()


def _installed() -> object:
    """The installed SDK provider, or None while there is none (the API's default is a
    proxy). Read from the API's global directly: `get_tracer_provider()` looks the
    environment up on every call while none is installed, which would cost an untraced
    decision about a microsecond for nothing."""
    provider = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN)
    if provider is None:
        return None
    if provider is _UNKNOWN:  # an OpenTelemetry API without that global: the public way
        provider = trace.get_tracer_provider()
    return None if isinstance(provider, _NOT_TRACING) else provider


def enabled() -> bool:
    return _installed() is not None


def _active_tracer() -> trace.Tracer | None:
    """The tracer to record with, or None when tracing is off."""
    global _tracer, _traced_by
    provider = _installed()
    if provider is None:
        return None
    if _tracer is None or provider is not _traced_by:
        _tracer = trace.get_tracer("agent-router")
        _traced_by = provider
    return _tracer


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
) -> None:
    """Write the decision span and its attempt spans (no-op when tracing is off)."""
    tracer = _active_tracer()
    if tracer is None:
        return
    ended_ns = time.time_ns()
    outcome = "ok" if response is not None else "error"
    decision = tracer.start_span(
        f"route {route_name}",
        kind=SpanKind.INTERNAL,
        start_time=started_ns,
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": route_name,
            "gen_ai.request.stream": request.stream,
            "agent_router.route": route_name,
            "agent_router.strategy": strategy,
            "agent_router.reason": reason,
            "agent_router.candidates": [a.agent for a in attempts] or [],
            "agent_router.attempts": len([a for a in attempts if a.outcome != "skipped"]),
            "agent_router.fallbacks": sum(1 for a in attempts if a.outcome == "error"),
            "agent_router.outcome": outcome,
        },
    )
    if response is not None:
        decision.set_attribute("agent_router.chosen", f"{response.provider}/{response.model}")
        decision.set_attribute("agent_router.cost_usd", response.cost_estimate)
    if error is not None:
        decision.set_attribute("error.type", type(error).__name__)
        decision.set_status(Status(StatusCode.ERROR, type(error).__name__))
    parent = trace.set_span_in_context(decision)
    for attempt in attempts:
        agent = agents[attempt.index]
        preset = PROVIDERS.get(agent.provider)
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": preset.otel_name if preset else agent.provider,
            "gen_ai.request.model": agent.model,
            "agent_router.agent": attempt.agent,
            "agent_router.attempt.outcome": attempt.outcome,
            "agent_router.attempt.retry": attempt.retry,
        }
        if request.max_tokens is not None:
            attrs["gen_ai.request.max_tokens"] = request.max_tokens
        if request.temperature is not None:
            attrs["gen_ai.request.temperature"] = request.temperature
        won = attempt.outcome == "ok" and response is not None
        if won and response is not None:
            attrs["gen_ai.response.model"] = response.model
            attrs["gen_ai.usage.input_tokens"] = response.usage.input_tokens
            attrs["gen_ai.usage.output_tokens"] = response.usage.output_tokens
            attrs["gen_ai.response.finish_reasons"] = [response.finish_reason]
            if response.id:
                attrs["gen_ai.response.id"] = response.id
        start = attempt.started_ns or started_ns
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
        span.end(end_time=start + int(attempt.latency_ms * 1e6))
    decision.end(end_time=ended_ns)
