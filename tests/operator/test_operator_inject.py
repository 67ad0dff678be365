"""What the webhook adds to a pod (no I/O)."""

from __future__ import annotations

import pytest
from agent_operator.inject import Identity, SidecarSettings, identity_annotations, inject

APP = {"containers": [{"name": "app", "image": "registry.example/chat:1"}]}


def test_injecting_twice_changes_nothing_the_second_time() -> None:
    once = inject(APP, {"app": "chat"}, SidecarSettings())
    assert once is not None
    assert [c["name"] for c in once["initContainers"]] == ["agent-sidecar"]
    assert inject(once, {"app": "chat"}, SidecarSettings()) is None


def test_the_sidecar_mounts_no_secret_opens_only_its_health_port_and_keeps_its_root_read_only(
) -> None:
    """The admin port stays on the sidecar's loopback (no address setting, no
    containerPort) and no Secret is mounted: its admin token is made at start, in its
    state directory."""
    pod = inject(APP, {}, SidecarSettings())
    assert pod is not None
    (sidecar,) = pod["initContainers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert not [v for v in volumes.values() if "secret" in v]
    env = {e["name"] for e in sidecar["env"]}
    assert not env & {"AGENT_SIDECAR_ADMIN_HOST", "AGENT_SIDECAR_TOKEN_FILE",
                      "AGENT_SIDECAR_TOKEN"}
    assert "AGENT_SIDECAR_STATE_DIR" in env
    assert [p["name"] for p in sidecar["ports"]] == ["agent-health"]
    assert sidecar["securityContext"]["runAsUser"] == 65532
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert "emptyDir" in volumes[mounts["/var/lib/agent-sidecar"]]  # its state, its token


def test_pull_secrets_are_added_once_next_to_the_apps_own() -> None:
    """Tried: a pod with its own pull secret, one of which the settings also name."""
    settings = SidecarSettings(image_pull_secrets=("regcred", "mirror"))
    app = {**APP, "imagePullSecrets": [{"name": "mirror"}, {"name": "team"}]}
    pod = inject(app, {}, settings)
    assert pod is not None
    assert pod["imagePullSecrets"] == [{"name": "mirror"}, {"name": "team"}, {"name": "regcred"}]
    assert "imagePullSecrets" not in (inject(APP, {}, SidecarSettings()) or {})


ACCOUNT = {**APP, "serviceAccountName": "chat"}
WATCHING = SidecarSettings(operator_url="https://ar-webhook.ar-system.svc:9443",
                           operator_ip="10.96.0.12")
IDENTITY = Identity("agent-router", b"-----BEGIN CERTIFICATE-----\nMIIB\n")


def test_a_watching_sidecar_gets_its_pods_token_for_the_operator_and_the_ca_it_pins() -> None:
    pod = inject(ACCOUNT, {}, WATCHING, IDENTITY)
    assert pod is not None
    (sidecar,) = pod["initContainers"]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["AGENT_SIDECAR_OPERATOR_URL"] == "https://ar-webhook.ar-system.svc:9443"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    identity = volumes["agent-router-identity"]["projected"]["sources"]
    # Bound to the pod, for the operator's audience only, short-lived: the kubelet rotates it.
    assert identity[0]["serviceAccountToken"] == {
        "audience": "agent-router", "path": "token", "expirationSeconds": 600}
    assert env["AGENT_SIDECAR_IDENTITY_TOKEN_FILE"] == \
        f"{mounts['agent-router-identity']}/token"
    # The CA comes from the pod's own annotation, which the webhook sets.
    (item,) = identity[1]["downwardAPI"]["items"]
    assert item["fieldRef"]["fieldPath"] == \
        "metadata.annotations['agentrouter.io/operator-ca']"
    assert env["AGENT_SIDECAR_OPERATOR_CA"] == f"{mounts['agent-router-identity']}/ca.crt"
    assert identity_annotations(IDENTITY) == {
        "agentrouter.io/operator-ca": IDENTITY.ca_bundle.decode()}
    # No cluster DNS needed: the operator's name resolves to its Service's ClusterIP.
    assert pod["hostAliases"] == [{"ip": "10.96.0.12",
                                   "hostnames": ["ar-webhook.ar-system.svc"]}]
    # Only the sidecar mounts its identity.
    assert not any(m["name"] == "agent-router-identity"
                   for c in pod["containers"] for m in c.get("volumeMounts", []))


@pytest.mark.parametrize("ip", [None, "$(AR_AGENT_ROUTER_WEBHOOK_SERVICE_HOST)", "ar-webhook"])
def test_without_a_service_ip_the_pod_resolves_the_operator_itself(ip: str | None) -> None:
    """Tried: no IP, the variable Kubernetes leaves unexpanded when the Service is missing,
    a name. The pod gets no hostAliases (an invalid one would make its creation fail)."""
    settings = SidecarSettings(operator_url=WATCHING.operator_url, operator_ip=ip)
    pod = inject(ACCOUNT, {}, settings, IDENTITY)
    assert pod is not None and "hostAliases" not in pod


@pytest.mark.parametrize(("app", "settings"), [(ACCOUNT, SidecarSettings()), (APP, WATCHING)])
def test_without_an_operator_url_or_an_account_the_sidecar_does_not_watch(
        app: dict, settings: SidecarSettings) -> None:
    """Tried: no operator URL; a pod without a service account (the API refuses a
    projected token for it)."""
    pod = inject(app, {}, settings, IDENTITY)
    assert pod is not None
    assert "agent-router-identity" not in {v["name"] for v in pod["volumes"]}
    (sidecar,) = pod["initContainers"]
    assert "AGENT_SIDECAR_OPERATOR_URL" not in {e["name"] for e in sidecar["env"]}
