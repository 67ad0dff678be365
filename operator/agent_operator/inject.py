"""Sidecar injection: what is added to an opted-in pod, by the mutating webhook or by the
API server itself (the MutatingAdmissionPolicy that `injection_policy` generates from the
functions below, so both add the same).

Pods opt in with the label `agentrouter.io/inject: "true"`. A label, not an annotation,
because the webhook configuration's objectSelector can only match labels: the apiserver
then calls us for opted-in pods only, so the failure policy can be `Fail` (an opted-in
pod is never started without the sidecar it relies on, while every other pod in the
cluster is unaffected when the operator is down).

The sidecar is a native sidecar (an init container with `restartPolicy: Always`): it is
ready before the app starts and outlives it on shutdown.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.config import KEY_FILE_DIR

INJECT_LABEL = "agentrouter.io/inject"
# The operator's CA bundle, which the sidecar pins: on the pod itself, projected into a
# file by the downward API (no object in the app's namespace to create or keep).
CA_ANNOTATION = "agentrouter.io/operator-ca"
CONTAINER = "agent-sidecar"
IDENTITY_DIR = "/var/run/agent-router/identity"
# The shortest lifetime the API allows; the kubelet renews the token at 80% of it.
IDENTITY_SECONDS = 600
# The namespace's ConfigMap the operator keeps (`namespace_config`), mounted by pods the
# policy injects: the operator's CA bundle and address, and the last compiled configs
# (keys as file names), so a pod starts while no operator replica answers.
CONFIG_MAP = "agent-router"
CA_KEY, ADDRESS_KEY, CONFIGS_KEY, KEYS_KEY = "ca.crt", "address", "configs.json", "keys"
# Where the user Secrets the namespace's configs name are mounted: <secret>/<key>.
KEYS_DIR = KEY_FILE_DIR
LABELS_FILE = "labels"  # the pod's labels (downward API), in IDENTITY_DIR
STATE_DIR = "/var/lib/agent-sidecar"
SIDECAR_UID = 65532  # the image's user (Dockerfile.sidecar), and its group


@dataclass(frozen=True)
class SidecarSettings:
    """Defaults the chart sets through the operator's environment."""

    image: str = "ghcr.io/agent-router/agent-sidecar:0.1.0"
    app_port: int = 4000
    admin_port: int = 4001
    health_port: int = 4002
    cpu_request: str = "50m"
    memory_request: str = "64Mi"
    memory_limit: str = "256Mi"
    otlp_endpoint: str | None = None
    set_app_env: bool = True  # point the app's OpenAI/Anthropic SDKs at the sidecar
    extra_env: dict[str, str] = field(default_factory=dict)
    # Added to the pod's imagePullSecrets (each must exist in the pod's namespace).
    image_pull_secrets: tuple[str, ...] = ()
    # Where sidecars watch the operator for their config (https://<service>.<ns>.svc:<port>);
    # None: they get no config from the operator.
    operator_url: str | None = None
    # The ClusterIP of the operator's Service: the URL's host name resolves to it in the
    # pod's /etc/hosts, so that the watch needs no cluster DNS.
    operator_ip: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SidecarSettings:
        e = dict(os.environ if env is None else env)
        d = cls()
        return cls(
            image=e.get("AGENT_SIDECAR_IMAGE", d.image),
            app_port=int(e.get("AGENT_SIDECAR_APP_PORT", d.app_port)),
            admin_port=int(e.get("AGENT_SIDECAR_ADMIN_PORT", d.admin_port)),
            health_port=int(e.get("AGENT_SIDECAR_HEALTH_PORT", d.health_port)),
            cpu_request=e.get("AGENT_SIDECAR_CPU_REQUEST", d.cpu_request),
            memory_request=e.get("AGENT_SIDECAR_MEMORY_REQUEST", d.memory_request),
            memory_limit=e.get("AGENT_SIDECAR_MEMORY_LIMIT", d.memory_limit),
            otlp_endpoint=e.get("AGENT_SIDECAR_OTLP_ENDPOINT") or None,
            set_app_env=e.get("AGENT_SIDECAR_SET_APP_ENV", "true").lower() == "true",
            image_pull_secrets=tuple(n.strip() for n in e.get(
                "AGENT_SIDECAR_IMAGE_PULL_SECRETS", "").split(",") if n.strip()),
            operator_url=e.get("AGENT_SIDECAR_OPERATOR_URL") or None,
            operator_ip=e.get("AGENT_SIDECAR_OPERATOR_IP") or None,
        )


@dataclass(frozen=True)
class Identity:
    """What a sidecar watching the operator is given: a projected service-account token for
    the operator's audience (bound to its pod, rotated by the kubelet) and the CA bundle it
    pins."""

    audience: str
    ca_bundle: bytes


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def url_host(ip: str) -> str:
    """An IP as a URL's host: IPv6 in brackets (RFC 3986)."""
    try:
        return f"[{ip}]" if ipaddress.ip_address(ip).version == 6 else ip
    except ValueError:
        return ip


