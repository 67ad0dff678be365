"""Smoke tests of the real test control plane (etcd + kube-apiserver), helm and Jaeger.

They exercise what the operator and sidecar tests rely on: CRDs with schema and CEL
validation, helm charts, OTLP traces reaching Jaeger, admission webhooks called by
the API server, and RBAC for certificate-based (service-account) identities.
Binaries: hack/test-binaries; see docs/testing-control-plane.md.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support.controlplane import ControlPlane, Jaeger

pytestmark = pytest.mark.controlplane

GROUP = "smoke.agentrouter.io"


def test_version_is_pinned_release(control_plane: ControlPlane) -> None:
    versions = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    server = versions["serverVersion"]["gitVersion"]
    assert server.startswith("v1."), versions
    assert server == versions["clientVersion"]["gitVersion"], versions


def _widget_crd(plural: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural[:-1], "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {
                                        "size": {"type": "integer", "minimum": 1, "maximum": 10},
                                        "min": {"type": "integer"},
                                        "max": {"type": "integer"},
                                    },
                                    "x-kubernetes-validations": [
                                        {
                                            "rule": "!has(self.min) || !has(self.max) || self.min <= self.max",
                                            "message": "min must not exceed max",
                                        }
                                    ],
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def _widget(name: str, **spec: int) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}


def test_crd_schema_and_cel_validation(control_plane: ControlPlane, namespace: str) -> None:
    plural = f"widgets{uuid.uuid4().hex[:6]}"
    crd = f"{plural}.{GROUP}"
    control_plane.apply(_widget_crd(plural))
    try:
        control_plane.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=30s")
        control_plane.apply(_widget("good", size=3, min=1, max=2), namespace=namespace)
        got = control_plane.get_json(f"{plural}.{GROUP}", "good", namespace=namespace)
        assert got["spec"] == {"size": 3, "min": 1, "max": 2}

        bad_schema = control_plane.apply(_widget("big", size=11), namespace=namespace, check=False)
        assert bad_schema.returncode != 0
        assert "spec.size" in bad_schema.stderr
        assert "less than or equal to 10" in bad_schema.stderr

        bad_cel = control_plane.apply(
            _widget("inverted", size=1, min=5, max=2), namespace=namespace, check=False
        )
        assert bad_cel.returncode != 0
        assert "min must not exceed max" in bad_cel.stderr
    finally:
        control_plane.kubectl("delete", "crd", crd, "--wait=false", check=False)


def _write_chart(root: Path) -> Path:
    chart = root / "smoke-chart"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: smoke-chart\nversion: 0.1.0\nappVersion: '1.0'\n"
    )
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        "  name: {{ .Release.Name }}-greeting\n"
        "data:\n"
        "  greeting: {{ .Values.greeting | quote }}\n"
        "  kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}\n"
    )
    return chart


def test_helm_template_install_uninstall(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    chart = _write_chart(tmp_path)
    version = control_plane.server_version()
    rendered = control_plane.helm(
        "template", "rel", str(chart), "--set", "greeting=hi", "--kube-version", version
    ).stdout
    assert "name: rel-greeting" in rendered
    assert 'greeting: "hi"' in rendered
    assert f'kubeVersion: "{version}"' in rendered

    control_plane.helm(
        "install", "rel", str(chart), "--namespace", namespace, "--set", "greeting=hey"
    )
    cm = control_plane.get_json("configmap", "rel-greeting", namespace=namespace)
    assert cm["data"]["greeting"] == "hey"
    assert cm["data"]["kubeVersion"] == version  # helm asked the real server
    releases = json.loads(control_plane.helm("list", "--namespace", namespace, "-o", "json").stdout)
    assert [r["name"] for r in releases] == ["rel"]

    control_plane.helm("uninstall", "rel", "--namespace", namespace, "--wait")
    gone = control_plane.kubectl(
        "get", "configmap", "rel-greeting", "--namespace", namespace, check=False
    )
    assert gone.returncode != 0 and "NotFound" in gone.stderr


def test_otlp_span_reaches_jaeger(jaeger: Jaeger) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    service = f"smoke-{uuid.uuid4().hex[:8]}"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{jaeger.otlp_http_endpoint}/v1/traces"))
    )
    with provider.get_tracer("smoke").start_as_current_span("smoke-span") as span:
        span.set_attribute("smoke.answer", 42)
        span.set_attribute("smoke.model", "tiny")
    provider.shutdown()

    trace = jaeger.wait_for_trace(service, lambda t: bool(Jaeger.spans(t, "smoke-span")))
    (found,) = Jaeger.spans(trace, "smoke-span")
    tags = Jaeger.tags(found)
    assert tags["smoke.answer"] == 42
    assert tags["smoke.model"] == "tiny"


class _MutatingHandler(BaseHTTPRequestHandler):
    """Adds the label ``mutated=yes`` to every object it is asked about."""

    seen: list[dict[str, Any]]

    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append(review)  # type: ignore[attr-defined]
        patch = [{"op": "add", "path": "/metadata/labels/mutated", "value": "yes"}]
        body = json.dumps(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {
                    "uid": review["request"]["uid"],
                    "allowed": True,
                    "patchType": "JSONPatch",
                    "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
                },
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhook_server(control_plane: ControlPlane, tmp_path: Path) -> Iterator[ThreadingHTTPServer]:
    cert, key = control_plane.issue_serving_cert(["127.0.0.1"]).write(tmp_path, "webhook")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _MutatingHandler)
    server.seen = []  # type: ignore[attr-defined]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_mutating_webhook_is_called(
    control_plane: ControlPlane, namespace: str, webhook_server: ThreadingHTTPServer
) -> None:
    assert control_plane.ca_pem is not None
    port = webhook_server.server_address[1]
    name = f"smoke-{namespace}"
    control_plane.apply(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": f"label.{GROUP}",
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 5,
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{port}/mutate",
                        "caBundle": base64.b64encode(control_plane.ca_pem).decode(),
                    },
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["configmaps"],
                            "scope": "Namespaced",
                        }
                    ],
                    # Only this test's namespace and labelled objects.
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": namespace}
                    },
                    "objectSelector": {"matchLabels": {"smoke-webhook": "on"}},
                }
            ],
        }
    )
    try:
        # The API server notices new webhook configurations through a watch: retry briefly.
        deadline = time.monotonic() + 15
        labels: dict[str, str] = {}
        attempt = 0
        while time.monotonic() < deadline:
            attempt += 1
            cm_name = f"probe-{attempt}"
            control_plane.apply(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": cm_name, "labels": {"smoke-webhook": "on"}},
                    "data": {"k": "v"},
                },
                namespace=namespace,
            )
            labels = control_plane.get_json("configmap", cm_name, namespace=namespace)["metadata"][
                "labels"
            ]
            if labels.get("mutated") == "yes":
                break
            time.sleep(0.3)
        assert labels.get("mutated") == "yes", "the webhook never mutated a ConfigMap"
        seen = webhook_server.seen  # type: ignore[attr-defined]
        assert seen and seen[-1]["request"]["namespace"] == namespace
        assert seen[-1]["request"]["kind"]["kind"] == "ConfigMap"

        # Unlabelled objects are not sent to it.
        before = len(seen)
        control_plane.apply(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "plain"}},
            namespace=namespace,
        )
        plain = control_plane.get_json("configmap", "plain", namespace=namespace)
        assert "mutated" not in (plain["metadata"].get("labels") or {})
        assert len(seen) == before
    finally:
        control_plane.kubectl(
            "delete", "mutatingwebhookconfiguration", name, "--ignore-not-found", check=False
        )


def test_service_account_identity_needs_rbac(control_plane: ControlPlane, namespace: str) -> None:
    sa = "smoke-sa"
    user = f"system:serviceaccount:{namespace}:{sa}"
    kubeconfig = control_plane.kubeconfig_for_service_account(namespace, sa)

    denied = control_plane.kubectl(
        "get", "pods", "-n", namespace, kubeconfig=kubeconfig, check=False
    )
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    assert f'User "{user}" cannot list resource "pods"' in denied.stderr

    control_plane.apply(
        [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "pod-reader"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "pod-reader"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "pod-reader",
                },
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
            },
        ],
        namespace=namespace,
    )
    deadline = time.monotonic() + 10
    while True:  # the RBAC authorizer's cache catches up within moments
        allowed = control_plane.kubectl(
            "get", "pods", "-n", namespace, kubeconfig=kubeconfig, check=False
        )
        if allowed.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert allowed.returncode == 0, allowed.stderr
    can_i = control_plane.kubectl(
        "auth", "can-i", "list", "secrets", "-n", namespace, kubeconfig=kubeconfig, check=False
    )
    assert can_i.stdout.strip() == "no"
    # ...and only in its own namespace.
    other = control_plane.kubectl(
        "get", "pods", "-n", "default", kubeconfig=kubeconfig, check=False
    )
    assert other.returncode != 0 and "forbidden" in other.stderr.lower()


def test_mark_pod_ready_and_api_client(control_plane: ControlPlane, namespace: str) -> None:
    from kubernetes import client

    control_plane.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "fake", "labels": {"app": "fake"}},
            "spec": {"containers": [{"name": "main", "image": "example.invalid/none:1"}]},
        },
        namespace=namespace,
    )
    control_plane.mark_pod_ready(namespace, "fake", ip="127.0.0.7")

    with control_plane.api_client() as api:
        pod = client.CoreV1Api(api).read_namespaced_pod("fake", namespace)
    status = pod.status
    assert status is not None
    assert status.phase == "Running"
    assert status.pod_ip == "127.0.0.7"
    conditions = {c.type: c.status for c in status.conditions or []}
    assert conditions["Ready"] == "True"
    assert conditions["ContainersReady"] == "True"
    assert [c.ready for c in status.container_statuses or []] == [True]
