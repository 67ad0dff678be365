"""Which pods serve their current config: what `syncedPods` and the `Synced` condition
count, whichever replica each sidecar acknowledged it on.

A sidecar watches one replica, and acknowledges there; the leading replica writes the
status. So every replica that shares a Lease keeps a summary of what its own watchers
acknowledged in one ConfigMap (named as the Lease, created empty by the chart): one key
per replica, holding the time it was written and a short digest of each (pod uid,
version) pair. One merge patch of its own key, at most once a second and only when it
changed (or a minute passed): 1,000 pods acknowledging a change cost each replica one
write, not 1,000, and about 13 bytes a pod. The digest names no pod and no config.

A sidecar that comes back on another replica (either side restarted) counts there from
its first watch, which names the version it serves. A summary left by a replica that
died stays true meanwhile (a pod's uid is never reused); the leader drops it once it is
ten minutes old and names no pod's current config.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from agent_operator import kube
from agent_operator.delivery import Delivery

log = logging.getLogger("agent_operator.synced")

WRITE_EVERY = 1.0  # seconds between checks for new acknowledgements
REFRESH = 60.0  # a summary is rewritten this often even when nothing changed
STALE = 600.0  # the leader drops a summary not rewritten this long


def digest(uid: str, version: str) -> str:
    return hashlib.sha256(f"{uid}/{version}".encode()).hexdigest()[:12]


class Synced:
    """This replica's acknowledgements, and (with `shared`, on every replica of a Lease)
    the other replicas' from their summaries."""

    def __init__(self, delivery: Delivery, me: str,
                 shared: tuple[str, str] | None = None) -> None:
        self.delivery, self.me, self.shared = delivery, _key(me), shared
        self._peers: set[str] = set()  # the other replicas' digests, as last read
        self._written: tuple[frozenset[str], float] = (frozenset(), float("-inf"))

    def acknowledged(self) -> set[str]:
        """The digests of every (pod uid, version) acknowledged on any replica."""
        return self._local() | self._peers

    def _local(self) -> set[str]:
        return {digest(uid, version)
                for _, _, uid, version, acked in self.delivery.versions() if acked}

    async def run(self, leading: Callable[[], bool],
                  changed: Callable[[Iterable[str]], Awaitable[None]]) -> None:
        """Every second: publish this replica's summary when it changed; on the leader,
        read the others' too; then `changed(namespaces)` for the namespaces whose synced
        pods differ from the last round (their status is due)."""
        before: dict[str, frozenset[str]] = {}
        while True:
            await asyncio.sleep(WRITE_EVERY)
            try:
                await self.exchange(leading())
            except kube.KubeError as exc:
                log.warning("could not share the acknowledged configs: %s", exc)
            now = self._by_namespace()
            due = [ns for ns in now.keys() | before.keys() if now.get(ns) != before.get(ns)]
            before = now
            if due and leading():
                await changed(due)

    async def exchange(self, leading: bool) -> None:
        if self.shared is None:
            return  # one replica: its own acknowledgements are all there are
        namespace, name = self.shared
        mine, now = frozenset(self._local()), time.time()
        last, at = self._written
        if mine != last or now - at >= REFRESH:
            await kube.patch_config_map(namespace, name, {
                self.me: " ".join([str(int(now)), *sorted(mine)])})
            self._written = (mine, now)
        if not leading:
            self._peers = set()
            return
        data = await kube.read_config_map(namespace, name)
        current = {digest(uid, version) for _, _, uid, version, _ in self.delivery.versions()}
        peers: set[str] = set()
        gone: list[str] = []
        for key, value in data.items():
            if key == self.me:
                continue
            written, *digests = value.split() or ["0"]
            if now - float(written if written.isdigit() else 0) > STALE \
                    and current.isdisjoint(digests):
                gone.append(key)  # a replica long gone, whose sidecars all moved on
            else:
                peers.update(digests)
        self._peers = peers
        if gone:
            await kube.patch_config_map(namespace, name, dict.fromkeys(gone))

    def _by_namespace(self) -> dict[str, frozenset[str]]:
        """The pods of each namespace that serve their current config, on any replica."""
        found: dict[str, set[str]] = {}
        for namespace, pod, uid, version, acked in self.delivery.versions():
            if acked or digest(uid, version) in self._peers:
                found.setdefault(namespace, set()).add(pod)
        return {ns: frozenset(pods) for ns, pods in found.items()}


def _key(replica: str) -> str:
    """A ConfigMap key (letters, digits, `-`, `_`, `.`) for a replica's identity."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in replica)[:253]