def sidecar_container(settings: SidecarSettings, service_name: str,
                      watching: bool = False, mounted: bool = False) -> dict[str, Any]:
    """The sidecar. `mounted`: as the injection policy adds it, watching the operator
    with the namespace's ConfigMap and key Secrets mounted. Either way its admin API stays
    on the pod's loopback, with a token it makes itself."""
    # /readyz answers once a config is loaded. As the startup probe it holds the app's
    # containers until routing is in place (the operator delivers to a started sidecar);
    # 5 minutes, then the kubelet restarts the sidecar, which keeps its last good config.
    # The probes and Prometheus use the health port, which holds no secret.
    probe = {"httpGet": {"path": "/readyz", "port": "agent-health"}, "periodSeconds": 2}
    env: list[dict[str, Any]] = [
        {"name": "AGENT_SIDECAR_STATE_DIR", "value": STATE_DIR},
        {"name": "AGENT_SIDECAR_PORT", "value": str(settings.app_port)},
        {"name": "AGENT_SIDECAR_ADMIN_PORT", "value": str(settings.admin_port)},
        {"name": "AGENT_SIDECAR_HEALTH_PORT", "value": str(settings.health_port)},
        {"name": "OTEL_SERVICE_NAME", "value": service_name},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "OTEL_RESOURCE_ATTRIBUTES",
         "value": "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)"},
    ]
    if watching or mounted:
        env += [{"name": "AGENT_SIDECAR_OPERATOR_URL", "value": settings.operator_url},
                {"name": "AGENT_SIDECAR_OPERATOR_CA", "value": f"{IDENTITY_DIR}/{CA_KEY}"},
                {"name": "AGENT_SIDECAR_IDENTITY_TOKEN_FILE", "value": f"{IDENTITY_DIR}/token"}]
    if mounted:
        env += [
            {"name": "AGENT_SIDECAR_OPERATOR_ADDRESS_FILE",
             "value": f"{IDENTITY_DIR}/{ADDRESS_KEY}"},
            {"name": "AGENT_SIDECAR_FALLBACK_CONFIGS", "value": f"{IDENTITY_DIR}/{CONFIGS_KEY}"},
            {"name": "AGENT_SIDECAR_POD_LABELS_FILE", "value": f"{IDENTITY_DIR}/{LABELS_FILE}"},
        ]
    if settings.otlp_endpoint:
        env.append({"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": settings.otlp_endpoint})
    env += [{"name": k, "value": v} for k, v in sorted(settings.extra_env.items())]
    mounts: list[dict[str, Any]] = [
        {"name": "agent-sidecar-state", "mountPath": STATE_DIR},
        {"name": "agent-sidecar-tmp", "mountPath": "/tmp"},  # the root is read-only
    ]
    if watching or mounted:
        mounts.append({"name": "agent-router-identity", "mountPath": IDENTITY_DIR,
                       "readOnly": True})
    if mounted:
        mounts.append({"name": "agent-router-keys", "mountPath": KEYS_DIR, "readOnly": True})
    return {
        "name": CONTAINER,
        "image": settings.image,
        "restartPolicy": "Always",
        "ports": [{"name": "agent-health", "containerPort": settings.health_port}],
        "env": env,
        "startupProbe": {**probe, "failureThreshold": 150},
        "readinessProbe": probe,
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "agent-health"},
                          "periodSeconds": 10},
        "resources": {
            "requests": {"cpu": settings.cpu_request, "memory": settings.memory_request},
            "limits": {"memory": settings.memory_limit},
        },
        # Everything Pod Security "restricted" asks of a container, set on the container
        # itself: it then holds whatever the app's pod-level securityContext says.
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": SIDECAR_UID,
            "runAsGroup": SIDECAR_UID,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }


def inject(spec: dict[str, Any], labels: dict[str, str], settings: SidecarSettings,
           identity: Identity | None = None) -> dict[str, Any] | None:
    """The pod spec with the sidecar added, or None if there is nothing to change
    (already injected: the webhook may be called again for the same pod). With an
    `identity` and an operator URL, the sidecar also watches the operator (the pod then
    needs `identity_annotations`)."""
    init = list(spec.get("initContainers") or [])
    if any(c.get("name") == CONTAINER for c in init + list(spec.get("containers") or [])):
        return None
    new = copy.deepcopy(spec)
    service = service_name(labels)
    # The API refuses a projected token for a pod without a service account. The
    # ServiceAccount admission plugin names `default` before webhooks run; only an API
    # server without it admits such a pod, whose sidecar then gets no config from the operator.
    watching = identity is not None and settings.operator_url is not None \
        and bool(spec.get("serviceAccountName"))
    new["initContainers"] = [sidecar_container(settings, service, watching), *init]
    volumes = list(new.get("volumes") or [])
    volumes += [
        *work_volumes(),
    ]
    if watching and identity is not None:
        volumes.append({"name": "agent-router-identity", "projected": {
            "defaultMode": 0o444,  # the pod may set no fsGroup: the sidecar's uid owns no file
            "sources": [
                token_source(identity.audience),
                {"downwardAPI": {"items": [{"path": "ca.crt", "fieldRef": {
                    "fieldPath": f"metadata.annotations['{CA_ANNOTATION}']"}}]}},
            ]}})
        host = urllib.parse.urlsplit(settings.operator_url or "").hostname
        if settings.operator_ip and _is_ip(settings.operator_ip) and host \
                and not _is_ip(host):
            aliases = list(new.get("hostAliases") or [])
            new["hostAliases"] = [*aliases, {"ip": settings.operator_ip, "hostnames": [host]}]
    new["volumes"] = volumes
    _add_app_settings(new, settings)
    return new


