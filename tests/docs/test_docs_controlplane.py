"""The docs' Kubernetes examples on a real control plane, and their tracing example
against a real Jaeger.

* Every page's Kubernetes YAML is applied, in page order, to a fresh namespace (after
  the CRDs), and the page's `controlplane` blocks run with the pinned kubectl and helm.
* Pages in `OWN_CONTROL_PLANE` (Helm: `helm install` with cluster-wide objects, then
  upgrades and `helm uninstall`) do the same on a control plane of their own.
* The operator page is then played for real: the operator runs (webhook included), and
  what the page says about status, conditions, Events and injection is checked.
* The tracing page's Jaeger block exports to a real Jaeger, and the trace is read back.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from docs_runner import (
    CONTROLPLANE,
    JAEGER,
    OWN,
    OWN_CONTROL_PLANE,
    ROOT,
    YAML,
    Page,
    PageRun,
    disposition,
    fake_providers,
    fresh_process_state,
    is_kubernetes,
    pages,
    parse,
    shell_env,
    yaml_documents,
)
from fakes import FakeProvider
from support.controlplane import (
    ControlPlane,
    find_assets,
    skip_requested,
    start_control_plane,
)
from support.waiting import wait_for

if str(ROOT / "tests" / "operator") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests" / "operator"))
from operator_support import OperatorProcess


def _pages_run_by(run: str) -> list[str]:
    return [
        name for name in pages() if any(disposition(name, b) == run for b in parse(name).blocks)
    ]


KUBE_PAGES = _pages_run_by(CONTROLPLANE)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, FakeProvider]]:
    with fake_providers(monkeypatch) as fakes:
        yield fakes


@pytest.fixture(scope="module")
def crds(control_plane: Any) -> None:
    control_plane.kubectl("apply", "-f", str(ROOT / "crds"))
    control_plane.kubectl(
        "wait", "--for=condition=Established", "--timeout=30s",
        "crd/agentpools.agentrouter.io", "crd/routingpolicies.agentrouter.io",
    )  # fmt: skip


def reader_env(cp: ControlPlane, namespace: str, tmp_path: Path) -> dict[str, str]:
    """The environment a reader's shell has: kubectl and helm on PATH, talking to `cp`
    with `namespace` current (in a kubeconfig of its own)."""
    kubeconfig = tmp_path / "kubeconfig"
    shutil.copy(cp.kubeconfig, kubeconfig)
    cp.kubectl("config", "set-context", "--current", f"--namespace={namespace}",
               kubeconfig=kubeconfig)  # fmt: skip
    env = shell_env(cp.env(kubeconfig))
    env["PATH"] = f"{cp.assets}{os.pathsep}{env['PATH']}"
    return env


@pytest.fixture
def kube_env(control_plane: ControlPlane, namespace: str, tmp_path: Path) -> dict[str, str]:
    return reader_env(control_plane, namespace, tmp_path)


def apply_page(
    page: Page, control_plane: ControlPlane, namespace: str, env: dict[str, str], run: str
) -> None:
    """The page's Kubernetes YAML applied and its controlplane blocks run, in order."""
    with PageRun(
        page, run, env,
        apply=lambda code: control_plane.apply(code, namespace),
        control_plane=control_plane, namespace=namespace,
    ) as page_run:  # fmt: skip
        page_run.run_all()


def assert_objects_exist(page: Page, control_plane: ControlPlane, namespace: str) -> None:
    for block in page.of(*YAML):
        if block.skip or block.is_file or not is_kubernetes(yaml_documents(block)):
            continue
        for doc in yaml_documents(block):
            found = control_plane.get_json(
                doc["kind"].lower(), doc["metadata"]["name"], namespace=namespace
            )
            assert found["metadata"]["name"] == doc["metadata"]["name"], block.where


@pytest.mark.controlplane
@pytest.mark.parametrize("name", KUBE_PAGES)
def test_page_kubernetes_examples_apply(
    name: str, crds: None, control_plane: Any, namespace: str, kube_env: dict[str, str]
) -> None:
    page = parse(name)
    apply_page(page, control_plane, namespace, kube_env, CONTROLPLANE)
    assert_objects_exist(page, control_plane, namespace)


# ---- pages that change the cluster: on a control plane of their own -------------------------


