"""The chart on real control planes (kube-apiserver + etcd, no kubelet: pods never run).

* `helm install` with the defaults: every object is accepted by the apiserver, and on this
  Kubernetes 1.36 the API server injects the sidecar (injection.by=auto: the policy);
* upgraded to injection.by=webhook, the operator, run as a local process with the env the
  chart gives it and the identity of the chart's service account (bound by the chart's
  ClusterRole), starts, fills in the MutatingWebhookConfiguration the chart created,
  injects the chart's sidecar defaults and reconciles an AgentPool and a RoutingPolicy to
  Ready; `helm upgrade` keeps what it wrote;
* a second, separate control plane gets an install with non-default values (cert-manager,
  PodMonitor, 3 replicas) side by side, then `helm upgrade` and `helm uninstall`, after
  which only the CRDs remain.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helm_support import CHART, CLUSTER_SCOPED, CRD_DIR, NON_DEFAULT, values_file
from support.controlplane import (
    ControlPlane,
    find_assets,
    free_port,
    host_ip,
    start_control_plane,
)
from support.waiting import wait_for

pytestmark = pytest.mark.controlplane

# The chart's CRDs: templates it installs and upgrades, and never deletes (keep).
CRD_DOCS = [d for f in sorted(CRD_DIR.glob("*.yaml"))
            for d in yaml.safe_load_all(f.read_text()) if d]
CRDS = {d["metadata"]["name"] for d in CRD_DOCS}
# The apiserver registers each served group/version of a CRD as an APIService; they go
# when the CRDs go.
CRD_APISERVICES = {f"{v['name']}.{d['spec']['group']}" for d in CRD_DOCS
                   for v in d["spec"]["versions"] if v.get("served")}


RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}




@dataclass
class Release:
    cp: ControlPlane
    name: str
    namespace: str
    baseline: frozenset[tuple[str, str, str]] = frozenset()  # the cluster before it

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cp.helm(*args, "--namespace", self.namespace, check=check)

    def install(self, values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
        with values_file(values) as path:
            extra = ["--values", str(path)] if path else []
            return self.helm("install", self.name, str(CHART), "--wait=false",
                             "--timeout", "60s", *extra)

    def upgrade(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.helm("upgrade", self.name, str(CHART), "--wait=false", "--timeout", "60s",
                         *args)

    def manifest(self) -> list[dict[str, Any]]:
        text = self.helm("get", "manifest", self.name).stdout
        return [d for d in yaml.safe_load_all(text) if d]

    def get(self, obj: dict[str, Any]) -> dict[str, Any]:
        kind = obj["kind"].lower() + "." + obj["apiVersion"].split("/")[0] \
            if "/" in obj["apiVersion"] else obj["kind"].lower()
        ns = [] if obj["kind"] in CLUSTER_SCOPED else ["--namespace", self.namespace]
        out = self.cp.kubectl("get", kind, obj["metadata"]["name"], *ns, "-o", "json").stdout
        return dict(json.loads(out))

    def deployment(self) -> dict[str, Any]:
        (deploy,) = [o for o in self.manifest() if o["kind"] == "Deployment"]
        return self.get(deploy)


def new_release(cp: ControlPlane) -> Release:
    # Short names: the test identity of a service account is a client certificate whose
    # CN, system:serviceaccount:<namespace>:<name>, may not exceed 64 characters.
    suffix = uuid.uuid4().hex[:6]
    baseline = frozenset(snapshot(cp))
    # Pod Security Admission enforces the "restricted" profile on the release's pods.
    ns = cp.create_namespace(f"h-{suffix}", labels=RESTRICTED)
    return Release(cp, f"r{suffix[:4]}", ns, baseline)


def container_env(deploy: dict[str, Any]) -> dict[str, str]:
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def assert_all_accepted(release: Release) -> list[dict[str, Any]]:
    """Every object of the release exists as the apiserver stored it, labelled by Helm."""
    objects = release.manifest()
    assert objects
    for obj in objects:
        live = release.get(obj)
        assert live["metadata"]["labels"]["app.kubernetes.io/instance"] == release.name
        assert live["metadata"]["annotations"]["meta.helm.sh/release-name"] == release.name
    return objects


def crds_established(cp: ControlPlane) -> set[str]:
    items = cp.get_json("crd")["items"]
    return {c["metadata"]["name"] for c in items
            if any(k["type"] == "Established" and k["status"] == "True"
                   for k in c.get("status", {}).get("conditions", []))}


# ---- control plane A (the session's): defaults, and the operator ----------------------------


@pytest.fixture(scope="module")
def release_a(control_plane: ControlPlane) -> Iterator[Release]:
    release = new_release(control_plane)
    out = release.install().stdout
    assert "STATUS: deployed" in out, out
    try:
        yield release
    finally:
        release.helm("uninstall", release.name, "--wait=false", check=False)


def test_install_with_defaults_every_object_is_accepted(release_a: Release) -> None:
    cp = release_a.cp
    objects = assert_all_accepted(release_a)
    # The CRDs are the release's unless earlier tests applied them with kubectl (then the
    # chart leaves them alone: see the CRD upgrade test).
    assert {o["kind"] for o in objects} - {"CustomResourceDefinition"} == {
        "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service",
        "Deployment", "PodDisruptionBudget", "Lease", "ConfigMap", "Secret",
        "MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding",
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    # helm install saw the cluster serve admission policies: the operator keeps the
    # namespaces' ConfigMaps and no webhook configuration.
    env = container_env(release_a.deployment())
    assert env["AGENT_OPERATOR_NAMESPACE_CONFIGS"] == "true"
    assert "AGENT_OPERATOR_WEBHOOK_NAME" not in env
    assert CRDS <= crds_established(cp)
    status = release_a.helm("status", release_a.name, "-o", "json").stdout
    assert json.loads(status)["info"]["status"] == "deployed"
    notes = release_a.helm("get", "notes", release_a.name).stdout
    assert 'agentrouter.io/inject: "true"' in notes and "keeps the CRDs" in notes
    assert "Injected by the API server" in notes and "injection.by=auto" in notes

    # Namespace users: bound to the chart's aggregated roles (the aggregation itself is
    # the controller-manager's, which does not run here), `edit` manages pools and
    # policies and `view` reads them, in their namespace only.
    app = cp.create_namespace()
    fullname = release_a.name + "-agent-router"
    for user, role in (("dev", "edit"), ("auditor", "view")):
        cp.kubectl("create", "rolebinding", f"{user}-{role}", "-n", app,
                   f"--clusterrole={fullname}-{role}", f"--user={user}")

    def can(user: str, verb: str, resource: str, namespace: str = app, *extra: str) -> bool:
        answer = cp.kubectl("auth", "can-i", verb, resource, "-n", namespace, "--as", user,
                            *extra, check=False).stdout.strip()
        return answer == "yes"

    assert can("dev", "create", "agentpools.agentrouter.io")
    assert can("dev", "delete", "routingpolicies.agentrouter.io")
    assert not can("dev", "patch", "routingpolicies.agentrouter.io", app, "--subresource=status")
    assert can("auditor", "list", "routingpolicies.agentrouter.io")
    assert not can("auditor", "create", "agentpools.agentrouter.io")
    assert not can("dev", "create", "agentpools.agentrouter.io", "default")
    # The operator itself: nothing beyond its rules (tried: what would take a cluster over).
    operator = f"system:serviceaccount:{release_a.namespace}:{fullname}-operator"
    assert not can(operator, "create", "mutatingwebhookconfigurations", "")
    assert not can(operator, "list", "secrets")
    assert not can(operator, "patch", "secrets", release_a.namespace)  # only its own, by name
    assert not can(operator, "update", "leases.coordination.k8s.io", release_a.namespace)
    # No Secret anywhere: not the app's, not a service-account token of its namespace.
    for namespace in (app, release_a.namespace):
        for verb in ("create", "update", "patch", "delete"):
            assert not can(operator, verb, "secrets", namespace), (verb, namespace)
    assert can(operator, "get", "secrets", app)  # the API keys a pool names
    cp.kubectl("delete", "rolebinding", "dev-edit", "auditor-view", "-n", app)


    # The stored Deployment keeps the hardening (nothing was dropped as unknown).
    deploy = release_a.deployment()
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["livenessProbe"]["httpGet"]["port"] == "healthz"

    # The operator's pods and the `helm test` pod pass the apiserver's validation and Pod
    # Security Admission's "restricted" profile, enforced in the release namespace (the
    # pods cannot run here: no kubelet, so they are created as dry runs).
    ns = cp.get_json("namespace", release_a.namespace)["metadata"]["labels"]
    assert ns["pod-security.kubernetes.io/enforce"] == "restricted"
    operator_pod = {"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "operator-dry-run",
                                 **deploy["spec"]["template"]["metadata"]},
                    "spec": pod}
    hook = release_a.helm("template", release_a.name, str(CHART), "--show-only",
                          "templates/tests/test-webhook.yaml").stdout
    for manifest in (yaml.safe_dump(operator_pod), hook):
        created = cp.kubectl("create", "--dry-run=server", "-f", "-", "--namespace",
                             release_a.namespace, input=manifest)
        assert "Warning" not in created.stderr, created.stderr
    privileged = yaml.safe_load(hook)
    privileged["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    refused = cp.kubectl("create", "--dry-run=server", "-f", "-", "--namespace",
                         release_a.namespace, input=yaml.safe_dump(privileged), check=False)
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr


class LocalOperator:
    """`agent-operator` (the image's ENTRYPOINT) as a local process, with the args and env
    of the chart's Deployment, as the chart's service account."""

    def __init__(self, release: Release) -> None:
        self.release = release
        deploy = release.deployment()
        pod = deploy["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        self.args = list(container["args"])
        self.chart_env = container_env(deploy)
        self.kubeconfig = release.cp.kubeconfig_for_service_account(
            release.namespace, pod["serviceAccountName"])
        self.webhook_port, self.health_port = free_port(), free_port()
        (self.service,) = [o for o in release.manifest() if o["kind"] == "Service"]
        self.log = Path(tempfile.mkdtemp(prefix="helm-operator-")) / "operator.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalOperator:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
        env.update(self.chart_env)
        # As in a cluster, the apiserver reaches the webhook through the chart's Service by
        # reference; with no kubelet or endpoint controller here, the process listens on
        # this machine's address and the test publishes it as the Service's endpoint.
        ip = host_ip()
        self.release.cp.publish_endpoints(self.release.namespace,
                                          self.service["metadata"]["name"], "webhook", ip,
                                          self.webhook_port)
        self.metrics_port = free_port()
        env.update(AGENT_OPERATOR_WEBHOOK_ADDR=ip,
                   AGENT_OPERATOR_WEBHOOK_PORT=str(self.webhook_port),
                   AGENT_OPERATOR_LIVENESS=f"http://127.0.0.1:{self.health_port}/healthz",
                   AGENT_OPERATOR_METRICS_PORT=str(self.metrics_port),
                   KUBECONFIG=str(self.kubeconfig))
        script = Path(sys.executable).parent / "agent-operator"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([str(script), *self.args, "--verbose"], stdout=log,
                                         stderr=subprocess.STDOUT, env=env,
                                         cwd=self.log.parent, start_new_session=True)
        return self

    def alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"the operator exited:\n{self.output()[-4000:]}")
        return True

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.release.cp.unpublish_endpoints(self.release.namespace,
                                            self.service["metadata"]["name"])
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def condition(cp: ControlPlane, kind: str, name: str, namespace: str, type_: str) -> dict:
    status = cp.get_json(kind, name, namespace=namespace).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def test_operator_runs_with_the_charts_identity_and_reconciles(release_a: Release) -> None:
    cp = release_a.cp
    # The webhook, chosen explicitly: the upgrade swaps the policy for it.
    out = release_a.upgrade("--reuse-values", "--set", "injection.by=webhook").stdout
    assert "Injected by the operator's webhook (injection.by=webhook)" in out, out
    kinds = {o["kind"] for o in release_a.manifest()}
    assert "MutatingWebhookConfiguration" in kinds and "MutatingAdmissionPolicy" not in kinds
    env = container_env(release_a.deployment())
    assert "AGENT_OPERATOR_NAMESPACE_CONFIGS" not in env
    webhook_name = env["AGENT_OPERATOR_WEBHOOK_NAME"]
    mwc = cp.get_json("mutatingwebhookconfiguration", webhook_name)
    assert "caBundle" not in mwc["webhooks"][0]["clientConfig"], "the operator's to set"

    operator = LocalOperator(release_a).start()
    try:
        # The operator issues the certificate into the chart's Secret and makes the
        # chart's configuration trust its CA, and nothing else of it.
        def trusted() -> list[dict[str, Any]]:
            found = cp.get_json("mutatingwebhookconfiguration", webhook_name)["webhooks"]
            return found if all(w["clientConfig"].get("caBundle") for w in found) else []

        webhooks = wait_for(lambda: operator.alive() and trusted(), 60,
                            f"the caBundle in {webhook_name}\n{operator.output()[-3000:]}")
        assert [w["name"] for w in webhooks] == [f"inject-sidecar.{webhook_name}"]
        for key in ("rules", "namespaceSelector", "objectSelector", "timeoutSeconds"):
            assert webhooks[0][key] == mwc["webhooks"][0][key], key
        namespace, secret = env["AGENT_OPERATOR_WEBHOOK_CERT_SECRET"].split("/")
        data = cp.get_json("secret", secret, namespace=namespace)["data"]
        assert webhooks[0]["clientConfig"]["caBundle"] == data["ca.crt"]
        assert set(data) == {"ca.crt", "tls.crt", "tls.key"}
        # Registered by Service reference, as in-cluster webhooks are (not by URL).
        assert webhooks[0]["clientConfig"]["service"] == {
            "namespace": release_a.namespace, "name": operator.service["metadata"]["name"],
            "port": operator.service["spec"]["ports"][0]["port"], "path": "/inject-sidecar"}
        assert "url" not in webhooks[0]["clientConfig"]
        # An opted-in pod never starts without its sidecar; a dry run creates nothing.
        assert webhooks[0]["failurePolicy"] == "Fail"
        assert webhooks[0]["sideEffects"] == "None"  # it creates nothing
        assert webhooks[0]["objectSelector"] == {
            "matchLabels": {"agentrouter.io/inject": "true"}}
        assert webhooks[0]["timeoutSeconds"] == 10
        # The liveness endpoint, which the chart's probes call, answers.
        health = wait_for(lambda: httpx.get(
            f"http://127.0.0.1:{operator.health_port}/healthz", timeout=2), 30, "/healthz")
        assert health.status_code == 200
        namespace, lease = env["AGENT_OPERATOR_LEASE"].split("/")
        holder = wait_for(lambda: cp.get_json("lease", lease, namespace=namespace)["spec"]
                          .get("holderIdentity"), 30, "the operator holding the Lease")
        assert holder.startswith(socket.gethostname())
        # The ConfigMap beside it (the chart's, which the operator may only patch) holds
        # this replica's summary of what its sidecars acknowledged (nothing yet).
        shared = wait_for(lambda: cp.get_json("configmap", lease, namespace=namespace)
                          .get("data"), 30, "the replica's summary in the ConfigMap")
        assert list(shared) == [holder] and shared[holder].isdigit(), shared

        app = cp.create_namespace()
        cp.apply([
            {"apiVersion": "agentrouter.io/v1alpha1", "kind": "AgentPool",
             "metadata": {"name": "main"},
             "spec": {"agents": [{"name": "local", "provider": "openai_compatible",
                                  "model": "llama-3.1-70b",
                                  "baseUrl": "http://127.0.0.1:9/v1"}]}},
            {"apiVersion": "agentrouter.io/v1alpha1", "kind": "RoutingPolicy",
             "metadata": {"name": "chat"},
             "spec": {"selector": {"matchLabels": {"app": "chat"}}, "pools": ["main"]}},
        ], app)
        for kind, name in (("agentpool", "main"), ("routingpolicy", "chat")):
            ready = wait_for(lambda k=kind, n=name: condition(cp, k, n, app, "Ready")
                             .get("status") == "True", 30,
                             f"{kind}/{name} Ready\n{operator.output()[-3000:]}")
            assert ready
        status = cp.get_json("routingpolicy", "chat", namespace=app)["status"]
        assert status["targetPods"] == 0 and status["synced"] == "0/0"

        # An opted-in pod gets the sidecar the chart's values describe.
        cp.apply({"apiVersion": "v1", "kind": "Pod",
                  "metadata": {"name": "chat-0",
                               "labels": {"app": "chat", "agentrouter.io/inject": "true"}},
                  "spec": {"containers": [{"name": "app", "image": "registry.example/chat:1"}]}},
                 app)
        pod = cp.get_json("pod", "chat-0", namespace=app)
        (sidecar,) = pod["spec"]["initContainers"]
        assert sidecar["image"] == env["AGENT_SIDECAR_IMAGE"]
        assert [p["name"] for p in sidecar["ports"]] == ["agent-health"]  # admin: loopback
        assert sidecar["resources"] == {
            "requests": {"cpu": env["AGENT_SIDECAR_CPU_REQUEST"],
                         "memory": env["AGENT_SIDECAR_MEMORY_REQUEST"]},
            "limits": {"memory": env["AGENT_SIDECAR_MEMORY_LIMIT"]}}
        # The operator's metrics: the reconciles, and the injection just served.
        metrics = httpx.get(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).text
        assert 'agent_operator_webhook_requests_total{result="injected"} 1.0' in metrics
        assert 'agent_operator_reconciles_total{result="ok"}' in metrics
        assert "agent_operator_certificate_expiry_timestamp_seconds" in metrics
        assert "agent_operator_leader 1.0" in metrics

        # helm upgrade changes the configuration's metadata and keeps the caBundle, the
        # certificate and the Lease the operator wrote.
        release_a.upgrade("--reuse-values", "--set", "webhook.annotations.example\\.com/x=y")
        after = cp.get_json("mutatingwebhookconfiguration", webhook_name)
        assert after["metadata"]["annotations"]["example.com/x"] == "y"
        assert after["webhooks"] == webhooks
        assert cp.get_json("secret", secret, namespace=namespace)["data"] == data
        operator.alive()
    finally:
        operator.stop()
        if os.environ.get("AGENT_ROUTER_SHOW_OPERATOR_LOG"):
            print(operator.output())


# ---- control plane B: non-default values, upgrade, uninstall --------------------------------


def stub_crd(group: str, kind: str, plural: str) -> dict[str, Any]:
    """A schemaless stand-in for cert-manager's and the Prometheus Operator's CRDs, so the
    chart's Issuers, Certificates and PodMonitor are stored (their controllers do not run)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {"group": group, "scope": "Namespaced",
                 "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                 "versions": [{"name": "v1", "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": {
                                   "type": "object",
                                   "x-kubernetes-preserve-unknown-fields": True}}}]},
    }


