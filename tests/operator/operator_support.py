"""The operator on the real control plane: CRDs, its service account bound to exactly the
chart's rules, the operator as a real process (real sidecars watch it: support.watching)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from agent_operator.inject import url_host
from support.waiting import wait_for
from support.watching import CERT_SECRET, OPERATOR_NS, WatchedPods

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_SA = "agent-router-operator"


def install_crds(cp: Any) -> None:
    cp.kubectl("apply", "-f", str(ROOT / "crds"))
    cp.kubectl("wait", "--for=condition=Established", "--timeout=30s",
               "crd/agentpools.agentrouter.io", "crd/routingpolicies.agentrouter.io")


CHART = ROOT / "helm" / "agent-router"
LEASE = "agent-router-operator"


def chart_rules(file: str, webhook_name: str) -> list[dict[str, Any]]:
    """One of the chart's rules files, with its names filled in as the chart does."""
    text = (CHART / "files" / file).read_text()
    for placeholder, name in (("WEBHOOK_CONFIGURATION", webhook_name), ("LEASE", LEASE),
                              ("CERT_SECRET", CERT_SECRET)):
        text = text.replace(placeholder, name)
    return list(yaml.safe_load(text))


def operator_kubeconfig(cp: Any, webhook_name: str = "none") -> Path:
    """The operator's identity: its service account, bound to the chart's rules only (the
    cluster-wide ones, and those in its own namespace)."""
    rules = chart_rules("operator-rules.yaml", webhook_name)
    binding = {"apiGroup": "rbac.authorization.k8s.io", "name": "agent-router-operator-test"}
    subjects = [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NS}]
    cp.apply([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": OPERATOR_SA, "namespace": OPERATOR_NS}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "agent-router-operator-test"}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "agent-router-operator-test"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "agent-router-operator-test"},
         "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA,
                       "namespace": OPERATOR_NS}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": binding["name"], "namespace": OPERATOR_NS},
         "rules": chart_rules("operator-namespace-rules.yaml", webhook_name)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": binding["name"], "namespace": OPERATOR_NS},
         "roleRef": {**binding, "kind": "Role"}, "subjects": subjects},
        # Created empty, as the chart does (the operator may only read and patch them).
        {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
         "metadata": {"name": LEASE, "namespace": OPERATOR_NS}, "spec": {}},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": LEASE, "namespace": OPERATOR_NS}},
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
         "metadata": {"name": CERT_SECRET, "namespace": OPERATOR_NS}},
    ])
    return cp.kubeconfig_for_service_account(OPERATOR_NS, OPERATOR_SA)


