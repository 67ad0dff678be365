"""The whole story, end to end: one sequence of real steps that the e2e test asserts and
the demo (``examples/story.py``, ``hack/demo``) prints, so the two cannot drift apart.

    story = Story(control_plane, jaeger)   # in pytest: the session's fixtures
    story = Story().start()                # anywhere else: starts its own (etcd,
                                           # kube-apiserver, Jaeger) from the test binaries
    story.install_chart()                  # helm install: CRDs, RBAC, webhook configuration
    story.start_operator()                 # the chart's operator, as a local process
    story.start_fakes(); story.apply_pool_and_policy()
    pod = story.create_pod()               # the webhook injects the sidecar
    story.start_sidecar()                  # ready at 127.0.N.M, a real sidecar serves there
    story.wait_for_config()                # the operator pushes the compiled config
    call = story.ask()                     # the official openai SDK, through the sidecar
    story.metrics(); story.find_trace(call.trace_id)
    story.switch_strategy("round_robin")
    story.kill_operator(); story.ask(); story.apply_policy("fallback")
    story.restart_operator()               # status catches up with what changed meanwhile
    story.close()

Each step returns a dataclass saying what happened; nothing here asserts or prints.
A step that cannot happen raises (``StoryError``, or ``AssertionError`` from ``wait_for``
with what it saw last). There is no kubelet: the pod never runs; its status is set by
hand (IP 127.0.N.M, Ready) and a real ``agent-sidecar`` process listens at that IP with
the environment the webhook injected, as the kubelet would have started it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from support.controlplane import (
    ASSETS_ENV,
    ControlPlane,
    Jaeger,
    ManagedProcess,
    free_port,
    host_ip,
    start_control_plane,
    start_jaeger,
)
from support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "agent-router"
TESTS = ROOT / "tests"
for _path in (TESTS, TESTS / "sidecar"):  # fakes, sidecar_support
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from fakes import Fail, FakeProvider, Reply  # noqa: E402
from sidecar_support import SidecarProcess  # noqa: E402

INJECT_LABEL = "agentrouter.io/inject"
APP = "chat"  # the app's label, its pod name prefix, and its trace service name
POD = "chat-0"
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
WAIT = 120.0  # generous: 2 shared cores; only failures ever wait this long


class StoryError(RuntimeError):
    """A step could not happen; the message says what was seen."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def find_assets() -> Path:
    """The test binaries: ``AGENT_ROUTER_ASSETS``, else the pinned cache when complete."""
    names = ("kube-apiserver", "etcd", "kubectl", "helm", "jaeger")
    given = os.environ.get(ASSETS_ENV)
    candidates = [Path(given)] if given else []
    if not given:
        proc = subprocess.run(["bash", str(ROOT / "hack" / "test-binaries"), "--check"],
                              capture_output=True, text=True, check=False)
        match = re.search(rf"^{ASSETS_ENV}=(.+)$", proc.stdout, re.MULTILINE)
        if proc.returncode == 0 and match:
            candidates.append(Path(match.group(1).strip()))
    for directory in candidates:
        if all(os.access(directory / n, os.X_OK) for n in names):
            return directory
    raise StoryError(f"the test binaries are not built: run `hack/test-binaries` and export "
                     f"the {ASSETS_ENV}=... line it prints (hack/demo does both)")


# ---- what each step returns ------------------------------------------------------------------


@dataclass
class Cluster:
    kubeconfig: Path
    server: str
    kubectl: Path  # the pinned kubectl (put its directory on PATH)
    jaeger_ui: str
    otlp_endpoint: str
    started_here: bool  # False: attached to the test session's control plane and Jaeger


@dataclass
class Installed:
    release: str
    namespace: str
    command: str
    notes: str  # what `helm install` printed
    objects: list[str]  # kind/name of every object of the release
    crds: list[str]
    webhook_name: str
    values: dict[str, str]


@dataclass
class OperatorUp:
    pid: int
    identity: str  # the service account it runs as
    args: list[str]
    webhooks: list[str]  # what it wrote into the chart's MutatingWebhookConfiguration
    log: Path


@dataclass
class Fakes:
    urls: dict[str, str]
    primary: str
    primary_behaviour: str


@dataclass
class Applied:
    namespace: str
    files: dict[str, Path]
    texts: dict[str, str]  # file name -> YAML
    output: str  # what kubectl apply printed


