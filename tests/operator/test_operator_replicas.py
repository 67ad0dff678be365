"""Two operator replicas: the holder of the Lease acts, the other takes over when it dies
without a word; both serve the webhook, from one certificate that is renewed while pods
keep being admitted."""

from __future__ import annotations

import base64
import socket
import ssl
import time
import uuid

import httpx
import pytest
from cryptography import x509
from fakes import FakeProvider
from operator_support import (
    CERT_SECRET,
    LEASE,
    OPERATOR_NS,
    OperatorProcess,
    install_crds,
    next_ip,
    operator_kubeconfig,
    pod_manifest,
    served,
    start_sidecar,
    wait_for,
)
from support.controlplane import free_port
from test_operator_e2e import KEYS, policy, pool

pytestmark = pytest.mark.controlplane


def metric(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    (line,) = [x for x in text.splitlines() if x.startswith(name + " ")]
    return float(line.split()[1])


def lease_holder(cp) -> str:
    return str(cp.get_json("lease", LEASE, namespace=OPERATOR_NS)["spec"].get("holderIdentity"))


def test_one_replica_acts_and_the_other_takes_over(control_plane, namespace) -> None:
    cp = control_plane
    install_crds(cp)
    kubeconfig = operator_kubeconfig(cp)
    ports = free_port(), free_port()
    leader, follower = (
        OperatorProcess(cp, kubeconfig, None, env={"POD_NAME": name}, args=(
            "--all-namespaces", "--lease", f"{OPERATOR_NS}/{LEASE}",
            "--lease-seconds", "3", "--metrics-port", str(port)))
        for name, port in zip(("first", "second"), ports, strict=True))
    leader.start()
    wait_for(lambda: "leading as first_" in leader.output(), 30, "the first replica leading")
    follower.start()
    with FakeProvider("openai").running() as gpt, FakeProvider("anthropic").running() as claude:
        sidecar = None
        try:
            cp.apply([KEYS, pool("main", gpt, claude), policy("fallback")], namespace)
            # An injected pod is not needed here: a labelled pod with a sidecar is enough.
            cp.apply(pod_manifest("chat-0", {"app": "chat"}), namespace)
            cp.apply({"apiVersion": "v1", "kind": "Secret",
                      "metadata": {"name": "agent-router-sidecar"},
                      "stringData": {"token": "token-of-the-two-replicas"}}, namespace)
            ip = next_ip()
            sidecar = start_sidecar(cp, namespace, ip)
            cp.mark_pod_ready(namespace, "chat-0", ip=ip)
            wait_for(lambda: served(sidecar), 20, "the leader's push")
            # The follower saw every event too, but left the work to the leader.
            assert "now serves config version" in leader.output()
            assert "now serves config version" not in follower.output()
            assert lease_holder(cp).startswith("first_")
            assert metric(ports[0], "agent_operator_leader") == 1
            assert metric(ports[1], "agent_operator_leader") == 0
            assert metric(ports[1], 'agent_operator_reconciles_total{result="standby"}') >= 1
            assert metric(ports[0], 'agent_operator_config_pushes_total{result="applied"}') >= 1

            leader.kill()  # no goodbye: the follower acts once the Lease runs out
            cp.apply(policy("round_robin"), namespace)
            wait_for(lambda: served(sidecar)["config"]["routes"][0]["strategy"]
                     == "round_robin", 30, "the follower's push")
            assert "leading as second_" in follower.output()
            assert lease_holder(cp).startswith("second_")
            assert metric(ports[1], "agent_operator_leader") == 1
            assert metric(ports[1], 'agent_operator_sidecars{state="in_sync"}') == 1

            # A replica that stops (SIGTERM) hands the Lease back at once.
            follower.stop()
            assert lease_holder(cp) in ("None", "")
        finally:
            if sidecar is not None:
                sidecar.stop(20)
            leader.stop()
            follower.stop()


def served_certificate(port: int) -> x509.Certificate:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_every_replica_serves_one_certificate_renewed_without_a_refused_pod(
        control_plane, namespace) -> None:
    """Both replicas serve the certificate from the shared Secret; it is renewed with a
    third of its (here 45 s) lifetime left; meanwhile the apiserver keeps calling the
    webhook for a pod a second, and every one is admitted and injected."""
    cp = control_plane
    install_crds(cp)
    name = f"ha-{uuid.uuid4().hex[:6]}.agentrouter.io"
    cp.kubectl("delete", "secret", CERT_SECRET, "-n", OPERATOR_NS, "--ignore-not-found")
    kubeconfig = operator_kubeconfig(cp, name)  # an empty Secret again, as the chart makes
    ports = free_port(), free_port()
    replicas = [OperatorProcess(cp, kubeconfig, name, port, env={
        "AGENT_OPERATOR_WEBHOOK_CERT_VALIDITY_SECONDS": "45",
        "AGENT_OPERATOR_WEBHOOK_CERT_CHECK_SECONDS": "1",
        "AGENT_OPERATOR_METRICS_PORT": str(free_port())}) for port in ports]
    try:
        for replica in replicas:
            replica.start()
        # One certificate, from the one Secret (a replica reloads it within a second).
        first = wait_for(lambda: (c := [served_certificate(p) for p in ports])[0] == c[1]
                         and c, 10, "both replicas serving the same certificate")
        renewed_at = None
        created = 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            created += 1
            cp.apply(pod_manifest(f"chat-{created}", {"app": "chat"}), namespace)
            now = [served_certificate(p) for p in ports]
            if renewed_at is None and all(c != first[0] for c in now):
                renewed_at = created
            if renewed_at is not None and created >= renewed_at + 3:
                break
            time.sleep(1)
        assert renewed_at is not None, "the certificate was never renewed"
        pods = cp.get_json("pods", namespace=namespace)["items"]
        assert len(pods) == created
        assert all(p["spec"]["initContainers"][0]["name"] == "agent-sidecar" for p in pods)
        # The caBundle trusts the new CA and still the previous one.
        config = cp.get_json("mutatingwebhookconfiguration", name)
        bundle = x509.load_pem_x509_certificates(
            base64.b64decode(config["webhooks"][0]["clientConfig"]["caBundle"]))
        assert len(bundle) == 2
        assert bundle[1].subject == bundle[0].subject  # new first, previous second
        served_now = served_certificate(ports[1])
        served_now.verify_directly_issued_by(bundle[0])
        first[0].verify_directly_issued_by(bundle[1])
        assert "PRIVATE KEY" not in replicas[0].output() + replicas[1].output()
    finally:
        for replica in replicas:
            replica.stop()
        cp.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found",
                   check=False)
        cp.kubectl("delete", "secret", CERT_SECRET, "-n", OPERATOR_NS, "--ignore-not-found",
                   check=False)
