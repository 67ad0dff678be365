"""The Kubernetes API calls the operator makes, and nothing else (see the RBAC in the
chart: each call here needs exactly one rule there).

The official client is synchronous; calls run in a worker thread so that the operator's
event loop keeps serving the webhook and other namespaces meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import secrets as pysecrets
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from agent_operator.resources import GROUP, VERSION

T = TypeVar("T")

TOKEN_SECRET = "agent-router-sidecar"  # per namespace: the sidecars' admin bearer token
TOKEN_KEY = "token"


@cache
def api() -> client.ApiClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()  # KUBECONFIG, set explicitly by whoever runs us
    return client.ApiClient()


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(fn, *args, **kwargs)


def _custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api())


def _core() -> client.CoreV1Api:
    return client.CoreV1Api(api())


async def webhook_configurations_exist(name: str) -> bool:
    """Whether the Mutating- and ValidatingWebhookConfiguration `name` both exist. An empty
    patch asks: patch is the verb the operator holds on them, and `{}` changes nothing."""
    admission = client.AdmissionregistrationV1Api(api())
    try:
        for patch in (admission.patch_mutating_webhook_configuration,
                      admission.patch_validating_webhook_configuration):
            await call(patch, name, {})
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


async def list_custom(namespace: str, plural: str) -> list[dict[str, Any]]:
    result = await call(_custom().list_namespaced_custom_object, GROUP, VERSION, namespace, plural)
    return list(result.get("items", []))


async def patch_status(namespace: str, plural: str, name: str, status: dict[str, Any]) -> None:
    try:
        await call(_custom().patch_namespaced_custom_object_status, GROUP, VERSION, namespace,
                   plural, name, {"status": status})
    except ApiException as exc:
        if exc.status != 404:  # deleted meanwhile: nothing to report on
            raise


async def peering_status(name: str, namespace: str | None) -> dict[str, Any] | None:
    """kopf's peering object's status (peer id -> priority, lifetime, lastseen)."""
    try:
        if namespace is None:
            obj = await call(_custom().get_cluster_custom_object, "kopf.dev", "v1",
                             "clusterkopfpeerings", name)
        else:
            obj = await call(_custom().get_namespaced_custom_object, "kopf.dev", "v1",
                             namespace, "kopfpeerings", name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return dict(obj.get("status") or {})


async def list_pods(namespace: str, label_selector: str) -> list[dict[str, Any]]:
    """Pods as the API returns them (camelCase dicts, the shape kopf hands to handlers)."""
    result = await call(_core().list_namespaced_pod, namespace, label_selector=label_selector)
    return [api().sanitize_for_serialization(pod) for pod in result.items]


async def read_secret(namespace: str, name: str) -> dict[str, str] | None:
    """The Secret's data decoded, or None if it does not exist (or we may not read it)."""
    try:
        secret = await call(_core().read_namespaced_secret, name, namespace)
    except ApiException as exc:
        if exc.status in (403, 404):
            return None
        raise
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


async def sidecar_token(namespace: str) -> str:
    """The namespace's sidecar token, created on first use (the webhook mounts it)."""
    existing = await read_secret(namespace, TOKEN_SECRET)
    if existing and existing.get(TOKEN_KEY):
        return existing[TOKEN_KEY]
    token = pysecrets.token_urlsafe(32)
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(
            name=TOKEN_SECRET,
            labels={"app.kubernetes.io/managed-by": "agent-operator",
                    "app.kubernetes.io/part-of": "agent-router"},
        ),
        string_data={TOKEN_KEY: token},
        type="Opaque",
    )
    try:
        await call(_core().create_namespaced_secret, namespace, body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        again = await read_secret(namespace, TOKEN_SECRET)  # another replica won the race
        if not again or not again.get(TOKEN_KEY):
            raise
        return again[TOKEN_KEY]
    return token