STUBS = [stub_crd("cert-manager.io", "Issuer", "issuers"),
         stub_crd("cert-manager.io", "Certificate", "certificates"),
         stub_crd("monitoring.coreos.com", "PodMonitor", "podmonitors")]


def snapshot(cp: ControlPlane) -> set[tuple[str, str, str]]:
    """(resource, namespace, name) of every object in the cluster, except what the
    apiserver itself keeps changing (events, leases, its own bookkeeping)."""
    names = cp.kubectl("api-resources", "--verbs=list", "-o", "name").stdout.split()
    skip = {"events", "events.events.k8s.io", "leases.coordination.k8s.io",
            "componentstatuses"}
    names = [n for n in names if n not in skip]
    items = json.loads(cp.kubectl("get", ",".join(names), "--all-namespaces",
                                  "-o", "json").stdout)["items"]
    return {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])
            for o in items}


@dataclass
class PlaneB:
    cp: ControlPlane
    baseline: set[tuple[str, str, str]]
    release: Release


@pytest.fixture(scope="module")
def plane_b(release_a: Release) -> Iterator[PlaneB]:
    """A second, separate control plane, with a namespace and release named as in A."""
    workdir = Path(tempfile.mkdtemp(prefix="agent-router-helm-plane-b-"))
    cp = start_control_plane(workdir, find_assets(("kube-apiserver", "etcd", "kubectl",
                                                   "helm")))
    try:
        cp.apply(STUBS)
        cp.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                   *[f"crd/{s['metadata']['name']}" for s in STUBS])
        cp.create_namespace(release_a.namespace)
        baseline = snapshot(cp)
        yield PlaneB(cp, baseline, Release(cp, release_a.name, release_a.namespace))
    finally:
        cp.stop()
        if not os.environ.get("AGENT_ROUTER_KEEP_CONTROLPLANE_DIR"):
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


