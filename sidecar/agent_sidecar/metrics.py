"""Prometheus metrics, in a registry private to one sidecar (so two in one process, as
in tests, never collide).

    agent_sidecar_requests_total{route,api,stream,code}      answered requests (code 499:
                                                             the client went away)
    agent_sidecar_request_duration_seconds{route,api,stream} whole request, streams included
    agent_sidecar_time_to_first_token_seconds{route,agent}   streams
    agent_sidecar_attempts_total{route,agent,outcome}        ok, error, skipped, cancelled
    agent_sidecar_fallbacks_total{route}                     requests that moved past an agent
    agent_sidecar_stream_errors_total{route}                 streams that failed after content
    agent_sidecar_tokens_total{route,agent,type}             input / output
    agent_sidecar_cost_usd_total{route,agent}                estimated
    agent_sidecar_in_flight_requests
    agent_sidecar_config_pushes_total{result}                applied, unchanged, stale, ...
    agent_sidecar_config_version, agent_sidecar_config_loaded
    agent_sidecar_circuit_state{route,agent,state}           1 for the breaker's state
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.types import Attempt, Response
from agent_sidecar.state import ConfigStore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_STATES = ("closed", "half_open", "open")


class Metrics:
    def __init__(self, store: ConfigStore) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "agent_sidecar_requests",
            "Requests answered",
            ["route", "api", "stream", "code"],
            registry=r,
        )
        self.duration = Histogram(
            "agent_sidecar_request_duration_seconds",
            "Time to answer a request (a whole stream)",
            ["route", "api", "stream"],
            buckets=_LATENCY,
            registry=r,
        )
        self.ttft = Histogram(
            "agent_sidecar_time_to_first_token_seconds",
            "Time to the first streamed content",
            ["route", "agent"],
            buckets=_LATENCY,
            registry=r,
        )
        self.attempts = Counter(
            "agent_sidecar_attempts",
            "Attempts of agents",
            ["route", "agent", "outcome"],
            registry=r,
        )
        self.fallbacks = Counter(
            "agent_sidecar_fallbacks",
            "Requests that fell back past at least one agent",
            ["route"],
            registry=r,
        )
        self.stream_errors = Counter(
            "agent_sidecar_stream_errors",
            "Streams that failed after content was sent",
            ["route"],
            registry=r,
        )
        self.tokens = Counter(
            "agent_sidecar_tokens", "Tokens used", ["route", "agent", "type"], registry=r
        )
        self.cost = Counter(
            "agent_sidecar_cost_usd", "Estimated cost in USD", ["route", "agent"], registry=r
        )
        self.in_flight = Gauge(
            "agent_sidecar_in_flight_requests", "Requests being answered", registry=r
        )
        self.pushes = Counter(
            "agent_sidecar_config_pushes", "Config pushes by result", ["result"], registry=r
        )
        r.register(_ConfigCollector(store))
        # Label lookups cost microseconds each; every request does several.
        self._answered: dict[tuple[str, str, bool, int], tuple[Any, Any]] = {}
        self._attempts: dict[tuple[str, str, str], Any] = {}
        self._answers: dict[tuple[str, str], _Answer] = {}

    def request(self, route: str, api: str, stream: bool, code: int, seconds: float) -> None:
        key = (route, api, stream, code)
        children = self._answered.get(key)
        if children is None:
            kind = "true" if stream else "false"
            children = self._answered[key] = (
                self.requests.labels(route, api, kind, str(code)),
                self.duration.labels(route, api, kind),
            )
        children[0].inc()
        children[1].observe(seconds)

    def routed(
        self, route: str, attempts: Sequence[Attempt], response: Response[Any] | None
    ) -> None:
        """One routing decision: its attempts and, when it succeeded, usage and cost."""
        winner = None
        fell_back = False
        for attempt in attempts:
            key = (route, attempt.agent, attempt.outcome)
            child = self._attempts.get(key)
            if child is None:
                child = self._attempts[key] = self.attempts.labels(*key)
            child.inc()
            if attempt.outcome == "ok":
                winner = attempt.agent
            elif attempt.outcome in ("error", "skipped"):
                fell_back = True
        if fell_back:
            self.fallbacks.labels(route).inc()
        if response is None or winner is None:
            return
        answer = self._answers.get((route, winner))
        if answer is None:
            answer = self._answers[(route, winner)] = _Answer(self, route, winner)
        usage = response.usage
        if usage.input_tokens:
            answer.input_tokens.inc(usage.input_tokens)
        if usage.output_tokens:
            answer.output_tokens.inc(usage.output_tokens)
        if response.cost_estimate:
            answer.cost.inc(response.cost_estimate)
        if response.time_to_first_token_ms is not None:
            answer.ttft.observe(response.time_to_first_token_ms / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Answer:
    """The metric children of one agent answering on one route."""

    __slots__ = ("cost", "input_tokens", "output_tokens", "ttft")

    def __init__(self, metrics: Metrics, route: str, agent: str) -> None:
        self.input_tokens = metrics.tokens.labels(route, agent, "input")
        self.output_tokens = metrics.tokens.labels(route, agent, "output")
        self.cost = metrics.cost.labels(route, agent)
        self.ttft = metrics.ttft.labels(route, agent)


class _ConfigCollector(Collector):
    """Read at scrape time: the loaded config and every agent's circuit breaker."""

    def __init__(self, store: ConfigStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        loaded = self.store.loaded
        yield GaugeMetricFamily(
            "agent_sidecar_config_loaded", "1 when a config is loaded", value=int(bool(loaded))
        )
        version = GaugeMetricFamily("agent_sidecar_config_version", "Version of the loaded config")
        circuits = GaugeMetricFamily(
            "agent_sidecar_circuit_state",
            "Circuit breaker state per agent of each route (1 for the current state)",
            labels=["route", "agent", "state"],
        )
        if loaded is not None:
            version.add_metric([], loaded.version)
            for name, route in loaded.routes.items():
                for agent, health in route.router.health().items():
                    for state in _STATES:
                        circuits.add_metric([name, agent, state], int(health["state"] == state))
        yield version
        yield circuits
