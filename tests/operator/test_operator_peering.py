"""Two operator replicas: only the higher-priority one acts; when it dies without a
word, the other takes over (kopf peering)."""

from __future__ import annotations

import pytest
from fakes import FakeProvider
from operator_support import (
    ROOT,
    OperatorProcess,
    install_crds,
    next_ip,
    operator_kubeconfig,
    pod_manifest,
    served,
    start_sidecar,
    wait_for,
)
from test_operator_e2e import KEYS, policy, pool

pytestmark = pytest.mark.controlplane


def test_one_replica_acts_and_the_other_takes_over(control_plane, namespace) -> None:
    cp = control_plane
    install_crds(cp)
    cp.kubectl("apply", "-f", str(ROOT / "crds" / "kopf-peering.yaml"))
    cp.kubectl("wait", "--for=condition=Established", "--timeout=30s",
               "crd/clusterkopfpeerings.kopf.dev", "crd/kopfpeerings.kopf.dev")
    # Operators scoped to namespaces peer through a KopfPeering in each of them.
    cp.apply({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
              "metadata": {"name": "agent-router"}}, namespace)
    kubeconfig = operator_kubeconfig(cp)
    env = {"AGENT_OPERATOR_PEERING_LIFETIME": "3"}
    scope = ("--namespace", namespace, "--peering", "agent-router")
    leader = OperatorProcess(cp, kubeconfig, None, args=(*scope, "--priority", "200"), env=env)
    follower = OperatorProcess(cp, kubeconfig, None, args=(*scope, "--priority", "100"),
                               env=env)
    leader.start()
    wait_for(lambda: "Starting the watch-stream for kopfpeerings" in leader.output(),
             20, "the leader joined the peering")
    follower.start()
    with FakeProvider("openai").running() as gpt, FakeProvider("anthropic").running() as claude:
        sidecar = None
        try:
            wait_for(lambda: len(cp.get_json("kopfpeering", "agent-router",
                                             namespace=namespace).get("status") or {}) == 2,
                     30, "both replicas in the peering")
            cp.apply([KEYS, pool("main", gpt, claude), policy("fallback")], namespace)
            # An injected pod is not needed here: a labelled pod with a sidecar is enough.
            manifest = pod_manifest("chat-0", {"app": "chat"})
            cp.apply(manifest, namespace)
            cp.apply({"apiVersion": "v1", "kind": "Secret",
                      "metadata": {"name": "agent-router-sidecar"},
                      "stringData": {"token": "peering-admin-token-0123"}}, namespace)
            ip = next_ip()
            sidecar = start_sidecar(cp, namespace, ip)
            cp.mark_pod_ready(namespace, "chat-0", ip=ip)
            wait_for(lambda: served(sidecar), 20, "the leader's push")
            # The follower stood aside: kopf paused its watches while a higher-priority peer
            # lives, so no handler of ours ran there (the reconcile's own peering check is
            # the second line of defence); the leader is the one that pushed.
            follower_log = follower.output()
            assert "Pausing the watch-stream for routingpolicies" in follower_log
            assert "Handler 'changed' is invoked" not in follower_log
            assert "now serves config version" not in follower_log
            assert "now serves config version" in leader.output()

            leader.kill()  # no goodbye: the follower acts once the leader's keep-alive expires
            cp.apply(policy("round_robin"), namespace)
            wait_for(lambda: served(sidecar)["config"]["routes"][0]["strategy"]
                     == "round_robin", 30, "the follower's push")
            assert "now serves config version" in follower.output()
            assert "Resuming operations after the pause" in follower.output()
        finally:
            if sidecar is not None:
                sidecar.terminate()
                sidecar.wait(20)
                sidecar.kill()
            leader.stop()
            follower.stop()