def test_install_side_by_side_in_a_second_control_plane(release_a: Release,
                                                        plane_b: PlaneB) -> None:
    b = plane_b.release
    assert plane_b.cp.server != release_a.cp.server
    out = b.install(NON_DEFAULT).stdout
    assert "STATUS: deployed" in out, out
    objects = assert_all_accepted(b)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds.count("Certificate") == 2 and kinds.count("Issuer") == 2
    assert kinds.count("PodMonitor") == 2
    assert "Secret" not in kinds  # cert-manager keeps the certificate
    assert CRDS <= crds_established(plane_b.cp)

    # The same release name in the same namespace name, independent of each other.
    for release in (release_a, b):
        listed = json.loads(release.helm("list", "-o", "json").stdout)
        assert [(r["name"], r["status"]) for r in listed] == [(release.name, "deployed")]
    deploy_a, deploy_b = release_a.deployment(), b.deployment()
    assert deploy_a["spec"]["replicas"] == 2 and deploy_b["spec"]["replicas"] == 3
    env_b = container_env(deploy_b)
    assert env_b["AGENT_OPERATOR_WEBHOOK_CERT_DIR"] == "/etc/agent-operator/webhook-tls"
    assert env_b["AGENT_SIDECAR_IMAGE"] == "registry.example/ar/sidecar:1.2.3"
    mwc = plane_b.cp.get_json("mutatingwebhookconfiguration", "inject.router.agentrouter.io")
    assert mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == \
        f"{b.namespace}/router-webhook"
    # nothing of B's install reached A
    assert release_a.cp.kubectl("get", "mutatingwebhookconfiguration",
                                "inject.router.agentrouter.io", check=False).returncode != 0


