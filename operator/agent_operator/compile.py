"""From custom resources to the engine's config document, per pod. No I/O here.

A pod's document holds the routes of every RoutingPolicy in its namespace that selects
it. Agents are named `<pool>.<agent>` so that pools never collide. API keys are read
from Secrets into the document and nowhere else: problems name the Secret and key,
never a value.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pydantic

from agent.config import (
    KEY_FILE_DIR,
    AgentConfig,
    LimitsStoreConfig,
    RouteConfig,
    RouterConfig,
)
from agent_operator.resources import AgentPoolSpec, PodSelector, RoutingPolicySpec


@dataclass(frozen=True)
class Policy:
    name: str
    spec: RoutingPolicySpec
    generation: int = 1


@dataclass
class Problem:
    """Why a policy cannot be compiled; goes to its status and Events."""

    reason: str  # PoolNotFound, SecretNotFound, UnknownAgent, RouteConflict, Invalid
    message: str


@dataclass
class Compiled:
    """The document for one pod, or the problems that keep its last good one serving."""

    config: RouterConfig | None
    policies: list[str]
    problems: dict[str, list[Problem]] = field(default_factory=dict)  # policy -> problems

    @property
    def hash(self) -> str:
        return self.config.metadata.get("hash", "") if self.config else ""


def selects(selector: PodSelector, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics (an empty selector selects every pod)."""
    for key, value in (selector.match_labels or {}).items():
        if labels.get(key) != value:
            return False
    for req in selector.match_expressions or ():
        values = req.values or []
        present = req.key in labels
        if req.operator == "In" and (not present or labels[req.key] not in values):
            return False
        if req.operator == "NotIn" and present and labels[req.key] in values:
            return False
        if req.operator == "Exists" and not present:
            return False
        if req.operator == "DoesNotExist" and present:
            return False
    return True


def policy_problems(policy: Policy, pools: Mapping[str, AgentPoolSpec],
                    secrets: Mapping[str, Mapping[str, str]]) -> list[Problem]:
    """What is missing for this policy, whatever pod it lands on."""
    problems = []
    for pool_name in policy.spec.pools:
        pool = pools.get(pool_name)
        if pool is None:
            problems.append(Problem("PoolNotFound", f"AgentPool {pool_name!r} does not exist"))
            continue
        for agent in pool.agents:
            ref = agent.api_key_secret_ref
            if ref is None:
                continue
            if ref.name not in secrets:
                problems.append(Problem("SecretNotFound",
                                        f"Secret {ref.name!r} (for {pool_name}/{agent.name}) "
                                        "does not exist"))
            elif ref.key not in secrets[ref.name]:
                problems.append(Problem("SecretKeyNotFound",
                                        f"Secret {ref.name!r} has no key {ref.key!r} "
                                        f"(for {pool_name}/{agent.name})"))
    if not problems:
        names = {f"{p}.{a.name}" for p in policy.spec.pools for a in pools[p].agents}
        short = {a.name for p in policy.spec.pools for a in pools[p].agents}
        for rule in policy.spec.rules:
            for wanted in rule.prefer:
                if wanted.replace("/", ".") not in names and wanted not in short:
                    problems.append(Problem("UnknownAgent",
                                            f"rule {rule.reason!r} prefers {wanted!r}, "
                                            "which none of the policy's pools has"))
        if policy.spec.strategy.weights:
            for wanted in policy.spec.strategy.weights:
                if wanted.replace("/", ".") not in names and wanted not in short:
                    problems.append(Problem("UnknownAgent",
                                            f"weights name {wanted!r}, which none of the "
                                            "policy's pools has"))
    if not problems:
        # What the schema cannot say, the engine's own config models do: build the
        # policy's part of the document once, so one bad policy is reported as such
        # instead of failing its whole namespace.
        members = [f"{p}.{a.name}" for p in policy.spec.pools for a in pools[p].agents]
        try:
            for pool_name in policy.spec.pools:
                for agent in pools[pool_name].agents:
                    _agent(f"{pool_name}.{agent.name}", agent, secrets)
            for route_name in policy.spec.routes:
                _route(route_name, policy.spec, members)
        except (pydantic.ValidationError, ValueError, re.error) as exc:
            problems.append(Problem("Invalid", first_error(exc)))
    return problems


def first_error(exc: Exception) -> str:
    if isinstance(exc, pydantic.ValidationError):
        e = exc.errors()[0]
        return f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
    return str(exc)


