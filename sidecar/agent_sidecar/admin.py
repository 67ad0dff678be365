"""The admin port (loopback: the pod's own processes) and the health port (the kubelet
and Prometheus, from outside the pod).

Admin port:

    GET  /healthz   the process is alive
    GET  /readyz    ready to route: a config is loaded and the sidecar is not draining;
                    each route's breakers, and the routes with none closed ("down")
    GET  /config    the loaded config (version, source, redacted document)
    PUT  /config    push a config document (JSON or YAML); bearer token required
    GET  /metrics   Prometheus

Health port: `/healthz`, `/readyz` and `/metrics` only, which name versions, routes and
breaker states but never a key, a token or an upstream's address with credentials.

The admin port listens on loopback only (`settings`), and `/config` still takes
`Authorization: Bearer <token>` (at least 16 characters), compared in constant time: any
process of the pod reaches loopback, not only those that may change its routing. Given
no token, the sidecar makes one at start and writes it to `<state dir>/admin-token`
(mode 0600, its own user's): whoever may `kubectl exec` into the sidecar reads it there.
Without a usable token both `/config` endpoints are refused (403). Failed attempts are
limited per client address (429 with `retry-after` past a small burst) and counted in
`agent_sidecar_admin_auth_failures_total`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from agent.errors import register_secret
from agent_sidecar.metrics import CONTENT_TYPE, Metrics
from agent_sidecar.state import ConfigStore, DocumentError, parse_document, write_private

log = logging.getLogger("agent_sidecar.admin")

MIN_TOKEN_LENGTH = 16  # characters; the ones the sidecar makes have 43
TOKEN_FILE = "admin-token"  # in the state directory, when the sidecar made its token


def token_problem(token: str) -> str | None:
    """Why a token is not acceptable, else None (never quotes the token)."""
    if len(token) < MIN_TOKEN_LENGTH:
        return (
            f"the admin token has {len(token)} characters: at least {MIN_TOKEN_LENGTH} "
            "are required (for example: python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')"
        )
    return None


class AdminToken:
    """The bearer token, from a file (re-read when it changes, so a rotated Secret
    applies without a restart) or a value. Never logged, never in a repr."""

    def __init__(self, value: str | None = None, path: Path | None = None) -> None:
        self._raw = value or None
        self._value = self._usable(self._raw)
        self._path = path
        self._mtime: float | None = None

    def __repr__(self) -> str:
        return f"AdminToken(configured={self.current() is not None})"

    def current(self) -> str | None:
        if self._path is None:
            return self._value
        try:
            mtime = os.stat(self._path).st_mtime
            if mtime != self._mtime:
                self._value = self._usable(self._path.read_text().strip() or None)
                self._mtime = mtime
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            log.warning("cannot read the admin token file %s: %s", self._path, why)
            self._value, self._mtime = None, None
        return self._value

    def problem(self) -> str | None:
        """Why the configured token cannot be used (for a clear start-up error)."""
        if self._path is not None:
            try:
                token = self._path.read_text().strip()
            except (OSError, UnicodeDecodeError):
                return None  # a file that comes later (a mounted Secret) is fine
        else:
            token = self._raw or ""
        return token_problem(token) if token else None

    def matches(self, candidate: str) -> bool:
        token = self.current()
        # Header bytes that are not UTF-8 arrive as surrogates: compare bytes, never fail.
        given = candidate.encode("utf-8", "surrogateescape")
        return token is not None and hmac.compare_digest(given, token.encode())

    def _usable(self, token: str | None) -> str | None:
        if token is not None and (why := token_problem(token)):
            log.error("refusing the admin token: %s", why)
            return None
        register_secret(token)  # never in a log line, an error or a span
        return token


def made_token(state_dir: Path) -> AdminToken:
    """A new random token, written (mode 0600) to `<state_dir>/admin-token` for the
    pod's operator to read; a restart makes another."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / TOKEN_FILE
    write_private(path, secrets.token_urlsafe(32).encode() + b"\n")
    log.info("no admin token given: made one, in %s (readable by this user only)", path)
    return AdminToken(path=path)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(data), headers=headers, content_type="application/json"
    )


