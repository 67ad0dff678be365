"""Limits counted in Redis, shared by every pod: one server-side script per admission
(check every counter, then count all of them, or none), one per settlement.

While Redis cannot be reached, each process counts alone against its share of every
limit (limit / `shares`, the number of pods sharing it): never unlimited, and never
waiting on a dead store (short socket timeouts, then no new attempt for `retry_every`
seconds). The next admission after that tries Redis again.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio

from agent.limits import Admission, Counter, Lease, MemoryStore, Quota

log = logging.getLogger("agent.limits")

# KEYS: per counter its current and previous bucket, then the lease's sorted set.
# ARGV: the counter count, then per counter (weight, limit, amount, ttl), then the lease
# (limit, id, now, expires) or nothing. Replies are strings: Redis would truncate floats.
ADMIT = """
local n = tonumber(ARGV[1])
local used = {}
for i = 1, n do
  local cur = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
  local prev = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
  local a = 4 * (i - 1) + 2
  used[i] = cur + prev * tonumber(ARGV[a])
  if used[i] + tonumber(ARGV[a + 2]) > tonumber(ARGV[a + 1]) then
    local reply = {tostring(i), tostring(cur), tostring(prev)}
    for j = 1, i do reply[#reply + 1] = tostring(used[j]) end
    return reply
  end
end
local l = 4 * n + 2
if ARGV[l] then
  local key = KEYS[2 * n + 1]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[l + 2])
  if redis.call('ZCARD', key) >= tonumber(ARGV[l]) then
    local reply = {tostring(n + 1), '0', '0'}
    for j = 1, n do reply[#reply + 1] = tostring(used[j]) end
    return reply
  end
  redis.call('ZADD', key, ARGV[l + 3], ARGV[l + 1])
  redis.call('EXPIRE', key, 3600)
end
local reply = {'0', '0', '0'}
for i = 1, n do
  local a = 4 * (i - 1) + 2
  redis.call('INCRBYFLOAT', KEYS[2 * i - 1], ARGV[a + 2])
  redis.call('EXPIRE', KEYS[2 * i - 1], ARGV[a + 3])
  reply[#reply + 1] = tostring(used[i])
end
return reply
"""

# KEYS: the buckets to correct, then the lease's sorted set (or nothing).
# ARGV: per bucket (delta, ttl), then the lease id (or nothing).
SETTLE = """
local leased = #ARGV % 2 == 1
local buckets = leased and #KEYS - 1 or #KEYS
for i = 1, buckets do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('INCRBYFLOAT', KEYS[i], ARGV[2 * i - 1])
    redis.call('EXPIRE', KEYS[i], ARGV[2 * i])
  end
end
if leased then
  redis.call('ZREM', KEYS[#KEYS], ARGV[#ARGV])
end
return 1
"""

# Every key in one hash slot (`{limits}`): a Redis Cluster runs the scripts too.
PREFIX = "agent-router:{limits}:"


class RedisStore:
    """Counters in Redis at `url` (`rediss://` for TLS, verified against `ca_file` or
    `ca_pem` when given), with `shares` pods sharing them."""

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        shares: int = 1,
        ca_file: str | None = None,
        ca_pem: str | None = None,
        scope: str = "",
        timeout: float = 0.5,
        retry_every: float = 1.0,
    ) -> None:
        self.url = url
        self.shares = shares
        # Whose counters: the operator scopes them by namespace, so that equal route and
        # agent names elsewhere never share a count.
        self.prefix = f"{PREFIX}{scope}:" if scope else PREFIX
        self.retry_every = retry_every
        self.fallback = MemoryStore(shares)
        self._options: dict[str, Any] = {
            "password": password,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry_on_timeout": False,
        }
        if ca_file is not None:  # rediss:// verified against this CA, not the system's
            self._options["ssl_ca_certs"] = ca_file
        if ca_pem is not None:
            self._options["ssl_ca_data"] = ca_pem
        self._down_until = 0.0
        self._sync: redis.Redis | None = None
        self._sync_script: Any = None
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, Any, Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._settle_script: Any = None

    def __repr__(self) -> str:  # the URL may carry a password
        return f"RedisStore(shares={self.shares})"

    @property
    def up(self) -> bool:
        return time.monotonic() >= self._down_until

    def describe(self) -> dict[str, object]:
        return {"store": "redis", "connected": self.up, "shares": self.shares}

    # ---- admission ---------------------------------------------------------------------

    def admit(self, counters: Sequence[Counter], lease: Lease | None) -> Admission:
        if not self.up:
            return self.fallback.admit(counters, lease)
        keys, args = _admit_args(self.prefix, counters, lease)
        try:
            client, admit, _ = self._sync_client()
            reply = admit(keys=keys, args=args, client=client)
        except redis.RedisError as exc:
            self._went_down(exc)
            return self.fallback.admit(counters, lease)
        return _admission(reply, self)

    async def admit_async(self, counters: Sequence[Counter], lease: Lease | None) -> Admission:
        if not self.up:
            return self.fallback.admit(counters, lease)
        keys, args = _admit_args(self.prefix, counters, lease)
        try:
            client, admit, _ = self._async_client()
            reply = await admit(keys=keys, args=args, client=client)
        except (redis.RedisError, OSError) as exc:
            self._went_down(exc)
            return self.fallback.admit(counters, lease)
        return _admission(reply, self)

    # ---- settlement --------------------------------------------------------------------

    def settle(self, changes: Sequence[tuple[str, float, int]], lease: Lease | None) -> None:
        keys, args = _settle_args(self.prefix, changes, lease)
        try:
            client, _, settle = self._sync_client()
            settle(keys=keys, args=args, client=client)
        except redis.RedisError as exc:
            self._went_down(exc)

    async def settle_async(
        self, changes: Sequence[tuple[str, float, int]], lease: Lease | None
    ) -> None:
        keys, args = _settle_args(self.prefix, changes, lease)
        try:
            client, _, settle = self._async_client()
            await settle(keys=keys, args=args, client=client)
        except (redis.RedisError, OSError) as exc:
            self._went_down(exc)

    async def used_async(self, counters: Sequence[Counter]) -> list[float]:
        """What each counter holds now (its bucket plus the weighted previous one), read
        without counting anything: one round trip (an operator's status)."""
        if not counters:
            return []
        client, _, _ = self._async_client()
        keys = [self.prefix + k for c in counters for k in (c.current, c.previous)]
        values = [float(v or 0) for v in await client.mget(keys)]
        return [values[2 * i] + values[2 * i + 1] * c.weight for i, c in enumerate(counters)]

    async def remaining_async(self, quota: Quota) -> dict[str, dict[str, float]]:
        """`quota`'s remaining room per limit as Redis holds it now, for every pod."""
        counted = quota.counters(0, 0)
        used = await self.used_async([c for _, c in counted])
        return {
            w.name: {"limit": w.limit, "remaining": round(max(0.0, w.limit - u), 6)}
            for (w, _), u in zip(counted, used, strict=True)
        }

    # ---- clients -----------------------------------------------------------------------

    def _went_down(self, exc: BaseException) -> None:
        if self.up:
            log.warning(
                "limits store unreachable (%s): counting each limit / %d here for now",
                type(exc).__name__,
                self.shares,
            )
        self._down_until = time.monotonic() + self.retry_every

    def _sync_client(self) -> tuple[Any, Any, Any]:
        if self._sync is None:
            client = redis.Redis.from_url(self.url, **self._options)
            self._sync = client
            self._sync_script = (client.register_script(ADMIT), client.register_script(SETTLE))
        return self._sync, *self._sync_script

    def _async_client(self) -> tuple[Any, Any, Any]:
        """One client per event loop: an asyncio connection belongs to its loop."""
        loop = asyncio.get_running_loop()
        known = self._async.get(loop)
        if known is None:
            client = redis.asyncio.Redis.from_url(self.url, **self._options)
            known = client, client.register_script(ADMIT), client.register_script(SETTLE)
            self._async[loop] = known
        return known

    async def aclose(self) -> None:
        known = self._async.pop(asyncio.get_running_loop(), None)
        if known is not None:
            await known[0].aclose()

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None


def _admit_args(
    prefix: str, counters: Sequence[Counter], lease: Lease | None
) -> tuple[list[str], list[Any]]:
    keys: list[str] = []
    args: list[Any] = [len(counters)]
    for c in counters:
        keys += [prefix + c.current, prefix + c.previous]
        args += [repr(c.weight), repr(c.limit), repr(c.amount), c.ttl]
    if lease is not None:
        keys.append(prefix + lease.key)
        args += [lease.limit, lease.id, repr(time.time()), repr(lease.expires)]
    return keys, args


def _settle_args(
    prefix: str, changes: Sequence[tuple[str, float, int]], lease: Lease | None
) -> tuple[list[str], list[Any]]:
    keys = [prefix + key for key, _, _ in changes]
    args: list[Any] = []
    for _, delta, ttl in changes:
        args += [repr(delta), ttl]
    if lease is not None:
        keys.append(prefix + lease.key)
        args.append(lease.id)
    return keys, args


def _admission(reply: list[bytes], store: RedisStore) -> Admission:
    refused = int(reply[0])
    buckets = float(reply[1]), float(reply[2])
    used = [float(u) for u in reply[3:]]
    return Admission(refused - 1 if refused else None, used, buckets, store)
