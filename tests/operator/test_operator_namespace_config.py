"""Pods that start without the operator, on the real control plane: the operator keeps each
namespace's ConfigMap `agent-router` (CA, address, configs without keys); a real sidecar
process given what a pod the injection policy made would mount starts from it while no
operator runs, then follows the watch when the operator is back."""

from __future__ import annotations

import base64
import datetime
import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from agent_operator.certs import NEXT_CERT_KEY, issue
from fakes import FakeProvider
from operator_support import (
    CERT_SECRET,
    CHART,
    OPERATOR_NS,
    OPERATOR_SA,
    OperatorProcess,
    install_crds,
    operator_kubeconfig,
    wait_for,
)
from policy_support import MARK
from sidecar_support import TOKEN, SidecarProcess
from support.controlplane import CommandError, free_ports
from test_operator_delivery import create_pod, pod_token

pytestmark = pytest.mark.controlplane

LABELS = {"app": "chat"}


@pytest.fixture
def operator(control_plane: Any) -> Iterator[OperatorProcess]:
    """A fresh one for each test (which may stop it): an operator that keeps namespace
    ConfigMaps, its certificate also for `localhost`
    (the Service's DNS name in a cluster), and 127.0.0.1 as its Service's address."""
    install_crds(control_plane)
    name = f"test-{uuid.uuid4().hex[:6]}.agentrouter.io"
    (port,) = free_ports(1)
    proc = OperatorProcess(
        control_plane, operator_kubeconfig(control_plane, name), name, port,
        args=("--all-namespaces", "--webhook-host", "localhost"),
        env={"AGENT_OPERATOR_NAMESPACE_CONFIGS": "true",
             "AGENT_SIDECAR_OPERATOR_URL": f"https://localhost:{port}",
             "AGENT_SIDECAR_OPERATOR_IP": "127.0.0.1"}).start()
    try:
        yield proc
    finally:
        proc.stop()
        control_plane.kubectl("delete", "mutatingwebhookconfiguration", name,
                              "--ignore-not-found", check=False)


def _resources(fake: FakeProvider, key: str = "openai", route: str = "default") -> list[Any]:
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "llm-keys"},
         "stringData": {"openai": "sk-first", "rotated": "sk-second"}},
        {"apiVersion": "agentrouter.io/v1alpha1", "kind": "AgentPool",
         "metadata": {"name": "main"},
         "spec": {"agents": [{"name": "gpt", "provider": "openai", "model": "gpt-4o",
                              "baseUrl": fake.base_url,
                              "apiKeySecretRef": {"name": "llm-keys", "key": key}}]}},
        {"apiVersion": "agentrouter.io/v1alpha1", "kind": "RoutingPolicy",
         "metadata": {"name": "chat"},
         "spec": {"selector": {"matchLabels": LABELS}, "pools": ["main"], "routes": [route],
                  "strategy": {"type": "fallback", "retries": 0, "backoffSeconds": 0}}},
    ]


def _config_map(cp: Any, namespace: str, wanted: str = "") -> dict[str, str]:
    found: dict[str, dict[str, str]] = {}

    def written() -> bool:
        try:
            found["data"] = cp.get_json("configmap", "agent-router", namespace=namespace)["data"]
        except CommandError:
            return False
        return wanted in found["data"]["configs.json"]
    wait_for(written, 30, f"the ConfigMap agent-router in {namespace} with {wanted!r}")
    return found["data"]