def installed(plane_b: PlaneB) -> Release:
    """Plane B's release (installed by the side-by-side test, or here if run alone)."""
    b = plane_b.release
    if b.helm("status", b.name, check=False).returncode != 0:
        b.install(NON_DEFAULT)
    return b


def test_upgrade_with_changed_values_changes_the_objects(plane_b: PlaneB) -> None:
    b = installed(plane_b)
    before = b.deployment()
    b.upgrade("--reuse-values", "--set", "replicaCount=4",
              "--set", "sidecar.image.tag=1.3.0", "--set", "sidecar.otlpEndpoint=",
              "--set", "monitoring.podMonitor.enabled=false")
    after = b.deployment()
    assert after["spec"]["replicas"] == 4
    env = container_env(after)
    assert env["AGENT_SIDECAR_IMAGE"] == "registry.example/ar/sidecar:1.3.0"
    assert "AGENT_SIDECAR_OTLP_ENDPOINT" not in env
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    # objects the new values drop are deleted
    assert plane_b.cp.kubectl("get", "podmonitor", "router-sidecars", "-n", b.namespace,
                              check=False).returncode != 0
    history = json.loads(b.helm("history", b.name, "-o", "json").stdout)
    assert [(h["revision"], h["status"]) for h in history] == [(1, "superseded"),
                                                              (2, "deployed")]
    # values the schema refuses are refused on upgrade too, and change nothing
    bad = b.helm("upgrade", b.name, str(CHART), "--reuse-values", "--set", "replicaCount=-1",
                 check=False)
    assert bad.returncode != 0 and "/replicaCount" in bad.stderr
    assert b.deployment()["spec"]["replicas"] == 4


