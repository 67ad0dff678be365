"""No finalizers: deleting pools and policies (what deleting their namespace does to each)
never waits for the operator, even when it is down or uninstalled."""

from __future__ import annotations

import pytest
from operator_support import (
    OperatorProcess,
    install_crds,
    operator_kubeconfig,
    status_of,
    wait_for,
)
from test_operator_e2e import KEYS, policy

pytestmark = pytest.mark.controlplane

OLD_FINALIZER = "agentrouter.io/operator"  # what versions with a per-policy timer added
POOL = {"apiVersion": "agentrouter.io/v1alpha1", "kind": "AgentPool", "metadata": {"name": "main"},
        "spec": {"agents": [{"name": "gpt", "provider": "openai", "model": "gpt-4o"}]}}


def finalizers(cp, kind: str, name: str, namespace: str) -> list[str]:
    return list(cp.get_json(kind, name, namespace=namespace)["metadata"].get("finalizers") or [])


def test_deleting_never_waits_for_a_stopped_operator(control_plane, namespace) -> None:
    cp = control_plane
    install_crds(cp)
    legacy = policy()
    legacy["metadata"] = {"name": "legacy", "finalizers": [OLD_FINALIZER]}
    cp.apply([KEYS, POOL, policy(), legacy], namespace)
    operator = OperatorProcess(cp, operator_kubeconfig(cp), None).start()
    try:
        wait_for(lambda: status_of(cp, "routingpolicy", "chat", namespace)
                 .get("observedGeneration") == 1, 30, "the operator's status on the policy")
        # A policy from an older version loses the finalizer it carried.
        wait_for(lambda: finalizers(cp, "routingpolicy", "legacy", namespace) == [], 30,
                 "the old finalizer removed")
        assert finalizers(cp, "routingpolicy", "chat", namespace) == []
        assert finalizers(cp, "agentpool", "main", namespace) == []
    finally:
        operator.kill()  # down, as when it is uninstalled or its node is gone
    deleted = cp.kubectl("delete", "routingpolicies,agentpools", "--all", "-n", namespace,
                         "--timeout=30s", check=False)
    assert deleted.returncode == 0, deleted.stderr
    left = cp.kubectl("get", "routingpolicies,agentpools", "-n", namespace, "-o", "name").stdout
    assert left.strip() == ""
