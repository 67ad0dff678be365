"""Traces: the caller's trace continues through the sidecar's SERVER span into the
engine's decision span and its attempt spans; in production they leave by OTLP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from agent_sidecar import telemetry
from aiohttp import web
from conftest import SidecarFactory
from fakes import Fail, FakeProvider
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once
from sidecar_support import SidecarProcess, agent_spec, document

import agent.tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = {"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"}
CHAT = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Finished spans, from a TracerProvider installed for this test only."""
    exporter = InMemorySpanExporter()
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):  # someone installed one for good: join it
        current.add_span_processor(SimpleSpanProcessor(exporter))
        yield exporter
        exporter.clear()
        return
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # The API allows one global provider per process; reset it around this test the way
    # OpenTelemetry's own test helpers do, so other tests see the process as it was.
    saved = (trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE)
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = saved
        agent.tracing._tracer = None  # the engine caches a tracer of the provider above


def by_name(
    finished: tuple[ReadableSpan, ...] | list[ReadableSpan],
) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in finished:
        out.setdefault(span.name, []).append(span)
    return out


async def test_decision_and_attempt_spans_continue_the_callers_trace(
    spans: InMemorySpanExporter,
    sidecar_factory: SidecarFactory,
    two_provider_config: dict[str, Any],
    fake_openai: FakeProvider,
) -> None:
    sidecar = await sidecar_factory(two_provider_config, tracing=True)
    fake_openai.script(Fail(500))
    async with httpx.AsyncClient(base_url=sidecar.app_url) as client:
        answered = await client.post("/v1/chat/completions", json=CHAT, headers=TRACEPARENT)
    assert answered.status_code == 200
    named = by_name(spans.get_finished_spans())

    [server] = named["POST /v1/chat/completions"]
    assert server.kind == SpanKind.SERVER
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None and format(server.parent.span_id, "016x") == CALLER_SPAN
    assert server.attributes["http.response.status_code"] == 200

    [decision] = named["route default"]
    assert decision.parent is not None and decision.parent.span_id == server.context.span_id
    assert decision.attributes["agent_router.fallbacks"] == 1
    assert decision.attributes["agent_router.chosen"] == "anthropic/claude-haiku-4-5"

    failed, won = named["chat gpt-4o-mini"][0], named["chat claude-haiku-4-5"][0]
    for attempt in (failed, won):
        assert attempt.kind == SpanKind.CLIENT
        assert attempt.parent is not None and attempt.parent.span_id == decision.context.span_id
        assert format(attempt.context.trace_id, "032x") == TRACE_ID
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes["gen_ai.provider.name"] == "openai"
    assert won.attributes["gen_ai.provider.name"] == "anthropic"
    assert won.attributes["gen_ai.usage.output_tokens"] > 0


async def test_an_attempt_span_names_what_a_fallback_to_another_format_went_without(
    spans: InMemorySpanExporter,
    sidecar_factory: SidecarFactory,
    two_provider_config: dict[str, Any],
    fake_openai: FakeProvider,
    fake_anthropic: FakeProvider,
) -> None:
    """Tried: an OpenAI caller sends `seed` and `logit_bias` (OpenAI's own fields); the
    OpenAI agent fails and Claude answers. Claude's attempt span names the fields it went
    without, as the header does; the OpenAI attempt, sent the body as it came, names
    nothing."""
    sidecar = await sidecar_factory(two_provider_config, tracing=True)
    fake_openai.script(Fail(500))
    body = {**CHAT, "seed": 7, "logit_bias": {"50256": -100}}
    async with httpx.AsyncClient(base_url=sidecar.app_url) as client:
        answered = await client.post("/v1/chat/completions", json=body)
    assert answered.status_code == 200, answered.text
    assert answered.headers["x-agent-ignored-fields"] == "logit_bias,seed"
    assert "seed" not in fake_anthropic.last_request.json
    named = by_name(spans.get_finished_spans())
    failed, won = named["chat gpt-4o-mini"][0], named["chat claude-haiku-4-5"][0]
    assert won.attributes["agent_router.attempt.ignored_fields"] == ("logit_bias", "seed")
    assert "agent_router.attempt.ignored_fields" not in failed.attributes


async def test_a_stream_records_its_decision_inside_the_request_span(
    spans: InMemorySpanExporter,
    sidecar_factory: SidecarFactory,
    two_provider_config: dict[str, Any],
) -> None:
    sidecar = await sidecar_factory(two_provider_config, tracing=True)
    body = {**CHAT, "model": "claude", "stream": True, "max_tokens": 10}
    headers = {**TRACEPARENT, "anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(base_url=sidecar.app_url) as client:
        streamed = await client.post("/v1/messages", json=body, headers=headers)
    assert "message_stop" in streamed.text
    named = by_name(spans.get_finished_spans())
    [server] = named["POST /v1/messages"]
    [decision] = named["route claude"]
    assert decision.parent is not None and decision.parent.span_id == server.context.span_id
    assert decision.attributes["gen_ai.request.stream"] is True
    assert format(decision.context.trace_id, "032x") == TRACE_ID


async def test_without_a_traceparent_the_request_starts_a_trace(
    spans: InMemorySpanExporter,
    sidecar_factory: SidecarFactory,
    two_provider_config: dict[str, Any],
) -> None:
    sidecar = await sidecar_factory(two_provider_config, tracing=True)
    async with httpx.AsyncClient(base_url=sidecar.app_url) as client:
        await client.post("/v1/chat/completions", json={**CHAT, "model": "missing"})
    [server] = by_name(spans.get_finished_spans())["POST /v1/chat/completions"]
    assert server.parent is None
    assert server.attributes["http.response.status_code"] == 404


def test_tracing_is_on_only_when_the_environment_asks() -> None:
    assert not telemetry.wanted({})
    assert telemetry.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert telemetry.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert telemetry.wanted({"OTEL_TRACES_EXPORTER": "console"})
    assert not telemetry.wanted(
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"}
    )
    assert not telemetry.wanted({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"})


async def test_a_sidecar_process_exports_spans_by_otlp(
    tmp_path: Path, fake_openai: FakeProvider
) -> None:
    """The production path: OTEL_* env, batch processor, OTLP/HTTP, flushed on SIGTERM."""
    received: list[ExportTraceServiceRequest] = []

    async def collect(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    collector = f"http://127.0.0.1:{runner.addresses[0][1]}"

    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump(document([agent_spec(fake_openai, "gpt")])))
    process = SidecarProcess(
        ["--config", str(config), "--port", "0", "--admin-port", "0", "--admin-host", "127.0.0.1"],
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": collector},
    )
    try:
        await asyncio.to_thread(process.wait_ready)
        async with httpx.AsyncClient(base_url=process.app_url) as client:
            answered = await client.post("/v1/chat/completions", json=CHAT, headers=TRACEPARENT)
        assert answered.status_code == 200
        process.terminate()
        assert await asyncio.to_thread(process.wait) == 0
    finally:
        process.kill()
        await runner.cleanup()

    exported = [
        (resource_spans.resource, span)
        for message in received
        for resource_spans in message.resource_spans
        for scope in resource_spans.scope_spans
        for span in scope.spans
    ]
    names = {span.name for _, span in exported}
    assert {"POST /v1/chat/completions", "route default", "chat gpt-4o-mini"} <= names
    assert {span.trace_id.hex() for _, span in exported} == {TRACE_ID}
    resource = exported[0][0]
    service = {a.key: a.value.string_value for a in resource.attributes}["service.name"]
    assert service == "agent-sidecar"