def crd_help(cp: ControlPlane, name: str) -> str:
    crd = cp.get_json("crd", name)
    return str(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].get("description"))


def owned_crds(release: Release) -> set[str]:
    return {o["metadata"]["name"] for o in release.manifest()
            if o["kind"] == "CustomResourceDefinition"}


def test_crds_upgrade_with_the_chart_and_unowned_ones_are_handed_over(plane_b: PlaneB,
                                                                      tmp_path: Path) -> None:
    """A changed CRD in a new chart version reaches the cluster with `helm upgrade`; a CRD
    applied with kubectl (as the 0.1 chart's crds/ left them) is left alone until it is
    handed to the release as docs/helm.md says, and upgraded from then on."""
    import shutil

    cp, b = plane_b.cp, installed(plane_b)
    assert owned_crds(b) == CRDS
    chart = tmp_path / "agent-router"
    shutil.copytree(CHART, chart)
    for path in (chart / "files" / "crds").glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        schema["description"] = f"{crd['spec']['names']['kind']}, as of the next chart."
        path.write_text(yaml.safe_dump(crd, sort_keys=False))

    b.helm("upgrade", b.name, str(chart), "--reuse-values")
    assert crd_help(cp, "agentpools.agentrouter.io") == "AgentPool, as of the next chart."

    # As if applied with kubectl: no Helm ownership. The upgrade leaves it as it is.
    name = "routingpolicies.agentrouter.io"
    cp.kubectl("annotate", "crd", name, "meta.helm.sh/release-name-",
               "meta.helm.sh/release-namespace-")
    cp.kubectl("label", "crd", name, "app.kubernetes.io/managed-by-")
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR / "routingpolicies.yaml"))
    b.helm("upgrade", b.name, str(chart), "--reuse-values")
    assert name not in owned_crds(b)
    assert crd_help(cp, name) != "RoutingPolicy, as of the next chart."
    # Handed over (docs/helm.md, "Upgrade"): the next upgrade manages it.
    cp.kubectl("label", "crd", name, "app.kubernetes.io/managed-by=Helm")
    cp.kubectl("annotate", "crd", name, f"meta.helm.sh/release-name={b.name}",
               f"meta.helm.sh/release-namespace={b.namespace}")
    b.helm("upgrade", b.name, str(chart), "--reuse-values")
    assert owned_crds(b) == CRDS
    assert crd_help(cp, name) == "RoutingPolicy, as of the next chart."
    crd = cp.get_json("crd", name)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # back to this chart version for the tests after this one
    b.upgrade("--reuse-values")


