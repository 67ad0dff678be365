"""The Kubernetes API calls the operator makes, and nothing else (see the RBAC in the
chart: each call here needs exactly one rule there).

The official client is synchronous; calls run in a worker thread so that the operator's
event loop keeps serving the webhook and other namespaces meanwhile. Its exceptions stop
here: `call` turns them into the `KubeError` tree below, and nothing else leaks.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, TypeVar, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from agent_operator.resources import GROUP, VERSION

T = TypeVar("T")

MANAGED_BY = {"app.kubernetes.io/managed-by": "agent-operator",
              "app.kubernetes.io/part-of": "agent-router"}


class KubeError(Exception):
    """An API call failed; `status` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"Kubernetes API answered {status}: {reason}" if status
                         else f"Kubernetes API unreachable: {reason}")
        self.status = status


class NotFound(KubeError):
    pass


class Forbidden(KubeError):
    pass


class Conflict(KubeError):
    """409: it exists already, or it changed since it was read."""


_BY_STATUS: dict[int, type[KubeError]] = {403: Forbidden, 404: NotFound, 409: Conflict}


@cache
def api() -> client.ApiClient:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        # KUBECONFIG, set explicitly by whoever runs us
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except ApiException as exc:
        # The reason only: the body may echo what was sent (a Secret's data).
        raise _BY_STATUS.get(exc.status or 0, KubeError)(exc.status or 0,
                                                          str(exc.reason)) from exc
    except OSError as exc:  # urllib3's connection errors
        raise KubeError(0, type(exc).__name__) from exc


def _custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api())


def _core() -> client.CoreV1Api:
    return client.CoreV1Api(api())


async def list_custom(namespace: str, plural: str) -> list[dict[str, Any]]:
    result = await call(_custom().list_namespaced_custom_object, GROUP, VERSION, namespace, plural)
    return list(cast(dict[str, Any], result).get("items", []))


async def patch_status(namespace: str, plural: str, name: str, status: dict[str, Any]) -> None:
    try:
        await call(_custom().patch_namespaced_custom_object_status, GROUP, VERSION, namespace,
                   plural, name, {"status": status})
    except NotFound:
        pass  # deleted meanwhile: nothing to report on


def _plain(obj: Any) -> dict[str, Any]:
    """A client model as the API's JSON (camelCase dicts)."""
    return dict(api().sanitize_for_serialization(obj))  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class SecretData:
    data: dict[str, str] = field(repr=False)
    resource_version: str


async def read_secret_versioned(namespace: str, name: str) -> SecretData | None:
    """The Secret's data decoded, with the version to replace it at; None if absent."""
    try:
        secret = await call(_core().read_namespaced_secret, name, namespace)
    except NotFound:
        return None
    data = {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
    return SecretData(data, str(secret.metadata.resource_version if secret.metadata else ""))


async def read_secret(namespace: str, name: str) -> dict[str, str] | None:
    """The Secret's data decoded, or None if it does not exist (or we may not read it)."""
    try:
        found = await read_secret_versioned(namespace, name)
    except Forbidden:
        return None
    return found.data if found else None


async def write_secret(namespace: str, name: str, data: Mapping[str, str | None],
                       resource_version: str | None) -> None:
    """Create the Secret (no version), or set its data if it is still at the version that
    was read (`Conflict` when someone else wrote it first); a key set to None is removed.
    A patch, not a replace: the labels and annotations of whoever created it (Helm) stay."""
    if resource_version is None:
        body = client.V1Secret(metadata=client.V1ObjectMeta(name=name, labels=MANAGED_BY),
                               string_data={k: v for k, v in data.items() if v is not None},
                               type="Opaque")
        await call(_core().create_namespaced_secret, namespace, body)
        return
    encoded = {k: None if v is None else base64.b64encode(v.encode()).decode()
               for k, v in data.items()}
    await call(_core().patch_namespaced_secret, name, namespace,
               {"metadata": {"resourceVersion": resource_version}, "data": encoded})


async def read_config_map(namespace: str, name: str) -> dict[str, str]:
    """The ConfigMap's data (empty if it has none)."""
    found = await call(_core().read_namespaced_config_map, name, namespace)
    return dict(found.data or {})


async def patch_config_map(namespace: str, name: str, data: dict[str, str | None]) -> None:
    """Set these keys of the ConfigMap's data (None removes one), and no other: replicas
    each writing their own key never overwrite one another's."""
    await call(_core().patch_namespaced_config_map, name, namespace, {"data": data})


async def write_config_map(namespace: str, name: str, data: dict[str, str]) -> None:
    """Set the ConfigMap's data, creating it when it is not there. A merge patch of its data
    only: labels and annotations others put on it stay."""
    try:
        await call(_core().patch_namespaced_config_map, name, namespace, {"data": data})
    except NotFound:
        body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, labels=MANAGED_BY),
                                  data=data)
        try:
            await call(_core().create_namespaced_config_map, namespace, body)
        except Conflict:  # another replica created it meanwhile
            await call(_core().patch_namespaced_config_map, name, namespace, {"data": data})


