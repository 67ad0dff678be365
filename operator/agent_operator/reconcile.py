"""Bring one namespace's sidecars in line with its pools and policies, and say so.

Level-triggered: whatever fired (a pool, a policy, a pod, a sidecar's acknowledgement,
the resync timer), the whole namespace is recompiled. Every replica compiles and offers
each pod's document to the sidecars that watch it (`delivery`); the leading replica
also writes the status, counting the pods whose sidecar acknowledged their current
config on any replica (`synced`). Runs per namespace are serialized and coalesced: a
trigger during a run causes exactly one more run afterwards.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic

from agent.config import RouterConfig
from agent_operator import kube
from agent_operator.compile import (
    Compiled,
    Policy,
    Problem,
    compile_pod,
    first_error,
    policy_problems,
    selects,
)
from agent_operator.delivery import Delivery
from agent_operator.limits import SharedLimits, remaining, sharing
from agent_operator.metrics import Metrics
from agent_operator.namespace_config import NamespaceConfigs
from agent_operator.resources import AgentPoolSpec, RoutingPolicySpec
from agent_operator.synced import Synced, digest

log = logging.getLogger("agent_operator")

EMPTY = RouterConfig(metadata={"source": "", "hash": "empty"})


@dataclass
class PodTarget:
    name: str
    labels: dict[str, str]
    uid: str


@dataclass
class _Namespace:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: bool = False
    finished: float = 0.0  # monotonic time the last run ended
    reported: dict[str, tuple[str, str]] = field(default_factory=dict)  # obj -> event sent


class Reconciler:
    def __init__(self, metrics: Metrics, limits: SharedLimits | None = None) -> None:
        self.metrics = metrics
        self.limits = limits or SharedLimits()  # where every sidecar counts its limits
        self.delivery: Delivery | None = None  # the sidecars' watches, when served
        self.synced: Synced | None = None  # which sidecars acknowledged, on any replica
        self.namespace_configs: NamespaceConfigs | None = None  # what new pods start from
        self._refused: dict[tuple[str, str], set[str]] = {}  # (namespace, policy): pods
        # The injected pods as the watch last showed them, by namespace and name: what a
        # reconcile reads instead of listing every pod again (an informer's cache).
        self._injected: dict[str, dict[str, dict[str, Any]]] = {}
        # Whether this replica acts (holds the Lease); always, when it runs alone.
        self.leading: Callable[[], bool] = lambda: True
        self._spaces: dict[str, _Namespace] = {}

    async def reconcile(self, namespace: str) -> None:
        """Coalescing entry point: callers may fire as often as they like."""
        space = self._spaces.setdefault(namespace, _Namespace())
        if space.lock.locked():
            space.pending = True
            return
        async with space.lock:
            while True:
                space.pending = False
                started = time.monotonic()
                try:
                    result = await self._run(namespace, space)
                except Exception:  # one bad run must not stop the next trigger's
                    result = "error"
                    log.exception("reconciling namespace %s failed", namespace)
                space.finished = time.monotonic()
                self.metrics.reconciles.labels(result).inc()
                if result != "standby":
                    self.metrics.reconcile_seconds.observe(space.finished - started)
                if not space.pending:
                    break

    def saw_pod(self, namespace: str, pod: dict[str, Any]) -> None:
        """Keep what a reconcile reads of an injected pod (a watch event's body)."""
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        self._injected.setdefault(namespace, {})[meta["name"]] = {
            "metadata": {k: meta[k] for k in _POD_META if k in meta},
            "status": {k: status[k] for k in _POD_STATUS if k in status}}

    def lost_pod(self, namespace: str, name: str) -> bool:
        """The pod is gone, or no longer injected; whether it was known."""
        return self._injected.get(namespace, {}).pop(name, None) is not None

    def namespaces(self) -> list[str]:
        """Every namespace an event has named so far: what the periodic resync covers."""
        return list(self._spaces)

    def ran_within(self, namespace: str, seconds: float) -> bool:
        """Whether the namespace was reconciled that recently (an event beat the resync)."""
        space = self._spaces.get(namespace)
        return space is not None and time.monotonic() - space.finished < seconds

    async def _run(self, namespace: str, space: _Namespace) -> str:
        leading = self.leading()
        if not leading and self.delivery is None:
            log.debug("not the leading replica: leaving namespace %s to it", namespace)
            return "standby"
        pools_raw = await kube.list_custom(namespace, "agentpools")
        policies_raw = await kube.list_custom(namespace, "routingpolicies")
        pools: dict[str, AgentPoolSpec] = {}
        pool_problems: dict[str, str] = {}
        for obj in pools_raw:
            try:
                pools[obj["metadata"]["name"]] = AgentPoolSpec.model_validate(obj.get("spec", {}))
            except pydantic.ValidationError as exc:
                pool_problems[obj["metadata"]["name"]] = first_error(exc)
        policies: list[Policy] = []
        invalid: dict[str, str] = {}
        for obj in policies_raw:
            meta = obj["metadata"]
            self._refused[(namespace, meta["name"])] = set(refusals(obj))
            if meta.get("deletionTimestamp"):
                continue  # its routes leave the sidecars now
            try:
                spec = RoutingPolicySpec.model_validate(obj.get("spec", {}))
            except pydantic.ValidationError as exc:
                invalid[meta["name"]] = first_error(exc)
                continue
            policies.append(Policy(meta["name"], spec, meta.get("generation", 1)))
        secrets = await self._secrets(namespace, policies, pools)
        labelled = list(self._injected.get(namespace, {}).values())
        everyone = self._pods(labelled)

        # Problems are judged once per policy, not per targeted pod: a policy that selects
        # no ready pod yet still says that its pool or Secret is missing.
        own = {p.name: policy_problems(p, pools, secrets) for p in policies}
        # How many pods share a pod's limits: those its policies select.
        shares = sharing({pod.name: [p.name for p in policies if selects(p.spec.selector,
                                                                        pod.labels)]
                          for pod in everyone})
        # Pods with the same labels and sharing get the same document: the replicas of a
        # Deployment are compiled once, not once each.
        same: dict[tuple[frozenset[tuple[str, str]], int], Compiled] = {}
        every: dict[str, Compiled] = {}
        for pod in everyone:
            key = (frozenset(pod.labels.items()), shares[pod.name])
            if key not in same:
                same[key] = compile_pod(pod.labels, policies, pools, secrets, namespace,
                                        problems=own,
                                        limits=self.limits.store(namespace, shares[pod.name]))
            every[pod.name] = same[key]
        if self.delivery is not None:
            self._offer(self.delivery, namespace, everyone, every)
        if not leading:
            return "standby"
        if self.namespace_configs is not None:
            try:
                await self.namespace_configs.keep(namespace, policies, pools, own,
                                                  [pod.labels for pod in everyone])
            except kube.KubeError as exc:  # the sidecars' watches still serve
                log.warning("could not write namespace %s's ConfigMap: %s", namespace, exc)
        acknowledged = self.synced.acknowledged() if self.synced is not None else set()
        refused = {pod for obj in policies_raw for pod in refusals(obj)} & set(every)
        synced = {pod.name for pod in everyone if (config := offered(every[pod.name]))
                  and digest(pod.uid, str(config.metadata.get("hash"))) in acknowledged
                  and pod.name not in refused}
        self.metrics.sidecars_in(namespace, {
            "in_sync": len(synced), "failed": len(refused),
            "pending": len(everyone) - len(synced) - len(refused)})

        for name, reason in invalid.items():
            own[name] = [Problem("Invalid", reason)]
        for obj in policies_raw:
            for gone in [p for p in refusals(obj) if p not in every]:  # nothing to say
                await kube.mark_refused(namespace, "routingpolicies", obj["metadata"]["name"],
                                        gone, None)
        for obj in policies_raw:
            await self._policy_status(obj, every, synced, own, space)
        for obj in pools_raw:
            name = obj["metadata"]["name"]
            users = sum(1 for p in policies if name in p.spec.pools)
            await self._pool_status(obj, pools.get(name), pool_problems.get(name), users)
        return "ok"

    async def _secrets(self, namespace: str, policies: Iterable[Policy],
                       pools: dict[str, AgentPoolSpec]) -> dict[str, dict[str, str]]:
        names = {a.api_key_secret_ref.name
                 for p in policies for pool in p.spec.pools if pool in pools
                 for a in pools[pool].agents if a.api_key_secret_ref}
        found = await asyncio.gather(*(kube.read_secret(namespace, n) for n in sorted(names)))
        return {n: data for n, data in zip(sorted(names), found, strict=True) if data is not None}

    def _pods(self, pods: list[dict[str, Any]]) -> list[PodTarget]:
        return [PodTarget(meta["name"], dict(meta.get("labels") or {}), meta.get("uid", ""))
                for pod in pods if not (meta := pod["metadata"]).get("deletionTimestamp")]

    async def report(self, namespace: str, pod: str, policies: Sequence[str],
                     why: str | None) -> None:
        """A watching sidecar refused its config (`why`), or applied it (None): on the
        status of the policies it came from, where a refusal is shown or cleared."""
        for name in policies:
            if why is None and pod not in self._refused.get((namespace, name), ()):
                continue  # nothing to clear: no write
            try:
                await kube.mark_refused(namespace, "routingpolicies", name, pod, why)
            except kube.KubeError as exc:
                log.warning("could not report pod %s's answer on policy %s: %s", pod, name,
                            exc)

    @staticmethod
    def _offer(delivery: Delivery, namespace: str, pods: list[PodTarget],
               compiled: dict[str, Compiled]) -> None:
        for pod in pods:
            c = compiled[pod.name]
            if config := offered(c):
                delivery.publish(namespace, pod.name, pod.uid, config, c.policies)
        delivery.retain(namespace, {pod.name for pod in pods})

    async def _policy_status(self, obj: dict[str, Any], compiled: dict[str, Compiled],
                             serving: set[str], own: dict[str, list[Problem]],
                             space: _Namespace) -> None:
        meta = obj["metadata"]
        name = meta["name"]
        if meta.get("deletionTimestamp"):
            return
        targets = [pod for pod, c in compiled.items() if name in c.policies]
        problems = list(own.get(name, []))
        for pod in targets:  # what only shows on a pod: a route another policy also defines
            for problem in compiled[pod].problems.get(name, []):
                if problem not in problems:
                    problems.append(problem)
        synced = [p for p in targets if p in serving]
        resolved = not any(p.reason != "RouteConflict" for p in problems)
        refused = refusals(obj)  # what watching sidecars said, written by any replica
        all_synced = len(synced) == len(targets) and not refused
        behind = "Refused" if refused else "Pending"
        conditions = [
            _condition("Resolved", resolved, problems[0].reason if problems else "Resolved",
                       "; ".join(p.message for p in problems) or "pools and secrets found"),
            _condition("Synced", all_synced and resolved,
                       "Synced" if all_synced else behind,
                       f"{len(synced)}/{len(targets)} selected pods serve this policy"
                       + "".join(f"; pod {pod} refused {why}"
                                 for pod, why in sorted(refused.items()))),
        ]
        ready = resolved and all_synced
        conditions.append(_condition("Ready", ready, "Ready" if ready else
                                     conditions[0]["reason"] if not resolved else behind,
                                     conditions[0]["message"] if not resolved
                                     else conditions[1]["message"]))
        status = {
            "observedGeneration": meta.get("generation"),
            "targetPods": len(targets),
            "syncedPods": len(synced),
            "synced": f"{len(synced)}/{len(targets)}",
            "conditions": _keep_transitions(obj, conditions, meta.get("generation")),
        }
        versions = {str(c.config.metadata.get("hash")) for p in synced
                    if (c := compiled[p]).config is not None}
        if len(versions) == 1:  # what they serve, when it is one document
            status["configVersion"] = versions.pop()
        config = next((c.config for c in map(compiled.get, targets) if c and c.config), None)
        if config is not None:
            policy = RoutingPolicySpec.model_validate(obj.get("spec", {}))
            if quota := await remaining(self.limits, meta["namespace"], config, policy.routes):
                status["quota"] = quota
        await _patch_if_changed(obj, "routingpolicies", status)
        # One Event per distinct problem, not one per resync.
        news = problems[0] if problems else (
            Problem("Refused", conditions[1]["message"]) if refused else None)
        key = f"policy/{name}"
        if news is None:
            space.reported.pop(key, None)
        elif space.reported.get(key) != (news.reason, news.message):
            space.reported[key] = (news.reason, news.message)
            try:
                await kube.warn(obj, news.reason, news.message)
            except kube.KubeError as exc:  # the status says it too
                log.warning("could not post the %s Event: %s", news.reason, exc)

    async def _pool_status(self, obj: dict[str, Any], spec: AgentPoolSpec | None,
                           problem: str | None, users: int) -> None:
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            return
        ok = spec is not None
        conditions = [_condition("Ready", ok, "Valid" if ok else "Invalid",
                                 f"{len(spec.agents)} agent(s)" if spec else problem or "")]
        await _patch_if_changed(obj, "agentpools", {
            "observedGeneration": meta.get("generation"),
            "agents": len(spec.agents) if spec else 0,
            "policies": users,
            "conditions": _keep_transitions(obj, conditions, meta.get("generation")),
        })


_POD_META = ("name", "uid", "labels", "annotations", "deletionTimestamp")
_POD_STATUS = ("podIP", "conditions", "initContainerStatuses")


def offered(compiled: Compiled) -> RouterConfig | None:
    """What the pod's sidecar is offered: None while a pool or Secret it needs is
    missing (it keeps its last good config), no routes when no policy selects it."""
    if compiled.problems and compiled.config is None:
        return None
    return compiled.config or EMPTY


def refusals(obj: dict[str, Any]) -> dict[str, str]:
    """The policy's pods whose sidecar refused its config, and why."""
    return {pod: why for pod, why in
            ((obj.get("status") or {}).get("refused") or {}).items() if why}


async def _patch_if_changed(obj: dict[str, Any], plural: str, status: dict[str, Any]) -> None:
    """Resyncs find the same status over and over: write only what changed."""
    old = obj.get("status") or {}
    if all(old.get(k) == v for k, v in status.items()):
        return
    meta = obj["metadata"]
    await kube.patch_status(meta["namespace"], plural, meta["name"], status)


def _condition(kind: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason,
            "message": message[:1000]}


def _keep_transitions(obj: dict[str, Any], conditions: list[dict[str, Any]],
                      generation: int | None) -> list[dict[str, Any]]:
    """lastTransitionTime changes only when a condition's status does."""
    old = {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for c in conditions:
        prev = old.get(c["type"])
        same = prev is not None and prev.get("status") == c["status"]
        c["lastTransitionTime"] = prev.get("lastTransitionTime", now) if same and prev else now
        c["observedGeneration"] = generation
    return conditions
