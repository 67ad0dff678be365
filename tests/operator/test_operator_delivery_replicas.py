"""Config delivery with two operator replicas sharing a Lease (a module of its own: the
replicas bind the operator's test role to their webhook configuration)."""

from __future__ import annotations

import uuid

import pytest
from fakes import FakeProvider
from operator_support import (
    LEASE,
    OPERATOR_NS,
    OperatorProcess,
    install_crds,
    operator_kubeconfig,
    wait_for,
)
from support.controlplane import free_ports
from test_operator_delivery import (
    create_pod,
    strategy,
    url_of,
    watching_sidecar,
)
from test_operator_e2e import KEYS, policy, pool

pytestmark = pytest.mark.controlplane


def test_a_replica_that_does_not_lead_serves_the_watch_too(control_plane, namespace,
                                                           tmp_path) -> None:
    """Two replicas sharing a Lease: a sidecar watching the one that does not lead gets
    its config and every change from it."""
    cp = control_plane
    install_crds(cp)
    name = f"dl-{uuid.uuid4().hex[:6]}.agentrouter.io"
    kubeconfig = operator_kubeconfig(cp, name)
    leader, follower = (
        OperatorProcess(cp, kubeconfig, name, port, env={"POD_NAME": who},
                        args=("--all-namespaces", "--lease", f"{OPERATOR_NS}/{LEASE}",
                              "--lease-seconds", "3"))
        for who, port in zip(("first", "second"), free_ports(2), strict=True))
    sidecar = None
    with FakeProvider("openai").running() as gpt, \
            FakeProvider("anthropic").running() as claude:
        try:
            leader.start()
            wait_for(lambda: "leading as first_" in leader.output(), 30,
                     "the first replica leading")
            follower.start()
            cp.apply([KEYS, pool("main", gpt, claude), policy()], namespace)
            create_pod(cp, namespace, "chat-0", {"app": "chat"})
            sidecar = watching_sidecar(cp, url_of(follower), namespace, "chat-0", tmp_path)
            wait_for(lambda: strategy(sidecar) == "fallback", 30, "the follower's config")
            cp.apply(policy("round_robin"), namespace)
            wait_for(lambda: strategy(sidecar) == "round_robin", 30,
                     "the change, from the follower")
            assert "leading as second_" not in follower.output()  # it never led meanwhile
        finally:
            if sidecar is not None:
                sidecar.stop()
            leader.stop()
            follower.stop()
            cp.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found",
                       check=False)
