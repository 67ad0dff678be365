"""The admin port: what the operator and the kubelet talk to.

    GET  /healthz   the process is alive
    GET  /readyz    ready to route: a config is loaded and the sidecar is not draining
    GET  /config    the loaded config (version, source, redacted document)
    PUT  /config    push a config document (JSON or YAML); bearer token required
    GET  /metrics   Prometheus

`/config` takes `Authorization: Bearer <token>`, compared in constant time. Without a
configured token, pushes are refused (403) and GET /config is open (it is redacted).
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from agent_sidecar.metrics import CONTENT_TYPE, Metrics
from agent_sidecar.state import ConfigStore, DocumentError, parse_document

log = logging.getLogger("agent_sidecar.admin")


class AdminToken:
    """The bearer token, from a file (re-read when it changes, so a rotated Secret
    applies without a restart) or a value. Never logged, never in a repr."""

    def __init__(self, value: str | None = None, path: Path | None = None) -> None:
        self._value = value or None
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
                self._value = self._path.read_text().strip() or None
                self._mtime = mtime
        except OSError as exc:
            log.warning("cannot read the admin token file %s: %s", self._path, exc.strerror)
            self._value, self._mtime = None, None
        return self._value

    def matches(self, candidate: str) -> bool:
        token = self.current()
        return token is not None and hmac.compare_digest(candidate.encode(), token.encode())


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


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

    async def healthz(self, request: web.Request) -> web.Response:
        loaded = self.store.loaded
        return _json({"status": "ok", "version": loaded.version if loaded else None})

    async def readyz(self, request: web.Request) -> web.Response:
        loaded = self.store.loaded
        if self.draining():
            return _json({"status": "draining"}, 503)
        if loaded is None:
            return _json({"status": "waiting for a config"}, 503)
        return _json({"status": "ready", "version": loaded.version})

    async def metrics_text(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"content-type": CONTENT_TYPE})

    async def get_config(self, request: web.Request) -> web.Response:
        if self.token.current() is not None and (refused := self._refused(request)):
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
            config = parse_document(body)
        except DocumentError as exc:
            self.metrics.pushes.labels("invalid").inc()
            return _json({"error": str(exc)}, 400)
        outcome = await self.store.push(config)
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
                    "error": "config pushes are disabled: no admin token is configured "
                    "(--token-file or AGENT_SIDECAR_TOKEN)"
                },
                403,
            )
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self.token.matches(value.strip()):
            response = _json({"error": "a valid bearer token is required"}, 401)
            response.headers["WWW-Authenticate"] = 'Bearer realm="agent-sidecar"'
            return response
        return None


def create_admin_app(
    store: ConfigStore,
    metrics: Metrics,
    token: AdminToken,
    draining: Callable[[], bool],
    max_config_bytes: int,
) -> web.Application:
    handlers = AdminHandlers(store, metrics, token, draining)
    app = web.Application(client_max_size=max_config_bytes)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics_text)
    app.router.add_get("/config", handlers.get_config)
    app.router.add_put("/config", handlers.put_config)
    return app