@pytest.fixture
def own_control_plane() -> Iterator[ControlPlane]:
    """A fresh kube-apiserver and etcd for one page (no CRDs, no release, no namespace but
    the defaults), stopped after it."""
    if skip_requested():
        pytest.skip("AGENT_ROUTER_SKIP_CONTROLPLANE is set (explicit opt-out)")
    assets = find_assets(("kube-apiserver", "etcd", "kubectl", "helm"))
    workdir = Path(tempfile.mkdtemp(prefix="agent-router-docs-plane-"))
    cp = start_control_plane(workdir, assets)
    try:
        yield cp
    finally:
        cp.stop()
        if not os.environ.get("AGENT_ROUTER_KEEP_CONTROLPLANE_DIR"):
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.controlplane
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(OWN_CONTROL_PLANE))
def test_page_on_its_own_control_plane(
    name: str, own_control_plane: ControlPlane, tmp_path: Path
) -> None:
    """Every block of the page, in order, exactly as a reader runs them against a new
    cluster: `helm install` and all (the page's names are the cluster's own)."""
    cp = own_control_plane
    namespace = cp.create_namespace()  # for the page's objects without a namespace
    page = parse(name)
    apply_page(page, cp, namespace, reader_env(cp, namespace, tmp_path), OWN)
    assert_objects_exist(page, cp, namespace)


# ---- the operator page, played with the operator running ------------------------------------


@pytest.fixture
def operator(crds: None, control_plane: Any, namespace: str) -> Iterator[OperatorProcess]:
    """agent-operator as a process, watching one namespace, webhook included."""
    from support.controlplane import free_port

    webhook = f"docs-{uuid.uuid4().hex[:6]}.agentrouter.io"
    running = OperatorProcess(
        control_plane, control_plane.kubeconfig, webhook, free_port(),
        args=("--namespace", namespace, "--standalone"),
        env={"AGENT_SIDECAR_IMAGE": "registry.example/agent-sidecar:docs"},
    ).start()  # fmt: skip
    try:
        yield running
    finally:
        running.stop()
        # failurePolicy Fail: never leave it behind for other tests' labelled pods.
        control_plane.kubectl("delete", "mutatingwebhookconfiguration", webhook,
                              "--ignore-not-found", check=False)  # fmt: skip
        if os.environ.get("AGENT_ROUTER_SHOW_OPERATOR_LOG"):
            print(running.output())


def _status(cp: Any, kind: str, name: str, namespace: str) -> dict[str, Any]:
    return dict(cp.get_json(kind, name, namespace=namespace).get("status") or {})