async def set_ca_bundle(configuration: str, ca_bundle: bytes) -> bool:
    """Make every webhook of the MutatingWebhookConfiguration trust `ca_bundle`; False if
    each already did. Patched by webhook name (a strategic merge): nothing else changes."""
    admission = client.AdmissionregistrationV1Api(api())
    current = await call(admission.read_mutating_webhook_configuration, configuration)
    encoded = base64.b64encode(ca_bundle).decode()
    stale = [w.name for w in current.webhooks or [] if w.client_config.ca_bundle != encoded]
    if not stale:
        return False
    await call(admission.patch_mutating_webhook_configuration, configuration,
               {"webhooks": [{"name": n, "clientConfig": {"caBundle": encoded}} for n in stale]})
    return True


async def review_token(token: str, audience: str) -> dict[str, Any]:
    """The TokenReview's status for `token`, accepted for `audience` only."""
    review = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token,
                                                                audiences=[audience]))
    answer = await call(client.AuthenticationV1Api(api()).create_token_review, review)
    return _plain(answer.status) if answer.status is not None else {}


async def mark_refused(namespace: str, plural: str, name: str, pod: str,
                       why: str | None) -> None:
    """Set (or, with None, remove) one pod's entry of the object's `status.refused`: a
    merge patch of that key only, so replicas never overwrite each other's."""
    await patch_status(namespace, plural, name, {"refused": {pod: why}})


def _leases() -> client.CoordinationV1Api:
    return client.CoordinationV1Api(api())




async def read_lease(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        lease = await call(_leases().read_namespaced_lease, name, namespace)
    except NotFound:
        return None
    return _plain(lease)


async def create_lease(namespace: str, name: str, spec: dict[str, Any]) -> None:
    await call(_leases().create_namespaced_lease, namespace, {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "labels": MANAGED_BY}, "spec": spec})


async def update_lease(namespace: str, name: str, resource_version: str,
                       spec: dict[str, Any]) -> None:
    """Set the Lease's spec fields (None removes one) if it is still at the version that
    was read; `Conflict` otherwise."""
    await call(_leases().patch_namespaced_lease, name, namespace,
               {"metadata": {"resourceVersion": resource_version}, "spec": spec})


async def warn(obj: dict[str, Any], reason: str, message: str) -> None:
    """A Warning Event about `obj` (what `kubectl describe` and `kubectl get events` show).
    Posted here rather than through kopf, whose Events work only inside its handlers: the
    periodic resync finds problems too."""
    meta = obj["metadata"]
    now = datetime.datetime.now(datetime.UTC)
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.",
                                     namespace=meta["namespace"], labels=MANAGED_BY),
        involved_object=client.V1ObjectReference(
            api_version=obj.get("apiVersion"), kind=obj.get("kind"), name=meta["name"],
            namespace=meta["namespace"], uid=meta.get("uid"),
            resource_version=meta.get("resourceVersion")),
        reason=reason, message=message[:1024], type="Warning", count=1,
        first_timestamp=now, last_timestamp=now,
        source=client.V1EventSource(component="agent-operator"),
        reporting_component="agent-operator")
    await call(_core().create_namespaced_event, meta["namespace"], event)
