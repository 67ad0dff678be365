"""Injected pods in a namespace that enforces Pod Security "restricted": the apiserver runs
Pod Security admission after our webhook, so it judges the pod with the sidecar in it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.watching import INJECT

pytestmark = pytest.mark.controlplane

RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}
CONTAINER_RESTRICTED = {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                        "seccompProfile": {"type": "RuntimeDefault"}}


def app_pod(name: str, pod_context: dict[str, Any] | None,
            container_context: dict[str, Any] | None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": "registry.example/chat:1"}
    if container_context is not None:
        container["securityContext"] = container_context
    spec: dict[str, Any] = {"containers": [container]}
    if pod_context is not None:
        spec["securityContext"] = pod_context
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {**INJECT, "app": "chat"}}, "spec": spec}


@pytest.mark.parametrize(("pod_context", "container_context"), [
    # Restricted per container, nothing at pod level (the case a sidecar without its own
    # seccompProfile broke).
    (None, CONTAINER_RESTRICTED),
    # Restricted at pod level; the container adds only what has no pod-level field.
    ({"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
     {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}),
    # Pod level says Localhost seccomp and a non-root user of its own: the sidecar's
    # container-level settings stand whatever the pod says.
    ({"runAsNonRoot": True, "runAsUser": 1000,
      "seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/app.json"}},
     {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}),
])
def test_injected_pods_are_admitted_under_restricted(control_plane, operator, namespace,
                                                     pod_context, container_context) -> None:
    cp = control_plane
    enforce_restricted(cp, namespace)
    cp.apply(app_pod("chat-0", pod_context, container_context), namespace)
    pod = cp.get_json("pod", "chat-0", namespace=namespace)
    (sidecar,) = pod["spec"]["initContainers"]
    assert sidecar["name"] == "agent-sidecar"
    context = sidecar["securityContext"]
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["allowPrivilegeEscalation"] is False
    assert (context["runAsUser"], context["runAsGroup"], context["runAsNonRoot"]) == \
        (65532, 65532, True)


def test_the_namespace_really_enforces_restricted(control_plane, operator, namespace) -> None:
    """The control: an app that is not restricted itself is refused, and the refusal names
    only the app's container, never the sidecar the webhook added."""
    cp = control_plane
    enforce_restricted(cp, namespace)
    refused = cp.kubectl("apply", "-n", namespace, "-f", "-", check=False,
                         input=json.dumps(app_pod("loose", None, None)))
    assert refused.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in refused.stderr, refused.stderr
    assert '"app"' in refused.stderr and "agent-sidecar" not in refused.stderr, refused.stderr


def enforce_restricted(cp: Any, namespace: str) -> None:
    cp.kubectl("label", "namespace", namespace, "--overwrite",
               *(f"{k}={v}" for k, v in RESTRICTED.items()))
