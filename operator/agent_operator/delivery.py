"""Config delivery: each sidecar watches the operator for its own pod's config.

    GET  /v1/config?version=<version>&wait=<seconds>
         200 {"version": ..., "config": {...}}   the pod's config, once it differs from
                                                 `version` (at once when it already does);
                                                 its version in `x-config-version` too
         304                                     nothing new within `wait` (at most 60 s)
         404                                     nothing is compiled for this pod
    POST /v1/config/ack {"version": ..., "error": null | "why the sidecar refused it"}

Served on the operator's TLS port by every replica (each compiles every pod's config
from what it watches). `version` is the compiled document's hash: the same content has
the same version on every replica, so a sidecar resumes where it was on any of them.

Who asks is the pod itself: `Authorization: Bearer <token>`, the pod's projected
service-account token for the operator's audience, which the kubelet rotates. A
TokenReview for that audience says which pod it is bound to
(`authentication.kubernetes.io/pod-name` and `pod-uid`); that pod's config is the only
one served. A token for another audience, an expired one, or one bound to no pod gets
401 and nothing else.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from agent.config import RouterConfig
from agent_operator.metrics import Metrics

log = logging.getLogger("agent_operator.delivery")

PATH = "/v1/config"
MAX_WAIT = 60.0  # seconds a watch may hold its request open
# Seconds an accepted token is trusted before it is reviewed again (never past its
# expiry). A deleted pod's token gets nothing sooner: its config is forgotten at once.
REVIEW_TTL = 300.0
# Each accepted review is trusted for a random part of the TTL, at least this much: the
# thousand reviews of sidecars that connected together (a rollout, an operator restart)
# then fall due over minutes, not in the same second: a thousand TokenReviews at once
# held a change back by up to 19 s in the delivery bench.
REVIEW_SPREAD = 0.5
REFUSAL_TTL = 5.0  # a refused token is not reviewed again this soon (no review floods)
REVIEWS_KEPT = 20_000
POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"

Key = tuple[str, str]  # namespace, pod name


@dataclass(frozen=True, slots=True)
class Identity:
    namespace: str
    pod: str
    uid: str


@dataclass(frozen=True, slots=True)
class Entry:
    version: str
    uid: str
    body: bytes  # the answer, serialized once for every watch
    policies: tuple[str, ...]


Review = Callable[[str, str], Awaitable[dict[str, Any]]]  # token, audience -> status
Refused = Callable[[str, str, Sequence[str], str | None], Awaitable[None]]


def identity_of(status: dict[str, Any], audience: str) -> Identity | None:
    """The pod a reviewed token is bound to, or None (not authenticated, another audience,
    not a service account's, or bound to no pod)."""
    if not status.get("authenticated") or audience not in (status.get("audiences") or []):
        return None
    user = status.get("user") or {}
    parts = str(user.get("username", "")).split(":")
    extra = user.get("extra") or {}
    pod, uid = (extra.get(POD_NAME) or [""])[0], (extra.get(POD_UID) or [""])[0]
    if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"] or not (pod and uid):
        return None
    return Identity(parts[2], pod, uid)


def _expiry(token: str) -> float | None:
    """The token's `exp` claim, read only to stop trusting it in time (the TokenReview
    has verified it)."""
    try:
        payload = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, KeyError, TypeError, ValueError, binascii.Error, orjson.JSONDecodeError):
        return None


