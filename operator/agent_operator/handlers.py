"""The kopf handlers: every change of a pool, a policy or an injected pod leads to the same
namespace reconcile, plus the sidecar-injection webhook.

All state lives in the `Operator` that `__main__` hands to kopf as its memo; kopf passes it
to every handler. Only watch events are handled (no kopf change handlers): kopf then keeps
no bookkeeping on the objects, adds no finalizer, and every replica sees every event, so a
replica that takes the Lease over knows every namespace already.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import kopf
from aiohttp import web

from agent_operator import kube, leader
from agent_operator.certs import CertSource, FileCerts, SecretCerts
from agent_operator.delivery import Delivery
from agent_operator.inject import INJECT_LABEL, Identity, identity_annotations, inject
from agent_operator.leader import Lease
from agent_operator.metrics import Metrics, healthz, serve_http
from agent_operator.namespace_config import NamespaceConfigs
from agent_operator.options import Options
from agent_operator.reconcile import Reconciler, refusals
from agent_operator.resources import GROUP
from agent_operator.synced import Synced
from agent_operator.webhook import InjectionServer

log = logging.getLogger("agent_operator")


@dataclass
class Operator:
    """Everything the operator keeps while it runs (kopf's memo)."""

    options: Options
    metrics: Metrics = field(default_factory=Metrics)
    reconciler: Reconciler = field(init=False)
    lease: Lease | None = None
    webhook: InjectionServer | None = None
    delivery: Delivery | None = None
    # What last triggered a reconcile, per object uid: a watch event that changes nothing
    # the reconcile reads (a status write, a pod's probe) triggers none.
    seen: dict[str, Any] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    servers: list[web.AppRunner] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reconciler = Reconciler(self.metrics, limits=self.options.limits)
        if self.options.webhook:  # the sidecars' watches share the webhook's TLS port
            self.delivery = Delivery(self.options.delivery_audience, self.metrics,
                                     kube.review_token, self.reconciler.report)
            self.reconciler.delivery = self.delivery
            if self.options.namespace_configs and self.options.sidecar.operator_ip:
                self.reconciler.namespace_configs = NamespaceConfigs(
                    self.ca_bundle, self.options.sidecar.operator_ip)
            elif self.options.namespace_configs:
                log.warning("--namespace-configs needs AGENT_SIDECAR_OPERATOR_IP (the "
                            "address pods connect to): no namespace ConfigMap is written")

    def identity(self) -> Identity | None:
        """What an injected sidecar needs to watch this operator, once it serves TLS."""
        if self.webhook is None or self.webhook.serving is None or self.delivery is None:
            return None
        return Identity(self.options.delivery_audience, self.webhook.serving.ca_bundle)

    def ca_bundle(self) -> bytes | None:
        """The CA bundle this replica's TLS port is served under, once it serves."""
        return self.webhook.serving.ca_bundle if self.webhook and self.webhook.serving else None

    def is_new(self, uid: str, state: Any) -> bool:
        if self.seen.get(uid) == state:
            return False
        self.seen[uid] = state
        return True

    async def resync_forever(self) -> None:
        """Catches what no watch reports: a rotated Secret, a sidecar that lost its state.

        One loop for the whole operator, not a kopf timer per object: a timer makes kopf
        put a finalizer on every object, and a namespace being deleted while the operator
        is down would then wait for it forever.
        """
        seconds = self.options.resync_seconds
        while True:
            await asyncio.sleep(seconds)
            await self.resync(skip_within=seconds / 2)

    async def resync(self, skip_within: float = 0.0) -> None:
        await asyncio.gather(*(self.reconciler.reconcile(namespace)
                               for namespace in self.reconciler.namespaces()
                               if not self.reconciler.ran_within(namespace, skip_within)))

    async def status_due(self, namespaces: Iterable[str]) -> None:
        """Sidecars acknowledged (or dropped) a config: the namespace's status changes."""
        await asyncio.gather(*(self.reconciler.reconcile(ns) for ns in namespaces))

    async def leadership_changed(self, leading: bool) -> None:
        self.metrics.leader.set(int(leading))
        if leading:
            await self.resync()  # what the previous leader may have left undone

    async def publish_ca_bundle(self, ca_bundle: bytes) -> None:
        name = self.options.webhook_configuration
        if name is None:
            return
        try:
            if await kube.set_ca_bundle(name, ca_bundle):
                log.info("the webhook configuration %s now trusts the current CA", name)
        except kube.NotFound:
            log.error("no MutatingWebhookConfiguration %s: the apiserver will not call this "
                      "webhook (the chart creates it)", name)

    def cert_source(self) -> CertSource:
        o = self.options
        if o.webhook_cert_dir is not None:
            return FileCerts(o.webhook_cert_dir)
        assert o.webhook_cert_secret is not None, "the options require one of the two"
        namespace, name = o.webhook_cert_secret
        return SecretCerts(namespace, name, o.webhook_hosts, o.webhook_cert_validity,
                           self.publish_ca_bundle, self.metrics, o.webhook_ca_propagation)


@kopf.on.startup()
async def start(memo: Operator, settings: kopf.OperatorSettings, **_: Any) -> None:
    o = memo.options
    settings.posting.level = logging.WARNING  # Events for problems, not for every handler
    # No handler needs a finalizer; naming the one earlier versions added (with a timer
    # per policy) lets kopf take it off the objects that still carry it.
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.watching.server_timeout = 300
    # Only injected pods, filtered by the API server: the cluster's other pods never reach
    # the operator. A pod that loses the label comes as DELETED (it left the selection).
    settings.watching.label_selectors["pods"] = f"{INJECT_LABEL}=true"
    if o.metrics_port is not None:
        memo.servers.append(await serve_http(o.metrics_addr, o.metrics_port,
                                             {"/metrics": memo.metrics.metrics}))
    if o.lease is not None:
        lease = memo.lease = Lease(*o.lease, duration=o.lease_seconds,
                                   on_change=memo.leadership_changed)
        memo.reconciler.leading = lambda: lease.leading
        memo.tasks.append(asyncio.create_task(lease.run(), name="lease"))
    else:
        memo.metrics.leader.set(1)
    if memo.delivery is not None:
        # Acknowledgements land on any replica; the Lease's ConfigMap of the same name
        # holds each replica's summary for the leader.
        synced = memo.reconciler.synced = Synced(
            memo.delivery, memo.lease.me if memo.lease else leader.identity(), o.lease)
        memo.tasks.append(asyncio.create_task(
            synced.run(memo.reconciler.leading, memo.status_due), name="synced"))
    memo.tasks.append(asyncio.create_task(memo.resync_forever(), name="resync"))
    if o.webhook:
        memo.webhook = InjectionServer(addr=o.webhook_addr, port=o.webhook_port,
                                       certs=memo.cert_source(),
                                       publish=memo.publish_ca_bundle,
                                       check_seconds=o.webhook_cert_check_seconds,
                                       metrics=memo.metrics, delivery=memo.delivery)
        # Listening, with the CA bundle published, before kopf reports the operator alive.
        await memo.webhook.start()
        settings.admission.server = memo.webhook
    if o.liveness is not None:  # last: alive means ready to answer reviews
        memo.servers.append(await serve_http(*o.liveness, {"/healthz": healthz}))


@kopf.on.cleanup()
async def stop(memo: Operator, **_: Any) -> None:
    for task in memo.tasks:
        task.cancel()
    if memo.lease is not None:
        await memo.lease.release()
    for server in memo.servers:
        await server.cleanup()
    if memo.webhook is not None:
        await memo.webhook.stop()


# ---- pools and policies: any change reconciles their namespace ----------------------------

@kopf.on.event(GROUP, "agentpools")
@kopf.on.event(GROUP, "routingpolicies")
async def changed(*, event: kopf.RawEvent, body: kopf.Body, namespace: str | None, memo: Any,
                  **_: Any) -> None:
    assert isinstance(memo, Operator) and namespace is not None  # namespaced kinds
    meta = body.get("metadata", {})
    if event.get("type") == "DELETED":
        memo.seen.pop(meta.get("uid", ""), None)
    elif not memo.is_new(meta.get("uid", ""), (meta.get("generation"),
                                                bool(meta.get("deletionTimestamp")),
                                                refusals(dict(body)))):
        return  # a status write: nothing the reconcile reads
    await memo.reconciler.reconcile(namespace)


# ---- pods: one that came, changed its labels, or went away --------------------------------

@kopf.on.event("pods")
async def pod_event(*, event: kopf.RawEvent, body: kopf.Body, namespace: str | None,
                    memo: Any, **_: Any) -> None:
    """Injected pods' events (the watch's server-side selector); one that loses the label
    comes as DELETED and is forgotten."""
    assert isinstance(memo, Operator) and namespace is not None
    meta = body.get("metadata", {})
    uid = meta.get("uid", "")
    injected = (meta.get("labels") or {}).get(INJECT_LABEL) == "true"
    if event.get("type") == "DELETED" or not injected:
        memo.seen.pop(uid, None)
        if memo.reconciler.lost_pod(namespace, meta.get("name", "")):
            await memo.reconciler.reconcile(namespace)
        return
    memo.reconciler.saw_pod(namespace, dict(body))
    # Its sidecar watches for its config as soon as it starts: compiled once the pod
    # exists, again when its labels change (what the policies select on).
    if memo.is_new(uid, dict(meta.get("labels") or {})):
        await memo.reconciler.reconcile(namespace)


# ---- sidecar injection ----------------------------------------------------------------------

def serve_injection() -> None:
    """Register the webhook (kopf refuses admission handlers without a server). Its id is
    the path the chart's webhook configuration calls."""
    kopf.on.mutate("pods", id="inject-sidecar", labels={INJECT_LABEL: "true"},
                   operations=["CREATE"], ignore_failures=False,
                   side_effects=False)(inject_sidecar)


async def inject_sidecar(spec: kopf.Spec, labels: kopf.Labels, patch: kopf.Patch,
                         memo: Operator, **_: Any) -> None:
    settings = memo.options.sidecar
    identity = memo.identity()
    new = inject(dict(spec), dict(labels), settings, identity)
    if new is None:
        return  # already injected: idempotent
    for key in ("initContainers", "volumes", "containers", "imagePullSecrets", "hostAliases"):
        if key in new:
            patch.spec[key] = new[key]
    if identity is not None and settings.operator_url:
        patch.metadata.setdefault("annotations", {}).update(identity_annotations(identity))