def app_env(settings: SidecarSettings) -> list[dict[str, str]]:
    """What points the app's OpenAI and Anthropic SDKs at the sidecar (unless it sets them)."""
    return [{"name": "OPENAI_BASE_URL", "value": f"http://127.0.0.1:{settings.app_port}/v1"},
            {"name": "ANTHROPIC_BASE_URL", "value": f"http://127.0.0.1:{settings.app_port}"}]


def _add_app_settings(spec: dict[str, Any], settings: SidecarSettings) -> None:
    if settings.image_pull_secrets:
        pulls = list(spec.get("imagePullSecrets") or [])
        have = {p.get("name") for p in pulls}
        spec["imagePullSecrets"] = pulls + [{"name": n} for n in settings.image_pull_secrets
                                            if n not in have]
    if settings.set_app_env:
        for container in spec.get("containers") or []:
            env = list(container.get("env") or [])
            have = {e.get("name") for e in env}
            env += [e for e in app_env(settings) if e["name"] not in have]
            container["env"] = env


def service_name(labels: Mapping[str, str]) -> str:
    """The sidecar's OpenTelemetry service name: the app's name label."""
    return labels.get("app.kubernetes.io/name") or labels.get("app") or "agent-sidecar"


def work_volumes() -> list[dict[str, Any]]:
    return [
        {"name": "agent-sidecar-state", "emptyDir": {}},
        {"name": "agent-sidecar-tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
    ]


def token_source(audience: str) -> dict[str, Any]:
    """The pod's own service-account token for the operator: the API refuses it for a pod
    without a service account (an API server without the ServiceAccount admission)."""
    return {"serviceAccountToken": {"audience": audience, "path": "token",
                                    "expirationSeconds": IDENTITY_SECONDS}}


def mounted_sources() -> list[dict[str, Any]]:
    """The namespace's ConfigMap (optional: the sidecar then waits for the watch) and the
    pod's labels, which pick the pod's config among the namespace's."""
    items = [{"key": k, "path": k} for k in (CA_KEY, ADDRESS_KEY, CONFIGS_KEY)]
    return [{"configMap": {"name": CONFIG_MAP, "optional": True, "items": items}},
            {"downwardAPI": {"items": [{"path": LABELS_FILE,
                                        "fieldRef": {"fieldPath": "metadata.labels"}}]}}]


def key_source(secret_key: str) -> dict[str, Any]:
    """One key of a user's Secret, as `<secret>/<key>` under KEYS_DIR; optional, so a
    missing Secret leaves a missing file (a clear error in the sidecar), not a pod that
    cannot start."""
    secret, key = secret_key.split("/", 1)
    return {"secret": {"name": secret, "optional": True,
                       "items": [{"key": key, "path": secret_key}]}}


def inject_mounted(spec: dict[str, Any], labels: dict[str, str], settings: SidecarSettings,
                   audience: str, keys: list[str]) -> dict[str, Any] | None:
    """What the injection policy does to a pod, in Python (the policy is generated from the
    same functions): `keys` are the namespace ConfigMap's `<secret>/<key>` list."""
    init = list(spec.get("initContainers") or [])
    if any(c.get("name") == CONTAINER for c in init):
        return None
    new = copy.deepcopy(spec)
    sidecar = sidecar_container(settings, service_name(labels), mounted=True)
    new["initContainers"] = [sidecar, *init]
    identity = mounted_sources()
    if spec.get("serviceAccountName"):
        identity.append(token_source(audience))
    new["volumes"] = [*(new.get("volumes") or []), *work_volumes(),
                      {"name": "agent-router-identity",
                       "projected": {"defaultMode": 0o444, "sources": identity}},
                      {"name": "agent-router-keys", "projected": {
                          "defaultMode": 0o444, "sources": [key_source(k) for k in keys]}}]
    _add_app_settings(new, settings)
    return new


def identity_annotations(identity: Identity) -> dict[str, str]:
    """The annotations a watching sidecar's pod carries: the CA bundle it pins."""
    return {CA_ANNOTATION: identity.ca_bundle.decode()}
