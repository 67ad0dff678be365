"""OpenTelemetry for the sidecar.

Tracing is on only when the standard environment asks for it
(`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
`OTEL_TRACES_EXPORTER`, and not `OTEL_SDK_DISABLED=true`); otherwise nothing is
installed and requests pay nothing. When on, a TracerProvider with a batching OTLP/HTTP
exporter (configured by the usual `OTEL_*` variables) becomes the global provider, so
the engine's decision spans (`route <name>`, one `chat <model>` child per attempt) are
exported too. Each request continues the caller's trace (`traceparent`): a SERVER span
for the HTTP request, with the decision span inside it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from opentelemetry import trace

log = logging.getLogger("agent_sidecar.telemetry")

DEFAULT_SERVICE_NAME = "agent-sidecar"


def wanted(env: Mapping[str, str]) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(
        exporter
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def install(env: Mapping[str, str]) -> trace.TracerProvider | None:
    """Install the global TracerProvider when the environment asks for tracing."""
    if not wanted(env):
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    attributes = {}
    named = "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if not env.get("OTEL_SERVICE_NAME") and not named:
        attributes["service.name"] = DEFAULT_SERVICE_NAME
    provider = TracerProvider(resource=Resource.create(attributes))
    exporters = {e.strip().lower() for e in (env.get("OTEL_TRACES_EXPORTER") or "otlp").split(",")}
    if unknown := exporters - {"otlp", "console"}:
        log.warning("unsupported OTEL_TRACES_EXPORTER value(s) ignored: %s", ", ".join(unknown))
    if "console" in exporters:
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    if "otlp" in exporters:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
        )
        if protocol != "http/protobuf":
            log.warning("OTLP protocol %r is not supported; exporting http/protobuf", protocol)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider
