"""Two operator replicas: the holder of the Lease acts (writes status, counting the
sidecars that acknowledged their config on either replica), the other takes over when it
dies without a word; both serve the sidecars' watches and the webhook, from one
certificate that is renewed while pods keep being admitted."""

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
    operator_kubeconfig,
    status_of,
    wait_for,
)
from support.controlplane import free_port, free_ports
from support.watching import WatchedPods, pod_manifest, strategy
from test_operator_e2e import KEYS, policy, pool

pytestmark = pytest.mark.controlplane


def metric(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    (line,) = [x for x in text.splitlines() if x.startswith(name + " ")]
    return float(line.split()[1])


def lease_holder(cp) -> str:
    return str(cp.get_json("lease", LEASE, namespace=OPERATOR_NS)["spec"].get("holderIdentity"))


def synced(cp, namespace: str) -> str:
    return str(status_of(cp, "routingpolicy", "chat", namespace).get("synced"))


def test_one_replica_acts_and_the_other_takes_over(control_plane, namespace,
                                                   tmp_path) -> None:
    """Tried: a sidecar watching the replica that does not lead (its acknowledgement
    lands there, the leader's status counts it through the replicas' ConfigMap); the
    leader killed, a change, the other replica leading and counting it alone."""
    cp = control_plane
    install_crds(cp)
    name = f"ha-{uuid.uuid4().hex[:6]}.agentrouter.io"
    kubeconfig = operator_kubeconfig(cp, name)
    # What a replica that died long ago left: dropped by the leader (no pod's config in it).
    cp.kubectl("patch", "configmap", LEASE, "-n", OPERATOR_NS, "--type", "json", "-p",
               '[{"op": "add", "path": "/data", "value": {"gone_1": "1 0123456789ab"}}]')
    webhook_ports, metrics = free_ports(2), free_ports(2)
    leader, follower = (
        OperatorProcess(cp, kubeconfig, name, port, env={"POD_NAME": who}, metrics_port=m,
                        args=("--all-namespaces", "--lease", f"{OPERATOR_NS}/{LEASE}",
                              "--lease-seconds", "3"))
        for who, port, m in zip(("first", "second"), webhook_ports, metrics, strict=True))
    with FakeProvider("openai").running() as gpt, \
            FakeProvider("anthropic").running() as claude, \
            WatchedPods(cp, namespace, tmp_path, follower.url) as pods:
        try:
            leader.start()
            wait_for(lambda: "leading as first_" in leader.output(), 30,
                     "the first replica leading")
            follower.start()
            cp.apply([KEYS, pool("main", gpt, claude), policy("fallback")], namespace)
            sidecar = pods.start("chat-0", {"app": "chat"})
            wait_for(lambda: strategy(sidecar) == "fallback", 30, "the follower's config")
            wait_for(lambda: synced(cp, namespace) == "1/1", 30,
                     "the leader counting an acknowledgement the follower took")
            shared = cp.get_json("configmap", LEASE, namespace=OPERATOR_NS)["data"]
            assert [k for k in shared if k.startswith("second_")], shared
            assert "gone_1" not in shared, shared
            assert "test-key" not in str(shared) and "chat-0" not in str(shared)
            assert lease_holder(cp).startswith("first_")
            assert metric(metrics[0], "agent_operator_leader") == 1
            assert metric(metrics[1], "agent_operator_leader") == 0
            assert metric(metrics[1], 'agent_operator_reconciles_total{result="standby"}') >= 1
            assert metric(metrics[1], 'agent_operator_config_acks_total{result="applied"}') >= 1
            assert metric(metrics[0], 'agent_operator_sidecars{state="in_sync"}') == 1

            leader.kill()  # no goodbye: the follower acts once the Lease runs out
            cp.apply(policy("round_robin"), namespace)
            wait_for(lambda: strategy(sidecar) == "round_robin", 30, "the change")
            wait_for(lambda: "leading as second_" in follower.output(), 30,
                     "the follower leading")
            wait_for(lambda: synced(cp, namespace) == "1/1" and
                     status_of(cp, "routingpolicy", "chat", namespace)["observedGeneration"]
                     == cp.get_json("routingpolicy", "chat", namespace=namespace)
                     ["metadata"]["generation"], 30, "the new leader's status")
            assert lease_holder(cp).startswith("second_")
            assert metric(metrics[1], "agent_operator_leader") == 1
            assert metric(metrics[1], 'agent_operator_sidecars{state="in_sync"}') == 1

            # A replica that stops (SIGTERM) hands the Lease back at once.
            follower.stop()
            assert lease_holder(cp) in ("None", "")
        finally:
            leader.stop()
            follower.stop()
            cp.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found",
                       check=False)


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
        cp.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "chat"}},
                 namespace)
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
        assert bundle[1].subject != bundle[0].subject  # each CA its own name
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
