"""The whole story, end to end, on a real node: one sequence of real steps that the e2e
test asserts and the demo (``examples/story.py``, ``hack/demo``) prints, so the two
cannot drift apart.

    story = Story(node, jaeger)            # in pytest: the session's node and Jaeger
    story = Story().start()                # anywhere else: starts its own (tests/support/node.py)
    story.install_chart()                  # helm install with the images hack/images built
    story.wait_for_operator()              # the operator's pods Ready (and its webhook, if used)
    story.start_fakes(); story.apply_pool_and_policy()
    story.deploy_app()                     # the app's pod, injected, Ready
    story.wait_for_config()                # its sidecar watched it; the policy says 1/1 synced
    call = story.ask()                     # the app's openai SDK call, through its sidecar
    story.metrics(); story.find_trace(call.trace_id)
    story.switch_strategy("round_robin")
    story.delete_operator_pod(); story.apply_policy("fallback")
    story.wait_for_new_operator()          # rescheduled; status catches up
    story.roll_app()                       # a rolling update: a new pod, configured, serving
    story.scale_operator(0); story.roll_app("3", operator=False)  # a new pod, no operator
    story.scale_operator(2)                # back: the pod's watch follows
    story.rotate_ca()                      # the pod's mounted CA bundle follows two rotations
    story.close()

Each step returns a dataclass saying what happened; nothing here asserts or prints.
A step that cannot happen raises (``StoryError``) with what it saw last and the logs that
tell why. The test process reaches pods and Services inside the node's network
namespace through the node's relay (``node.reach``), and the pods reach Jaeger and the
fake providers on this machine's loopback through the node's address (``node.offer``).
The sidecar's admin port listens on the pod's loopback only: the story reaches it from
inside the pod's network namespace (the sidecar process's, found in /proc) with the token
the sidecar wrote to its state directory, as `kubectl exec` into the sidecar would.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from agent_operator.certs import Renewal, ServingCert, issue
from agent_operator.inject import IDENTITY_DIR

from support.controlplane import CommandError, ControlPlane, Jaeger, find_assets, start_jaeger
from support.node import NODE_BINARIES, Node, find_images, start_node
from support.relay import Relay
from support.sockets import listening
from support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "agent-router"
APP_SOURCE = ROOT / "examples" / "chat-app" / "app.py"
TESTS = ROOT / "tests"
if str(TESTS) not in sys.path:  # fakes
    sys.path.insert(0, str(TESTS))

from fakes import Fail, FakeProvider, Reply  # noqa: E402

INJECT_LABEL = "agentrouter.io/inject"
APP = "chat"  # the app's Deployment, Service and label, and the sidecar's service name
POLICY = "chat"
POOL = "main"
ROUTE = "default"
KEYS_SECRET = "llm-keys"
# Keys the fakes insist on: the operator must resolve them from the Secret, and they
# must appear in no trace.
KEYS = {"anthropic": "sk-ant-story-7f3a9c", "openai": "sk-story-4b8e21"}
PROMPT = "Say hello to the story (marker: purple-elephant-42)"
ANSWERS = {"anthropic": "Hello from Claude (the anthropic fake).",
           "openai": "Hello from GPT-4o (the openai fake)."}
WAIT = 180.0  # generous: 2 shared cores; only failures ever wait this long


class StoryError(RuntimeError):
    """A step could not happen; the message says what was seen."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


# ---- what each step returns ------------------------------------------------------------------


@dataclass
class Cluster:
    kubeconfig: Path
    server: str
    kubectl: Path  # the pinned kubectl (put its directory on PATH)
    jaeger_ui: str
    otlp_endpoint: str  # as the pods reach it
    node_ip: str
    nodes_table: str  # kubectl get nodes -o wide
    images: dict[str, str]  # name -> reference, as loaded into containerd
    started_here: bool  # False: attached to the test session's node and Jaeger


@dataclass
class Installed:
    release: str
    namespace: str
    command: str
    notes: str  # what `helm install` printed
    objects: list[str]  # kind/name of every object of the release
    crds: list[str]
    webhook_name: str  # "" when the API server injects (injection by the policy)
    injection: str  # who injects, as the chart decided: "policy" or "webhook"
    values: dict[str, str]


@dataclass
class OperatorUp:
    pod: str
    image: str
    identity: str  # the service account it runs as
    webhooks: list[str]  # what it wrote into the chart's MutatingWebhookConfiguration
    pods_table: str  # kubectl get pods -o wide in the release's namespace


@dataclass
class Fakes:
    urls: dict[str, str]  # on this machine's loopback
    node_urls: dict[str, str]  # the same, as the pods reach them
    primary: str
    primary_behaviour: str


@dataclass
class Applied:
    namespace: str
    files: dict[str, Path]
    texts: dict[str, str]  # file name -> YAML
    output: str  # what kubectl apply printed


@dataclass
class AppUp:
    manifest: str  # the Deployment and Service as applied (no sidecar in them)
    pod: str
    ip: str
    init_containers: list[str]
    sidecar: dict[str, Any]  # the injected container as stored
    sidecar_env: dict[str, str]  # its plain env values
    app_env: dict[str, str]  # what the webhook added to the app container
    annotations: dict[str, str]
    volumes: list[str]
    pod_table: str  # kubectl get pod -o wide, once Ready
    events: list[str]  # the pod's events (scheduled, pulled, started, probes)
    ready_after: float  # seconds from kubectl apply to Ready


