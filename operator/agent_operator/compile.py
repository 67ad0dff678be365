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
from pydantic import SecretStr

from agent.config import (
    AgentConfig,
    CircuitBreakerConfig,
    PriceConfig,
    RouteConfig,
    RouterConfig,
    Rule,
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
                problems: Mapping[str, list[Problem]] | None = None) -> Compiled:
    """The config document for a pod with these labels. `problems`: `policy_problems` of
    each policy when the caller has them already (one reconcile compiles many pods)."""
    chosen = sorted((p for p in policies if selects(p.spec.selector, labels)),
                    key=lambda p: p.name)
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
                agents.setdefault(name, _agent(name, agent, secrets))
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
    # The hash covers the keys too, so a rotated key is pushed; it never leaves as a key.
    digest = hashlib.sha256(orjson.dumps(config.document(), option=orjson.OPT_SORT_KEYS))
    source = ",".join(f"{namespace}/{p.name}" if namespace else p.name for p in chosen)
    result.config = config.model_copy(
        update={"metadata": {"source": source, "hash": digest.hexdigest()[:32]}})
    return result


def _agent(name: str, agent: Any, secrets: Mapping[str, Mapping[str, str]]) -> AgentConfig:
    ref = agent.api_key_secret_ref
    caps = agent.capabilities.model_dump(exclude_none=True) if agent.capabilities else None
    return AgentConfig(
        name=name,
        provider=agent.provider,
        model=agent.model,
        base_url=agent.base_url,
        api_key=SecretStr(secrets[ref.name][ref.key]) if ref else None,
        timeout=agent.timeout_seconds,
        weight=agent.weight,
        price=PriceConfig(input_per_mtok=agent.price.input_per_m_tok,
                          output_per_mtok=agent.price.output_per_m_tok) if agent.price else None,
        capabilities=caps or None,
        headers=dict(agent.headers),
    )


def _resolve(wanted: str, members: Sequence[str]) -> str:
    dotted = wanted.replace("/", ".")
    if dotted in members:
        return dotted
    return next(m for m in members if m.split(".", 1)[1] == wanted)


def _route(name: str, spec: RoutingPolicySpec, members: list[str]) -> RouteConfig:
    s = spec.strategy
    breaker = s.circuit_breaker
    return RouteConfig(
        name=name,
        agents=members,
        strategy=s.type,
        retries=s.retries,
        backoff=s.backoff_seconds,
        max_retry_after=s.max_retry_after_seconds,
        deadline=s.deadline_seconds,
        hedge_delay=s.hedge_delay_seconds,
        weights={_resolve(k, members): v for k, v in s.weights.items()} if s.weights else None,
        circuit_breaker=CircuitBreakerConfig(failures=breaker.failures,
                                             cooldown=breaker.cooldown_seconds)
        if breaker else CircuitBreakerConfig(),
        rules=[
            Rule(prefer=[_resolve(p, members) for p in r.prefer], reason=r.reason,
                 input_contains=r.input_contains, input_matches=r.input_matches,
                 min_input_chars=r.min_input_chars, max_input_chars=r.max_input_chars,
                 tools=r.tools, metadata=r.metadata)
            for r in spec.rules
        ],
    )
