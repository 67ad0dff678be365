"""Routing strategies. Each has one job: put the candidate agents in order for one
request (and say why), or say that they race. Retries, breakers, deadlines and
fallback are the router's, shared by all of them (see `agent.health`)."""

from __future__ import annotations

import inspect
import itertools
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.errors import ConfigurationError, NoCapableAgentError
from agent.health import AgentHealth
from agent.types import Request, RouteResult

if TYPE_CHECKING:
    from agent._base import BaseAgent as Agent

__all__ = [
    "Capability",
    "Cheapest",
    "Custom",
    "Fallback",
    "Fastest",
    "Latency",
    "Plan",
    "RoundRobin",
    "Strategy",
    "Weighted",
    "make_strategy",
]


@dataclass(slots=True)
class Plan:
    order: list[int]  # indexes into the router's agents, first choice first
    reason: str


class Strategy:
    name = "fallback"
    races = False  # True: candidates run concurrently, the first success wins
    hedge_delay: float | None = None  # racing only: start the next one after this delay

    def plan(
        self, request: Request, agents: Sequence[Agent], health: Sequence[AgentHealth]
    ) -> Plan | Awaitable[Plan]:
        return Plan(list(range(len(agents))), "in the given order")


class Fallback(Strategy):
    name = "fallback"


class RoundRobin(Strategy):
    """Rotate the first choice per call; fall back over the rest in order."""

    name = "round_robin"

    def __init__(self) -> None:
        # next() on itertools.count is atomic in CPython: safe across threads and tasks.
        self._turns = itertools.count()

    def plan(
        self, request: Request, agents: Sequence[Agent], health: Sequence[AgentHealth]
    ) -> Plan:
        n = len(agents)
        first = next(self._turns) % n
        return Plan([(first + i) % n for i in range(n)], f"round robin turn {first}")


class Cheapest(Strategy):
    """Lowest estimated cost of this request first; unknown prices last."""

    name = "cheapest"

    def plan(
        self, request: Request, agents: Sequence[Agent], health: Sequence[AgentHealth]
    ) -> Plan:
        estimates = [a.estimate_cost(request) for a in agents]
        costs = [math.inf if c is None else c for c in estimates]
        order = sorted(range(len(agents)), key=costs.__getitem__)
        best = costs[order[0]]
        shown = "unknown" if best == math.inf else f"${best:.6f}"
        return Plan(order, f"lowest estimated cost: {agents[order[0]].name} ({shown})")


class Capability(Strategy):
    """Only agents that can serve what the request needs, in the given order."""

    name = "capability"

    def plan(
        self, request: Request, agents: Sequence[Agent], health: Sequence[AgentHealth]
    ) -> Plan:
        needs = {
            "tools": bool(request.tools),
            "images": request.has_images,
            "structured": request.output_schema is not None,
            "stream": request.stream,
            "input_tokens": request.approx_input_tokens(),
        }
        missing = {a.name: a.capabilities.missing_for(**needs) for a in agents}  # type: ignore[arg-type]
        order = [i for i, a in enumerate(agents) if not missing[a.name]]
        if not order:
            raise NoCapableAgentError(
                "no agent can serve this request", {k: v for k, v in missing.items() if v}
            )
        wanted = [k for k in ("tools", "images", "structured", "stream") if needs[k]]
        return Plan(order, "capable of " + (", ".join(wanted) or "plain text"))


class Weighted(Strategy):
    """Random first choice in proportion to each agent's weight, then the rest likewise."""

    name = "weighted"

    def __init__(self, weights: Sequence[float] | None = None, seed: int | None = None) -> None:
        self.weights = list(weights) if weights is not None else None
        self._random = random.Random(seed)

    def plan(
        self, request: Request, agents: Sequence[Agent], health: Sequence[AgentHealth]
    ) -> Plan:
        weights = self.weights or [a.weight for a in agents]
        # Efraimidis-Spirakis: sort by u^(1/w), a weighted order without replacement.
        keys = [self._random.random() ** (1 / w) if w > 0 else -1.0 for w in weights]
        order = sorted(range(len(agents)), key=lambda i: -keys[i])
        return Plan(order, f"weighted pick {agents[order[0]].name}")


