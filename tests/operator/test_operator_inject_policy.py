"""The injection policy the API server applies: generated from inject.py, checked in as a
chart template, and tried on the real control plane with server-side dry runs."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from agent_operator import injection_policy
from agent_operator.inject import CONFIG_MAP, inject_mounted
from policy_support import MARK, ROOT, SETTINGS
from support.controlplane import CommandError, ControlPlane, wait_until

TEMPLATE = ROOT / "helm/agent-router/templates/injection-policy.yaml"
KEYS = ["openai/key", "anthropic-keys/token"]


def test_the_policy_needs_kubernetes_1_36(control_plane: ControlPlane) -> None:
    old = control_plane.helm("template", "op", str(ROOT / "helm/agent-router"),
                             "--set", "injection.by=policy", "--kube-version", "1.35.0",
                             check=False)
    assert old.returncode != 0 and "needs Kubernetes 1.36 or later" in old.stderr


def test_the_checked_in_policy_is_generated_from_inject_py() -> None:
    assert TEMPLATE.read_text() == injection_policy.render(), (
        "stale: run python -m agent_operator.injection_policy "
        "helm/agent-router/templates/injection-policy.yaml")


def _namespace(control_plane: ControlPlane, mark: str, keys: list[str] | None) -> str:
    name = control_plane.create_namespace(labels={MARK: mark})
    if keys is not None:
        control_plane.apply({"apiVersion": "v1", "kind": "ConfigMap",
                             "metadata": {"name": CONFIG_MAP, "namespace": name},
                             "data": {"keys": ",".join(keys)}})
    return name


def _pod(labels: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"p-{uuid.uuid4().hex[:6]}", "labels": labels},
            "spec": {"containers": [{"name": "app", "image": "registry.example/chat:1"}],
                     **spec}}


def _dry_run(control_plane: ControlPlane, namespace: str, pod: dict[str, Any]) -> Any:
    out = control_plane.kubectl("create", "--dry-run=server", "-n", namespace, "-o", "json",
                                "-f", "-", input=json.dumps(pod))
    return json.loads(out.stdout)


def _admitted(control_plane: ControlPlane, namespace: str, pod: dict[str, Any],
              injected: bool = True) -> Any:
    """The pod as the API server would create it, once the new binding has reached the
    admission plugin (it loads policies from a watch: the first pods may pass it by)."""
    found: dict[str, Any] = {}

    def ready() -> bool:
        found["pod"] = _dry_run(control_plane, namespace, pod)
        names = [c["name"] for c in found["pod"]["spec"].get("initContainers", [])]
        return "agent-sidecar" in names
    if injected:
        wait_until(ready, timeout=30, what="the injection policy to apply")
        return found["pod"]
    return _dry_run(control_plane, namespace, pod)


OPTED_IN = {"agentrouter.io/inject": "true", "app": "chat"}


def test_a_labelled_pod_gets_exactly_what_inject_py_adds(control_plane: ControlPlane,
                                                         policy: str) -> None:
    namespace = _namespace(control_plane, policy, KEYS)
    pod = _pod(OPTED_IN, serviceAccountName="default", initContainers=[
        {"name": "migrate", "image": "registry.example/migrate:1"}])
    got = _admitted(control_plane, namespace, pod)["spec"]
    want = inject_mounted(pod["spec"], OPTED_IN, SETTINGS, injection_policy.AUDIENCE, KEYS)
    assert want is not None
    # The server fills defaults (imagePullPolicy, protocol, ...): compare what inject.py says.
    assert [c["name"] for c in got["initContainers"]] == ["agent-sidecar", "migrate"]
    assert _subset(want["initContainers"][0], got["initContainers"][0])
    assert _subset(want["volumes"], got["volumes"])
    assert got["containers"][0]["env"] == want["containers"][0]["env"]
    assert got["imagePullSecrets"] == [{"name": "regcred"}]
    env = {e["name"]: e.get("value") for e in got["initContainers"][0]["env"]}
    assert env["OTEL_SERVICE_NAME"] == "chat"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == SETTINGS.otlp_endpoint


def test_only_labelled_pods_not_injected_yet_are_changed_and_app_env_is_kept(
        control_plane: ControlPlane, policy: str) -> None:
    namespace = _namespace(control_plane, policy, [])
    _admitted(control_plane, namespace, _pod(OPTED_IN))  # the binding is in place
    plain = _dry_run(control_plane, namespace, _pod({"app": "chat"}))["spec"]
    assert "initContainers" not in plain and "env" not in plain["containers"][0]
    done = inject_mounted(_pod(OPTED_IN)["spec"], OPTED_IN, SETTINGS, "agent-router", [])
    assert done is not None
    again = _dry_run(control_plane, namespace, {**_pod(OPTED_IN), "spec": done})["spec"]
    assert [c["name"] for c in again["initContainers"]] == ["agent-sidecar"]
    assert len(again["volumes"]) == len(done["volumes"])  # nothing added twice
    own = _pod(OPTED_IN)
    own["spec"]["containers"][0]["env"] = [{"name": "OPENAI_BASE_URL",
                                            "value": "https://api.example/v1"}]
    env = _dry_run(control_plane, namespace, own)["spec"]["containers"][0]["env"]
    assert env == [{"name": "OPENAI_BASE_URL", "value": "https://api.example/v1"},
                   {"name": "ANTHROPIC_BASE_URL", "value": "http://127.0.0.1:4000"}]
    # No service account (this API server runs no ServiceAccount admission): no token.
    identity = next(v for v in _dry_run(control_plane, namespace, _pod(OPTED_IN))["spec"]
                    ["volumes"] if v["name"] == "agent-router-identity")
    assert not any("serviceAccountToken" in s for s in identity["projected"]["sources"])
    # No key Secrets named: a keys volume with no source, which the API takes.
    keys = next(v for v in _dry_run(control_plane, namespace, _pod(OPTED_IN))["spec"]
                ["volumes"] if v["name"] == "agent-router-keys")
    assert keys["projected"].get("sources") in (None, [])


def test_a_namespace_the_operator_has_not_written_to_refuses_opted_in_pods(
        control_plane: ControlPlane, policy: str) -> None:
    ready = _namespace(control_plane, policy, [])
    _admitted(control_plane, ready, _pod(OPTED_IN))  # the binding is in place
    bare = _namespace(control_plane, policy, None)
    with pytest.raises(CommandError) as refused:
        _dry_run(control_plane, bare, _pod(OPTED_IN))
    assert CONFIG_MAP in str(refused.value.stderr) or "param" in str(refused.value.stderr)
    # Pods that did not opt in are created as always.
    _dry_run(control_plane, bare, _pod({"app": "chat"}))


def _subset(want: Any, got: Any) -> bool:
    """Everything in `want` is in `got` (which may have server defaults besides)."""
    if isinstance(want, dict):
        return isinstance(got, dict) and all(k in got and _subset(v, got[k])
                                             for k, v in want.items())
    if isinstance(want, list):
        return isinstance(got, list) and len(want) <= len(got) and all(
            any(_subset(w, g) for g in got) for w in want)
    return bool(want == got)