def _conditions(status: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {
        c["type"]: (c["status"], c.get("reason", ""), c.get("message", ""))
        for c in status.get("conditions") or []
    }


@pytest.mark.controlplane
def test_operator_page_status_injection_and_events(
    operator: OperatorProcess, control_plane: Any, namespace: str, kube_env: dict[str, str]
) -> None:
    cp = control_plane
    page = parse("operator.md")
    apply_page(page, cp, namespace, kube_env, CONTROLPLANE)

    # The pool: Ready/Valid, "2 agent(s)", used by both policies of the page.
    def pool_ready() -> dict[str, Any] | None:
        status = _status(cp, "agentpool", "main", namespace)
        ok = _conditions(status).get("Ready", ("",))[0] == "True" and status["policies"] == 2
        return status if ok else None

    status = wait_for(pool_ready, what="AgentPool main Ready")
    assert status["agents"] == 2
    assert _conditions(status)["Ready"] == ("True", "Valid", "2 agent(s)")

    # The policy: Resolved, Synced and Ready with no pod yet, "0/0".
    def policy(name: str, check: Callable[[dict[str, Any]], bool]) -> Callable[[], Any]:
        def probe() -> dict[str, Any] | None:
            status = _status(cp, "routingpolicy", name, namespace)
            return status if status.get("conditions") and check(status) else None

        return probe

    status = wait_for(
        policy("chat", lambda s: _conditions(s)["Ready"][0] == "True"), what="policy chat Ready"
    )
    assert status["synced"] == "0/0" and status["targetPods"] == 0
    assert {k: v[0] for k, v in _conditions(status).items()} == {
        "Resolved": "True", "Synced": "True", "Ready": "True",
    }  # fmt: skip

    # A pod of the page's Deployment: the webhook injects the sidecar as documented.
    deployment = next(
        doc for b in page.of(*YAML) for doc in yaml_documents(b) if doc["kind"] == "Deployment"
    )
    template = deployment["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "chat-0", "labels": template["metadata"]["labels"]},
           "spec": template["spec"]}  # fmt: skip
    cp.apply(pod, namespace)
    created = cp.get_json("pod", "chat-0", namespace=namespace)
    sidecar = created["spec"]["initContainers"][0]
    assert sidecar["name"] == "agent-sidecar" and sidecar["restartPolicy"] == "Always"
    # Only the health port is declared: the admin port stays on the pod's loopback.
    assert sidecar["ports"] == [{"name": "agent-health", "containerPort": 4002, "protocol": "TCP"}]
    app_env = {e["name"]: e.get("value") for e in created["spec"]["containers"][0]["env"]}
    assert app_env["OPENAI_BASE_URL"] == "http://127.0.0.1:4000/v1"
    assert app_env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:4000"
    assert app_env["OPENAI_API_KEY"] == "unused"  # the app's own value is kept
    volumes = created["spec"]["volumes"]
    assert "agent-sidecar-state" in {v["name"] for v in volumes}
    assert not [v for v in volumes if "secret" in v]  # no Secret mounted

    # The pod exists; no sidecar runs to acknowledge its config: Pending, "0/1".
    status = wait_for(
        policy("chat", lambda s: s.get("targetPods") == 1
               and _conditions(s)["Synced"][:2] == ("False", "Pending")),
        what="policy chat Pending",
    )  # fmt: skip
    assert status["synced"] == "0/1"
    assert _conditions(status)["Ready"][:2] == ("False", "Pending")

    # The Secret goes away: Resolved False with the documented reason, message and Event.
    cp.kubectl("delete", "secret", "llm-keys", "--namespace", namespace)
    message = "Secret 'llm-keys' (for main/claude) does not exist"
    status = wait_for(
        policy("chat", lambda s: _conditions(s)["Resolved"][:2] == ("False", "SecretNotFound")),
        what="policy chat SecretNotFound",
    )
    assert message in _conditions(status)["Resolved"][2]
    assert _conditions(status)["Ready"][:2] == ("False", "SecretNotFound")

    def event() -> dict[str, Any] | None:
        events = cp.get_json("events", namespace=namespace)["items"]
        return next(
            (e for e in events
             if e["involvedObject"].get("name") == "chat" and e["reason"] == "SecretNotFound"),
            None,
        )  # fmt: skip

    found = wait_for(event, what="the SecretNotFound Event")
    assert found["type"] == "Warning" and message in found["message"]

    # `kubectl get` shows the printer columns the page shows.
    out = cp.kubectl("get", "apool,rpol", "--namespace", namespace).stdout
    assert "AGENTS   POLICIES   READY" in out, out
    assert "STRATEGY   POOLS" in out and "SYNCED" in out, out


# ---- the tracing page against a real Jaeger --------------------------------------------------


@pytest.mark.controlplane
def test_tracing_page_exports_to_jaeger(
    jaeger: Any, fake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", jaeger.otlp_http_endpoint)
    page = parse("tracing.md")
    assert _pages_run_by(JAEGER) == ["tracing.md"], "tracing.md has no Jaeger example"
    with fresh_process_state(), PageRun(page, JAEGER) as run:
        run.run_all()

    def has_route(trace: dict[str, Any]) -> bool:
        return bool(jaeger.spans(trace, "route support"))

    trace = jaeger.wait_for_trace("my-app", has_route)
    (route,) = jaeger.spans(trace, "route support")
    (chat,) = jaeger.spans(trace, "chat claude-sonnet-4-5")
    assert chat["references"][0]["spanID"] == route["spanID"], json.dumps(trace)[:2000]
    tags = jaeger.tags(route)
    assert tags["agent_router.strategy"] == "fallback"
    assert tags["agent_router.chosen"] == "anthropic/claude-sonnet-4-5"
    assert jaeger.tags(chat)["gen_ai.provider.name"] == "anthropic"


def test_kube_pages_found() -> None:
    assert "operator.md" in KUBE_PAGES
    text = (ROOT / "docs" / "operator.md").read_text()
    assert 'agentrouter.io/inject: "true"' in text
    docs = [d for b in parse("operator.md").of(*YAML) for d in yaml_documents(b)]
    assert {"Secret", "AgentPool", "RoutingPolicy", "Deployment"} <= {d["kind"] for d in docs}
    assert yaml.safe_dump(docs)  # plain data, no custom tags