def _mount(data: dict[str, str], work: Path, keys: dict[str, str]) -> list[str]:
    """What the kubelet would mount for the injected pod, as files, and the sidecar's
    arguments for them (the key directory is the test's: AGENT_KEY_FILE_DIR)."""
    mounted = work / "identity"
    mounted.mkdir(parents=True)
    key_dir = work / "keys"
    for path, value in keys.items():
        (key_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (key_dir / path).write_text(value)
    (mounted / "configs.json").write_text(
        data["configs.json"].replace("/var/run/agent-router/keys", str(key_dir)))
    (mounted / "ca.crt").write_text(data["ca.crt"])
    (mounted / "address").write_text(data["address"])
    (mounted / "labels").write_text(
        "".join(f'{k}="{v}"\n' for k, v in {**LABELS, "agentrouter.io/inject": "true"}.items()))
    return ["--fallback-configs", str(mounted / "configs.json"),
            "--pod-labels-file", str(mounted / "labels"),
            "--operator-ca", str(mounted / "ca.crt"),
            "--operator-address-file", str(mounted / "address")]


def _created(cp: Any, namespace: str, name: str) -> bool:
    """Creates the pod, with the sidecar; a refusal raises (`wait_for` tries again and shows
    the last one): the policy and the deleted webhook take a moment to reach admission."""
    create_pod(cp, namespace, name, LABELS)
    pod = cp.get_json("pod", name, namespace=namespace)
    return [c["name"] for c in pod["spec"]["initContainers"]] == ["agent-sidecar"]


def _ask(sidecar: SidecarProcess, model: str = "default") -> httpx.Response:
    return httpx.post(f"{sidecar.app_url}/v1/chat/completions", timeout=30, json={
        "model": model, "messages": [{"role": "user", "content": "Hello"}]})


def _served(sidecar: SidecarProcess) -> dict[str, Any]:
    r = httpx.get(sidecar.admin_url + "/config", timeout=5,
                  headers={"authorization": f"Bearer {TOKEN}"})
    return dict(r.json())


def test_a_pod_created_while_no_operator_runs_serves_then_follows_the_watch(
        control_plane: Any, operator: OperatorProcess, policy: str, namespace: str,
        tmp_path: Path) -> None:
    cp = control_plane
    # Injection by the API server (the chart's injection.by=policy): no webhook.
    cp.kubectl("label", "namespace", namespace, f"{MARK}={policy}")
    with FakeProvider("openai").running() as fake:
        fake.api_key = "sk-first"  # the fake refuses any other key
        cp.apply(_resources(fake), namespace)
        data = _config_map(cp, namespace, "api_key_file")
        # No key in it, ever: the documents name the mounted files.
        assert "sk-first" not in json.dumps(data) and "sk-second" not in json.dumps(data)
        assert data["keys"] == "llm-keys/openai"
        assert data["address"] == "127.0.0.1"
        secret = cp.get_json("secret", CERT_SECRET, namespace=OPERATOR_NS)
        assert data["ca.crt"] == base64.b64decode(secret["data"]["ca.crt"]).decode()

        operator.stop()  # no replica runs from here
        cp.kubectl("delete", "mutatingwebhookconfiguration", operator.webhook_name)
        wait_for(lambda: _created(cp, namespace, "chat-1"), 30,
                 "the pod created, injected by the API server")
        token = tmp_path / "token"
        token.write_text(pod_token(cp, namespace, "chat-1"))
        args = ["--port", "0", "--admin-port", "0", "--state-dir", str(tmp_path / "state"),
                "--operator-url", f"https://localhost:{operator.port}",
                "--identity-token-file", str(token),
                *_mount(data, tmp_path, {"llm-keys/openai": "sk-first"})]
        env = {"AGENT_SIDECAR_TOKEN": TOKEN, "AGENT_KEY_FILE_DIR": str(tmp_path / "keys")}
        sidecar = SidecarProcess(args, env=env)
        try:
            sidecar.wait_ready()
            answer = _ask(sidecar)
            assert answer.status_code == 200, answer.text
            assert fake.last_request.headers["authorization"] == "Bearer sk-first"
            served = _served(sidecar)
            assert served["source"] == "namespace"
            assert served["config"]["metadata"]["source"] == f"{namespace}/chat"

            # The operator is back and the policy changes: the watch brings the change,
            # connecting to the address file's IP, the certificate checked for `localhost`.
            operator.start()
            fake.api_key = "sk-second"
            cp.apply(_resources(fake, key="rotated", route="chat"), namespace)
            wait_for(lambda: _served(sidecar)["routes"] == ["chat"], 60,
                     "the sidecar serving the changed policy from the watch")
            answer = _ask(sidecar, "chat")
            assert answer.status_code == 200, answer.text
            assert fake.last_request.headers["authorization"] == "Bearer sk-second"
            # The namespace's ConfigMap follows too, for the next pod.
            assert "rotated" in _config_map(cp, namespace, "llm-keys/rotated")["keys"]
        finally:
            sidecar.stop()
        # Restarted with the operator gone again, it serves its last good config (the
        # watch's, kept in its state directory), not the namespace's.
        operator.stop()
        again = SidecarProcess(args, env=env)
        try:
            again.wait_ready()
            assert (_served(again)["source"], _served(again)["routes"]) == ("state", ["chat"])
            assert _ask(again, "chat").status_code == 200
        finally:
            again.stop()


def test_a_missing_secret_fails_that_agents_calls_clearly_not_the_sidecar(
        control_plane: Any, operator: OperatorProcess, namespace: str, tmp_path: Path) -> None:
    cp = control_plane
    with FakeProvider("openai").running() as fake:
        # The Secret is not there: the policy says so, and the ConfigMap still has the
        # document (the pod mounts no file for the key).
        cp.apply(_resources(fake)[1:], namespace)
        data = _config_map(cp, namespace, "api_key_file")
        wait_for(lambda: any(c.get("reason") == "SecretNotFound" for c in (cp.get_json(
            "routingpolicy", "chat", namespace=namespace).get("status") or {}).get(
            "conditions") or []), 30, "SecretNotFound on the policy")
        sidecar = SidecarProcess([
            "--port", "0", "--admin-port", "0",
            "--operator-url", "https://localhost:1", "--identity-token-file",
            str(tmp_path / "no-token"), *_mount(data, tmp_path, {})],
            env={"AGENT_SIDECAR_TOKEN": TOKEN, "AGENT_KEY_FILE_DIR": str(tmp_path / "keys")})
        try:
            sidecar.wait_ready()
            answer = _ask(sidecar)
            assert answer.status_code >= 400
            assert "no API key for openai" in answer.text
            assert "key file" in sidecar.stderr() and "llm-keys/openai" in sidecar.stderr()
            assert sidecar.proc.poll() is None  # still running, still ready
            ready = httpx.get(sidecar.admin_url + "/readyz", timeout=5)
            assert ready.status_code == 200
        finally:
            sidecar.stop()


def test_the_operator_may_create_no_other_config_map(control_plane: Any,
                                                     operator: OperatorProcess,
                                                     namespace: str) -> None:
    cp = control_plane
    rendered = cp.helm("template", "agent-router", str(CHART), "--namespace", OPERATOR_NS,
                       "--kube-version", "1.36.3", "--set",
                       f"serviceAccount.name={OPERATOR_SA}", "--show-only",
                       "templates/operator-configmap-policy.yaml").stdout
    cp.kubectl("apply", "-f", "-", input=rendered)
    as_operator = operator.kubeconfig
    other = {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "kube-root-ca.crt-lookalike", "namespace": namespace}}

    def refused() -> bool:
        result = cp.kubectl("create", "-f", "-", "--dry-run=server", input=json.dumps(other),
                            kubeconfig=as_operator, check=False)
        return "may create only the ConfigMap agent-router" in result.stderr
    wait_for(refused, 30, "the ConfigMap policy refusing the operator another ConfigMap")
    mine = {**other, "metadata": {"name": "agent-router", "namespace": namespace}}
    cp.kubectl("create", "-f", "-", "--dry-run=server", input=json.dumps(mine),
               kubeconfig=as_operator)


