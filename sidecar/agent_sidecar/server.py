"""`Sidecar`: the ports of one sidecar (app, admin, and health when set), started and
drained together.

    sidecar = Sidecar(settings)
    sidecar.load_config()        # --config file and/or persisted state (may raise)
    await sidecar.start()        # listening; sidecar.app_url, sidecar.admin_url
    ...
    await sidecar.stop()         # drain: stop listening, finish requests and streams

Embeddable in any event loop (as the tests do); `__main__` adds signals and the CLI.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from agent_sidecar.admin import AdminToken, create_admin_app, create_health_app, made_token
from agent_sidecar.app import HANDLERS, AppHandlers, Routes, create_app
from agent_sidecar.connections import cap_connections
from agent_sidecar.delivery import ConfigWatch, Operator
from agent_sidecar.fallback import Fallback
from agent_sidecar.http1server import AppServer
from agent_sidecar.metrics import Metrics
from agent_sidecar.routes import Loaded
from agent_sidecar.settings import Settings
from agent_sidecar.state import ConfigStore
from agent_sidecar.transport import AiohttpTransport
from agent_sidecar.upstream import UpstreamTransport

log = logging.getLogger("agent_sidecar")

if TYPE_CHECKING:
    from agent._transport import HttpxTransport


def _httpx() -> HttpxTransport:
    from agent._transport import HttpxTransport  # httpx is loaded only when chosen

    return HttpxTransport()


# The upstream HTTP clients `--transport` chooses from.
TRANSPORTS: dict[str, Callable[[], UpstreamTransport | AiohttpTransport | HttpxTransport]] = {
    "http1": UpstreamTransport,
    "aiohttp": AiohttpTransport,
    "httpx": _httpx,
}

CUT_AHEAD = 0.2  # seconds before the drain timeout when streams still running are ended


class Sidecar:
    def __init__(self, settings: Settings, *, tracing: bool = False) -> None:
        self.settings = settings
        # The upstream HTTP client of every router this sidecar builds, shared by all
        # the configs it serves and closed at stop; see agent_sidecar.upstream for why
        # its own (aiohttp's client or the engine's httpx on request).
        self.transport = TRANSPORTS[settings.transport]()
        self.store = ConfigStore(settings.state_dir, self.transport)
        self.metrics = Metrics(self.store)
        self.token = (
            made_token(settings.state_dir)
            if not (settings.token or settings.token_file) and settings.state_dir
            else AdminToken(settings.token, settings.token_file)
        )
        self.tracing = tracing
        self.draining = False
        self._app: web.AppRunner | None = None  # the app port on aiohttp (--server aiohttp)
        self._own: AppServer | None = None  # or on the sidecar's own server (--server http1)
        self._handlers: AppHandlers | None = None
        self._admin: web.AppRunner | None = None
        self._health: web.AppRunner | None = None
        self.watch: ConfigWatch | None = None
        if settings.operator_url and settings.operator_ca and settings.identity_token_file:
            self.watch = ConfigWatch(
                self.store,
                self.metrics,
                Operator(
                    settings.operator_url,
                    settings.operator_ca,
                    settings.identity_token_file,
                    settings.operator_address_file,
                ),
                settings.max_config_bytes,
            )
        self.fallback = (
            Fallback(settings.fallback_configs, settings.pod_labels_file)
            if settings.fallback_configs and settings.pod_labels_file
            else None
        )
        self._watching: asyncio.Task[None] | None = None

    def load_config(self) -> Loaded | None:
        """The --config file or the persisted state, whichever is newer (see `state`);
        else the namespace's config for this pod (`fallback`), until the watch's arrives."""
        loaded = self.store.load_at_start(self.settings.config)
        if loaded is None and self.fallback is not None:
            config = self.fallback.config()
            if config is not None:
                loaded = self.store.loaded = Loaded.build(config, "namespace", self.store.transport)
        if loaded is not None:
            log.info("serving config version %d from %s", loaded.version, loaded.source)
        return loaded

    async def start(self) -> None:
        s = self.settings
        access_log = logging.getLogger("agent_sidecar.access") if s.access_log else None
        draining = self._is_draining
        if s.server == "http1":
            self._handlers = AppHandlers(self.store, self.metrics, s, self.tracing, draining)
            self._own = AppServer(Routes(self._handlers, s).find, idle_timeout=s.idle_timeout,
                                  max_connections=s.max_connections, access_log=access_log)
            await self._own.start(s.host, s.port)
        else:
            await self._start_aiohttp(access_log)
        admin = create_admin_app(self.store, self.metrics, self.token, draining, s.max_config_bytes)
        self._admin = web.AppRunner(
            admin, access_log=None, shutdown_timeout=1.0, keepalive_timeout=s.idle_timeout
        )
        await self._admin.setup()
        await web.TCPSite(self._admin, s.admin_host, s.admin_port, reuse_address=True).start()
        if s.health_port is not None:
            self._health = web.AppRunner(
                create_health_app(admin),
                access_log=None,
                shutdown_timeout=1.0,
                keepalive_timeout=s.idle_timeout,
            )
            await self._health.setup()
            # "": every address of both families, None to aiohttp.
            await web.TCPSite(
                self._health, s.health_host or None, s.health_port, reuse_address=True
            ).start()
        if self.watch is not None:
            self._watching = asyncio.create_task(self.watch.run(), name="config-watch")
        elif self.token.current() is None:
            log.warning("no usable admin token: /config is refused")

    async def _start_aiohttp(self, access_log: logging.Logger | None) -> None:
        s = self.settings
        app = create_app(self.store, self.metrics, s, tracing=self.tracing,
                         draining=self._is_draining)
        # handler_cancellation: a client that disconnects cancels its handler at once,
        # which closes the upstream request instead of streaming into the void.
        # keepalive_timeout: aiohttp closes a connection that has no complete request
        # this long after it opened or after its last answer: idle keep-alive and
        # slowloris headers alike (its default is about an hour).
        self._app = web.AppRunner(
            app,
            handler_cancellation=True,
            access_log=access_log,
            shutdown_timeout=s.drain_timeout,
            keepalive_timeout=s.idle_timeout,
        )
        self._handlers = app[HANDLERS]
        await self._app.setup()
        assert self._app.server is not None
        cap_connections(self._app.server, s.max_connections)
        await web.TCPSite(self._app, s.host, s.port, reuse_address=True).start()

    def _is_draining(self) -> bool:
        return self.draining

    @property
    def app_port(self) -> int:
        if self._own is not None:
            return self._own.port
        assert self._app is not None, "not started"
        return int(self._app.addresses[0][1])

    @property
    def admin_port(self) -> int:
        assert self._admin is not None, "not started"
        return int(self._admin.addresses[0][1])

    @property
    def health_url(self) -> str | None:
        if self._health is None:
            return None
        port = int(self._health.addresses[0][1])
        return f"http://{_connectable(self.settings.health_host)}:{port}"

    @property
    def app_url(self) -> str:
        return f"http://{_connectable(self.settings.host)}:{self.app_port}"

    @property
    def admin_url(self) -> str:
        return f"http://{_connectable(self.settings.admin_host)}:{self.admin_port}"

    async def stop(self) -> None:
        """Drain: readiness fails, the app port stops accepting, requests and streams in
        flight finish (up to the drain timeout), then both ports close."""
        self.draining = True
        if self._watching is not None:
            self._watching.cancel()
        if self._handlers is not None:
            # What is still running at the drain timeout is closed; just before that,
            # the streams end themselves with an error event the app can read.
            cut = asyncio.get_running_loop().call_later(
                max(0.0, self.settings.drain_timeout - CUT_AHEAD), self._handlers.cut_streams
            )
            if self._own is not None:
                await self._own.stop(self.settings.drain_timeout)
            if self._app is not None:
                await self._app.cleanup()
            cut.cancel()
            self._app = self._own = self._handlers = None
        for runner in (self._admin, self._health):
            if runner is not None:
                await runner.cleanup()
        self._admin = self._health = None
        await self.transport.aclose()


def _connectable(host: str) -> str:
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host  # an IPv6 address in a URL