def webhook_configuration(cp: Any, name: str, url: str) -> None:
    """The chart's MutatingWebhookConfiguration, as `helm template` renders it, pointed at
    `url` instead of the chart's Service (the operator runs on this machine), and the
    empty certificate Secret the chart creates beside it."""
    cp.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}},
              {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": CERT_SECRET, "namespace": OPERATOR_NS}}])
    rendered = cp.helm("template", "agent-router", str(CHART), "--namespace", OPERATOR_NS,
                       "--show-only", "templates/webhookconfigurations.yaml",
                       "--set", "injection.by=webhook", "--set", f"webhook.name={name}").stdout
    config = yaml.safe_load(rendered)
    for webhook in config["webhooks"]:
        webhook["clientConfig"] = {"url": url + webhook["clientConfig"]["service"]["path"]}
    cp.apply(config)


class OperatorProcess:
    def __init__(self, cp: Any, kubeconfig: Path, webhook_name: str | None, port: int = 0,
                 args: tuple[str, ...] = ("--all-namespaces",),
                 env: dict[str, str] | None = None, host: str = "127.0.0.1",
                 metrics_port: int | None = None) -> None:
        self.cp, self.kubeconfig, self.webhook_name, self.port = cp, kubeconfig, webhook_name, port
        self.host, self.metrics_port = host, metrics_port
        self.args, self.extra_env = args, env or {}
        self.log = Path(tempfile.mkdtemp(prefix="operator-")) / "operator.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0  # where this start's output begins in the log (restarts append)

    def start(self) -> OperatorProcess:
        self._started_at = len(self.output()) if self.log.exists() else 0
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
        env.update({"KUBECONFIG": str(self.kubeconfig), "AGENT_OPERATOR_RESYNC_SECONDS": "2",
                    "AGENT_SIDECAR_IMAGE": "registry.example/agent-sidecar:test",
                    **self.extra_env})
        webhook = (["--webhook-addr", self.host, "--webhook-port", str(self.port),
                    "--webhook-host", self.host, "--webhook-name", self.webhook_name,
                    "--webhook-cert-secret", f"{OPERATOR_NS}/{CERT_SECRET}"]
                   if self.webhook_name else ["--no-webhook"])
        metrics = (["--metrics-addr", self.host, "--metrics-port", str(self.metrics_port)]
                   if self.metrics_port else [])
        if self.webhook_name:
            webhook_configuration(self.cp, self.webhook_name,
                                  f"https://{url_host(self.host)}:{self.port}")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent_operator", *self.args, *webhook, *metrics,
                 "--verbose"],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
            )
        if self.webhook_name:
            wait_for(lambda: self._trusted() or self._died(), 30,
                     "the webhook configuration trusting the operator's certificate")
        return self

    def _trusted(self) -> bool:
        config = self.cp.get_json("mutatingwebhookconfiguration", self.webhook_name)
        return all(w["clientConfig"].get("caBundle") for w in config["webhooks"]) and \
            f"serving the injection webhook on port {self.port}" in \
            self.output()[self._started_at:]

    def metrics(self) -> str:
        """What its `/metrics` serves now (it was started with a `metrics_port`)."""
        assert self.metrics_port, "started without a metrics port"
        return httpx.get(f"http://{url_host(self.host)}:{self.metrics_port}/metrics",
                         timeout=5).text

    def kill(self) -> None:
        """SIGKILL: no goodbye to the peers, as when a node dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def _died(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the operator exited:\n{self.output()[-3000:]}")
        return False

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def url(self) -> str:
        """Where its sidecars watch it (the webhook's TLS port)."""
        return f"https://{url_host(self.host)}:{self.port}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def status_of(cp: Any, kind: str, name: str, namespace: str) -> dict[str, Any]:
    return dict(cp.get_json(kind, name, namespace=namespace).get("status") or {})


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


@pytest.fixture(scope="module")
def operator(control_plane: Any) -> Iterator[OperatorProcess]:
    install_crds(control_plane)
    from support.controlplane import free_ports

    name = f"test-{uuid.uuid4().hex[:6]}.agentrouter.io"
    kubeconfig = operator_kubeconfig(control_plane, name)
    webhook_port, metrics_port = free_ports(2)
    # Injected pods watch the operator where it serves (no Service here: no host alias).
    proc = OperatorProcess(control_plane, kubeconfig, name, webhook_port,
                           metrics_port=metrics_port, env={
                               "AGENT_SIDECAR_OPERATOR_URL": f"https://127.0.0.1:{webhook_port}"}
                           ).start()
    try:
        yield proc
    finally:
        proc.stop()
        control_plane.kubectl("delete", "mutatingwebhookconfiguration", name,
                              "--ignore-not-found", check=False)
        if os.environ.get("AGENT_ROUTER_SHOW_OPERATOR_LOG"):
            print(proc.output())


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1)[:3000]


@pytest.fixture
def pods(control_plane: Any, operator: OperatorProcess, namespace: str,
         tmp_path: Path) -> Iterator[WatchedPods]:
    """Pods with a real sidecar each, watching the module's operator."""
    with WatchedPods(control_plane, namespace, tmp_path, operator.url) as started:
        yield started