def test_a_ca_rotation_reaches_a_running_sidecar_through_its_mounted_bundle(
        control_plane: Any, operator: OperatorProcess, namespace: str, tmp_path: Path) -> None:
    """Certificates of 30 s: the operator renews its CA every 20 s, the previous one
    staying in the bundle while it is valid. The ConfigMap's `ca.crt` follows, and here
    a thread copies it into the sidecar's mounted file as the kubelet refreshes a
    ConfigMap volume; the watch keeps working once the first CA is out of the bundle."""
    cp = control_plane
    operator.stop()
    operator.extra_env.update({"AGENT_OPERATOR_WEBHOOK_CERT_VALIDITY_SECONDS": "30",
                               "AGENT_OPERATOR_WEBHOOK_CERT_CHECK_SECONDS": "1"})
    cp.kubectl("delete", "secret", CERT_SECRET, "-n", OPERATOR_NS)
    cp.apply({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": CERT_SECRET, "namespace": OPERATOR_NS}})
    operator.start()
    stop = threading.Event()
    try:
        with FakeProvider("openai").running() as fake:
            fake.api_key = "sk-first"
            cp.apply(_resources(fake), namespace)
            data = _config_map(cp, namespace, "api_key_file")
            first_ca = data["ca.crt"]
            create_pod(cp, namespace, "chat-2", LABELS)
            token = tmp_path / "token"
            token.write_text(pod_token(cp, namespace, "chat-2"))
            args = _mount(data, tmp_path, {"llm-keys/openai": "sk-first"})
            ca_file = Path(args[args.index("--operator-ca") + 1])

            def kubelet() -> None:
                while not stop.wait(0.5):
                    try:
                        now = cp.get_json("configmap", "agent-router",
                                          namespace=namespace)["data"]["ca.crt"]
                    except CommandError:
                        continue
                    if now != ca_file.read_text():
                        ca_file.write_text(now)
            threading.Thread(target=kubelet, daemon=True).start()
            sidecar = SidecarProcess([
                "--port", "0", "--admin-port", "0", "--state-dir", str(tmp_path / "state"),
                "--operator-url", f"https://localhost:{operator.port}",
                "--identity-token-file", str(token), *args],
                env={"AGENT_SIDECAR_TOKEN": TOKEN,
                     "AGENT_KEY_FILE_DIR": str(tmp_path / "keys")})
            try:
                sidecar.wait_ready()
                wait_for(lambda: _served(sidecar)["source"] == "push", 30,
                         "the first config through the watch")
                # Two renewals later the first CA is in no bundle: not in the file either.
                first = first_ca.split("-----END CERTIFICATE-----")[0]
                wait_for(lambda: first not in ca_file.read_text(), 90,
                         "the first CA out of the mounted bundle")
                cp.apply(_resources(fake, route="after-rotation"), namespace)
                wait_for(lambda: _served(sidecar)["routes"] == ["after-rotation"], 30,
                         "the change through the watch under the new CA")
                assert "not trusted" not in sidecar.stderr()
            finally:
                sidecar.stop()
    finally:
        stop.set()


def _handshake(port: int, bundle: str) -> bytes | None:
    """A new TLS connection to the operator, as a reconnecting sidecar makes it, trusting
    only `bundle`: the certificate served (DER), or None while nothing listens. A
    certificate the bundle does not trust raises ssl.SSLCertVerificationError."""
    context = ssl.create_default_context(cadata=bundle)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.getpeercert(binary_form=True)
    except (ConnectionRefusedError, ConnectionResetError):
        return None


def test_a_renewed_certificate_is_served_only_once_its_ca_had_time_to_reach_the_pods(
        control_plane: Any, operator: OperatorProcess, namespace: str) -> None:
    """A certificate due for renewal in seconds (valid 60 s, 35 s left: due with 20 s
    left) is in the Secret when the operator starts; the renewed CA must be published 10 s before its
    certificate is served (a 12 s propagation, held to halfway to the old certificate's
    expiry), and the operator is restarted while the renewal waits (the Secret holds it).
    What was tried, again and again until the renewed certificate has been served a
    while: a new TLS connection trusting only the namespace ConfigMap's ca.crt as it was
    LAG s earlier (the kubelet refreshes a mounted ConfigMap late), and one trusting the
    webhook configuration's caBundle. Before the wait, the switch outran the lagging
    file; now every connection verifies."""
    cp, lag = control_plane, 4.0
    operator.stop()
    hosts = ["localhost", "127.0.0.1"]
    now = datetime.datetime.now(datetime.UTC)
    due = issue(hosts, datetime.timedelta(seconds=60), now=now - datetime.timedelta(seconds=25))
    cp.kubectl("delete", "secret", CERT_SECRET, "-n", OPERATOR_NS)
    cp.apply({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": CERT_SECRET, "namespace": OPERATOR_NS},
              "stringData": due.as_data()})
    operator.extra_env.update({"AGENT_OPERATOR_WEBHOOK_CERT_CHECK_SECONDS": "1",
                               "AGENT_OPERATOR_WEBHOOK_CA_PROPAGATION_SECONDS": "12"})
    operator.start()
    old = ssl.PEM_cert_to_DER_cert(due.cert.decode())
    with FakeProvider("openai").running() as fake:
        cp.apply(_resources(fake), namespace)
        seen = [(time.monotonic(), _config_map(cp, namespace)["ca.crt"])]
        restarted, served_new, failures = False, 0, []
        deadline = time.monotonic() + 120
        while served_new < 5 and time.monotonic() < deadline:
            seen.append((time.monotonic(), cp.get_json(
                "configmap", "agent-router", namespace=namespace)["data"]["ca.crt"]))
            mounted = [b for t, b in seen if t <= time.monotonic() - lag] or [seen[0][1]]
            webhook = cp.get_json("mutatingwebhookconfiguration", operator.webhook_name)
            ca_bundle = base64.b64decode(
                webhook["webhooks"][0]["clientConfig"]["caBundle"]).decode()
            for trusted in (mounted[-1], ca_bundle):
                try:
                    served = _handshake(operator.port, trusted)
                except ssl.SSLCertVerificationError as exc:
                    failures.append(f"{time.monotonic() - seen[0][0]:.1f} s: {exc}")
                    continue
                served_new += served is not None and served != old
            secret = cp.get_json("secret", CERT_SECRET, namespace=OPERATOR_NS)["data"]
            if not restarted and NEXT_CERT_KEY in secret:
                operator.stop()  # the renewal waits in the Secret for the next replica
                operator.start()
                restarted = True
    assert not failures, failures
    assert served_new >= 5, f"the renewed certificate was not served:\n{operator.output()[-3000:]}"
    assert restarted, "the renewal never waited in the Secret"


def test_a_namespace_with_only_a_pool_has_its_config_map_and_admits_opted_in_pods(
        control_plane: Any, operator: OperatorProcess, policy: str, namespace: str) -> None:
    """What was tried: an AgentPool alone in a namespace, no RoutingPolicy yet. The operator
    writes the namespace's ConfigMap all the same (its CA and address, no document), so the
    API server injects an opted-in pod there instead of refusing it for want of params;
    that pod's sidecar waits for the watch, as one whose labels no policy selects."""
    cp = control_plane
    cp.kubectl("delete", "mutatingwebhookconfiguration", operator.webhook_name)
    cp.kubectl("label", "namespace", namespace, f"{MARK}={policy}")
    with FakeProvider("openai").running() as fake:
        pool = next(r for r in _resources(fake) if r["kind"] == "AgentPool")
        cp.apply(pool, namespace)
        data = _config_map(cp, namespace)
    assert json.loads(data["configs.json"]) == {"policies": {}, "configs": {}}
    assert data["keys"] == "" and data["address"] == "127.0.0.1"
    secret = cp.get_json("secret", CERT_SECRET, namespace=OPERATOR_NS)
    assert data["ca.crt"] == base64.b64decode(secret["data"]["ca.crt"]).decode()
    wait_for(lambda: _created(cp, namespace, "chat-0"), 30,
             "the pod created, injected by the API server")
    volumes = cp.get_json("pod", "chat-0", namespace=namespace)["spec"]["volumes"]
    sources = [s for v in volumes for s in (v.get("projected") or {}).get("sources") or []]
    assert any((s.get("configMap") or {}).get("name") == "agent-router" for s in sources)