@dataclass
class Configured:
    version: int  # the sidecar's
    hash: str  # the compiled document's, which the operator delivers and acknowledges
    routes: list[str]
    strategy: str
    agents: list[dict[str, Any]]  # as the sidecar reports them (keys masked)
    status: dict[str, Any]  # the RoutingPolicy's status


@dataclass
class AppCall:
    prompt: str
    answer: str
    model: str
    headers: dict[str, str]  # the x-agent-* response headers
    trace_id: str
    pod: str  # the app pod that answered
    app_code: str  # the app's side of the call, as a person would write it


@dataclass
class Metrics:
    url: str
    samples: dict[str, float]  # `name{label="v",...}` -> value, agent_sidecar_* only
    lines: list[str]  # the interesting ones, as served

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        for key, v in self.samples.items():
            sample, _, rest = key.partition("{")
            got = dict(re.findall(r'(\w+)="([^"]*)"', rest))
            if sample == name and all(got.get(k) == want for k, want in labels.items()):
                total += v
        return total


@dataclass
class SpanView:
    name: str
    span_id: str
    parent_id: str | None
    service: str
    tags: dict[str, Any]
    start_us: int
    duration_ms: float
    resource: dict[str, Any]  # the process's (OTel resource) attributes

    @property
    def error_type(self) -> str | None:
        value = self.tags.get("error.type")
        return None if value is None else str(value)


@dataclass
class TraceSeen:
    trace_id: str
    ui_url: str
    api_url: str
    spans: list[SpanView]
    raw: str  # the query API's JSON, whole

    def named(self, prefix: str) -> list[SpanView]:
        return [s for s in self.spans if s.name.startswith(prefix)]

    def children(self, span: SpanView) -> list[SpanView]:
        return sorted((s for s in self.spans if s.parent_id == span.span_id),
                      key=lambda s: s.start_us)

    def tree(self) -> list[str]:
        """Indented lines, parents first (what the Jaeger UI shows as a timeline)."""
        ids = {s.span_id for s in self.spans}
        lines: list[str] = []

        def walk(span: SpanView, depth: int) -> None:
            extra = []
            for key in ("gen_ai.provider.name", "agent_router.strategy", "agent_router.chosen",
                        "agent_router.attempt.outcome", "error.type",
                        "http.response.status_code"):
                if key in span.tags:
                    extra.append(f"{key}={span.tags[key]}")
            lines.append(f"{'  ' * depth}{span.name} [{span.service}] {' '.join(extra)}".rstrip())
            for child in self.children(span):
                walk(child, depth + 1)

        for root in (s for s in self.spans if s.parent_id not in ids):
            walk(root, 0)
        return lines


@dataclass
class Switched:
    strategy: str
    version: int
    providers: list[str]  # x-agent-provider of each request, in order
    received: dict[str, int]  # requests each fake received during the phase
    command: str


@dataclass
class OperatorDeleted:
    pod: str
    output: str  # what kubectl delete printed
    during: AppCall  # a request made right after, while the Deployment replaces the pod
    others: list[str]  # the operator's pods that still run (the chart runs two replicas)


@dataclass
class PolicyChanged:
    strategy: str
    generation: int
    output: str


@dataclass
class Recovered:
    pod: str  # the operator's new pod, the deleted one's replacement
    status: dict[str, Any]
    generation: int
    served_strategy: str
    version: int
    policies_table: str  # kubectl get routingpolicies
    agentrouter_table: str  # kubectl get agentrouter (both kinds)


@dataclass
class Rotated:
    first_ca: str  # PEM: the CA the followed pod trusted before
    short_ca: str  # the 150-second CA the story wrote, as a renewal would
    renewed_ca: str  # the CA of the operator's own renewal of it
    mounted: str  # the pod's mounted ca.crt once it followed both
    seconds: float  # from the first rotation to the pod's file without the first CA


@dataclass
class RolledOut:
    old_pod: str
    new_pod: str
    command: str
    rollout: str  # kubectl rollout status
    status: dict[str, Any]  # the RoutingPolicy's status afterwards ({} with no operator)
    served: dict[str, Any]  # what the new pod's sidecar serves (its version and source)
    call: AppCall  # answered by the new pod


# ---- the story -------------------------------------------------------------------------------


