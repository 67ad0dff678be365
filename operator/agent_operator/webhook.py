"""The injection webhook's HTTPS server, on every replica; the sidecars' config watches
(`delivery`) are served on it too, with the same certificate.

kopf calls it with its admission function and reads the client configs it yields; the
webhook configuration itself is the installer's (the chart renders it whole: rules,
selectors, timeout, failure policy, Service). The operator keeps only its `caBundle`
current, and swaps a renewed certificate into the running server's TLS context: no
restart, so no moment without a listener.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import kopf
from aiohttp import web

from agent_operator.certs import CertSource, ServingCert
from agent_operator.delivery import Delivery
from agent_operator.metrics import Metrics

log = logging.getLogger("agent_operator.webhook")


def load_into(context: ssl.SSLContext, cert: ServingCert) -> None:
    """Handshakes after this call use `cert`; those already done keep theirs."""
    with tempfile.TemporaryDirectory(prefix="agent-operator-tls-") as d:
        cert_path, key_path = Path(d) / "tls.crt", Path(d) / "tls.key"
        cert_path.write_bytes(cert.cert)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(cert.key)
        context.load_cert_chain(cert_path, key_path)


def outcome(response: dict[str, Any]) -> str:
    answer = response.get("response") or {}
    if not answer.get("allowed"):
        return "refused"
    return "injected" if answer.get("patch") else "unchanged"


class InjectionServer:
    """What kopf expects in `settings.admission.server` (kopf.WebhookServerProtocol).

    `start` (from the startup handler) listens and publishes the CA bundle before kopf
    reports the operator alive, so a replica that answers its probes can be sent reviews.
    Reviews that arrive before kopf hands over its admission function wait for it.
    """

    def __init__(self, *, addr: str | None, port: int, certs: CertSource,
                 publish: Callable[[bytes], Awaitable[None]], check_seconds: float,
                 metrics: Metrics, delivery: Delivery | None = None) -> None:
        self.addr, self.port, self.certs = addr, port, certs
        self.delivery = delivery  # the sidecars' config watches, on the same TLS port
        self.publish, self.check_seconds, self.metrics = publish, check_seconds, metrics
        self.serving: ServingCert | None = None
        self._context = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
        self._runner: web.AppRunner | None = None
        self._fn: kopf.WebhookFn | None = None
        self._fn_ready = asyncio.Event()

    async def start(self) -> None:
        await self._use(await self.certs.current())
        app = web.Application()
        if self.delivery is not None:
            self.delivery.add_routes(app.router)
        app.router.add_post("/{id}", self._review)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        # None: every address of both families (dual-stack, IPv6-only or IPv4-only).
        await web.TCPSite(self._runner, self.addr, self.port, ssl_context=self._context,
                          reuse_address=True).start()
        log.info("serving the injection webhook on port %d", self.port)

    async def stop(self) -> None:
        if self.delivery is not None:
            self.delivery.close()  # the sidecars watching here move on before it goes
        if self._runner is not None:
            await self._runner.cleanup()

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        self._fn = fn
        self._fn_ready.set()
        assert self.serving is not None, "start() runs first, in the startup handler"
        yield {"caBundle": base64.b64encode(self.serving.ca_bundle).decode()}
        while True:
            await asyncio.sleep(self.check_seconds)
            try:
                await self._use(await self.certs.current())
            except Exception:  # the current certificate keeps serving meanwhile
                log.exception("checking the webhook certificate failed")

    async def _review(self, request: web.Request) -> web.Response:
        try:
            await asyncio.wait_for(self._fn_ready.wait(), 5)
        except TimeoutError:
            self.metrics.webhook_requests.labels("error").inc()
            raise web.HTTPServiceUnavailable(reason="starting") from None
        assert self._fn is not None
        try:
            data = json.loads(await request.text())
            response = await self._fn(data, webhook=request.match_info["id"],
                                      headers=dict(request.headers))
        except (ValueError, kopf.AdmissionError) as exc:
            self.metrics.webhook_requests.labels("error").inc()
            raise web.HTTPBadRequest(reason=type(exc).__name__) from exc
        self.metrics.webhook_requests.labels(outcome(dict(response))).inc()
        return web.json_response(response)

    async def _use(self, cert: ServingCert) -> None:
        # Published on every check, not only on change: an upgrade or a person may have
        # reset the configuration's caBundle.
        await self.publish(cert.ca_bundle)
        if cert != self.serving:
            load_into(self._context, cert)
            if self.serving is not None and cert.cert != self.serving.cert:
                log.info("serving the renewed webhook certificate (valid until %s)",
                         cert.not_after.isoformat())
            elif self.serving is not None:
                log.info("trusting a renewed CA before serving its certificate")
            self.serving = cert
            self.metrics.certificate_expiry.set(cert.not_after.timestamp())
