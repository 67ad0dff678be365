"""Prometheus metrics, in a registry private to one sidecar (so two in one process, as
in tests, never collide).

    agent_sidecar_requests_total{route,api,stream,code}      answered requests (code 499:
                                                             the client went away)
    agent_sidecar_request_duration_seconds{route,api,stream} whole request, streams included
    agent_sidecar_time_to_first_token_seconds{route,agent}   streams
    agent_sidecar_attempts_total{route,agent,outcome}        ok, error, skipped, cancelled
    agent_sidecar_fallbacks_total{route}                     requests that moved past an agent
    agent_sidecar_stream_errors_total{route}                 streams that failed after content
    agent_sidecar_stream_continuations_total{route,failed,agent}  ...and went on at `agent`
    agent_sidecar_tokens_total{route,agent,type}             input / output
    agent_sidecar_cost_usd_total{route,agent}                estimated
    agent_sidecar_in_flight_requests
    agent_sidecar_config_pushes_total{result}                applied, unchanged, stale, ...
    agent_sidecar_admin_auth_failures_total{result}          refused (401), limited (429)
    agent_sidecar_bodies_refused_total                       large bodies over the budget
    agent_sidecar_body_bytes_in_flight                       large bodies held now
    agent_sidecar_config_version, agent_sidecar_config_loaded
    agent_sidecar_circuit_state{route,agent,state}           1 for the breaker's state
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _untyped_go_string

from agent.types import Attempt, Response
from agent_sidecar.state import ConfigStore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Prometheus' own float formatting ("0.005", "+Inf"), which the library leaves untyped.
go_string = cast(Callable[[float], str], _untyped_go_string)

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_STATES = ("closed", "half_open", "open")


class Metrics:
    def __init__(self, store: ConfigStore) -> None:
        r = self.registry = CollectorRegistry()
        # What every request updates is kept as plain numbers and turned into metrics when
        # scraped: prometheus_client's Counter and Histogram take a lock and several calls
        # per update (about 3 us a request here), and one event loop needs no lock.
        self.requests = _Counter(
            "agent_sidecar_requests", "Requests answered", ("route", "api", "stream", "code")
        )
        self.duration = _Histogram(
            "agent_sidecar_request_duration_seconds",
            "Time to answer a request (a whole stream)",
            ("route", "api", "stream"),
        )
        self.ttft = _Histogram(
            "agent_sidecar_time_to_first_token_seconds",
            "Time to the first streamed content",
            ("route", "agent"),
        )
        self.attempts = _Counter(
            "agent_sidecar_attempts", "Attempts of agents", ("route", "agent", "outcome")
        )
        self.fallbacks = _Counter(
            "agent_sidecar_fallbacks",
            "Requests that fell back past at least one agent",
            ("route",),
        )
        self.tokens = _Counter("agent_sidecar_tokens", "Tokens used", ("route", "agent", "type"))
        self.cost = _Counter("agent_sidecar_cost_usd", "Estimated cost in USD", ("route", "agent"))
        self.in_flight = 0
        r.register(
            _Families(
                self.requests,
                self.duration,
                self.ttft,
                self.attempts,
                self.fallbacks,
                self.tokens,
                self.cost,
            )
        )
        Gauge(
            "agent_sidecar_in_flight_requests", "Requests being answered", registry=r
        ).set_function(lambda: self.in_flight)
        self.stream_errors = Counter(
            "agent_sidecar_stream_errors",
            "Streams that failed after content was sent",
            ["route"],
            registry=r,
        )
        self.continuations = Counter(
            "agent_sidecar_stream_continuations",
            "Streams that failed after content and were continued by the next agent",
            ["route", "failed", "agent"],
            registry=r,
        )
        self.pushes = Counter(
            "agent_sidecar_config_pushes", "Config pushes by result", ["result"], registry=r
        )
        self.auth_failures = Counter(
            "agent_sidecar_admin_auth_failures",
            "Admin requests without a valid token: refused (401) or limited (429)",
            ["result"],
            registry=r,
        )
        self.body_bytes = Gauge(
            "agent_sidecar_body_bytes_in_flight",
            "Bytes of large request bodies held now (drawn on the body budget)",
            registry=r,
        )
        self.bodies_refused = Counter(
            "agent_sidecar_bodies_refused",
            "Large request bodies refused because the body memory budget was spent",
            registry=r,
        )
        r.register(_ConfigCollector(store))

    def request(self, route: str, api: str, stream: bool, code: int, seconds: float) -> None:
        kind = "true" if stream else "false"
        self.requests.add((route, api, kind, str(code)))
        self.duration.observe((route, api, kind), seconds)

    def routed(
        self, route: str, attempts: Sequence[Attempt], response: Response[Any] | None
    ) -> None:
        """One routing decision: its attempts and, when it succeeded, usage and cost."""
        winner = None
        fell_back = False
        for attempt in attempts:
            self.attempts.add((route, attempt.agent, attempt.outcome))
            if attempt.outcome == "ok":
                winner = attempt.agent
            elif attempt.outcome in ("error", "skipped"):
                fell_back = True
        if fell_back:
            self.fallbacks.add((route,))
        if response is None or winner is None:
            return
        for c in response.route.continuations if response.route else ():
            self.continuations.labels(route, c.failed, c.agent).inc()
        usage = response.usage
        if usage.input_tokens:
            self.tokens.add((route, winner, "input"), usage.input_tokens)
        if usage.output_tokens:
            self.tokens.add((route, winner, "output"), usage.output_tokens)
        if response.cost_estimate:
            self.cost.add((route, winner), response.cost_estimate)
        if response.time_to_first_token_ms is not None:
            self.ttft.observe((route, winner), response.time_to_first_token_ms / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Counter:
    """A counter's values by label values."""

    __slots__ = ("help", "labels", "name", "values")

    def __init__(self, name: str, help: str, labels: tuple[str, ...]) -> None:
        self.name, self.help, self.labels = name, help, labels
        self.values: dict[tuple[str, ...], float] = {}

    def add(self, key: tuple[str, ...], amount: float = 1.0) -> None:
        self.values[key] = self.values.get(key, 0.0) + amount

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.help, labels=self.labels)
        for key, value in self.values.items():
            family.add_metric(key, value)
        return family


