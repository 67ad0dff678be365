"""Sidecar injection: what the mutating webhook adds to an opted-in pod.

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

INJECT_LABEL = "agentrouter.io/inject"
# The operator's CA bundle, which the sidecar pins: on the pod itself, projected into a
# file by the downward API (no object in the app's namespace to create or keep).
CA_ANNOTATION = "agentrouter.io/operator-ca"
CONTAINER = "agent-sidecar"
IDENTITY_DIR = "/var/run/agent-router/identity"
# The shortest lifetime the API allows; the kubelet renews the token at 80% of it.
IDENTITY_SECONDS = 600
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
                      watching: bool = False) -> dict[str, Any]:
    # /readyz answers once a config is loaded. As the startup probe it holds the app's
    # containers until routing is in place (the operator delivers to a started sidecar);
    # 5 minutes, then the kubelet restarts the sidecar, which keeps its last good config.
    # The probes and Prometheus use the health port, which holds no secret.
    probe = {"httpGet": {"path": "/readyz", "port": "agent-health"}, "periodSeconds": 2}
    env = [
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
    if watching:
        env += [{"name": "AGENT_SIDECAR_OPERATOR_URL", "value": settings.operator_url},
                {"name": "AGENT_SIDECAR_OPERATOR_CA", "value": f"{IDENTITY_DIR}/ca.crt"},
                {"name": "AGENT_SIDECAR_IDENTITY_TOKEN_FILE", "value": f"{IDENTITY_DIR}/token"}]
    if settings.otlp_endpoint:
        env.append({"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": settings.otlp_endpoint})
    env += [{"name": k, "value": v} for k, v in sorted(settings.extra_env.items())]
    mounts: list[dict[str, Any]] = [
        {"name": "agent-sidecar-state", "mountPath": STATE_DIR},
        {"name": "agent-sidecar-tmp", "mountPath": "/tmp"},  # the root is read-only
    ]
    if watching:
        mounts.append({"name": "agent-router-identity", "mountPath": IDENTITY_DIR,
                       "readOnly": True})
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
    service = labels.get("app.kubernetes.io/name") or labels.get("app") or "agent-sidecar"
    # The API refuses a projected token for a pod without a service account. The
    # ServiceAccount admission plugin names `default` before webhooks run; only an API
    # server without it admits such a pod, whose sidecar then gets no config from the operator.
    watching = identity is not None and settings.operator_url is not None \
        and bool(spec.get("serviceAccountName"))
    new["initContainers"] = [sidecar_container(settings, service, watching), *init]
    volumes = list(new.get("volumes") or [])
    volumes += [
        {"name": "agent-sidecar-state", "emptyDir": {}},
        {"name": "agent-sidecar-tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
    ]
    if watching and identity is not None:
        volumes.append({"name": "agent-router-identity", "projected": {
            "defaultMode": 0o444,  # the pod may set no fsGroup: the sidecar's uid owns no file
            "sources": [
                {"serviceAccountToken": {"audience": identity.audience, "path": "token",
                                         "expirationSeconds": IDENTITY_SECONDS}},
                {"downwardAPI": {"items": [{"path": "ca.crt", "fieldRef": {
                    "fieldPath": f"metadata.annotations['{CA_ANNOTATION}']"}}]}},
            ]}})
        host = urllib.parse.urlsplit(settings.operator_url or "").hostname
        if settings.operator_ip and _is_ip(settings.operator_ip) and host \
                and not _is_ip(host):
            aliases = list(new.get("hostAliases") or [])
            new["hostAliases"] = [*aliases, {"ip": settings.operator_ip, "hostnames": [host]}]
    new["volumes"] = volumes
    if settings.image_pull_secrets:
        pulls = list(new.get("imagePullSecrets") or [])
        have = {p.get("name") for p in pulls}
        new["imagePullSecrets"] = pulls + [{"name": n} for n in settings.image_pull_secrets
                                           if n not in have]
    if settings.set_app_env:
        urls = {
            "OPENAI_BASE_URL": f"http://127.0.0.1:{settings.app_port}/v1",
            "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{settings.app_port}",
        }
        for container in new.get("containers") or []:
            env = list(container.get("env") or [])
            have = {e.get("name") for e in env}
            env += [{"name": k, "value": v} for k, v in urls.items() if k not in have]
            container["env"] = env
    return new


def identity_annotations(identity: Identity) -> dict[str, str]:
    """The annotations a watching sidecar's pod carries: the CA bundle it pins."""
    return {CA_ANNOTATION: identity.ca_bundle.decode()}