class Latency(Strategy):
    """Lowest moving-average latency first; agents never measured first (to learn);
    agents whose breaker is open last."""

    name = "latency"

    def plan(
        self, request: Request, agents: Sequence[Agent], health: Sequence[AgentHealth]
    ) -> Plan:
        def key(i: int) -> tuple[int, float]:
            h = health[i]
            return (h.breaker.state == "open", -1.0 if h.latency_ms is None else h.latency_ms)

        order = sorted(range(len(agents)), key=key)
        ms = health[order[0]].latency_ms
        return Plan(order, f"lowest latency ({'unmeasured' if ms is None else f'{ms:.1f}ms'})")


class Fastest(Strategy):
    """Race the candidates; the first success (for a stream, the first content) wins and
    every loser is cancelled. With `hedge_delay`, start the next candidate only if none
    has answered within that many seconds (hedged requests)."""

    name = "fastest"
    races = True

    def __init__(self, hedge_delay: float | None = None) -> None:
        self.hedge_delay = hedge_delay
        if hedge_delay is not None:
            self.name = "hedged"

    def plan(
        self, request: Request, agents: Sequence[Agent], health: Sequence[AgentHealth]
    ) -> Plan:
        how = f"hedged every {self.hedge_delay}s" if self.hedge_delay is not None else "race"
        return Plan(list(range(len(agents))), how)


CustomRouter = Callable[[Request, list["Agent"]], RouteResult | Awaitable[RouteResult]]


class Custom(Strategy):
    """Your function picks the first agent and gives the reason; if that agent fails,
    the router falls back over the others in their given order."""

    name = "custom"

    def __init__(self, router: CustomRouter) -> None:
        self.router = router

    def plan(
        self, request: Request, agents: Sequence[Agent], health: Sequence[AgentHealth]
    ) -> Plan | Awaitable[Plan]:
        result = self.router(request, list(agents))
        if inspect.isawaitable(result):
            return self._later(result, agents)
        return self._plan(result, agents)

    async def _later(self, result: Awaitable[RouteResult], agents: Sequence[Agent]) -> Plan:
        return self._plan(await result, agents)

    def _plan(self, result: Any, agents: Sequence[Agent]) -> Plan:
        if not isinstance(result, RouteResult):
            raise ConfigurationError(
                f"custom_router must return RouteResult(agent=..., reason=...), got {result!r}"
            )
        first = next((i for i, a in enumerate(agents) if a is result.agent), None)
        if first is None:
            raise ConfigurationError(f"custom_router chose {result.agent!r}, not one of the agents")
        return Plan([first, *(i for i in range(len(agents)) if i != first)], result.reason)


# The one list of strategies: the config document's `strategy` values and the
# RoutingPolicy's enum are made from it. Each maker takes (hedge_delay, weights).
STRATEGIES: dict[str, Callable[[float | None, Sequence[float] | None], Strategy]] = {
    "fallback": lambda hedge, weights: Fallback(),
    "round_robin": lambda hedge, weights: RoundRobin(),
    "cheapest": lambda hedge, weights: Cheapest(),
    "capability": lambda hedge, weights: Capability(),
    "latency": lambda hedge, weights: Latency(),
    "weighted": lambda hedge, weights: Weighted(weights),
    "fastest": lambda hedge, weights: Fastest(hedge),
    "hedged": lambda hedge, weights: Fastest(0.5 if hedge is None else hedge),
}
STRATEGY_NAMES = (*STRATEGIES, "custom")


def make_strategy(
    strategy: str | Strategy,
    custom_router: CustomRouter | None = None,
    hedge_delay: float | None = None,
    weights: Sequence[float] | None = None,
) -> Strategy:
    if isinstance(strategy, Strategy):
        return strategy
    if strategy == "custom":
        if custom_router is None:
            raise ConfigurationError('strategy="custom" needs custom_router=')
        return Custom(custom_router)
    if custom_router is not None:
        raise ConfigurationError('custom_router= needs strategy="custom"')
    if strategy not in STRATEGIES:
        raise ConfigurationError(
            f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGY_NAMES)}"
        )
    return STRATEGIES[strategy](hedge_delay, weights)