class AdminHandlers:
    def __init__(
        self,
        store: ConfigStore,
        metrics: Metrics,
        token: AdminToken,
        draining: Callable[[], bool],
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.token = token
        self.draining = draining
        self.failures = FailedAttempts()

    async def healthz(self, request: web.Request) -> web.Response:
        loaded = self.store.loaded
        return _json({"status": "ok", "version": loaded.version if loaded else None})

    async def readyz(self, request: web.Request) -> web.Response:
        loaded = self.store.loaded
        if self.draining():
            return _json({"status": "draining"}, 503)
        if loaded is None:
            return _json({"status": "waiting for a config"}, 503)
        # Ready even when every breaker of a route is open (the app still gets answers
        # in its format); the breakers say which upstreams are failing.
        circuits = {
            name: {agent: str(h["state"]) for agent, h in route.router.health().items()}
            for name, route in loaded.routes.items()
        }
        down = [name for name, states in circuits.items() if "closed" not in states.values()]
        return _json(
            {"status": "ready", "version": loaded.version, "circuits": circuits, "down": down}
        )

    async def metrics_text(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"content-type": CONTENT_TYPE})

    async def get_config(self, request: web.Request) -> web.Response:
        if refused := self._refused(request):
            return refused
        loaded = self.store.loaded
        if loaded is None:
            return _json({"error": "no config loaded yet"}, 404)
        return _json(
            {
                "version": loaded.version,
                "source": loaded.source,
                "loaded_at": loaded.loaded_at,
                "routes": loaded.names,
                "config": loaded.config.redacted(),
            }
        )

    async def put_config(self, request: web.Request) -> web.Response:
        if refused := self._refused(request):
            self.metrics.pushes.labels("unauthorized").inc()
            return refused
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self.metrics.pushes.labels("invalid").inc()
            return _json({"error": "the config document is too large"}, 413)
        try:
            # Off the event loop: a large document must not stall the app's requests.
            config = await asyncio.to_thread(parse_document, body)
        except DocumentError as exc:
            self.metrics.pushes.labels("invalid").inc()
            log.info("refused a config push: %s", str(exc).splitlines()[0])
            return _json({"error": str(exc)}, 400)
        outcome = await self.store.push(config, body)
        self.metrics.pushes.labels(outcome.result).inc()
        answer: dict[str, Any] = {
            "result": outcome.result,
            "version": outcome.version,
            "previous_version": outcome.previous,
        }
        if outcome.result == "stale":
            answer["error"] = (
                f"version {outcome.version} is older than the loaded version {outcome.previous}"
            )
            return _json(answer, 409)
        if outcome.result == "conflict":
            answer["error"] = (
                f"version {outcome.version} is already loaded with different content: "
                "bump the version"
            )
            return _json(answer, 409)
        if outcome.warning:
            answer["warning"] = outcome.warning
        if outcome.result == "applied":
            log.info("config version %d applied (was %s)", outcome.version, outcome.previous)
        return _json(answer)

    def _refused(self, request: web.Request) -> web.Response | None:
        if self.token.current() is None:
            return _json(
                {
                    "error": "/config is disabled: no usable admin token is configured "
                    "(--token-file or AGENT_SIDECAR_TOKEN, at least "
                    f"{MIN_TOKEN_LENGTH} characters)"
                },
                403,
            )
        peer = request.remote or "?"
        if wait := self.failures.wait(peer):
            self.metrics.auth_failures.labels("limited").inc()
            return _json(
                {"error": "too many failed attempts: retry later"},
                429,
                {"retry-after": str(math.ceil(wait))},
            )
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self.token.matches(value.strip()):
            self.failures.failed(peer)
            self.metrics.auth_failures.labels("refused").inc()
            return _json(
                {"error": "a valid bearer token is required"},
                401,
                {"WWW-Authenticate": 'Bearer realm="agent-sidecar"'},
            )
        return None


class FailedAttempts:
    """Failed attempts per client address, as token buckets: a burst of `burst`, then
    `rate` a second. Guessing a 16-character token at that pace takes longer than the
    universe has existed; the operator, on its own address, is not slowed by a guesser."""

    def __init__(self, rate: float = 2.0, burst: int = 10, peers: int = 4096) -> None:
        self.rate, self.burst, self.peers = rate, burst, peers
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # peer: level, at

    def _level(self, peer: str) -> float:
        level, at = self._buckets.get(peer, (0.0, 0.0))
        return max(0.0, level - (time.monotonic() - at) * self.rate)

    def wait(self, peer: str) -> float:
        """Seconds until `peer` may try again (0: now)."""
        over = self._level(peer) + 1 - self.burst
        return over / self.rate if over > 0 else 0.0

    def failed(self, peer: str) -> None:
        self._buckets[peer] = (self._level(peer) + 1, time.monotonic())
        self._buckets.move_to_end(peer)
        if len(self._buckets) > self.peers:  # bounded memory whatever the addresses
            self._buckets.popitem(last=False)


ADMIN = web.AppKey("admin", AdminHandlers)


def create_admin_app(
    store: ConfigStore,
    metrics: Metrics,
    token: AdminToken,
    draining: Callable[[], bool],
    max_config_bytes: int,
) -> web.Application:
    handlers = AdminHandlers(store, metrics, token, draining)
    app = web.Application(client_max_size=max_config_bytes)
    app[ADMIN] = handlers
    _add_probes(app, handlers)
    app.router.add_get("/config", handlers.get_config)
    app.router.add_put("/config", handlers.put_config)
    return app


def create_health_app(admin: web.Application) -> web.Application:
    """The health port's app: the admin app's probes and metrics, nothing that takes or
    shows a config."""
    handlers = admin[ADMIN]
    app = web.Application()
    _add_probes(app, handlers)
    return app


def _add_probes(app: web.Application, handlers: AdminHandlers) -> None:
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics_text)