class _Histogram:
    """A histogram's bucket counts and sums by label values (buckets: `_LATENCY`)."""

    __slots__ = ("help", "labels", "name", "series")

    def __init__(self, name: str, help: str, labels: tuple[str, ...]) -> None:
        self.name, self.help, self.labels = name, help, labels
        # label values -> [count per bucket (the last one: above every bound), sum]
        self.series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, key: tuple[str, ...], value: float) -> None:
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = ([0] * (len(_LATENCY) + 1), [0.0])
        series[0][bisect.bisect_left(_LATENCY, value)] += 1  # `le` bounds are inclusive
        series[1][0] += value

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.help, labels=self.labels)
        for key, (counts, total) in self.series.items():
            cumulative = list(itertools.accumulate(counts))
            buckets = [(go_string(b), n) for b, n in zip(_LATENCY, cumulative, strict=False)]
            buckets.append(("+Inf", cumulative[-1]))
            family.add_metric(key, buckets, total[0])
        return family


class _Families(Collector):
    def __init__(self, *metrics: _Counter | _Histogram) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for metric in self.metrics:
            yield metric.family()


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
        remaining = GaugeMetricFamily(
            "agent_sidecar_quota_remaining",
            'Room left per limit (requests, tokens, USD) of each route (agent "") and each '
            "of its agents, as last counted",
            labels=["route", "agent", "limit"],
        )
        if loaded is not None:
            version.add_metric([], loaded.version)
            for name, route in loaded.routes.items():
                for agent, health in route.router.health().items():
                    for state in _STATES:
                        circuits.add_metric([name, agent, state], int(health["state"] == state))
                quota = route.router.quota()
                owners: dict[str, dict[str, Any]] = {"": quota["route"], **quota["agents"]}
                for agent, windows in owners.items():
                    for limit, room in windows.items():
                        if "remaining" in room:
                            remaining.add_metric([name, agent, limit], room["remaining"])
        yield version
        yield circuits
        yield remaining
