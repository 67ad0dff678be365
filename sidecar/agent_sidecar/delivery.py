"""The sidecar's side of config delivery: it watches the operator for its pod's config.

One long-poll at a time on `GET <operator>/v1/config?version=<what it has>`, over TLS
with the operator's CA pinned (a mounted bundle, re-read when it changes, so the old
and the new CA both work while the operator rotates them), authenticated by the pod's
projected service-account token (re-read for every request: the kubelet rotates it).
Each config received is applied or refused, and the operator is told which
(`POST /v1/config/ack`); a refused config leaves the current one serving. In a pod the
API server injected, it connects to the IP its namespace's ConfigMap holds (re-read for
every request) and checks the certificate against the URL's host name: no cluster DNS. On any failure
it waits with exponential backoff and full jitter, so a thousand sidecars do not come
back at once, and keeps serving what it has.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from agent_sidecar.metrics import Metrics
from agent_sidecar.state import ConfigStore, DocumentError, parse_document

log = logging.getLogger("agent_sidecar.delivery")

WAIT = 30.0  # seconds the operator may hold a watch
VERSION_HEADER = "x-config-version"  # the operator's version of the config it sends
# Up to 10 s: a thousand sidecars spread their return over that long, and none waits
# much longer than that for the operator that is back.
BACKOFF_BASE, BACKOFF_MAX = 0.5, 10.0


class WatchFailed(Exception):
    """The operator answered something other than a config or "nothing new"."""


@dataclass(frozen=True)
class Operator:
    url: str  # https://<service>.<namespace>.svc:<port>
    ca_file: Path
    token_file: Path
    # Holds the IP to connect to (the Service's ClusterIP, from the namespace's ConfigMap):
    # the pod needs no cluster DNS, and the certificate is still checked against the URL's
    # host name. Re-read for every request: it follows the ConfigMap.
    address_file: Path | None = None

    def where(self) -> tuple[str, str | None]:
        """The base URL to send to, and the TLS server name when that differs from its host."""
        if self.address_file is None:
            return self.url, None
        try:
            ip = self.address_file.read_text().strip()
        except OSError:
            return self.url, None
        parts = urllib.parse.urlsplit(self.url)
        if not ip or not parts.hostname:
            return self.url, None
        host = f"[{ip}]" if ":" in ip else ip
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), parts.hostname


def backoff(failures: int) -> float:
    """Full jitter: anywhere up to the exponential bound."""
    return random.uniform(0.1, min(BACKOFF_MAX, BACKOFF_BASE * 2 ** min(failures, 16)))


class ConfigWatch:
    def __init__(self, store: ConfigStore, metrics: Metrics, operator: Operator,
                 max_bytes: int, wait: float = WAIT) -> None:
        self.store, self.metrics, self.operator = store, metrics, operator
        self.max_bytes, self.wait = max_bytes, wait
        self.asked: str | None = None  # the last version received, applied or refused
        self._tls: tuple[float, ssl.SSLContext] | None = None

    def have(self) -> str:
        if self.asked is not None:
            return self.asked
        loaded = self.store.loaded
        return str(loaded.config.metadata.get("hash", "")) if loaded else ""

    async def run(self) -> None:
        failures = 0
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    await self.once(session)
                    failures = 0
                except (aiohttp.ClientError, OSError, TimeoutError, WatchFailed,
                        ValueError) as exc:
                    failures += 1
                    delay = backoff(failures)
                    log.warning("watching %s failed (%s); again in %.1fs", self.operator.url,
                                _why(exc), delay)
                    await asyncio.sleep(delay)

    async def once(self, session: aiohttp.ClientSession) -> None:
        """One watch: returns when it has nothing new or has applied or refused a config."""
        url, name = self.operator.where()
        async with session.get(
                f"{url}/v1/config",
                params={"version": self.have(), "wait": str(self.wait)},
                headers=self._auth(), ssl=self._context(), server_hostname=name,
                timeout=aiohttp.ClientTimeout(total=self.wait + 15)) as r:
            if r.status == 304:
                return
            version = r.headers.get(VERSION_HEADER, "")
            if r.status != 200 or not version:
                raise WatchFailed(f"{r.status} {(await r.text())[:200]}")
            # Never more than the limit in memory, whatever the operator sends.
            body = await r.content.read(self.max_bytes + 1)
        if len(body) > self.max_bytes:
            error: str | None = f"the config is over {self.max_bytes} bytes, the most " \
                "this sidecar takes (--max-config-mb)"
            self.metrics.pushes.labels("invalid").inc()
            log.error("refused config %s from the operator: %s", version, error)
        else:
            error = await self._apply(version, orjson.loads(body))
        self.asked = version
        await self._ack(session, version, error)

    async def _apply(self, version: str, answer: dict[str, Any]) -> str | None:
        """None when the config serves now, else why it was refused."""
        current = self.store.loaded
        if current is not None and current.config.metadata.get("hash") == version:
            # It serves this already (pushed, or kept from before a restart).
            log.info("config %s from the operator serves already as version %d", version,
                     current.version)
            return None
        document = dict(answer.get("config") or {})
        document["version"] = max((current.version + 1) if current else 1,
                                  time.time_ns() // 1_000_000)
        raw = orjson.dumps(document)
        try:
            config = await asyncio.to_thread(parse_document, raw)
        except DocumentError as exc:
            self.metrics.pushes.labels("invalid").inc()
            log.error("refused config %s from the operator: %s", version,
                      str(exc).splitlines()[0])
            return str(exc).splitlines()[0]
        outcome = await self.store.push(config, raw)
        self.metrics.pushes.labels(outcome.result).inc()
        if outcome.result in ("applied", "unchanged"):
            log.info("config %s from the operator serves as version %d", version,
                     outcome.version)
            return None
        return f"{outcome.result}: version {outcome.version}"

    async def _ack(self, session: aiohttp.ClientSession, version: str,
                   error: str | None) -> None:
        url, name = self.operator.where()
        async with session.post(
                f"{url}/v1/config/ack", json={"version": version, "error": error},
                headers=self._auth(), ssl=self._context(), server_hostname=name,
                timeout=aiohttp.ClientTimeout(total=15)) as r:
            if r.status >= 300:
                log.warning("the operator did not take the answer for %s: %d", version,
                            r.status)

    def _auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.operator.token_file.read_text().strip()}"}

    def _context(self) -> ssl.SSLContext:
        """The pinned CA bundle, reloaded when the mounted file changes."""
        mtime = os.stat(self.operator.ca_file).st_mtime
        if self._tls is None or self._tls[0] != mtime:
            self._tls = (mtime, ssl.create_default_context(cafile=str(self.operator.ca_file)))
        return self._tls[1]


def _why(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"the operator's certificate is not trusted: {exc.certificate_error}"
    return f"{type(exc).__name__}: {exc}"[:300]