@dataclass
class Injected:
    manifest: str  # the pod as applied (no sidecar in it)
    init_containers: list[str]
    sidecar: dict[str, Any]  # the injected container as stored
    sidecar_env: dict[str, str]  # its plain env values
    app_env: dict[str, str]  # what the webhook added to the app container
    annotations: dict[str, str]
    volumes: list[str]


@dataclass
class SidecarUp:
    ip: str
    app_url: str
    admin_url: str
    env: dict[str, str]  # the environment it runs with (from the injected container)
    pid: int
    pod_table: str  # kubectl get pod -o wide


@dataclass
class Pushed:
    version: int
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
class OperatorKilled:
    pid: int
    signal: str
    exit_code: int | None


@dataclass
class PolicyChanged:
    strategy: str
    generation: int
    observed_generation: int | None  # as the status says right after (stale while down)
    served_strategy: str  # what the sidecar serves right after
    output: str


@dataclass
class Recovered:
    pid: int
    status: dict[str, Any]
    generation: int
    served_strategy: str
    version: int
    policies_table: str  # kubectl get routingpolicies
    agentrouter_table: str  # kubectl get agentrouter (both kinds)


# ---- the story -------------------------------------------------------------------------------


def _expand(value: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion of an env value."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def _loopback_ip() -> str:
    """A 127.x.y.z of the pod's own whose ports 4000 and 4001 are free."""
    for _ in range(100):
        ip = f"127.{random.randint(1, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
        try:
            for port in (4000, 4001):
                with socket.socket() as s:
                    s.bind((ip, port))
        except OSError:
            continue
        return ip
    raise StoryError("no free 127.x.y.z address for the pod")


class Story:
    def __init__(self, control_plane: ControlPlane | None = None, jaeger: Jaeger | None = None,
                 *, release: str = "agent-router", system_namespace: str = "agent-router-system",
                 app_namespace: str = "story", workdir: Path | None = None) -> None:
        self.cp = control_plane
        self.jaeger = jaeger
        self.release = release
        self.system_namespace = system_namespace
        self.namespace = app_namespace
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="agent-router-story-"))
        self._owned: list[Any] = []  # what start() started (stopped by close())
        self._stack = contextlib.ExitStack()
        self.fakes: dict[str, FakeProvider] = {}
        self.operator: ManagedProcess | None = None
        self.sidecar: SidecarProcess | None = None
        self.ip = ""
        self.token = ""
        self._operator_args: list[str] = []
        self._operator_env: dict[str, str] = {}
        self._operator_identity = ""
        self._operator_kubeconfig: Path | None = None
        self._service = ""

    # -- 0. a control plane and Jaeger --------------------------------------------------------

    def start(self) -> Story:
        """Start etcd + kube-apiserver and Jaeger here (outside pytest's fixtures)."""
        assets = find_assets()
        if self.cp is None:
            self.cp = start_control_plane(self.workdir / "controlplane", assets)
            self._owned.append(self.cp)
        if self.jaeger is None:
            self.jaeger = start_jaeger(self.workdir / "jaeger", assets)
            self._owned.append(self.jaeger)
        return self

    @property
    def _cp(self) -> ControlPlane:
        if self.cp is None:
            raise StoryError("no control plane: pass one or call start()")
        return self.cp

    @property
    def _jaeger(self) -> Jaeger:
        if self.jaeger is None:
            raise StoryError("no Jaeger: pass one or call start()")
        return self.jaeger

    def cluster(self) -> Cluster:
        return Cluster(self._cp.kubeconfig, self._cp.server, self._cp.assets / "kubectl",
                       self._jaeger.query_url, self._jaeger.otlp_http_endpoint,
                       started_here=bool(self._owned))

    def kubectl(self, *args: str, check: bool = True) -> str:
        return self._cp.kubectl(*args, check=check).stdout

    # -- 1. helm install ---------------------------------------------------------------------

    def install_chart(self) -> Installed:
        cp = self._cp
        cp.create_namespace(self.system_namespace)
        values = {
            # The sidecars the webhook injects export their traces to this Jaeger.
            "sidecar.otlpEndpoint": self._jaeger.otlp_http_endpoint,
            # A short resync and peering lifetime, so a restarted operator takes over soon.
            "operator.resyncSeconds": "5",
            "operator.peeringLifetimeSeconds": "10",
        }
        sets = [a for k, v in values.items() for a in ("--set", f"{k}={v}")]
        args = ["install", self.release, str(CHART), "--namespace", self.system_namespace,
                "--wait=false", *sets]
        out = cp.helm(*args).stdout
        manifest = [d for d in yaml.safe_load_all(
            cp.helm("get", "manifest", self.release, "--namespace", self.system_namespace).stdout)
            if d]
        crds = sorted(c["metadata"]["name"] for c in cp.get_json("crd")["items"]
                      if c["spec"]["group"] == "agentrouter.io")
        webhook = next(o["metadata"]["name"] for o in manifest
                       if o["kind"] == "MutatingWebhookConfiguration")
        command = (f"helm install {self.release} helm/agent-router --namespace "
                   f"{self.system_namespace} "
                   + " ".join(f"--set {k}={v}" for k, v in values.items()))
        return Installed(
            release=self.release, namespace=self.system_namespace, command=command,
            notes=out, objects=[f"{o['kind']}/{o['metadata']['name']}" for o in manifest],
            crds=crds, webhook_name=webhook, values=values)

    # -- 2. the operator, as the chart's service account ---------------------------------------

    def _deployment(self) -> dict[str, Any]:
        items = self._cp.get_json(
            "deployment", "-l", f"app.kubernetes.io/instance={self.release}",
            namespace=self.system_namespace)["items"]
        if len(items) != 1:
            raise StoryError(f"expected the chart's one Deployment, found {len(items)}")
        return dict(items[0])

    def start_operator(self) -> OperatorUp:
        """`agent-operator` (the image's ENTRYPOINT) with the args and env of the chart's
        Deployment, as the chart's service account: what the Deployment's pod would run."""
        if not self._operator_args:
            deploy = self._deployment()
            pod = deploy["spec"]["template"]["spec"]
            (container,) = pod["containers"]
            self._operator_args = [*container["args"], "--verbose"]
            env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
            # As in a cluster, the apiserver calls the webhook through the chart's Service;
            # with no kubelet or endpoint controller here, the operator listens on this
            # machine's address and that is published as the Service's endpoint.
            ip, port = host_ip(), free_port()
            (service,) = self._cp.get_json(
                "service", "-l", f"app.kubernetes.io/instance={self.release}",
                namespace=self.system_namespace)["items"]
            self._service = service["metadata"]["name"]
            self._cp.publish_endpoints(self.system_namespace, self._service, "webhook", ip,
                                       port)
            env.update(AGENT_OPERATOR_WEBHOOK_ADDR=ip, AGENT_OPERATOR_WEBHOOK_PORT=str(port),
                       AGENT_OPERATOR_LIVENESS=f"http://127.0.0.1:{free_port()}/healthz")
            self._operator_env = env
            sa = pod["serviceAccountName"]
            self._operator_identity = f"system:serviceaccount:{self.system_namespace}:{sa}"
            self._operator_kubeconfig = self._cp.kubeconfig_for_service_account(
                self.system_namespace, sa)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
        env.update(self._operator_env, KUBECONFIG=str(self._operator_kubeconfig))
        script = Path(sys.executable).parent / "agent-operator"
        self.operator = ManagedProcess(
            "agent-operator", [str(script), *self._operator_args],
            self.workdir / "logs" / "operator.log", env=env)
        self.operator.start()
        operator = self.operator
        if operator.popen is None:
            raise StoryError("the operator did not start")
        webhook_name = self._operator_env["AGENT_OPERATOR_WEBHOOK_NAME"]
        found = self._wait(
            lambda: self._cp.get_json("mutatingwebhookconfiguration", webhook_name)
            .get("webhooks"), "the operator's webhook in the chart's configuration")
        health = self._operator_env["AGENT_OPERATOR_LIVENESS"]
        self._wait(lambda: httpx.get(health, timeout=2).status_code == 200, "operator /healthz")
        return OperatorUp(operator.popen.pid, self._operator_identity, self._operator_args,
                          [w["name"] for w in found], operator.log_path)

    # -- 3. fake providers, an AgentPool and a RoutingPolicy ----------------------------------

    def start_fakes(self) -> Fakes:
        """Two fake providers on loopback: Anthropic (the primary) answers 529 overloaded."""
        claude = FakeProvider("anthropic", api_key=KEYS["anthropic"],
                              default=Reply(text=ANSWERS["anthropic"]))
        gpt = FakeProvider("openai", api_key=KEYS["openai"], default=Reply(text=ANSWERS["openai"]))
        for fake in (claude, gpt):
            self._stack.enter_context(fake.running())
        claude.set_default(Fail(529))
        self.fakes = {"anthropic": claude, "openai": gpt}
        return Fakes({k: f.url for k, f in self.fakes.items()}, "anthropic",
                     "answers every request with 529 overloaded_error")

    def manifests(self, strategy: str = "fallback") -> dict[str, str]:
        """The YAML a person would write (the fakes' URLs stand in for the providers')."""
        claude, gpt = self.fakes["anthropic"], self.fakes["openai"]
        keys = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": KEYS_SECRET},
                "type": "Opaque", "stringData": dict(KEYS)}
        pool = {"apiVersion": "agentrouter.io/v1alpha1", "kind": "AgentPool",
                "metadata": {"name": POOL},
                "spec": {"agents": [
                    {"name": "claude", "provider": "anthropic", "model": "claude-sonnet",
                     "baseUrl": claude.base_url,
                     "apiKeySecretRef": {"name": KEYS_SECRET, "key": "anthropic"}},
                    {"name": "gpt", "provider": "openai", "model": "gpt-4o",
                     "baseUrl": gpt.base_url,
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

    # -- 4. a pod, injected by the webhook -----------------------------------------------------

    def pod_manifest(self) -> str:
        return yaml.safe_dump({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": POD, "labels": {"app": APP, INJECT_LABEL: "true"}},
            "spec": {"containers": [{
                "name": "app", "image": "registry.example/chat:1.0",
                "env": [{"name": "OPENAI_API_KEY", "value": "unused"}]}]},
        }, sort_keys=False)

    def create_pod(self) -> Injected:
        text = self.pod_manifest()
        path = self._write("pod.yaml", text)
        self.kubectl("apply", "-n", self.namespace, "-f", str(path))
        pod = self._cp.get_json("pod", POD, namespace=self.namespace)
        init = pod["spec"].get("initContainers") or []
        sidecar: dict[str, Any] = next((c for c in init if c["name"] == "agent-sidecar"), {})
        app = pod["spec"]["containers"][0]
        return Injected(
            manifest=text, init_containers=[c["name"] for c in init], sidecar=sidecar,
            sidecar_env={e["name"]: e["value"] for e in sidecar.get("env", []) if "value" in e},
            app_env={e["name"]: e.get("value", "") for e in app.get("env", [])
                     if e["name"] != "OPENAI_API_KEY"},
            annotations=dict(pod["metadata"].get("annotations") or {}),
            volumes=[v["name"] for v in pod["spec"].get("volumes") or []])

    # -- 5. the pod "runs": a real sidecar at its IP ---------------------------------------------

    def start_sidecar(self) -> SidecarUp:
        """What the kubelet would do: run the injected container's command with its env
        (fieldRefs and $(VAR)s resolved, the token Secret "mounted"), then report the pod
        Running and Ready at its IP, a 127.x.y.z of its own."""
        pod = self._cp.get_json("pod", POD, namespace=self.namespace)
        sidecar = next(c for c in pod["spec"]["initContainers"] if c["name"] == "agent-sidecar")
        secret = self._cp.get_json("secret", "agent-router-sidecar", namespace=self.namespace)
        self.token = base64.b64decode(secret["data"]["token"]).decode()
        self.ip = _loopback_ip()
        fields = {"metadata.name": POD, "metadata.namespace": self.namespace,
                  "status.podIP": self.ip}
        env: dict[str, str] = {}
        for e in sidecar.get("env", []):
            if "value" in e:
                env[e["name"]] = _expand(e["value"], env)
            elif ref := e.get("valueFrom", {}).get("fieldRef"):
                env[e["name"]] = fields.get(ref["fieldPath"], "")
        # The volumes: the token Secret and the emptyDir for the last good config.
        files = self.workdir / "pod"
        token_file = files / "token" / "token"
        token_file.parent.mkdir(parents=True, exist_ok=True)
        token_file.write_text(self.token)
        mounts = {"/var/run/agent-router/token": token_file.parent,
                  "/var/lib/agent-sidecar": files / "state"}
        for name, value in list(env.items()):
            for mount, local in mounts.items():
                if value.startswith(mount):
                    env[name] = str(local) + value[len(mount):]
        # Inside the pod the app port is 127.0.0.1 and the admin port 0.0.0.0; here both
        # listen on the pod's own IP.
        env.update(AGENT_SIDECAR_HOST=self.ip, AGENT_SIDECAR_ADMIN_HOST=self.ip)
        self.sidecar = SidecarProcess([], env=env).wait_ready(60)
        self._cp.mark_pod_ready(self.namespace, POD, ip=self.ip)
        shown = {k: v for k, v in env.items() if k.startswith(("OTEL_", "AGENT_SIDECAR_"))}
        return SidecarUp(self.ip, self.sidecar.app_url, self.sidecar.admin_url, shown,
                         self.sidecar.proc.pid,
                         self.kubectl("get", "pod", POD, "-n", self.namespace, "-o", "wide"))

    # -- 6. the operator pushes the config --------------------------------------------------------

    def served(self) -> dict[str, Any] | None:
        """The config the sidecar serves (GET /config with the pod's token), or None."""
        if self.sidecar is None:
            raise StoryError("no sidecar yet")
        r = httpx.get(self.sidecar.admin_url + "/config", timeout=5,
                      headers={"authorization": f"Bearer {self.token}"})
        return dict(r.json()) if r.status_code == 200 else None

    def _strategy(self, served: dict[str, Any] | None) -> str:
        return str(served["config"]["routes"][0]["strategy"]) if served else ""

    def policy_status(self) -> dict[str, Any]:
        return dict(self._cp.get_json("routingpolicy", POLICY, namespace=self.namespace)
                    .get("status") or {})

    def wait_for_config(self) -> Pushed:
        served = self._wait(self.served, "the config the operator pushes")

        def synced() -> dict[str, Any] | None:
            status = self.policy_status()
            ready = any(c["type"] == "Ready" and c["status"] == "True"
                        for c in status.get("conditions") or [])
            return status if ready and status.get("syncedPods") == 1 else None

        status = self._wait(synced, "RoutingPolicy Ready with 1/1 pods synced")
        return Pushed(int(served["version"]), list(served["routes"]), self._strategy(served),
                      list(served["config"]["agents"]), status)

    # -- 7. the app calls the sidecar with the official openai SDK -------------------------------

    APP_CODE = (
        "from openai import OpenAI\n"
        "client = OpenAI()  # OPENAI_BASE_URL=http://127.0.0.1:4000/v1 (injected)\n"
        "raw = client.chat.completions.with_raw_response.create(\n"
        '    model="default", messages=[{"role": "user", "content": PROMPT}])\n'
        "answer = raw.parse().choices[0].message.content\n"
    )

    def ask(self, prompt: str = PROMPT) -> AppCall:
        """One request as the app makes it, inside a span of the app's own (exported to
        Jaeger by a tracer local to this call), whose context goes along as `traceparent`:
        the sidecar continues that trace."""
        import openai
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        if self.sidecar is None:
            raise StoryError("no sidecar yet")
        provider = TracerProvider(resource=Resource.create({"service.name": f"{APP}-app"}))
        provider.add_span_processor(SimpleSpanProcessor(
            OTLPSpanExporter(endpoint=f"{self._jaeger.otlp_http_endpoint}/v1/traces")))
        try:
            tracer = provider.get_tracer("story-app")
            # The pod's 127.0.0.1 is its IP here (OPENAI_BASE_URL as the webhook set it).
            client = openai.OpenAI(base_url=f"{self.sidecar.app_url}/v1", api_key="unused",
                                   max_retries=0, timeout=60)
            with tracer.start_as_current_span("ask the assistant",
                                              kind=trace.SpanKind.CLIENT) as span:
                carrier: dict[str, str] = {}
                TraceContextTextMapPropagator().inject(carrier)
                raw = client.chat.completions.with_raw_response.create(
                    model=ROUTE, messages=[{"role": "user", "content": prompt}],
                    extra_headers=carrier)
                trace_id = format(span.get_span_context().trace_id, "032x")
            answer = raw.parse()
        finally:
            provider.shutdown()
        headers = {k: v for k, v in raw.headers.items() if k.startswith("x-agent-")}
        return AppCall(prompt, answer.choices[0].message.content or "", answer.model, headers,
                       trace_id, self.APP_CODE)

    # -- 8. what the sidecar counted ---------------------------------------------------------------

    def metrics(self) -> Metrics:
        if self.sidecar is None:
            raise StoryError("no sidecar yet")
        url = self.sidecar.admin_url + "/metrics"
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

    # -- 9. the trace, through Jaeger's HTTP API ------------------------------------------------------

    def find_trace(self, trace_id: str) -> TraceSeen:
        """The trace once Jaeger has the routing decision and its attempts (the sidecar's
        exporter batches: a few seconds)."""
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

    # -- 10. kubectl switches the strategy -----------------------------------------------------------

    def switch_strategy(self, strategy: str = "round_robin", requests: int = 4) -> Switched:
        """Make the primary healthy again, apply the policy with `strategy`, wait for the
        push, then send `requests` requests and count what each fake received."""
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
        return PolicyChanged(strategy, int(obj["metadata"]["generation"]),
                             (obj.get("status") or {}).get("observedGeneration"),
                             self._strategy(self.served()), out)

    # -- 11. the operator dies; the sidecar does not care ----------------------------------------------

    def kill_operator(self) -> OperatorKilled:
        proc = self.operator
        if proc is None or proc.popen is None:
            raise StoryError("no operator running")
        os.killpg(proc.popen.pid, signal.SIGKILL)
        code = proc.popen.wait(30)
        return OperatorKilled(proc.popen.pid, "SIGKILL", code)

    def restart_operator(self) -> Recovered:
        """Start it again (same identity, same chart env); wait until the RoutingPolicy's
        status says it caught up: observedGeneration current, 1/1 synced, Ready."""
        up = self.start_operator()

        def recovered() -> tuple[dict[str, Any], int] | None:
            obj = self._cp.get_json("routingpolicy", POLICY, namespace=self.namespace)
            status, generation = dict(obj.get("status") or {}), obj["metadata"]["generation"]
            ready = any(c["type"] == "Ready" and c["status"] == "True"
                        and c.get("observedGeneration") == generation
                        for c in status.get("conditions") or [])
            ok = (status.get("observedGeneration") == generation and ready
                  and status.get("synced") == "1/1")
            return (status, int(generation)) if ok else None

        status, generation = self._wait(recovered, "the RoutingPolicy status to recover")
        served = self.served() or {}
        return Recovered(
            up.pid, status, generation, self._strategy(served), int(served.get("version", 0)),
            self.kubectl("get", "routingpolicies", "-n", self.namespace),
            self.kubectl("get", "agentrouter", "-n", self.namespace))

    # -- the end ------------------------------------------------------------------------------------------

    def _wait(self, predicate: Any, what: str, timeout: float = WAIT) -> Any:
        """wait_for, failing at once (with the operator's log) if the operator exits
        while it should be running."""
        operator = self.operator
        watched = operator if operator is not None and operator.exited() is None else None
        exited: list[int] = []

        def check() -> Any:
            if watched is not None and (code := watched.exited()) is not None:
                exited.append(code)
                return True
            return predicate()

        try:
            result = wait_for(check, timeout, what, interval=0.25)
        except AssertionError as exc:
            raise StoryError(f"{exc}{self._operator_tail()}") from None
        if exited:
            raise StoryError(f"the operator exited with code {exited[0]} while waiting for "
                             f"{what}{self._operator_tail()}")
        return result

    def _operator_tail(self, lines: int = 40) -> str:
        text = self.operator_log()
        return ("\n--- operator log (last lines)\n" + "\n".join(text.splitlines()[-lines:])
                if text else "")

    def operator_log(self) -> str:
        if self.operator is None or not self.operator.log_path.exists():
            return ""
        return self.operator.log_path.read_text(errors="replace")

    def close(self, keep_workdir: bool = False) -> None:
        """Tear down what the story made, in order: its resources while the operator still
        runs (it removes its finalizers), the sidecar, the operator, the release, the
        fakes; and the control plane and Jaeger if start() started them. The work
        directory it made (logs included) is removed unless `keep_workdir`."""
        cp = self.cp
        operator_alive = self.operator is not None and self.operator.exited() is None
        if cp is not None and not self._owned:
            if operator_alive:
                cp.kubectl("delete", "routingpolicy,agentpool", "--all", "-n", self.namespace,
                           "--ignore-not-found", "--timeout=30s", check=False, timeout=60)
            cp.kubectl("delete", "pod", POD, "-n", self.namespace, "--ignore-not-found",
                       "--wait=false", check=False)
        if self.sidecar is not None:
            self.sidecar.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.sidecar.wait(20)
            self.sidecar.kill()
        if self.operator is not None:
            self.operator.stop(20)
        if cp is not None and not self._owned:
            if self._service:
                cp.unpublish_endpoints(self.system_namespace, self._service)
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


@contextlib.contextmanager
def story(control_plane: ControlPlane | None = None, jaeger: Jaeger | None = None,
          **names: Any) -> Iterator[Story]:
    """A Story, started when not given a control plane and Jaeger, always closed."""
    s = Story(control_plane, jaeger, **names)
    try:
        if control_plane is None or jaeger is None:
            s.start()
        yield s
    finally:
        s.close()


