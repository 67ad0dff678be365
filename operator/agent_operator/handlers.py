"""The kopf handlers: every event leads to the same namespace reconcile, plus the
sidecar-injection webhook. Settings come from `agent_operator.__main__`."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf

from agent_operator import kube
from agent_operator.certs import self_signed
from agent_operator.inject import (
    ADMIN_PORT_ANNOTATION,
    INJECT_LABEL,
    SidecarSettings,
    inject,
    sidecar_address,
)
from agent_operator.reconcile import Reconciler
from agent_operator.resources import GROUP


@dataclass
class Options:
    """What the command line decided; read by the startup handler."""

    peering: bool = True  # False with --standalone
    webhook: bool = True
    webhook_addr: str = "0.0.0.0"
    webhook_port: int = 9443
    webhook_host: str | None = None  # what the apiserver dials; default: webhook_addr
    webhook_cert_dir: Path | None = None  # tls.crt, tls.key, ca.crt; default: self-signed
    # In a cluster the apiserver reaches the webhook through its Service (parse_service of
    # "<ns>/<name>:<port>"); None: it dials https://<webhook_host>:<port> (from a laptop).
    webhook_service: dict[str, Any] | None = None
    webhook_name: str = "sidecar-injector.agentrouter.io"
    sidecar: SidecarSettings = field(default_factory=SidecarSettings.from_env)


# Fixed when the handlers are registered (decorator arguments), hence from the environment.
RESYNC_SECONDS = float(os.environ.get("AGENT_OPERATOR_RESYNC_SECONDS", "30"))
options = Options()
reconciler = Reconciler()
_pod_state: dict[str, tuple[Any, ...]] = {}


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.WARNING  # Events for problems, not for every handler
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.watching.server_timeout = 300
    # How long a silent peer counts as alive: the takeover delay when a replica is killed.
    settings.peering.lifetime = int(os.environ.get("AGENT_OPERATOR_PEERING_LIFETIME", "30"))
    # A missing peering object is an install error, not a reason to run unguarded.
    settings.peering.mandatory = options.peering
    reconciler.admin_port = options.sidecar.admin_port
    if options.peering:
        reconciler.peering = (settings.peering.name, settings.peering.clusterwide,
                              settings.peering.priority)
    if not options.webhook:
        return
    host = options.webhook_host or options.webhook_addr
    if options.webhook_cert_dir is not None:
        d = options.webhook_cert_dir
        ca, cert, key = d / "ca.crt", d / "tls.crt", d / "tls.key"
    else:
        ca, cert, key = self_signed(Path(tempfile.mkdtemp(prefix="agent-operator-")),
                                    [host, options.webhook_addr])
    tls = {"addr": options.webhook_addr, "port": options.webhook_port, "host": host,
           "certfile": str(cert), "pkeyfile": str(key), "cafile": str(ca)}
    settings.admission.server = (
        ServiceWebhookServer(options.webhook_service, **tls) if options.webhook_service
        else kopf.WebhookServer(**tls))
    if options.webhook_service is not None:
        # Installed by the chart, which creates both configurations and owns them: kopf
        # would create a missing one, and helm's own create, a moment later, would fail
        # (the operator's pod can start before helm has created everything).
        while not await kube.webhook_configurations_exist(options.webhook_name):
            logging.getLogger(__name__).info("waiting for the chart's webhook configurations")
            await asyncio.sleep(1)
    settings.admission.managed = options.webhook_name


def parse_service(text: str) -> dict[str, Any]:
    """`<namespace>/<name>:<port>` -> the `service` of a webhook clientConfig."""
    where, _, port = text.rpartition(":")
    namespace, _, name = where.partition("/")
    if not (namespace and name and port.isdigit()):
        raise ValueError(f"webhook service {text!r}: expected <namespace>/<name>:<port>")
    return {"namespace": namespace, "name": name, "port": int(port), "path": ""}


class ServiceWebhookServer(kopf.WebhookServer):
    """kopf's server, registered by Service reference instead of by URL.

    kopf's own server registers `url: https://<host>:<port>`, which makes every apiserver
    resolve the Service's DNS name itself; a `service` reference is what in-cluster
    webhooks use (the apiserver finds the Service's endpoints; no cluster DNS needed).
    kopf appends each handler's id to `service.path`, as it does to the URL.
    """

    def __init__(self, service: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.service = service

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        async for config in super().__call__(fn):
            config.pop("url", None)
            config["service"] = dict(self.service)
            yield config


@kopf.on.cleanup()
async def close(**_: Any) -> None:
    await reconciler.close()


# ---- pools and policies: any change reconciles their namespace ----------------------------

@kopf.on.resume(GROUP, "agentpools")
@kopf.on.create(GROUP, "agentpools")
@kopf.on.update(GROUP, "agentpools", field="spec")
@kopf.on.delete(GROUP, "agentpools", optional=True)
@kopf.on.resume(GROUP, "routingpolicies")
@kopf.on.create(GROUP, "routingpolicies")
@kopf.on.update(GROUP, "routingpolicies", field="spec")
@kopf.on.delete(GROUP, "routingpolicies", optional=True)
async def changed(namespace: str, **_: Any) -> None:
    await reconciler.reconcile(namespace)


@kopf.timer(GROUP, "routingpolicies", interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
async def resync(namespace: str, **_: Any) -> None:
    """Catches what no watch reports: a rotated Secret, a sidecar that lost its state."""
    if not reconciler.ran_within(namespace, RESYNC_SECONDS / 2):
        await reconciler.reconcile(namespace)


# ---- pods: a sidecar that became reachable, or went away ----------------------------------

@kopf.on.event("pods", labels={INJECT_LABEL: "true"})
async def pod_event(event: dict[str, Any], body: kopf.Body, namespace: str, **_: Any) -> None:
    uid = body.get("metadata", {}).get("uid", "")
    if event.get("type") == "DELETED":
        _pod_state.pop(uid, None)
        return
    address = sidecar_address(dict(body), options.sidecar.admin_port)
    state = (address, dict(body.get("metadata", {}).get("labels") or {}))
    if _pod_state.get(uid) == state:
        return
    _pod_state[uid] = state
    if address:
        await reconciler.reconcile(namespace)


# ---- sidecar injection ----------------------------------------------------------------------

def serve_injection() -> None:
    """Register the webhook (kopf refuses admission handlers without a server)."""
    kopf.on.mutate("pods", id="inject-sidecar", labels={INJECT_LABEL: "true"},
                   operations=["CREATE"], ignore_failures=False,
                   side_effects=True,  # it may create the namespace's token Secret
                   # Stays registered while no replica runs (a rollout, a crash): with the
                   # Fail policy, opted-in pods then wait instead of starting without routing.
                   persistent=True)(inject_sidecar)


async def inject_sidecar(spec: kopf.Spec, labels: kopf.Labels, namespace: str | None,
                         patch: kopf.Patch, annotations: kopf.Annotations, dryrun: bool,
                         **_: Any) -> None:
    new = inject(dict(spec), dict(labels), options.sidecar)
    if new is None:
        return  # already injected: idempotent
    if namespace and not dryrun:
        await kube.sidecar_token(namespace)  # the volume the sidecar mounts must exist
    patch.spec["initContainers"] = new["initContainers"]
    patch.spec["volumes"] = new["volumes"]
    patch.spec["containers"] = new["containers"]
    if ADMIN_PORT_ANNOTATION not in annotations:
        patch.metadata.setdefault("annotations", {})[ADMIN_PORT_ANNOTATION] = str(
            options.sidecar.admin_port)