def compile_pod(labels: Mapping[str, str], policies: Sequence[Policy],
                pools: Mapping[str, AgentPoolSpec],
                secrets: Mapping[str, Mapping[str, str]], namespace: str = "",
                problems: Mapping[str, list[Problem]] | None = None,
                limits: LimitsStoreConfig | None = None) -> Compiled:
    """The config document for a pod with these labels. `problems`: `policy_problems` of
    each policy when the caller has them already (one reconcile compiles many pods).
    `limits`: where the pod counts its limits, named in the document when it has any."""
    chosen = [p for p in policies if selects(p.spec.selector, labels)]
    return compile_policies(chosen, pools, secrets, namespace, problems, limits)


def compile_policies(chosen: Sequence[Policy], pools: Mapping[str, AgentPoolSpec],
                     secrets: Mapping[str, Mapping[str, str]], namespace: str = "",
                     problems: Mapping[str, list[Problem]] | None = None,
                     limits: LimitsStoreConfig | None = None,
                     key_files: bool = False) -> Compiled:
    """The document of these policies together (those that select a pod). `key_files`:
    agents name their key's file (`api_key_file`, where the pod mounts the Secret key)
    instead of holding the key, and `secrets` is not read."""
    chosen = sorted(chosen, key=lambda p: p.name)
    result = Compiled(None, [p.name for p in chosen])
    if not chosen:
        return result
    for policy in chosen:
        found = (problems[policy.name] if problems is not None
                 else policy_problems(policy, pools, secrets))
        if found:
            result.problems[policy.name] = list(found)
    if result.problems:
        return result  # the pod keeps its last good config
    agents: dict[str, AgentConfig] = {}
    routes: list[RouteConfig] = []
    owner: dict[str, str] = {}
    for policy in chosen:
        members = []
        for pool_name in policy.spec.pools:
            for agent in pools[pool_name].agents:
                name = f"{pool_name}.{agent.name}"
                agents.setdefault(name, _agent(name, agent, secrets, key_files))
                members.append(name)
        for route_name in policy.spec.routes:
            if route_name in owner:
                result.problems.setdefault(policy.name, []).append(Problem(
                    "RouteConflict", f"route {route_name!r} is also defined by policy "
                    f"{owner[route_name]!r}, which wins (alphabetical order)"))
                continue
            owner[route_name] = policy.name
            routes.append(_route(route_name, policy.spec, members))
    config = RouterConfig(agents=list(agents.values()), routes=routes,
                          default_route=routes[0].name)
    if limits is not None and has_limits(config):
        config = config.model_copy(update={"limits_store": limits})
    # The hash covers the keys too, so a rotated key is delivered; it never leaves as a key.
    digest = hashlib.sha256(orjson.dumps(config.document(), option=orjson.OPT_SORT_KEYS))
    source = ",".join(f"{namespace}/{p.name}" if namespace else p.name for p in chosen)
    result.config = config.model_copy(
        update={"metadata": {"source": source, "hash": digest.hexdigest()[:32]}})
    return result


def has_limits(config: RouterConfig) -> bool:
    """Whether any agent or route has a limit: only then does a document name a store (so
    pods scaling, which changes the share, do not re-deliver documents without limits)."""
    return any(a.limits for a in config.agents) or any(r.limits for r in config.routes)


def _agent(name: str, agent: Any, secrets: Mapping[str, Mapping[str, str]],
           key_files: bool = False) -> AgentConfig:
    # The pool's agent is the engine's AgentConfig spelled for Kubernetes: copy its fields.
    ref = agent.api_key_secret_ref
    fields = agent.model_dump(exclude={"api_key_secret_ref"}, exclude_none=True)
    if key_files:
        path = f"{KEY_FILE_DIR}/{key_path(ref.name, ref.key)}" if ref else None
        return AgentConfig.model_validate({**fields, "name": name, "api_key_file": path})
    key = secrets[ref.name][ref.key] if ref else None
    return AgentConfig.model_validate({**fields, "name": name, "api_key": key})


def key_path(secret: str, key: str) -> str:
    """Where a Secret's key is mounted, under KEY_FILE_DIR."""
    return f"{secret}/{key}"


def _resolve(wanted: str, members: Sequence[str]) -> str:
    dotted = wanted.replace("/", ".")
    if dotted in members:
        return dotted
    return next(m for m in members if m.split(".", 1)[1] == wanted)


def _route(name: str, spec: RoutingPolicySpec, members: list[str]) -> RouteConfig:
    # The policy's strategy and rules are the engine's RouteOptions and Rules spelled for
    # Kubernetes: copy them, naming agents as the document does (`pool.agent`).
    options = spec.strategy.model_dump()
    if options["weights"]:
        options["weights"] = {_resolve(k, members): v for k, v in options["weights"].items()}
    rules = [
        {**rule.model_dump(), "prefer": [_resolve(p, members) for p in rule.prefer]}
        for rule in spec.rules
    ]
    return RouteConfig.model_validate({**options, "name": name, "agents": members, "rules": rules})
