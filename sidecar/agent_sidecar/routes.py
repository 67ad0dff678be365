"""The routes one config serves.

A config document becomes one `AgentRouter` per route (the engine's own
`build_route`), built once when the config is loaded and kept in an immutable
`Loaded` snapshot: a request picks the snapshot up when it starts and finishes on
it, whatever is pushed meanwhile.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from opentelemetry import trace

from agent._base import BaseAgent
from agent.agent import Agent
from agent.catalog import PROVIDERS
from agent.config import RouterConfig, build_route
from agent.limits import LimitsStore, make_store
from agent.router import AgentRouter
from agent.strategies import Cheapest, Fallback, Fastest, Latency, RoundRobin, Weighted
from agent.transport import AsyncTransport
from agent_sidecar.wire import header_value


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    router: AgentRouter
    wires: frozenset[str]  # the wire formats its agents speak ("openai", "anthropic", ...)
    headers: dict[str, str]  # on every answer of this route
    # The wire format whose callers' conversation nothing here reads (see `unread`).
    unread: str | None = None

    def wire_of(self, agent: str, provider: str) -> str:
        """The wire format of the agent the router names `agent` (its provider's, unless
        it is an OpenAI agent calling the Responses API)."""
        for a in self.router.agents:
            if a.name == agent:
                return _wire(a)
        return PROVIDERS[provider].wire


@dataclass(frozen=True, slots=True)
class Loaded:
    """One validated config and its routers: swapped whole, never mutated."""

    config: RouterConfig
    routes: dict[str, Route]
    source: str  # "file", "state", "push" or "namespace" (its namespace's ConfigMap)
    limits_store: LimitsStore
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
    def build(
        cls,
        config: RouterConfig,
        source: str,
        transport: AsyncTransport | None = None,
        previous: Loaded | None = None,
    ) -> Loaded:
        """Routers for every route; `transport`: their upstream HTTP client (None: the
        engine's default). The `previous` config's limits store is kept when the store
        is configured the same: a push does not reset what was counted."""
        agents = {a.name: a.build() for a in config.agents}
        if previous is not None and previous.config.limits_store == config.limits_store:
            store = previous.limits_store
        else:  # one for every route: an agent's limits hold across them
            store = make_store(config.limits_store)
        routes: dict[str, Route] = {}
        tracing = _tracer_provider()
        for spec in config.routes:
            router = build_route(
                spec, agents, transport=transport, limits_store=store, tracer_provider=tracing
            )
            wires = frozenset(_wire(a) for a in router.agents)
            headers = {
                "x-agent-route": header_value(spec.name),
                "x-agent-config-version": str(config.version),
            }
            routes[spec.name] = Route(spec.name, router, wires, headers, _unread(router))
        return cls(config, routes, source, store)

    def warm(self) -> None:
        """Look prices and capabilities up now (the first lookup of genai-prices data is
        slow) rather than in the first request of each model."""
        for route in self.routes.values():
            for agent in route.router.agents:
                _ = agent.price, agent.capabilities


# Strategies that order the agents without reading the request's conversation.
_BLIND = (Fallback, RoundRobin, Cheapest, Weighted, Latency, Fastest)


def _unread(router: AgentRouter) -> str | None:
    """The wire format in which a caller's conversation needs no reading on this route:
    every agent speaks it and sends the caller's body on as it came, and nothing on the
    way reads the messages (router middleware, a strategy that looks at the input,
    continuing a broken stream on another agent, which rebuilds the conversation). Its
    requests skip building the conversation; the token estimate counts the body's text.
    """
    if router.middleware or router.stream_recovery == "continue":
        return None
    if type(router.strategy) not in _BLIND:
        return None
    agents = router.agents
    if not all(type(a) is Agent and a.relays for a in agents):  # a subclass may read more
        return None
    wires = {_wire(a) for a in agents}
    return wires.pop() if len(wires) == 1 else None


def _wire(agent: BaseAgent) -> str:
    wire = getattr(agent, "wire", None)  # an Agent knows; a nested router speaks its provider's
    return wire if isinstance(wire, str) else PROVIDERS[agent.provider].wire


_NOT_TRACING = trace.NoOpTracerProvider()


def _tracer_provider() -> trace.TracerProvider:
    """What the routers record their decisions with: the provider the sidecar installed
    at start, else a no-op one. Given none, a router would ask OpenTelemetry for the
    global provider on every request, which reads the environment each time while no
    provider is installed."""
    provider = trace.get_tracer_provider()
    return _NOT_TRACING if isinstance(provider, trace.ProxyTracerProvider) else provider
