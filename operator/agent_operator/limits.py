"""Limits across the pods of a namespace: the Redis every delivered config names (from the
chart's values, through the operator's environment), how many pods share each limit
(a sidecar's fair share while Redis is away, or its share without Redis), and the
remaining room a RoutingPolicy's status shows. No I/O here but the status reads."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.config import LimitsStoreConfig, RouterConfig
from agent.limits import Quota
from agent_operator.compile import has_limits

log = logging.getLogger("agent_operator.limits")


@dataclass(frozen=True)
class SharedLimits:
    """Where every sidecar counts its limits: `redis_url` (None: each pod counts its
    share in memory), with the password and CA certificate delivered to the sidecars."""

    redis_url: str | None = None
    password: str | None = None
    ca_pem: str | None = None

    def __repr__(self) -> str:  # never the password (nor one inside the URL)
        return f"SharedLimits(redis={self.redis_url is not None})"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SharedLimits:
        return cls(
            env.get("AGENT_OPERATOR_LIMITS_REDIS_URL") or None,
            env.get("AGENT_OPERATOR_LIMITS_REDIS_PASSWORD") or None,
            env.get("AGENT_OPERATOR_LIMITS_REDIS_CA") or None,
        )

    def store(self, namespace: str, shares: int) -> LimitsStoreConfig:
        """The `limits_store` of a pod's document: its namespace's counters, `shares`
        pods sharing them."""
        return LimitsStoreConfig.model_validate(
            {
                "redis_url": self.redis_url,
                "password": self.password,
                "ca_pem": self.ca_pem,
                "shares": max(1, shares),
                "scope": namespace,
            }
        )


def sharing(pods: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """For each pod (name -> the policies selecting it), how many pods share its limits:
    those selected by any of its policies (a pool's agent may be in all of them)."""
    # Pods selected by the same policies count the same: compared once per distinct set,
    # not pod by pod (a thousand pods of one Deployment are one set, not a million pairs).
    alike = Counter(frozenset(policies) for policies in pods.values())
    shared = {wanted: sum(n for theirs, n in alike.items() if wanted & theirs) or 1
              for wanted in alike}
    return {pod: shared[frozenset(policies)] for pod, policies in pods.items()}


async def remaining(
    shared: SharedLimits, namespace: str, config: RouterConfig, routes: Sequence[str]
) -> dict[str, Any]:
    """The remaining room of `routes` (of a policy) and of their agents, as Redis holds
    it for every pod; empty without Redis (each pod then counts alone: no total)."""
    if shared.redis_url is None or not has_limits(config):
        return {}
    from agent.limits_redis import RedisStore

    store = RedisStore(
        shared.redis_url, password=shared.password, ca_pem=shared.ca_pem, scope=namespace, timeout=2.0
    )
    try:
        out: dict[str, Any] = {}
        for route in config.routes:
            if route.name not in routes:
                continue
            if route.limits is not None:
                quota = Quota.for_route(route.name, route.limits, store, route.limits.output_tokens)
                out.setdefault("routes", {})[route.name] = await store.remaining_async(quota)
            for agent in config.agents:
                if agent.name in route.agents and agent.limits is not None:
                    quota = Quota.for_agent(agent.name, agent.limits, store, 0)
                    out.setdefault("agents", {})[agent.name] = await store.remaining_async(quota)
        return out
    except Exception as exc:  # the status is a view: never fail a reconcile for it
        log.warning("could not read the remaining quota from Redis: %s", type(exc).__name__)
        return {}
    finally:
        await store.aclose()
