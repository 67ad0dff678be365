"""The operator's own Prometheus metrics, served on their own port (`/metrics`).

    agent_operator_reconciles_total{result}                 ok, error, standby
    agent_operator_reconcile_duration_seconds               histogram, one per namespace run
    agent_operator_sidecars{state}                          in_sync (acknowledged the current
                                                            config), failed (refused it), pending
    agent_operator_webhook_requests_total{result}           injected, unchanged, refused, error
    agent_operator_certificate_expiry_timestamp_seconds     the served webhook certificate's
    agent_operator_certificate_renewals_total               certificates this replica issued
    agent_operator_leader                                   1 on the replica that acts
    agent_operator_watching_sidecars                        watches this replica holds open
    agent_operator_configs_served_total{result}             sent, unchanged, none, unauthorized
    agent_operator_config_acks_total{result}                applied, refused (by the sidecars)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

SIDECAR_STATES = ("in_sync", "pending", "failed")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.reconciles = Counter("agent_operator_reconciles", "Namespace reconciles by result",
                                  ["result"], registry=r)
        self.reconcile_seconds = Histogram(
            "agent_operator_reconcile_duration_seconds", "Time one namespace reconcile took",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.sidecars = Gauge("agent_operator_sidecars", "Sidecars the operator knows, by state",
                              ["state"], registry=r)
        self.webhook_requests = Counter("agent_operator_webhook_requests",
                                        "Injection webhook requests by result", ["result"],
                                        registry=r)
        self.certificate_expiry = Gauge(
            "agent_operator_certificate_expiry_timestamp_seconds",
            "When the webhook certificate this replica serves expires (Unix time)", registry=r)
        self.certificate_renewals = Counter(
            "agent_operator_certificate_renewals", "Webhook certificates this replica issued",
            registry=r)
        self.leader = Gauge("agent_operator_leader", "1 on the replica that reconciles",
                            registry=r)
        self.watching = Gauge("agent_operator_watching_sidecars",
                              "Sidecar watches this replica holds open", registry=r)
        self.served = Counter("agent_operator_configs_served",
                              "Answers to sidecar watches, by result", ["result"], registry=r)
        self.acks = Counter("agent_operator_config_acks",
                            "What sidecars said of the config delivered to them", ["result"],
                            registry=r)
        self._sidecars_by_namespace: dict[str, dict[str, int]] = {}
        for state in SIDECAR_STATES:
            self.sidecars.labels(state).set(0)
        for result in ("sent", "unchanged", "none", "unauthorized"):
            self.served.labels(result)  # each at 0 from the start: a rate has a baseline
        for result in ("applied", "refused"):
            self.acks.labels(result)

    def sidecars_in(self, namespace: str, counts: dict[str, int]) -> None:
        """The latest counts of one namespace; the gauge is the sum over namespaces."""
        self._sidecars_by_namespace[namespace] = counts
        for state in SIDECAR_STATES:
            self.sidecars.labels(state).set(
                sum(c.get(state, 0) for c in self._sidecars_by_namespace.values()))

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"content-type": CONTENT_TYPE_LATEST})


async def healthz(_: web.Request) -> web.Response:
    """Alive: served from the end of the startup, when the webhook already listens."""
    return web.Response(text="ok\n")


async def serve_http(host: str | None, port: int, routes: dict[str, Handler]) -> web.AppRunner:
    """GET `routes` on `host` (None: every address, IPv4 and IPv6) and `port`."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    return runner