def test_uninstall_leaves_only_the_crds(plane_b: PlaneB) -> None:
    b = installed(plane_b)
    b.helm("uninstall", b.name, "--wait")
    remaining = snapshot(plane_b.cp) - plane_b.baseline
    assert {(kind, name) for kind, _, name in remaining} == {
        ("CustomResourceDefinition", name) for name in CRDS} | {
        ("APIService", name) for name in CRD_APISERVICES}, sorted(remaining)
    # the release is gone, its history too (helm keeps no Secret without --keep-history)
    assert json.loads(b.helm("list", "--all", "-o", "json").stdout) == []
    # still established: custom resources users created stay and keep being served
    assert CRDS <= crds_established(plane_b.cp)


# ---- control plane A again: uninstall after the operator ran ---------------------------------


def test_uninstall_after_the_operator_ran_leaves_no_cluster_objects(release_a: Release) -> None:
    """What the operator wrote (the webhook configuration's caBundle, the certificate
    Secret, the Lease) belongs to the release and goes with it."""
    cp = release_a.cp
    objects = release_a.manifest()
    release_a.helm("uninstall", release_a.name, "--wait")
    for obj in objects:
        if obj["kind"] == "CustomResourceDefinition":
            continue  # kept (helm.sh/resource-policy), checked below
        kind = obj["kind"].lower()
        ns = [] if obj["kind"] in CLUSTER_SCOPED else ["--namespace", release_a.namespace]
        gone = cp.kubectl("get", kind + ("." + obj["apiVersion"].split("/")[0]
                                         if "/" in obj["apiVersion"] else ""),
                          obj["metadata"]["name"], *ns, check=False)
        assert gone.returncode != 0 and "NotFound" in gone.stderr, (obj["kind"], gone.stdout)
    # All that is new since before the install: the namespaces the tests made, what they
    # created in them (pools, policies, a pod, its service account); plus the CRDs (with
    # their APIServices) if this install brought them. The operator made nothing.
    remaining = snapshot(cp) - release_a.baseline
    unexpected = {(kind, ns, name) for kind, ns, name in remaining
                  if not (kind == "Namespace"
                          or kind in {"AgentPool", "RoutingPolicy", "Pod"}
                          or (kind, name) in {("CustomResourceDefinition", n) for n in CRDS}
                          or (kind, name) in {("APIService", n) for n in CRD_APISERVICES})}
    assert not unexpected, sorted(unexpected)
    assert not [o for o in remaining if o[1] == release_a.namespace], sorted(remaining)
    assert CRDS <= crds_established(cp)
