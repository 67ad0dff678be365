"""The whole story, end to end, on the real control plane and a real Jaeger.

`helm install` of the chart; the operator run as the chart's service account; an
AgentPool over two fake providers (the primary answering 529) and a fallback
RoutingPolicy, applied with `kubectl apply -f`; a labelled pod injected by the webhook,
marked ready at 127.x.y.z where a real sidecar serves with the injected environment;
the pushed config; the official openai SDK answered by the secondary; headers, metrics
and the trace in Jaeger showing the fallback; `round_robin` by kubectl spreading the
traffic; the operator SIGKILLed (the sidecar keeps serving) and restarted (the status
catches up). The steps are tests/support/story.py's, which the demo prints
(examples/story.py, `hack/demo`): the last test runs the demo itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.controlplane import ControlPlane, Jaeger, find_assets
from support.story import ANSWERS, KEYS, POD, PROMPT, ROUTE, Story

pytestmark = [pytest.mark.controlplane, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def story(control_plane: ControlPlane, jaeger: Jaeger) -> Iterator[Story]:
    # Names of their own: the session's control plane is shared with other tests. Short
    # ones: the service account's identity, system:serviceaccount:<namespace>:<name>, is a
    # certificate CN of at most 64 characters.
    suffix = uuid.uuid4().hex[:5]
    s = Story(control_plane, jaeger, release=f"r{suffix}", system_namespace=f"ars-{suffix}",
              app_namespace=f"e2e-{suffix}")
    try:
        yield s
    finally:
        if os.environ.get("AGENT_ROUTER_SHOW_OPERATOR_LOG"):
            print(s.operator_log())
        s.close()


def test_the_whole_story(story: Story, jaeger: Jaeger) -> None:
    cluster = story.cluster()
    assert not cluster.started_here and cluster.otlp_endpoint == jaeger.otlp_http_endpoint

    # helm install: the CRDs, RBAC and the (empty) webhook configuration.
    installed = story.install_chart()
    assert "STATUS: deployed" in installed.notes
    assert installed.crds == ["agentpools.agentrouter.io", "routingpolicies.agentrouter.io"]
    kinds = {o.split("/")[0] for o in installed.objects}
    assert {"ClusterRole", "ClusterRoleBinding", "ServiceAccount", "Deployment",
            "MutatingWebhookConfiguration"} <= kinds

    # The operator, as the chart's service account, fills in the webhook configuration.
    up = story.start_operator()
    assert up.identity.startswith(f"system:serviceaccount:{installed.namespace}:")
    assert up.webhooks == [f"inject-sidecar.{installed.webhook_name}"]

    # Fakes, then the AgentPool and RoutingPolicy with kubectl apply -f.
    story.start_fakes()
    applied = story.apply_pool_and_policy()
    for line in ("secret/llm-keys created", "agentpool.agentrouter.io/main created",
                 "routingpolicy.agentrouter.io/chat created"):
        assert line in applied.output
    assert "type: fallback" in applied.texts["policy.yaml"]

    # A labelled pod comes back injected by the webhook.
    pod = story.create_pod()
    assert "agent-sidecar" not in pod.manifest
    assert pod.init_containers == ["agent-sidecar"]
    assert pod.sidecar["restartPolicy"] == "Always"  # a native sidecar
    assert pod.sidecar_env["OTEL_EXPORTER_OTLP_ENDPOINT"] == jaeger.otlp_http_endpoint
    assert pod.sidecar_env["OTEL_SERVICE_NAME"] == "chat"
    assert pod.app_env == {"OPENAI_BASE_URL": "http://127.0.0.1:4000/v1",
                           "ANTHROPIC_BASE_URL": "http://127.0.0.1:4000"}
    assert pod.annotations["agentrouter.io/admin-port"] == "4001"
    assert {"agent-router-token", "agent-sidecar-state"} <= set(pod.volumes)

    # It "runs": a real sidecar with the injected env at the pod's IP; the operator pushes.
    sidecar = story.start_sidecar()
    assert sidecar.env["OTEL_EXPORTER_OTLP_ENDPOINT"] == jaeger.otlp_http_endpoint
    assert sidecar.env["OTEL_RESOURCE_ATTRIBUTES"] == (
        f"k8s.pod.name={POD},k8s.namespace.name={story.namespace}")
    _, row = sidecar.pod_table.splitlines()  # kubectl get pod -o wide
    cols = row.split()
    assert cols[:4] == [POD, "2/2", "Running", "0"] and cols[5] == sidecar.ip
    pushed = story.wait_for_config()
    assert pushed.routes == [ROUTE] and pushed.strategy == "fallback"
    assert [a["name"] for a in pushed.agents] == ["main.claude", "main.gpt"]
    assert {a["api_key"] for a in pushed.agents} == {"***"}
    assert pushed.status["targetPods"] == 1 and pushed.status["synced"] == "1/1"
    assert pushed.status["configVersion"] == pushed.version
    assert pushed.status["observedGeneration"] == 1

    # The app's request, with the official openai SDK, succeeds through the secondary.
    call = story.ask()
    assert call.answer == ANSWERS["openai"]
    assert call.headers["x-agent-provider"] == "openai"
    assert call.headers["x-agent-model"] == "gpt-4o"
    assert call.headers["x-agent-route"] == ROUTE
    assert call.headers["x-agent-attempts"] == "2"  # claude (529), then gpt
    assert "fell back to main.gpt after 1 failed attempt" in call.headers["x-agent-route-reason"]
    assert call.headers["x-agent-config-version"] == str(pushed.version)
    claude, gpt = story.fakes["anthropic"], story.fakes["openai"]
    # The keys came from the Secret, through the operator's push, to the fakes.
    assert claude.requests[-1].headers.get("x-api-key") == KEYS["anthropic"]
    assert gpt.requests[-1].headers["authorization"] == f"Bearer {KEYS['openai']}"

    # The sidecar's metrics (admin port) count the fallback.
    metrics = story.metrics()
    assert metrics.value("agent_sidecar_fallbacks_total", route=ROUTE) == 1
    assert metrics.value("agent_sidecar_attempts_total", agent="main.claude",
                         outcome="error") == 1
    assert metrics.value("agent_sidecar_attempts_total", agent="main.gpt", outcome="ok") == 1
    assert metrics.value("agent_sidecar_requests_total", route=ROUTE, code="200") == 1

    # The trace, through Jaeger's HTTP API: the app's span, the sidecar's request span,
    # the routing decision, and the two attempts as its children.
    trace = story.find_trace(call.trace_id)
    (app_span,) = trace.named("ask the assistant")
    (server,) = trace.named("POST /v1/chat/completions")
    (route,) = trace.named(f"route {ROUTE}")
    assert server.parent_id == app_span.span_id  # traceparent was honoured
    assert route.parent_id == server.span_id and server.service == "chat"
    assert server.resource["k8s.pod.name"] == POD  # the injected OTEL_RESOURCE_ATTRIBUTES
    assert server.resource["k8s.namespace.name"] == story.namespace
    assert route.tags["agent_router.strategy"] == "fallback"
    assert route.tags["agent_router.chosen"] == "openai/gpt-4o"
    assert route.tags["agent_router.fallbacks"] == 1
    failed, won = trace.children(route)
    assert failed.name.startswith("chat claude-sonnet")
    assert failed.tags["gen_ai.provider.name"] == "anthropic"
    assert failed.tags["agent_router.attempt.outcome"] == "error"
    assert failed.error_type == "OverloadedError"
    assert failed.tags["http.response.status_code"] == 529
    assert won.name == "chat gpt-4o" and won.error_type is None
    assert won.tags["gen_ai.provider.name"] == "openai"
    assert won.tags["agent_router.attempt.outcome"] == "ok"
    assert won.tags["gen_ai.usage.output_tokens"] > 0
    for secret in (PROMPT, "purple-elephant", *KEYS.values(), story.token):
        assert secret not in trace.raw

    # kubectl switches the policy to round_robin (the primary healthy again): both fakes
    # now receive requests.
    switched = story.switch_strategy("round_robin", requests=4)
    assert switched.version > pushed.version
    assert sorted(switched.providers) == ["anthropic", "anthropic", "openai", "openai"]
    assert switched.received == {"anthropic": 2, "openai": 2}

    # The operator is SIGKILLed: the sidecar keeps serving its config.
    killed = story.kill_operator()
    assert killed.exit_code == -9
    during = story.ask()
    assert during.answer in ANSWERS.values()
    assert during.headers["x-agent-config-version"] == str(switched.version)
    # A change made while it is down waits for it: the status lags, the sidecar keeps
    # the round_robin config.
    changed = story.apply_policy("fallback")
    assert changed.generation == 3 and changed.observed_generation == 2
    assert changed.served_strategy == "round_robin"

    # Restarted, it catches up: status, printer columns and the sidecar's config.
    recovered = story.restart_operator()
    assert recovered.pid != up.pid
    status = recovered.status
    assert status["observedGeneration"] == recovered.generation == 3
    assert status["synced"] == "1/1" and status["targetPods"] == status["syncedPods"] == 1
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["observedGeneration"] == 3
    assert recovered.served_strategy == "fallback"
    assert recovered.version > switched.version == int(during.headers["x-agent-config-version"])
    header, row = recovered.policies_table.splitlines()
    assert header.split() == ["NAME", "STRATEGY", "POOLS", "SYNCED", "READY", "AGE"]
    assert row.split()[:5] == ["chat", "fallback", '["main"]', "1/1", "True"]
    assert "agentpool.agentrouter.io/main" in recovered.agentrouter_table
    assert "routingpolicy.agentrouter.io/chat" in recovered.agentrouter_table
    after = story.ask()  # fallback, with a healthy primary: the primary answers
    assert after.headers["x-agent-provider"] == "anthropic"
    assert after.headers["x-agent-attempts"] == "1"


# What the demo must print (each, somewhere in its output), so that it cannot rot.
DEMO_LINES = [
    "STATUS: deployed",
    "webhook: inject-sidecar.agent-router-sidecar-injector.agentrouter.io",
    "initContainers: agent-sidecar",
    "routingpolicy.agentrouter.io/chat created",
    "export KUBECONFIG=",
    "kubectl -n story get agentrouter",
    f"answer: {ANSWERS['openai']!r}",
    "x-agent-provider: openai",
    "x-agent-attempts: 2",
    'agent_sidecar_fallbacks_total{route="default"} 1.0',
    "error.type=OverloadedError",
    "trace id: ",
    "/api/traces/",
    "4 requests, answered by: ",
    "the fakes received: anthropic 2, openai 2",
    "exit code -9",
    "routingpolicy.agentrouter.io/chat   fallback",
    "Tearing down",
]


def test_the_demo_runs_the_same_story() -> None:
    """`examples/story.py --no-wait` (what `hack/demo` runs) starts its own control plane
    and Jaeger, tells the story and exits 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["AGENT_ROUTER_ASSETS"] = str(find_assets())
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "story.py"), "--no-wait"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
                          stdin=subprocess.DEVNULL, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    missing = [line for line in DEMO_LINES if line not in proc.stdout]
    assert not missing, f"the demo no longer prints {missing}:\n{proc.stdout[-6000:]}"
    assert "\033[" not in proc.stdout  # no terminal colours when not on a terminal
