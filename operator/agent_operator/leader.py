"""Which replica acts: the holder of a `coordination.k8s.io` Lease in the operator's
namespace, as Kubernetes' own controllers decide it.

Every replica watches, compiles, serves the sidecars' watches and the webhook; only the
holder writes status. The holder renews the Lease every third of its duration; another replica takes it
once it has seen the same renewal for a whole duration (its own clock: no clock skew
between nodes matters). A replica that cannot renew stops acting before its Lease runs
out, and one that stops hands the Lease back at once.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from agent_operator import kube

log = logging.getLogger("agent_operator.leader")


def identity() -> str:
    """Unique per process: a restarted container must not think it still holds the Lease."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Lease:
    def __init__(self, namespace: str, name: str, duration: int,
                 on_change: Callable[[bool], Awaitable[None]], me: str | None = None) -> None:
        self.namespace, self.name, self.duration = namespace, name, duration
        self.on_change, self.me = on_change, me or identity()
        self._renewed = float("-inf")  # monotonic time of our last successful renewal
        self._observed: tuple[Any, ...] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0

    @property
    def leading(self) -> bool:
        # A bit less than the duration: others may take over at exactly `duration`.
        return time.monotonic() - self._renewed < self.duration * 0.8

    async def run(self) -> None:
        reported = False
        while True:
            try:
                if await self._try():
                    self._renewed = time.monotonic()
            except kube.KubeError as exc:
                log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            if self.leading != reported:
                reported = self.leading
                if reported:
                    log.info("leading as %s (lease %s/%s)", self.me, self.namespace, self.name)
                else:
                    log.warning("no longer leading: the lease could not be renewed in time")
                await self.on_change(self.leading)
            await asyncio.sleep(self.duration / 3)

    async def _try(self) -> bool:
        lease = await kube.read_lease(self.namespace, self.name)
        spec = {"holderIdentity": self.me, "leaseDurationSeconds": self.duration,
                "renewTime": _now()}
        if lease is None:
            try:
                await kube.create_lease(self.namespace, self.name,
                                        {**spec, "acquireTime": spec["renewTime"],
                                         "leaseTransitions": 0})
            except kube.Conflict:
                return False
            return True
        old = lease.get("spec") or {}
        holder = old.get("holderIdentity")
        seen = (holder, old.get("renewTime"))
        if seen != self._observed:
            self._observed, self._observed_at = seen, time.monotonic()
        expired = time.monotonic() - self._observed_at >= int(
            old.get("leaseDurationSeconds") or self.duration)
        if holder and holder != self.me and not expired:
            return False
        if holder != self.me:
            spec.update(acquireTime=spec["renewTime"],
                        leaseTransitions=int(old.get("leaseTransitions") or 0) + 1)
        try:
            await kube.update_lease(self.namespace, self.name,
                                    lease["metadata"]["resourceVersion"], spec)
        except kube.Conflict:
            return False  # someone else renewed or took it meanwhile
        return True

    async def release(self) -> None:
        """Hand the Lease back (on shutdown), if it is still ours by the Lease itself (our
        own clock may already count it as lapsed): the next replica acts without waiting."""
        self._renewed = float("-inf")  # whether or not the Lease says so: stop acting
        try:
            lease = await kube.read_lease(self.namespace, self.name)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.me:
                await kube.update_lease(self.namespace, self.name,
                                        lease["metadata"]["resourceVersion"],
                                        {"holderIdentity": None})
        except kube.KubeError as exc:
            log.warning("could not hand the lease back: %s", exc)
