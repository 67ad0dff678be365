"""The story's app: `POST /ask {"prompt": ...}` asks the assistant through the sidecar.

It uses the official openai SDK exactly as any app would: `OpenAI()` reads
OPENAI_BASE_URL, which the injection webhook set to the sidecar (127.0.0.1:4000). Each
request runs in a span of the app's own, exported to OTEL_EXPORTER_OTLP_ENDPOINT when
set, whose context goes to the sidecar as `traceparent`: the sidecar continues the trace.
The answer comes back as JSON with the sidecar's x-agent-* headers and the trace id.
"""

from __future__ import annotations

import json
import os
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from openai import OpenAI
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

provider = TracerProvider(resource=Resource.create({"k8s.pod.name": socket.gethostname()}))
if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
tracer = provider.get_tracer("chat-app")
# The sidecar holds the providers' keys; the SDK only insists that one is set.
client = OpenAI(api_key="unused", max_retries=0, timeout=60)


def ask(prompt: str) -> dict[str, object]:
    with tracer.start_as_current_span("ask the assistant", kind=trace.SpanKind.CLIENT) as span:
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        raw = client.chat.completions.with_raw_response.create(
            model="default", messages=[{"role": "user", "content": prompt}],
            extra_headers=carrier)
        trace_id = format(span.get_span_context().trace_id, "032x")
    answer = raw.parse()
    return {"answer": answer.choices[0].message.content or "", "model": answer.model,
            "headers": {k: v for k, v in raw.headers.items() if k.startswith("x-agent-")},
            "trace_id": trace_id, "pod": socket.gethostname()}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # the readiness probe
        self._send(200, {"ok": True, "pod": socket.gethostname()})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        try:
            self._send(200, ask(str(body.get("prompt", "Hello"))))
        except Exception as exc:  # the caller sees what failed, in JSON
            self._send(502, {"error": type(exc).__name__, "message": str(exc)})

    def _send(self, status: int, payload: dict[str, object]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