class Story:
    def __init__(self, node: Node | None = None, jaeger: Jaeger | None = None,
                 *, release: str = "agent-router", system_namespace: str = "agent-router-system",
                 app_namespace: str = "story", workdir: Path | None = None) -> None:
        self.node = node
        self.jaeger = jaeger
        self.release = release
        self.system_namespace = system_namespace
        self.namespace = app_namespace
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="agent-router-story-"))
        self._owned: list[Node | Jaeger] = []  # what start() started (stopped by close())
        self._stack = contextlib.ExitStack()
        self.fakes: dict[str, FakeProvider] = {}
        self.pod = ""  # the app pod the story watches
        self._relays: dict[int, tuple[Relay, int]] = {}  # sidecar pid: into its pod
        self.operator_pod = ""
        self._replaced: set[str] = set()  # the operator's pods when one was deleted
        self.injection = ""  # who injects the sidecar, as the chart decided (install_chart)

    # -- 0. a node and Jaeger -----------------------------------------------------------------

    def start(self) -> Story:
        """Start Jaeger and a node (with its control plane) here, outside pytest."""
        assets = find_assets(("kube-apiserver", "etcd", "kubectl", "helm", "jaeger",
                              *NODE_BINARIES))
        if self.jaeger is None:
            self.jaeger = start_jaeger(self.workdir / "jaeger", assets)
            self._owned.append(self.jaeger)
        if self.node is None:
            self.node = start_node(self.workdir / "node", assets, find_images())
            self._owned.append(self.node)
        return self

    @property
    def _node(self) -> Node:
        if self.node is None:
            raise StoryError("no node: pass one or call start()")
        return self.node

    @property
    def _cp(self) -> ControlPlane:
        return self._node.control_plane

    @property
    def _jaeger(self) -> Jaeger:
        if self.jaeger is None:
            raise StoryError("no Jaeger: pass one or call start()")
        return self.jaeger

    def otlp_endpoint(self) -> str:
        """Jaeger's OTLP/HTTP receiver as the pods reach it (through the node's address)."""
        return f"http://{self._node.offer(self._jaeger.otlp_http_port)}"

    def cluster(self) -> Cluster:
        node = self._node
        return Cluster(self._cp.kubeconfig, self._cp.server, self._cp.assets / "kubectl",
                       self._jaeger.query_url, self.otlp_endpoint(), node.ip,
                       self.kubectl("get", "nodes", "-o", "wide"), dict(node.images),
                       started_here=bool(self._owned))

    def kubectl(self, *args: str, check: bool = True) -> str:
        return self._cp.kubectl(*args, check=check).stdout

    # -- 1. helm install ---------------------------------------------------------------------

    def install_chart(self, operator_env: dict[str, str] | None = None,
                      **more: str) -> Installed:
        """`more`: chart values besides the story's (e.g. `{"injection.by": "webhook"}`);
        `operator_env`: the operator's extra environment (operator.extraEnv)."""
        cp, images = self._cp, self._node.images
        cp.create_namespace(self.system_namespace)
        operator_repo, operator_tag = images["agent-operator"].rsplit(":", 1)
        sidecar_repo, sidecar_tag = images["agent-sidecar"].rsplit(":", 1)
        values = {
            # The images hack/images built, loaded into the node's containerd.
            "image.repository": operator_repo, "image.tag": operator_tag,
            "sidecar.image.repository": sidecar_repo, "sidecar.image.tag": sidecar_tag,
            # The sidecars the webhook injects export their traces to this Jaeger.
            "sidecar.otlpEndpoint": self.otlp_endpoint(),
            # A short resync and peering lifetime, so a new operator pod takes over soon.
            "operator.resyncSeconds": "5",
            "operator.peeringLifetimeSeconds": "10",
            **more,
        }
        sets = [a for k, v in values.items() for a in ("--set", f"{k}={v}")]
        if operator_env:
            extra = json.dumps([{"name": k, "value": v} for k, v in operator_env.items()])
            sets += ["--set-json", f"operator.extraEnv={extra}"]
        try:
            out = cp.helm("install", self.release, str(CHART), "--namespace",
                          self.system_namespace, "--wait=false", *sets).stdout
        except CommandError as exc:
            raise StoryError(f"{exc}\n--- what the API server was asked for this release\n"
                             f"{self._requests_about(self.release)}") from None
        manifest = [d for d in yaml.safe_load_all(
            cp.helm("get", "manifest", self.release, "--namespace", self.system_namespace).stdout)
            if d]
        crds = sorted(c["metadata"]["name"] for c in cp.get_json("crd")["items"]
                      if c["spec"]["group"] == "agentrouter.io")
        webhook = next((o["metadata"]["name"] for o in manifest
                        if o["kind"] == "MutatingWebhookConfiguration"), "")
        # injection.by=auto: the policy when this cluster serves it (helm asked it)
        self.injection = "policy" if any(o["kind"] == "MutatingAdmissionPolicy"
                                         for o in manifest) else "webhook"
        command = (f"helm install {self.release} helm/agent-router --namespace "
                   f"{self.system_namespace} "
                   + " ".join(f"--set {k}={v}" for k, v in values.items()))
        return Installed(
            release=self.release, namespace=self.system_namespace, command=command,
            notes=out, objects=[f"{o['kind']}/{o['metadata']['name']}" for o in manifest],
            crds=crds, webhook_name=webhook, injection=self.injection, values=values)

    # -- 2. the operator's pod -------------------------------------------------------------------

    def _operator_pods(self) -> list[dict[str, Any]]:
        return list(self._cp.get_json(
            "pods", "-l", f"app.kubernetes.io/instance={self.release}",
            namespace=self.system_namespace)["items"])

    def _deployment(self) -> dict[str, Any]:
        return dict(self._cp.get_json(
            "deployment", "-l", f"app.kubernetes.io/instance={self.release}",
            namespace=self.system_namespace)["items"][0])

    def _operator_env(self) -> dict[str, str]:
        container = self._deployment()["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value", "") for e in container.get("env", [])}

    def wait_for_operator(self, not_pod: str = "") -> OperatorUp:
        """Every pod of the operator's Deployment Ready (the startup probe is kopf's
        /healthz) and, with injection by the webhook, the webhook it registers in the
        chart's configuration. `not_pod`: a pod that must be gone. The story follows the
        first pod."""

        def up() -> list[dict[str, Any]] | None:
            pods = self._operator_pods()
            live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
            if any(p["metadata"]["name"] == not_pod for p in pods):
                return None
            ready = [p for p in live if _ready(p)]
            wanted = self._deployment()["spec"]["replicas"]
            return ready if len(ready) == len(live) == wanted else None

        pod = self._wait(up, "the operator's pods Ready")[0]
        name = self._operator_env().get("AGENT_OPERATOR_WEBHOOK_NAME", "")
        found = self._wait(lambda: self._cp.get_json("mutatingwebhookconfiguration", name)
                           .get("webhooks"), "the operator's webhook in the chart's configuration"
                           ) if self.injection == "webhook" else []
        self.operator_pod = pod["metadata"]["name"]
        spec = pod["spec"]
        return OperatorUp(
            self.operator_pod, spec["containers"][0]["image"],
            f"system:serviceaccount:{self.system_namespace}:{spec['serviceAccountName']}",
            [w["name"] for w in found],
            self.kubectl("get", "pods", "-o", "wide", "-n", self.system_namespace))

    # -- 3. fake providers, an AgentPool and a RoutingPolicy ----------------------------------

    def start_fakes(self) -> Fakes:
        """Two fake providers on loopback: Anthropic (the primary) answers 529 overloaded.
        The pods reach them at the node's address."""
        claude = FakeProvider("anthropic", api_key=KEYS["anthropic"],
                              default=Reply(text=ANSWERS["anthropic"]))
        gpt = FakeProvider("openai", api_key=KEYS["openai"], default=Reply(text=ANSWERS["openai"]))
        for fake in (claude, gpt):
            self._stack.enter_context(fake.running())
        claude.set_default(Fail(529))
        self.fakes = {"anthropic": claude, "openai": gpt}
        return Fakes({k: f.url for k, f in self.fakes.items()},
                     {k: self._node_url(f, f.url) for k, f in self.fakes.items()},
                     "anthropic", "answers every request with 529 overloaded_error")

    def _node_url(self, fake: FakeProvider, url: str) -> str:
        return url.replace(fake.url, f"http://{self._node.offer(fake.port)}")

    def manifests(self, strategy: str = "fallback") -> dict[str, str]:
        """The YAML a person would write (the fakes' URLs stand in for the providers')."""
        claude, gpt = self.fakes["anthropic"], self.fakes["openai"]
        keys = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": KEYS_SECRET},
                "type": "Opaque", "stringData": dict(KEYS)}
        pool = {"apiVersion": "agentrouter.io/v1alpha1", "kind": "AgentPool",
                "metadata": {"name": POOL},
                "spec": {"agents": [
                    {"name": "claude", "provider": "anthropic", "model": "claude-sonnet",
                     "baseUrl": self._node_url(claude, claude.base_url),
                     "apiKeySecretRef": {"name": KEYS_SECRET, "key": "anthropic"}},
                    {"name": "gpt", "provider": "openai", "model": "gpt-4o",
                     "baseUrl": self._node_url(gpt, gpt.base_url),
                     "apiKeySecretRef": {"name": KEYS_SECRET, "key": "openai"}}]}}
        policy = {"apiVersion": "agentrouter.io/v1alpha1", "kind": "RoutingPolicy",
                  "metadata": {"name": POLICY},
                  "spec": {"selector": {"matchLabels": {"app": APP}}, "pools": [POOL],
                           "routes": [ROUTE],
                           "strategy": {"type": strategy, "retries": 0}}}
        return {name: yaml.safe_dump(obj, sort_keys=False)
                for name, obj in (("keys.yaml", keys), ("pool.yaml", pool),
                                  ("policy.yaml", policy))}

    def _write(self, name: str, text: str) -> Path:
        path = self.workdir / "manifests" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def apply_pool_and_policy(self) -> Applied:
        self._cp.create_namespace(self.namespace)
        texts = self.manifests("fallback")
        files = {n: self._write(n, t) for n, t in texts.items()}
        out = "".join(self.kubectl("apply", "-n", self.namespace, "-f", str(p))
                      for p in files.values())
        return Applied(self.namespace, files, texts, out)

    # -- 4. the app: a Deployment labelled for injection, and its Service -------------------------

    def app_manifest(self, version: str = "1") -> str:
        labels = {"app": APP, INJECT_LABEL: "true"}
        deployment = {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": APP},
            "spec": {
                "replicas": 1, "selector": {"matchLabels": {"app": APP}},
                "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": {"metadata": {"labels": labels}, "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "app", "image": self._node.images["chat-app"],
                        "imagePullPolicy": "IfNotPresent",
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "env": [{"name": "APP_VERSION", "value": version},
                                {"name": "OTEL_SERVICE_NAME", "value": f"{APP}-app"},
                                {"name": "OTEL_EXPORTER_OTLP_ENDPOINT",
                                 "value": self.otlp_endpoint()}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": "http"},
                                           "periodSeconds": 2},
                        "securityContext": {"allowPrivilegeEscalation": False,
                                            "readOnlyRootFilesystem": True,
                                            "runAsNonRoot": True,
                                            "capabilities": {"drop": ["ALL"]}},
                    }]}}}}
        service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": APP},
                   "spec": {"selector": {"app": APP},
                            "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}
        return yaml.safe_dump_all([deployment, service], sort_keys=False)

    def _app_pods(self) -> list[dict[str, Any]]:
        return list(self._cp.get_json("pods", "-l", f"app={APP}", namespace=self.namespace)
                    ["items"])

    def namespace_config(self) -> dict[str, str] | None:
        """The data of the namespace's ConfigMap `agent-router` once it holds a document
        for the story's policy (what the pods the API server injects start from)."""
        found = self._cp.get_json("configmaps", namespace=self.namespace)["items"]
        data = next((c.get("data") for c in found if c["metadata"]["name"] == "agent-router"),
                    None)
        return dict(data) if data and POLICY in json.loads(data["configs.json"])["configs"] \
            else None

    def deploy_app(self) -> AppUp:
        if self.injection == "policy":
            # The API server refuses opted-in pods of a namespace without the ConfigMap
            # (its controller would retry, with a growing delay).
            self._wait(self.namespace_config, "the namespace's ConfigMap agent-router")
        text = self.app_manifest()
        path = self._write("app.yaml", text)
        started = time.monotonic()
        self.kubectl("apply", "-n", self.namespace, "-f", str(path))
        pod = self._wait(lambda: next(iter(self._app_pods()), None), "the app's pod")
        ready = self._wait_ready(pod["metadata"]["name"])
        return self._app_up(text, ready, time.monotonic() - started)

    def _wait_ready(self, name: str) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            pod = self._cp.get_json("pod", name, namespace=self.namespace)
            return dict(pod) if _ready(pod) else None

        return dict(self._wait(ready, f"pod {name} Ready"))

    def _app_up(self, manifest: str, pod: dict[str, Any], seconds: float) -> AppUp:
        name = pod["metadata"]["name"]
        self.pod = name
        init = pod["spec"].get("initContainers") or []
        sidecar: dict[str, Any] = next((c for c in init if c["name"] == "agent-sidecar"), {})
        app = pod["spec"]["containers"][0]
        events = self._cp.get_json("events", "--field-selector", f"involvedObject.name={name}",
                                   namespace=self.namespace)["items"]
        return AppUp(
            manifest=manifest, pod=name, ip=pod["status"]["podIP"],
            init_containers=[c["name"] for c in init], sidecar=sidecar,
            sidecar_env={e["name"]: e["value"] for e in sidecar.get("env", []) if "value" in e},
            app_env={e["name"]: e.get("value", "") for e in app.get("env", [])
                     if e["name"] in ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL")},
            annotations=dict(pod["metadata"].get("annotations") or {}),
            volumes=[v["name"] for v in pod["spec"].get("volumes") or []],
            pod_table=self.kubectl("get", "pod", name, "-n", self.namespace, "-o", "wide"),
            events=[f"{e['reason']}: {e.get('message', '')}" for e in
                    sorted(events, key=lambda e: e.get("lastTimestamp") or "")],
            ready_after=seconds)

    # -- 5. the sidecar watches the operator for its config ------------------------------------

    def sidecar_pid(self) -> int:
        """The app pod's sidecar process, as this machine sees it (the node's PID namespace
        is nested in this one): an `agent-sidecar` whose POD_NAME is the pod's."""
        mine = f"POD_NAME={self.pod}".encode()
        for proc in sorted(Path("/proc").iterdir(), key=lambda p: p.name):
            if not proc.name.isdigit():
                continue
            try:
                if b"agent-sidecar" not in (proc / "cmdline").read_bytes():
                    continue
                if mine in (proc / "environ").read_bytes().split(b"\0"):
                    return int(proc.name)
            except OSError:
                continue  # gone meanwhile, or not ours to read
        raise StoryError(f"no sidecar process of pod {self.pod} on the node")

    def sidecar_sockets(self) -> set[tuple[str, int]]:
        """(address, port) of every socket the sidecar listens on, inside its pod."""
        return listening(self.sidecar_pid())

    def admin_token(self) -> str:
        """The admin token the sidecar made at start (`kubectl exec <pod> -c agent-sidecar
        -- cat /var/lib/agent-sidecar/admin-token`), read through its root."""
        root = Path(f"/proc/{self.sidecar_pid()}/root")
        return (root / "var/lib/agent-sidecar/admin-token").read_text().strip()

    def _admin_url(self) -> str:
        """`http://127.0.0.1:N` here for 127.0.0.1:4001 inside the sidecar's pod."""
        pid = self.sidecar_pid()
        if pid not in self._relays:
            relay = Relay(Path(f"/proc/{pid}/ns/net"))
            self._stack.callback(relay.close)
            self._relays[pid] = (relay, relay.forward((False, "127.0.0.1", 0),
                                                      (True, "127.0.0.1", 4001)))
        return f"http://127.0.0.1:{self._relays[pid][1]}"

    def served(self) -> dict[str, Any] | None:
        """The config the sidecar serves (GET /config on its loopback admin port, with
        the token it made), or None."""
        try:
            token = self.admin_token()
        except (OSError, StoryError):
            return None  # not started yet
        r = httpx.get(self._admin_url() + "/config", timeout=5,
                      headers={"authorization": f"Bearer {token}"})
        return dict(r.json()) if r.status_code == 200 else None

    def _strategy(self, served: dict[str, Any] | None) -> str:
        return str(served["config"]["routes"][0]["strategy"]) if served else ""

    def policy_status(self) -> dict[str, Any]:
        return dict(self._cp.get_json("routingpolicy", POLICY, namespace=self.namespace)
                    .get("status") or {})

    def _synced(self) -> dict[str, Any] | None:
        status = self.policy_status()
        obj = self._cp.get_json("routingpolicy", POLICY, namespace=self.namespace)
        generation = obj["metadata"]["generation"]
        ready = any(c["type"] == "Ready" and c["status"] == "True"
                    and c.get("observedGeneration") == generation
                    for c in status.get("conditions") or [])
        ok = (ready and status.get("observedGeneration") == generation
              and status.get("synced") == "1/1")
        return status if ok else None

    def wait_for_config(self) -> Configured:
        # Not the document a pod injected by the API server starts from (source
        # "namespace"): the one its watch brought.
        served = self._wait(lambda: (s := self.served()) and s["source"] == "push" and s,
                            "the config the sidecar watched for")
        status = self._wait(self._synced, "RoutingPolicy Ready with 1/1 pods synced")
        return Configured(int(served["version"]), str(served["config"]["metadata"]["hash"]),
                          list(served["routes"]), self._strategy(served),
                          list(served["config"]["agents"]), status)

    def watch_log(self) -> list[str]:
        """The sidecar's log lines about its watch on the operator (over TLS, through the
        host alias of the operator's Service, with the pod's projected token)."""
        out = self.kubectl("logs", "-n", self.namespace, self.pod, "-c", "agent-sidecar")
        return [line for line in out.splitlines()
                if "from the operator" in line or "watching https://" in line]

    def wait_for_watch(self) -> list[str]:
        """The watch's log once a config arrived through it."""
        return list(self._wait(
            lambda: (lines := self.watch_log()) and any("from the operator serves" in line
                                                        for line in lines) and lines,
            "a config through the sidecar's watch on the operator"))

    # -- 6. the app calls its sidecar with the official openai SDK -------------------------------

    APP_CODE = (
        "client = OpenAI(api_key=\"unused\")  # OPENAI_BASE_URL=http://127.0.0.1:4000/v1 (injected)\n"
        "raw = client.chat.completions.with_raw_response.create(\n"
        '    model="default", messages=[{"role": "user", "content": prompt}],\n'
        "    extra_headers=carrier)  # traceparent of the app's span\n"
        "answer = raw.parse().choices[0].message.content\n"
    )

    def app_url(self) -> str:
        """The app's Service (its cluster IP, through kube-proxy), from here."""
        ip = self._cp.get_json("service", APP, namespace=self.namespace)["spec"]["clusterIP"]
        return self._node.reach(ip, 80)

    def ask(self, prompt: str = PROMPT) -> AppCall:
        """One request to the app, which asks the assistant through its sidecar inside a
        span of its own (exported to Jaeger); the sidecar continues that trace."""
        r = httpx.post(self.app_url() + "/ask", json={"prompt": prompt}, timeout=90)
        body = r.json()
        if r.status_code != 200:
            raise StoryError(f"the app answered {r.status_code}: {body}")
        return AppCall(prompt, body["answer"], body["model"], dict(body["headers"]),
                       body["trace_id"], body["pod"], self.APP_CODE)

    # -- 7. what the sidecar counted ---------------------------------------------------------------

    def metrics(self) -> Metrics:
        """The sidecar's metrics, from its health port (what Prometheus scrapes)."""
        ip = self._cp.get_json("pod", self.pod, namespace=self.namespace)["status"]["podIP"]
        url = self._node.reach(ip, 4002) + "/metrics"
        text = httpx.get(url, timeout=5).text
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("agent_sidecar_") and " " in line:
                key, _, value = line.rpartition(" ")
                samples[key] = float(value)
        wanted = ("agent_sidecar_requests_total", "agent_sidecar_attempts_total",
                  "agent_sidecar_fallbacks_total", "agent_sidecar_config_version")
        lines = [line for line in text.splitlines() if line.startswith(wanted)]
        return Metrics(url, samples, lines)

    # -- 8. the trace, through Jaeger's HTTP API ------------------------------------------------------

    def find_trace(self, trace_id: str) -> TraceSeen:
        """The trace once Jaeger has the app's span, the routing decision and its attempts
        (the sidecar's exporter batches: a few seconds)."""
        jaeger = self._jaeger
        api = f"{jaeger.query_url}/api/traces/{trace_id}"

        def complete() -> dict[str, Any] | None:
            r = httpx.get(api, timeout=5)
            if r.status_code != 200:
                return None
            data = (r.json().get("data") or [None])[0]
            names = [s["operationName"] for s in (data or {}).get("spans", [])]
            routed = any(n.startswith("route ") for n in names)
            attempts = sum(n.startswith("chat ") for n in names)
            app_span = "ask the assistant" in names
            return dict(data) if data and routed and attempts >= 2 and app_span else None

        data = self._wait(complete, f"trace {trace_id} in Jaeger")
        processes = data.get("processes", {})
        spans = []
        for s in sorted(data["spans"], key=lambda s: s["startTime"]):
            parent = next((r["spanID"] for r in s.get("references", [])
                           if r.get("refType") == "CHILD_OF"), None)
            spans.append(SpanView(
                s["operationName"], s["spanID"], parent,
                processes.get(s.get("processID"), {}).get("serviceName", ""),
                Jaeger.tags(s), int(s["startTime"]), s.get("duration", 0) / 1000,
                Jaeger.tags(processes.get(s.get("processID"), {}))))
        return TraceSeen(trace_id, f"{jaeger.query_url}/trace/{trace_id}", api, spans,
                         json.dumps(data))

    # -- 9. kubectl switches the strategy -----------------------------------------------------------

    def switch_strategy(self, strategy: str = "round_robin", requests: int = 4) -> Switched:
        """Make the primary healthy again, apply the policy with `strategy`, wait for the
        sidecar to serve it, then send `requests` requests and count what each fake received."""
        self.fakes["anthropic"].set_default(Reply(text=ANSWERS["anthropic"]))
        changed = self.apply_policy(strategy)
        served = self._wait(lambda: (s := self.served()) and self._strategy(s) == strategy
                            and s, f"the {strategy} config on the sidecar")
        self._wait(lambda: self.policy_status().get("observedGeneration") == changed.generation,
                   "the RoutingPolicy status of the new generation")
        before = {k: len(f.requests) for k, f in self.fakes.items()}
        providers = [self.ask(f"Request {i + 1} of {requests}").headers["x-agent-provider"]
                     for i in range(requests)]
        received = {k: len(f.requests) - before[k] for k, f in self.fakes.items()}
        return Switched(strategy, int(served["version"]), providers, received,
                        changed.output.strip())

    def apply_policy(self, strategy: str) -> PolicyChanged:
        path = self._write("policy.yaml", self.manifests(strategy)["policy.yaml"])
        out = self.kubectl("apply", "-n", self.namespace, "-f", str(path))
        obj = self._cp.get_json("routingpolicy", POLICY, namespace=self.namespace)
        return PolicyChanged(strategy, int(obj["metadata"]["generation"]), out)

    # -- 10. the operator's pod is deleted; the app keeps serving --------------------------------------

    def delete_operator_pod(self) -> OperatorDeleted:
        """kubectl delete the operator's pod (its Deployment makes a new one) and, while
        that one starts, a request to the app."""
        pod = self.operator_pod
        others = [p["metadata"]["name"] for p in self._operator_pods()
                  if p["metadata"]["name"] != pod]
        self._replaced = {pod, *others}
        out = self.kubectl("delete", "pod", pod, "-n", self.system_namespace, "--wait=false")
        return OperatorDeleted(pod, out.strip(), self.ask(), others)

    def wait_for_new_operator(self) -> Recovered:
        """The Deployment's new pod Ready; the RoutingPolicy's status caught up with what
        changed meanwhile (observedGeneration current, 1/1 synced, Ready)."""
        old = self.operator_pod
        self.wait_for_operator(not_pod=old)
        self.operator_pod = next(name for p in self._operator_pods()
                                 if (name := p["metadata"]["name"]) not in self._replaced)
        status = self._wait(self._synced, "the RoutingPolicy status to catch up")
        obj = self._cp.get_json("routingpolicy", POLICY, namespace=self.namespace)
        served = self._wait(lambda: (s := self.served()) and s["config"]["metadata"]["hash"]
                            == status["configVersion"] and s, "the latest config on the sidecar")
        return Recovered(
            self.operator_pod, status, int(obj["metadata"]["generation"]),
            self._strategy(served), int(served["version"]),
            self.kubectl("get", "routingpolicies", "-n", self.namespace),
            self.kubectl("get", "agentrouter", "-n", self.namespace))

    # -- 11. a rolling update of the app ------------------------------------------------------------------

    def roll_app(self, version: str = "2", operator: bool = True) -> RolledOut:
        """A new version of the app's pod template: the Deployment starts a new pod (injected,
        configured, Ready) before it stops the old one. `operator=False`: no operator
        replica runs, the new pod starts from its namespace's ConfigMap (nothing to wait
        for in the policy's status)."""
        old = self.pod
        text = self.app_manifest(version=version)
        path = self._write("app.yaml", text)
        self.kubectl("apply", "-n", self.namespace, "-f", str(path))
        rollout = self._cp.kubectl("rollout", "status", f"deployment/{APP}", "-n",
                                   self.namespace, f"--timeout={int(WAIT)}s",
                                   timeout=WAIT + 10).stdout
        pods = self._wait(lambda: [p for p in self._app_pods()
                                   if p["metadata"]["name"] != old] if not any(
            p["metadata"]["name"] == old for p in self._app_pods()) else None,
            f"the old pod {old} gone")
        new = self._wait_ready(pods[0]["metadata"]["name"])
        self._app_up(text, new, 0.0)
        status = self._wait(self._synced, "the RoutingPolicy synced to the new pod") \
            if operator else {}
        served = self._wait(self.served, "the new pod's config")
        return RolledOut(old, self.pod, f"kubectl -n {self.namespace} apply -f app.yaml   "
                         f"# APP_VERSION={version}", rollout.strip(), status, served,
                         self.ask())

    # -- 12. no operator replica runs, then it is back ----------------------------------------------

    def scale_operator(self, replicas: int) -> str:
        """kubectl scale the operator's Deployment; 0: until no pod of it is left, else
        until every replica is Ready. What kubectl printed."""
        deployment = self._deployment()["metadata"]["name"]
        out = self.kubectl("scale", "deployment", deployment, "-n", self.system_namespace,
                           f"--replicas={replicas}")
        if replicas == 0:
            self._wait(lambda: not self._operator_pods(), "no operator pod left")
        else:
            self.wait_for_operator()
        return out.strip()

    # -- 13. the operator's CA rotates -----------------------------------------------------------------

    def rotate_ca(self) -> Rotated:
        """Two rotations of the operator's CA, each bundle keeping the previous CA: the
        story writes into the operator's Secret a CA and certificate valid for 150 s,
        issued by the operator's own code, as its renewal would (the CA published, the
        certificate waiting 25 s); the operator (checking the Secret every
        AGENT_OPERATOR_WEBHOOK_CERT_CHECK_SECONDS) serves it then and renews it itself
        with a third of its life left, publishing the renewed CA at once and serving its
        certificate 25 s later (halfway to the 150-second one's expiry, sooner than the
        chart's propagation time). Waits until the followed pod's mounted
        ca.crt (the namespace ConfigMap's, refreshed by the kubelet) holds the operator's
        renewed CA and no longer the one the pod trusted before."""
        env = self._operator_env()
        namespace, name = env["AGENT_OPERATOR_WEBHOOK_CERT_SECRET"].split("/")
        hosts = env["AGENT_OPERATOR_WEBHOOK_HOSTS"].split(",")

        def ca_of_secret() -> tuple[str, ServingCert | None]:
            data = self._cp.get_json("secret", name, namespace=namespace).get("data") or {}
            cert = ServingCert.from_data({k: base64.b64decode(v).decode()
                                          for k, v in data.items()})
            return (_first_pem(cert.ca_bundle) if cert else ""), cert

        first, current = ca_of_secret()
        if current is None:
            raise StoryError(f"no certificate in {namespace}/{name} yet")
        started = time.monotonic()
        # As the operator's renewal does: the CA published now, its certificate served
        # only once the kubelet (syncing every 10 s here) can have brought it into the pod.
        short = issue(hosts, datetime.timedelta(seconds=150), current)
        publishing = ServingCert(short.ca_bundle, current.cert, current.key)
        waiting = Renewal(short, datetime.datetime.now(datetime.UTC)
                          + datetime.timedelta(seconds=25))
        patch = {"data": {k: base64.b64encode(v.encode()).decode()
                          for k, v in {**publishing.as_data(), **waiting.as_data()}.items()}}
        self.kubectl("patch", "secret", name, "-n", namespace, "--type", "merge", "-p",
                     json.dumps(patch))
        short_ca = _first_pem(short.ca_bundle)
        renewed = self._wait(lambda: (ca := ca_of_secret()[0]) not in (first, short_ca) and ca,
                             "the operator's own renewal of the 150-second certificate")
        mounted_file = _inside(Path(f"/proc/{self.sidecar_pid()}/root"), f"{IDENTITY_DIR}/ca.crt")
        mounted = self._wait(
            lambda: (text := mounted_file.read_text()) and renewed in text
            and first not in text and text, "the pod's mounted CA bundle following both")
        return Rotated(first, short_ca, renewed, mounted, time.monotonic() - started)

    def sidecar_log(self) -> str:
        """The log of the followed pod's sidecar (kubectl logs -c agent-sidecar)."""
        return self.kubectl("logs", "-n", self.namespace, self.pod, "-c", "agent-sidecar")

    # -- the end ------------------------------------------------------------------------------------------

    def _wait(self, predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
        """wait_for, failing with the logs that say why."""
        try:
            return wait_for(predicate, timeout, what, interval=0.5)
        except AssertionError as exc:
            raise StoryError(f"{exc}\n{self.diagnostics()}") from None

    def diagnostics(self) -> str:
        """The pods, recent events and the operator's log (what a person would look at)."""
        if self.node is None:
            return ""
        parts = []
        for args in (("get", "pods", "-A", "-o", "wide"),
                     ("get", "events", "-A", "--sort-by=.lastTimestamp"),
                     ("logs", "-n", self.system_namespace, "-l",
                      f"app.kubernetes.io/instance={self.release}", "--tail=40")):
            proc = self._cp.kubectl(*args, check=False)
            parts.append(f"--- kubectl {' '.join(args)}\n{(proc.stdout + proc.stderr)[-4000:]}")
        return "\n".join(parts)

    def _requests_about(self, text: str) -> str:
        """The API server's log lines about `text` (it logs every request on the node)."""
        log = self._cp.processes[-1].log_path if self._cp.processes else None
        if log is None or not log.exists():
            return ""
        return "\n".join(line for line in log.read_text(errors="replace").splitlines()
                         if text in line and "FLAG" not in line)[-8000:]

    def operator_log(self) -> str:
        if self.node is None:
            return ""
        return self._cp.kubectl("logs", "-n", self.system_namespace, "-l",
                                f"app.kubernetes.io/instance={self.release}", "--tail=-1",
                                check=False).stdout

    def close(self, keep_workdir: bool = False) -> None:
        """Tear down what the story made: on a shared node its resources (while the
        operator still runs, it removes its finalizers), the release and the namespaces;
        a node and Jaeger start() started, whole. The fakes always. The work directory it
        made (logs included) is removed unless `keep_workdir`."""
        cp = self._cp if self.node is not None else None
        if cp is not None and not self._owned:
            cp.kubectl("delete", "routingpolicy,agentpool", "--all", "-n", self.namespace,
                       "--ignore-not-found", "--timeout=30s", check=False, timeout=60)
            cp.helm("uninstall", self.release, "--namespace", self.system_namespace, "--wait",
                    "--timeout", "60s", check=False)
            cp.kubectl("delete", "namespace", self.namespace, self.system_namespace,
                       "--wait=false", "--ignore-not-found", check=False)
        self._stack.close()
        for owned in reversed(self._owned):
            if isinstance(owned, Jaeger):
                owned.process.stop()
            else:
                owned.stop()
        keep = keep_workdir or _env_flag("AGENT_ROUTER_KEEP_CONTROLPLANE_DIR")
        if self._own_workdir and not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Story:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _inside(root: Path, path: str) -> Path:
    """`path` as a process whose root is `root` sees it: an absolute symlink on the way
    (the image's /var/run -> /run) points into its root, not this machine's."""
    here = root
    for part in Path(path).parts[1:]:
        here = here / part
        while here.is_symlink():
            target = os.readlink(here)
            here = root / target.lstrip("/") if target.startswith("/") else here.parent / target
    return here


def _first_pem(bundle: bytes) -> str:
    """The first certificate of a PEM bundle (the newest CA of the operator's)."""
    end = "-----END CERTIFICATE-----"
    return bundle.decode().split(end)[0] + end


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


@contextlib.contextmanager
def story(node: Node | None = None, jaeger: Jaeger | None = None,
          **names: Any) -> Iterator[Story]:
    """A Story, started when not given a node and Jaeger, always closed."""
    s = Story(node, jaeger, **names)
    try:
        if node is None or jaeger is None:
            s.start()
        yield s
    finally:
        s.close()
