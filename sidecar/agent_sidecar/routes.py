"""The routes one config serves, and who is answering a stream.

A config document becomes one `AgentRouter` per route (the engine's own
`build_route`), built once when the config is loaded and kept in an immutable
`Loaded` snapshot: a request picks the snapshot up when it starts and finishes on
it, whatever is pushed meanwhile.

A stream's headers go out with its first event, before the engine's `Done` tells who
answered. The engine does not announce the agent it is streaming from, so each agent
carries a small middleware noting when it starts an attempt, and each router's
strategy is wrapped to note its plan; for the stream being served (a context
variable) that is enough to name the agent, the attempts so far and the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import time
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.agent import Agent
from agent.catalog import PROVIDERS
from agent.config import RouterConfig, build_route
from agent.health import AgentHealth
from agent.middleware import Middleware
from agent.router import AgentRouter
from agent.strategies import Plan, Strategy
from agent.types import Request
from agent_sidecar.wire import Winner, header_value


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    router: AgentRouter
    wires: frozenset[str]  # the wire formats its agents speak ("openai", "anthropic", ...)
    headers: dict[str, str]  # on every answer of this route


@dataclass(frozen=True, slots=True)
class Loaded:
    """One validated config and its routers: swapped whole, never mutated."""

    config: RouterConfig
    routes: dict[str, Route]
    source: str  # "file", "state" or "push"
    loaded_at: float = field(default_factory=time.time)

    @property
    def version(self) -> int:
        return self.config.version

    @property
    def names(self) -> list[str]:
        return list(self.routes)

    def resolve(self, model: str) -> Route | None:
        """The route an app's `model` names, else the default route (if any)."""
        route = self.routes.get(model)
        if route is None and self.config.default_route is not None:
            return self.routes[self.config.default_route]
        return route

    @classmethod
    def build(cls, config: RouterConfig, source: str) -> Loaded:
        agents = {a.name: a.build() for a in config.agents}
        for agent in agents.values():
            agent.middleware.append(_AttemptNote(agent))
        routes: dict[str, Route] = {}
        for spec in config.routes:
            router = build_route(spec, agents)
            router.strategy = _PlanNote(router.strategy)
            wires = frozenset(PROVIDERS[a.provider].wire for a in router.agents)
            headers = {
                "x-agent-route": header_value(spec.name),
                "x-agent-config-version": str(config.version),
            }
            routes[spec.name] = Route(spec.name, router, wires, headers)
        return cls(config, routes, source)

    def warm(self) -> None:
        """Look prices and capabilities up now (the first lookup of genai-prices data is
        slow) rather than in the first request of each model."""
        for route in self.routes.values():
            for agent in route.router.agents:
                _ = agent.price, agent.capabilities


# ---- who answers a stream -----------------------------------------------------------------


class StreamWatch:
    """What one stream's router did before its first event."""

    __slots__ = ("plan", "started")

    def __init__(self) -> None:
        self.plan: Plan | None = None
        # (agent, task) per attempt started; racing strategies run each in its own task
        self.started: list[tuple[Agent, asyncio.Task[Any] | None]] = []

    def winner(self, route: Route) -> Winner:
        router = route.router
        reason = self.plan.reason if self.plan is not None else router.strategy.name
        agent: Agent | None = None
        if router.strategy.races:
            won = [a for a, t in self.started if t is not None and _succeeded(t)]
            failed = sum(1 for _, t in self.started if t is not None and _failed(t))
            if len(won) == 1:  # two racers finishing in the same instant: cannot tell
                agent = won[0]
                reason += f"; {_label(router, agent)} answered first"
                reason += f", {failed} failed" if failed else ""
        elif self.started:
            agent = self.started[-1][0]
            failed = len(self.started) - 1 + self._skipped_before(router, agent)
            if failed:
                reason += f"; fell back to {_label(router, agent)} after {failed} failed attempt(s)"
        return Winner(
            agent.provider if agent else None,
            agent.model if agent else None,
            len(self.started),
            reason,
        )

    def _skipped_before(self, router: AgentRouter, agent: Agent) -> int:
        """Agents ahead of `agent` in the plan that were never started (open circuits)."""
        if self.plan is None:
            return 0
        started = {id(a) for a, _ in self.started}
        order, index = self.plan.order, _index(router, agent)
        position = order.index(index) if index in order else 0
        return sum(1 for i in order[:position] if id(router.agents[i]) not in started)


_watch: contextvars.ContextVar[StreamWatch | None] = contextvars.ContextVar(
    "agent_sidecar_stream_watch", default=None
)


@contextlib.contextmanager
def watching() -> Iterator[StreamWatch]:
    """Watch the routing of the stream served in this context."""
    watch = StreamWatch()
    token = _watch.set(watch)
    try:
        yield watch
    finally:
        _watch.reset(token)


class _AttemptNote(Middleware):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def before(self, request: Request) -> None:
        watch = _watch.get()
        if watch is not None:
            watch.started.append((self.agent, asyncio.current_task()))


class _PlanNote(Strategy):
    """The route's strategy, unchanged, noting each plan for a watched stream."""

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner
        self.name = inner.name
        self.races = inner.races
        self.hedge_delay = inner.hedge_delay

    def plan(
        self, request: Request, agents: Sequence[Agent], health: Sequence[AgentHealth]
    ) -> Plan | Awaitable[Plan]:
        plan = self.inner.plan(request, agents, health)
        if inspect.isawaitable(plan):
            return self._later(plan)
        self._note(plan)
        return plan

    async def _later(self, plan: Awaitable[Plan]) -> Plan:
        result = await plan
        self._note(result)
        return result

    @staticmethod
    def _note(plan: Plan) -> None:
        watch = _watch.get()
        if watch is not None:
            watch.plan = plan


def _succeeded(task: asyncio.Task[Any]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is None


def _failed(task: asyncio.Task[Any]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is not None


def _index(router: AgentRouter, agent: Agent) -> int:
    return next(i for i, a in enumerate(router.agents) if a is agent)


def _label(router: AgentRouter, agent: Agent) -> str:
    return router.labels[_index(router, agent)]
