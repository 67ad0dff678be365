"""The whole story, end to end, on a real node and a real Jaeger.

`helm install` of the chart, with its defaults, and the images hack/images built: on
this Kubernetes 1.36 the API server injects the sidecar (injection.by=auto: the
MutatingAdmissionPolicy); the operator running in its Deployment's pods (its RBAC the
chart's), writing the namespace's ConfigMap `agent-router`; an AgentPool over two fake
providers (the primary answering 529) and a fallback RoutingPolicy, applied with
`kubectl apply -f`; the app's Deployment, labelled for injection: its pod gets the
sidecar and becomes Ready; its sidecar's watch brings the operator's config; the app's
official openai SDK call to 127.0.0.1:4000 answered by the secondary; headers, metrics and
the trace in Jaeger showing the fallback; `round_robin` by kubectl spreading the
traffic; the operator's pod deleted (the app keeps serving) and rescheduled (the status
catches up); a rolling update of the app. Then no operator replica runs: a rolling
update still gets a new pod, which starts and serves from the namespace's ConfigMap
(the keys read from the mounted Secret files, which the fakes check); the operator
back, a changed policy reaches that pod through its watch (to the operator's ClusterIP
from the ConfigMap, no cluster DNS). Last, the operator's CA rotates twice: the kubelet
brings each bundle into the running pod, whose watch keeps working once the CA it
trusted before is gone. The steps are tests/support/story.py's, which the
demo prints (examples/story.py, `hack/demo`): the last test runs the demo itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import Fail
from support.controlplane import Jaeger
from support.node import Node, node_inputs
from support.sockets import off_loopback
from support.story import ANSWERS, APP, KEYS, PROMPT, ROUTE, Story

pytestmark = [pytest.mark.controlplane, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def story(node: Node, jaeger: Jaeger) -> Iterator[Story]:
    # Names of their own: the session's node may serve other tests.
    suffix = uuid.uuid4().hex[:5]
    s = Story(node, jaeger, release=f"r{suffix}", system_namespace=f"ars-{suffix}",
              app_namespace=f"e2e-{suffix}")
    try:
        yield s
    finally:
        if os.environ.get("AGENT_ROUTER_SHOW_OPERATOR_LOG"):
            print(s.operator_log())
        s.close()


def test_the_whole_story(story: Story, jaeger: Jaeger) -> None:
    cluster = story.cluster()
    assert not cluster.started_here
    assert cluster.otlp_endpoint == f"http://{cluster.node_ip}:{jaeger.otlp_http_port}"
    assert " Ready " in cluster.nodes_table

    # helm install with the defaults: the CRDs, RBAC, the Deployment with the built image,
    # the Service the sidecars watch, and (the cluster serves it) the injection policy.
    # (The operator checks its certificate every 2 s, for the CA rotation at the end.)
    installed = story.install_chart(operator_env={"AGENT_OPERATOR_WEBHOOK_CERT_CHECK_SECONDS": "2"})
    assert "STATUS: deployed" in installed.notes
    assert "Injected by the API server" in installed.notes
    assert installed.crds == ["agentpools.agentrouter.io", "routingpolicies.agentrouter.io"]
    kinds = {o.split("/")[0] for o in installed.objects}
    assert {"ClusterRole", "ClusterRoleBinding", "ServiceAccount", "Deployment", "Service",
            "MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"} <= kinds
    assert "MutatingWebhookConfiguration" not in kinds
    assert installed.injection == "policy" and installed.webhook_name == ""

    # The operator runs in its pods, as the chart's service account; no webhook to call.
    up = story.wait_for_operator()
    assert up.image == cluster.images["agent-operator"]
    assert up.identity.startswith(f"system:serviceaccount:{installed.namespace}:")
    assert up.webhooks == []
    assert " Running " in up.pods_table

    # Fakes, then the AgentPool and RoutingPolicy with kubectl apply -f.
    fakes = story.start_fakes()
    assert all(url.startswith(f"http://{cluster.node_ip}:") for url in fakes.node_urls.values())
    applied = story.apply_pool_and_policy()
    for line in ("secret/llm-keys created", "agentpool.agentrouter.io/main created",
                 "routingpolicy.agentrouter.io/chat created"):
        assert line in applied.output
    assert "type: fallback" in applied.texts["policy.yaml"]

    # The app's Deployment (once the operator wrote the namespace's ConfigMap, which the
    # policy takes as params): its pod comes back injected by the API server, and Ready.
    app = story.deploy_app()
    assert "agent-sidecar" not in app.manifest
    assert app.init_containers == ["agent-sidecar"]
    assert app.sidecar["restartPolicy"] == "Always"  # a native sidecar
    assert app.sidecar["image"] == cluster.images["agent-sidecar"]
    assert app.sidecar_env["OTEL_EXPORTER_OTLP_ENDPOINT"] == cluster.otlp_endpoint
    assert app.sidecar_env["OTEL_SERVICE_NAME"] == APP
    assert app.app_env == {"OPENAI_BASE_URL": "http://127.0.0.1:4000/v1",
                           "ANTHROPIC_BASE_URL": "http://127.0.0.1:4000"}
    # No Secret in the pod, and only the health port declared: the admin port stays on the
    # pod's loopback (checked on the sidecar's own sockets below).
    assert "agent-router-token" not in app.volumes and "agent-sidecar-state" in app.volumes
    # The ConfigMap's CA, address and configs, and the Secret keys they name, as files.
    assert {"agent-router-identity", "agent-router-keys"} <= set(app.volumes)
    assert [p["name"] for p in app.sidecar["ports"]] == ["agent-health"]
    assert "AGENT_SIDECAR_ADMIN_HOST" not in app.sidecar_env
    _, row = app.pod_table.splitlines()  # kubectl get pod -o wide
    cols = row.split()
    assert cols[:3] == [app.pod, "2/2", "Running"] and cols[5] == app.ip
    assert any(e.startswith("Started") for e in app.events)
    configured = story.wait_for_config()
    assert configured.routes == [ROUTE] and configured.strategy == "fallback"
    assert [a["name"] for a in configured.agents] == ["main.claude", "main.gpt"]
    assert {a["api_key"] for a in configured.agents} == {"***"}
    assert configured.status["targetPods"] == 1 and configured.status["synced"] == "1/1"
    assert configured.status["configVersion"] == configured.hash
    assert configured.status["observedGeneration"] == 1
    # The config reached the sidecar through its watch on the operator, over TLS (the CA
    # and the operator's ClusterIP from the namespace's ConfigMap) with the pod's token;
    # the acknowledgement is what the status counts.
    watched = story.wait_for_watch()
    # A refused token shows as a 401 answer (a word of its own: versions are long numbers).
    assert not [line for line in watched
                if "not trusted" in line or re.search(r"\b401\b", line)], watched
    # From the sidecar's own sockets, inside its pod: only the health port listens off
    # loopback; the app and admin ports on 127.0.0.1 only.
    sockets = story.sidecar_sockets()
    assert {port for _, port in sockets} == {4000, 4001, 4002}, sockets
    assert off_loopback(sockets) == {4002}, sockets
    assert {a for a, p in sockets if p in (4000, 4001)} == {"127.0.0.1"}, sockets
    token = story.admin_token()  # the one the sidecar made, in its state directory
    assert len(token) >= 32

    # The app's request, with the official openai SDK to 127.0.0.1:4000 inside its pod,
    # succeeds through the secondary.
    call = story.ask()
    assert call.pod == app.pod
    assert call.answer == ANSWERS["openai"]
    assert call.headers["x-agent-provider"] == "openai"
    assert call.headers["x-agent-model"] == "gpt-4o"
    assert call.headers["x-agent-route"] == ROUTE
    assert call.headers["x-agent-attempts"] == "2"  # claude (529), then gpt
    assert "fell back to main.gpt after 1 failed attempt" in call.headers["x-agent-route-reason"]
    assert call.headers["x-agent-config-version"] == str(configured.version)
    claude, gpt = story.fakes["anthropic"], story.fakes["openai"]
    # The keys came from the Secret, through the operator's watch over TLS, to the fakes.
    assert claude.requests[-1].headers.get("x-api-key") == KEYS["anthropic"]
    assert gpt.requests[-1].headers["authorization"] == f"Bearer {KEYS['openai']}"

    # The sidecar's metrics (health port, what Prometheus scrapes) count the fallback.
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
    assert app_span.service == f"{APP}-app"
    assert server.parent_id == app_span.span_id  # traceparent was honoured
    assert route.parent_id == server.span_id and server.service == APP
    assert server.resource["k8s.pod.name"] == app.pod  # the injected OTEL_RESOURCE_ATTRIBUTES
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
    for secret in (PROMPT, "purple-elephant", *KEYS.values(), token):
        assert secret not in trace.raw

    # kubectl switches the policy to round_robin (the primary healthy again): both fakes
    # now receive requests.
    switched = story.switch_strategy("round_robin", requests=4)
    assert switched.version > configured.version
    assert sorted(switched.providers) == ["anthropic", "anthropic", "openai", "openai"]
    assert switched.received == {"anthropic": 2, "openai": 2}

    # The operator's pod is deleted: the app keeps serving its config meanwhile.
    deleted = story.delete_operator_pod()
    assert deleted.others, "the chart runs two replicas: one is left"
    assert f'pod "{deleted.pod}" deleted' in deleted.output
    assert deleted.during.answer in ANSWERS.values()
    assert deleted.during.headers["x-agent-config-version"] == str(switched.version)
    changed = story.apply_policy("fallback")
    assert changed.generation == 3

    # Its Deployment's new pod catches up: status, printer columns, the sidecar's config.
    recovered = story.wait_for_new_operator()
    assert recovered.pod not in (deleted.pod, *deleted.others)
    status = recovered.status
    assert status["observedGeneration"] == recovered.generation == 3
    assert status["synced"] == "1/1" and status["targetPods"] == status["syncedPods"] == 1
    assert recovered.served_strategy == "fallback"
    assert recovered.version > switched.version
    header, row = recovered.policies_table.splitlines()
    assert header.split() == ["NAME", "STRATEGY", "POOLS", "SYNCED", "READY", "AGE"]
    assert row.split()[:5] == ["chat", "fallback", '["main"]', "1/1", "True"]
    assert "agentpool.agentrouter.io/main" in recovered.agentrouter_table
    assert "routingpolicy.agentrouter.io/chat" in recovered.agentrouter_table

    # A rolling update of the app: the new pod is injected, configured and serving.
    rolled = story.roll_app()
    assert rolled.new_pod != rolled.old_pod
    assert 'deployment "chat" successfully rolled out' in rolled.rollout
    assert rolled.status["synced"] == "1/1"
    assert rolled.call.pod == rolled.new_pod
    assert rolled.call.headers["x-agent-provider"] == "anthropic"  # fallback, primary healthy
    assert rolled.call.headers["x-agent-attempts"] == "1"

    # No operator replica runs; the primary is overloaded again. A rolling update still
    # gets its new pod: the API server injects it, its sidecar starts from the namespace's
    # ConfigMap (keys as files from the mounted Secret), becomes Ready and serves.
    mounted = story.namespace_config()
    assert mounted is not None and mounted["keys"] == "llm-keys/anthropic,llm-keys/openai"
    assert "api_key_file" in mounted["configs.json"] and "sk-" not in mounted["configs.json"]
    assert story.scale_operator(0).endswith(" scaled")
    story.fakes["anthropic"].set_default(Fail(529))
    alone = story.roll_app("3", operator=False)
    assert alone.new_pod != rolled.new_pod
    assert 'deployment "chat" successfully rolled out' in alone.rollout
    assert story.kubectl("get", "pod", alone.new_pod, "-n", story.namespace, "-o",
                         "jsonpath={.spec.initContainers[*].name}") == "agent-sidecar"
    assert alone.served["source"] == "namespace"
    assert alone.call.pod == alone.new_pod
    assert alone.call.answer == ANSWERS["openai"]  # claude (529), then gpt, each with its key
    assert alone.call.headers["x-agent-attempts"] == "2"
    claude, gpt = story.fakes["anthropic"], story.fakes["openai"]
    assert claude.requests[-1].headers.get("x-api-key") == KEYS["anthropic"]
    assert gpt.requests[-1].headers["authorization"] == f"Bearer {KEYS['openai']}"
    assert "serving config version" in story.sidecar_log()

    # The operator is back; the policy changes: the new pod's watch brings it.
    story.scale_operator(2)
    back = story.switch_strategy("round_robin", requests=2)
    assert back.version > int(alone.served["version"])
    assert sorted(back.providers) == ["anthropic", "openai"]
    followed = story.sidecar_log()
    assert "from the operator serves" in followed
    assert not [line for line in followed.splitlines()
                if "not trusted" in line or re.search(r"\b401\b", line)], followed[-3000:]

    # The operator's CA rotates twice (a 150-second certificate written as a renewal
    # would, then the operator's own renewal of it), each bundle keeping the previous CA
    # and published before its certificate is served: the kubelet brings each into the
    # running pod's mounted file in time (no handshake ever fails), and its watch still
    # brings a change once the CA it trusted before is gone from that file.
    rotated = story.rotate_ca()
    assert rotated.first_ca not in rotated.mounted
    assert rotated.mounted.startswith(rotated.renewed_ca) and rotated.short_ca in rotated.mounted
    after = story.switch_strategy("fallback", requests=1)
    assert after.version > back.version and after.providers == ["anthropic"]
    assert "not trusted" not in story.sidecar_log()
    print(f"CA rotation reached the pod in {rotated.seconds:.0f} s; log:\n"
          + "\n".join(story.watch_log()[-12:]))


# What the demo must print (each, somewhere in its output), so that it cannot rot.
DEMO_LINES = [
    "STATUS: deployed",
    "node-0   Ready",
    "injected by the API server: MutatingAdmissionPolicy agent-router-inject",
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
    "deleted",
    "routingpolicy.agentrouter.io/chat   fallback",
    "successfully rolled out",
    "Tearing down",
]


def test_the_demo_runs_the_same_story() -> None:
    """`examples/story.py --no-wait` (what `hack/demo` runs) starts its own node and
    Jaeger, tells the story and exits 0."""
    assets, images = node_inputs()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(AGENT_ROUTER_ASSETS=str(assets), AGENT_ROUTER_IMAGES=str(images))
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "story.py"), "--no-wait"],
                          capture_output=True, text=True, timeout=800, env=env, cwd=ROOT,
                          stdin=subprocess.DEVNULL, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    missing = [line for line in DEMO_LINES if line not in proc.stdout]
    assert not missing, f"the demo no longer prints {missing}:\n{proc.stdout[-6000:]}"
    assert "\033[" not in proc.stdout  # no terminal colours when not on a terminal