class Delivery:
    def __init__(self, audience: str, metrics: Metrics, review: Review,
                 refused: Refused) -> None:
        self.audience, self.metrics = audience, metrics
        self._review, self._refused = review, refused
        self._entries: dict[Key, Entry] = {}
        self._changed: dict[Key, asyncio.Event] = {}
        self._reviews: OrderedDict[bytes, tuple[Identity | None, float]] = OrderedDict()
        self.acks: dict[Key, tuple[str, str | None]] = {}  # what each sidecar said last
        self._encoded: dict[str, bytes] = {}  # version: the answer, for every pod it is
        # The counters each answer moves, looked up once: a label lookup per request was
        # a twentieth of the operator's time while a change reached a thousand sidecars.
        self._served = {r: metrics.served.labels(r)
                        for r in ("sent", "unchanged", "none", "unauthorized")}
        self._acked = {r: metrics.acks.labels(r) for r in ("applied", "refused")}
        self._closing = False  # this replica is stopping: its watches end now

    # ---- what the reconciler compiled -------------------------------------------------

    def publish(self, namespace: str, pod: str, uid: str, config: RouterConfig,
                policies: Sequence[str]) -> None:
        key = (namespace, pod)
        version = str(config.metadata.get("hash") or "")
        old = self._entries.get(key)
        if old is not None and (old.version, old.uid, old.policies) == (
                version, uid, tuple(policies)):
            return
        if old is not None and old.uid != uid:  # another pod of the same name
            self.acks.pop(key, None)
        body = self._encoded.get(version)
        if body is None:  # pods with one document (a Deployment's) share its bytes
            body = self._encoded[version] = orjson.dumps(
                {"version": version, "config": config.document()})
        self._entries[key] = Entry(version, uid, body, tuple(policies))
        self._wake(key)

    def retain(self, namespace: str, pods: set[str]) -> None:
        """Forget the pods of `namespace` that are gone."""
        for key in [k for k in self._entries if k[0] == namespace and k[1] not in pods]:
            del self._entries[key]
            self.acks.pop(key, None)
            self._wake(key)
        used = {entry.version for entry in self._entries.values()}
        for version in [v for v in self._encoded if v not in used]:
            del self._encoded[version]

    def versions(self) -> list[tuple[str, str, str, str, bool]]:
        """(namespace, pod, uid, version, acknowledged) of every pod's current config:
        whether its sidecar acknowledged that version on this replica."""
        return [(*key, entry.uid, entry.version, self.acks.get(key) == (entry.version, None))
                for key, entry in self._entries.items()]

    def close(self) -> None:
        """This replica is stopping: every open watch answers at once (nothing new), and
        a new one is told to go elsewhere, so that its sidecar watches again through the
        Service, on a replica that stays, rather than wait out its long-poll here (a
        change applied meanwhile would reach it only then, up to a minute late)."""
        self._closing = True
        for event in self._changed.values():
            event.set()
        self._changed.clear()

    def _wake(self, key: Key) -> None:
        if (event := self._changed.pop(key, None)) is not None:
            event.set()

    # ---- the HTTP side ----------------------------------------------------------------

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get(PATH, self.watch)
        router.add_post(f"{PATH}/ack", self.ack)

    async def watch(self, request: web.Request) -> web.Response:
        if self._closing:
            return _leaving(web.json_response(
                {"error": "this replica is stopping: watch another"}, status=503))
        who = await self._identify(request)
        if who is None:
            return _refuse()
        have = request.query.get("version", "")
        try:
            wait = min(MAX_WAIT, max(0.0, float(request.query.get("wait", "30"))))
        except ValueError:
            return web.json_response({"error": "wait: a number of seconds"}, status=400)
        key = (who.namespace, who.pod)
        entry = self._entries.get(key)
        if entry is not None and entry.uid == who.uid and entry.version == have \
                and self.acks.get(key, ("",))[0] != have:
            # It resumes from the current version (after a restart of either side, or on
            # another replica): it serves it, unless it refused it (the policies' status
            # keeps refusals, and the reconciler counts those pods out).
            self.acks[key] = (have, None)
        deadline = time.monotonic() + wait
        self.metrics.watching.inc()
        try:
            while True:
                entry = self._entries.get(key)
                if entry is not None and entry.uid == who.uid and entry.version != have:
                    self._served["sent"].inc()
                    return web.Response(body=entry.body, content_type="application/json",
                                        headers={"x-config-version": entry.version})
                left = deadline - time.monotonic()
                if left <= 0 or self._closing:
                    break
                event = self._changed.setdefault(key, asyncio.Event())
                try:  # a timeout, not wait_for: no task per waiting watch
                    async with asyncio.timeout(left):
                        await event.wait()
                except TimeoutError:
                    break
        finally:
            self.metrics.watching.dec()
        entry = self._entries.get(key)
        if entry is None or entry.uid != who.uid:
            self._served["none"].inc()
            return web.json_response(
                {"error": f"no config is compiled for pod {who.namespace}/{who.pod}"},
                status=404)
        self._served["unchanged"].inc()
        unchanged = web.Response(status=304)
        return _leaving(unchanged) if self._closing else unchanged

    async def ack(self, request: web.Request) -> web.Response:
        who = await self._identify(request)
        if who is None:
            return _refuse()
        try:
            data = orjson.loads(await request.read())
            version, error = str(data["version"]), data.get("error")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return web.json_response({"error": 'expected {"version": ..., "error": ...}'},
                                     status=400)
        error = str(error)[:1000] if error else None
        key = (who.namespace, who.pod)
        entry = self._entries.get(key)
        before = self.acks.get(key)
        self.acks[key] = (version, error)
        self._acked["refused" if error else "applied"].inc()
        if entry is not None and entry.version == version and before != (version, error):
            if error:
                log.warning("pod %s/%s refused config %s: %s", *key, version, error)
            await self._refused(who.namespace, who.pod, entry.policies,
                                f"version {version}: {error}" if error else None)
        return web.Response(status=204)

    async def _identify(self, request: web.Request) -> Identity | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        now = time.time()
        cached = self._reviews.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            who = identity_of(await self._review(token, self.audience), self.audience)
        except Exception as exc:  # the API is unreachable: refuse now, the sidecar retries
            log.warning("could not review a sidecar's token: %s", type(exc).__name__)
            return None
        until = now + (REVIEW_TTL * random.uniform(REVIEW_SPREAD, 1.0) if who
                       else REFUSAL_TTL)
        if who is not None and (exp := _expiry(token)) is not None:
            until = min(until, exp)
        self._reviews[digest] = (who, until)
        self._reviews.move_to_end(digest)
        while len(self._reviews) > REVIEWS_KEPT:
            self._reviews.popitem(last=False)
        if who is None:
            self._served["unauthorized"].inc()
        return who


def _refuse() -> web.Response:
    return web.json_response(
        {"error": "a pod's service-account token for the operator's audience is required"},
        status=401, headers={"WWW-Authenticate": 'Bearer realm="agent-operator"'})


def _leaving(response: web.Response) -> web.Response:
    """An answer of a stopping replica: its connection closes with it, so that the
    sidecar's next watch opens a new one, which the Service sends to a replica that stays."""
    response.force_close()
    return response
