"""Rate limits and budgets: reserve before a request is sent, settle when it ends.

A request reserves what it may use (one request; its input tokens plus `max_tokens`, or
a default, for the output; their price) against every limit of its route and of the
agent about to be tried, all or nothing. When the attempt ends the reservation is
settled on the real usage (a failed attempt before any content: no tokens, no cost).
So a limit is never overshot by more than what the requests already admitted reserved
too little, and concurrent requests cannot all pass a check that only one fits.

Windows: `rpm` and `tpm` count over a sliding minute (two fixed minutes, the previous
one weighted by how much of it is still inside the last 60 seconds); budgets count per
calendar hour, day and month in UTC. `concurrent` counts requests in flight.

Where the counters live is a `LimitsStore`: `MemoryStore` for one process, or
`agent.limits_redis.RedisStore` for every pod sharing them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from agent import _steps
from agent.errors import RateLimitError
from agent.types import Request, Usage

if TYPE_CHECKING:
    from agent._base import BaseAgent
    from agent.config import AgentLimitsConfig, LimitsStoreConfig, RouteLimitsConfig

__all__ = [
    "Admission",
    "LimitsStore",
    "MemoryStore",
    "ProviderLimits",
    "Quota",
    "QuotaExhaustedError",
    "Reservation",
    "make_store",
]

Measure = Literal["requests", "tokens", "usd"]
Calendar = Literal["minute", "hour", "day", "month"]
MINUTE = 60.0
DEFAULT_OUTPUT_TOKENS = 500  # reserved for the answer when a request sets no max_tokens


class QuotaExhaustedError(RateLimitError):
    """A limit or budget of ours (or the provider's, as its headers said) has no room
    for this request: `retry_after` is when it has room again, `quota` whose it is."""

    quota: Quota | None = None


@dataclass(frozen=True, slots=True)
class Window:
    """One counted limit: `limit` of `measure` per `period`."""

    name: str  # rpm, tpm, usd_per_hour, usd_per_day, usd_per_month
    measure: Measure
    limit: float
    period: Calendar


@dataclass(slots=True)
class Counter:
    """One window's counters at one moment, as a store checks them: the current bucket,
    the previous one and how much of the previous still counts."""

    current: str
    previous: str
    weight: float  # of the previous bucket (0 for calendar windows)
    limit: float
    amount: float
    ttl: int  # seconds the current bucket must outlive its window
    elapsed: float  # seconds into the current bucket
    length: float  # seconds in the current bucket


@dataclass(slots=True)
class Admission:
    """A store's answer: `refused` is the index of the first counter with no room (or
    `len(counters)` for the concurrency lease), None when admitted; `used` per counter
    (its current bucket plus the weighted previous one), and the refused counter's two
    buckets apart (to tell when it has room again)."""

    refused: int | None
    used: list[float]
    buckets: tuple[float, float] = (0.0, 0.0)
    store: LimitsStore | None = None  # where it was counted (and is settled): None, the asked


class LimitsStore(Protocol):
    """Where counters live. Each call is one atomic step (and at most one round trip)."""

    def admit(self, counters: Sequence[Counter], lease: Lease | None) -> Admission: ...

    async def admit_async(self, counters: Sequence[Counter], lease: Lease | None) -> Admission: ...

    def settle(self, changes: Sequence[tuple[str, float, int]], lease: Lease | None) -> None: ...

    async def settle_async(
        self, changes: Sequence[tuple[str, float, int]], lease: Lease | None
    ) -> None: ...

    def describe(self) -> dict[str, object]: ...


@dataclass(frozen=True, slots=True)
class Lease:
    """A place among `limit` concurrent requests, held until settled (or `expires`, so a
    process that died holding it does not keep it forever)."""

    key: str
    limit: int
    id: str
    expires: float  # wall clock


# ---- in memory ---------------------------------------------------------------------------


class MemoryStore:
    """Counters in this process: what the library and a lone sidecar use, and what a
    Redis store falls back to while Redis is away (then with `shares` > 1: each pod's
    share of every limit)."""

    def __init__(self, shares: int = 1) -> None:
        self.shares = shares
        self._values: dict[str, tuple[float, float]] = {}  # key -> (value, expires)
        self._leases: dict[str, dict[str, float]] = {}  # key -> id -> expires
        self._lock = threading.Lock()
        self._sweep = 0

    def admit(self, counters: Sequence[Counter], lease: Lease | None) -> Admission:
        now = time.time()
        with self._lock:
            buckets = [(self._get(c.current, now), self._get(c.previous, now)) for c in counters]
            used = [cur + prev * c.weight for (cur, prev), c in zip(buckets, counters, strict=True)]
            for i, c in enumerate(counters):
                if used[i] + c.amount > c.limit / self.shares:
                    return Admission(i, used, buckets[i], self)
            if lease is not None:
                held = self._leases.setdefault(lease.key, {})
                for k in [k for k, exp in held.items() if exp <= now]:
                    del held[k]
                if len(held) >= max(1, lease.limit // self.shares):
                    return Admission(len(counters), used, store=self)
                held[lease.id] = lease.expires
            for c in counters:
                self._values[c.current] = (self._get(c.current, now) + c.amount, now + c.ttl)
            self._forget_expired(now)
        return Admission(None, used, store=self)

    async def admit_async(self, counters: Sequence[Counter], lease: Lease | None) -> Admission:
        return self.admit(counters, lease)

    def settle(self, changes: Sequence[tuple[str, float, int]], lease: Lease | None) -> None:
        now = time.time()
        with self._lock:
            for key, delta, ttl in changes:
                if key in self._values:
                    self._values[key] = (self._get(key, now) + delta, now + ttl)
            if lease is not None:
                self._leases.get(lease.key, {}).pop(lease.id, None)

    async def settle_async(
        self, changes: Sequence[tuple[str, float, int]], lease: Lease | None
    ) -> None:
        self.settle(changes, lease)

    def describe(self) -> dict[str, object]:
        return {"store": "memory", "shares": self.shares}

    def _get(self, key: str, now: float) -> float:
        value = self._values.get(key)
        return 0.0 if value is None or value[1] <= now else value[0]

    def _forget_expired(self, now: float) -> None:
        self._sweep += 1
        if self._sweep % 4096 == 0:  # now and then, not on every admission
            self._values = {k: v for k, v in self._values.items() if v[1] > now}


def make_store(config: LimitsStoreConfig | None) -> LimitsStore:
    """The store a config document asks for: without Redis, each process counts its
    share of every limit (all of it when alone)."""
    if config is None:
        return MemoryStore()
    if config.redis_url is None:
        return MemoryStore(config.shares)
    from agent.limits_redis import RedisStore

    password = config.password.get_secret_value() if config.password else None
    if password is None and config.password_env:
        password = os.environ.get(config.password_env)
    return RedisStore(
        config.redis_url,
        password=password,
        shares=config.shares,
        ca_file=config.ca_file,
        ca_pem=config.ca_pem,
        scope=config.scope,
        timeout=config.timeout,
    )


# ---- a quota: the limits of one agent or one route -----------------------------------------


_ids = itertools.count()
_pending: set[asyncio.Task[None]] = set()
_PREFIX = f"{os.getpid():x}.{time.time_ns():x}"


def _settle_now(
    store: LimitsStore, changes: list[tuple[str, float, int]], lease: Lease | None
) -> None:
    """A settlement made outside the steps, for a generator being closed: at once when no
    event loop runs, else in a task of its own."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        store.settle(changes, lease)
        return
    task = loop.create_task(store.settle_async(changes, lease))
    _pending.add(task)
    task.add_done_callback(_pending.discard)


@dataclass(slots=True)
class Reservation:
    """What one admitted request holds, to settle when it ends."""

    quota: Quota
    tokens: float
    usd: float
    counters: list[tuple[Window, Counter]]
    lease: Lease | None
    store: LimitsStore  # where it was counted: Redis, or the fallback while Redis was away

    def settle(self, usage: Usage | None, usd: float | None) -> _steps.Steps[None]:
        """Correct the counters to the real use (None: unknown, the estimate stays) and
        free the concurrency lease."""
        self.quota.in_flight -= 1
        changes, lease, store = self.changes(usage, usd), self.lease, self.store
        names = {c.current: w.name for w, c in self.counters}
        for key, delta, _ in changes:  # what health() reports follows the settlement
            name = names[key]
            self.quota.used[name] = self.quota.used.get(name, 0.0) + delta
        if changes or lease is not None:
            try:
                yield _steps.Count(
                    lambda: store.settle(changes, lease), lambda: store.settle_async(changes, lease)
                )
            except GeneratorExit:  # closed before the step was taken (the caller left)
                _settle_now(store, changes, lease)
                raise

    def abandon(self) -> None:
        """An attempt cancelled midway (a race lost, the caller left): what it used is
        unknown, so the estimate stays counted; the lease is freed without a step (none
        can be taken by a generator being closed)."""
        self.quota.in_flight -= 1
        if self.lease is not None:
            _settle_now(self.store, [], self.lease)

    def changes(self, usage: Usage | None, usd: float | None) -> list[tuple[str, float, int]]:
        """Each token and spend counter's correction: the real use minus the reserved
        (None: unknown, the reservation stands)."""
        out = []
        for window, counter in self.counters:
            if window.measure == "tokens" and usage is not None:
                out.append((counter.current, usage.total_tokens - self.tokens, counter.ttl))
            elif window.measure == "usd" and usd is not None:
                out.append((counter.current, usd - self.usd, counter.ttl))
        return [c for c in out if c[1]]


_REMAINING = (
    "x-ratelimit-remaining-requests",
    "anthropic-ratelimit-requests-remaining",
    "x-ratelimit-remaining-tokens",
    "anthropic-ratelimit-tokens-remaining",
)


@dataclass(slots=True)
class ProviderLimits:
    """What a provider's rate-limit headers said on its last answer."""

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests: float | None = None  # seconds
    reset_tokens: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> ProviderLimits | None:
        """OpenAI's (and most compatible servers') `x-ratelimit-*`, Anthropic's
        `anthropic-ratelimit-*`; None when the answer carried neither."""
        if not any(name in headers for name in _REMAINING):
            return None  # most answers of most servers: no need to parse four headers

        def first(parse: Callable[[str | None], Any], *names: str) -> Any:
            return next((v for n in names if (v := parse(headers.get(n))) is not None), None)

        found = cls(
            first(_int, "x-ratelimit-remaining-requests", "anthropic-ratelimit-requests-remaining"),
            first(_int, "x-ratelimit-remaining-tokens", "anthropic-ratelimit-tokens-remaining"),
            first(_reset, "x-ratelimit-reset-requests", "anthropic-ratelimit-requests-reset"),
            first(_reset, "x-ratelimit-reset-tokens", "anthropic-ratelimit-tokens-reset"),
        )
        if found.remaining_requests is None and found.remaining_tokens is None:
            return None
        return found


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATIONS = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _reset(value: str | None) -> float | None:
    """Seconds until a reset: OpenAI's durations (`1s`, `6m0s`, `250ms`), plain seconds,
    or Anthropic's RFC 3339 time."""
    if not value:
        return None
    value = value.strip()
    if _DURATIONS.fullmatch(value):
        return sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(value))
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, when.timestamp() - time.time())


class Quota:
    """The limits of one agent (a provider account) or one route, counted in `store`
    under `key`; plus, for an agent, what its provider's headers last said."""

    def __init__(
        self,
        key: str,
        windows: Sequence[Window],
        store: LimitsStore,
        concurrent: int | None = None,
        default_output_tokens: int = 500,
    ) -> None:
        self.key = key
        self.windows = list(windows)
        self.store = store
        self.concurrent = concurrent
        self.default_output_tokens = default_output_tokens
        self.in_flight = 0
        self.used: dict[str, float] = {}  # as last counted: what health() reports
        self.provider: ProviderLimits | None = None
        self.provider_until = 0.0  # monotonic: no request until then (the provider said so)
        self.tokens_until = 0.0  # monotonic: when the provider's token count resets

    @classmethod
    def for_agent(
        cls, name: str, limits: AgentLimitsConfig | None, store: LimitsStore, output: int
    ) -> Quota:
        windows = _per_minute(limits)
        concurrent = limits.concurrent if limits is not None else None
        return cls(f"agent:{name}", windows, store, concurrent, output)

    @classmethod
    def for_route(
        cls, name: str, limits: RouteLimitsConfig | None, store: LimitsStore, output: int
    ) -> Quota:
        windows = _per_minute(limits)
        if limits is not None:
            budget = limits.budget
            for period, usd in (
                ("hour", budget and budget.hourly),
                ("day", budget and budget.daily),
                ("month", budget and budget.monthly),
            ):
                if usd:
                    windows.append(Window(f"usd_per_{period}", "usd", usd, period))  # type: ignore[arg-type]
        return cls(f"route:{name}", windows, store, None, output)

    @property
    def limited(self) -> bool:
        return bool(self.windows) or self.concurrent is not None

    @property
    def budgeted(self) -> bool:
        return any(w.measure == "usd" for w in self.windows)

    def held_off(self, tokens: int) -> float | None:
        """Seconds until the provider's own limits (from its headers) have room, or None."""
        now = time.monotonic()
        if self.provider_until > now:
            return self.provider_until - now
        p = self.provider
        if p is not None and p.remaining_tokens is not None and p.remaining_tokens < tokens:
            wait = self.tokens_until - now
            if wait > 0:
                return wait
        return None

    def counters(self, tokens: float, usd: float) -> list[tuple[Window, Counter]]:
        now = time.time()
        out = []
        for w in self.windows:
            amount = 1.0 if w.measure == "requests" else tokens if w.measure == "tokens" else usd
            out.append((w, _counter(f"{self.key}:{w.name}", w, amount, now)))
        return out

    def lease(self) -> Lease | None:
        if self.concurrent is None:
            return None
        return Lease(
            f"{self.key}:concurrent", self.concurrent, f"{_PREFIX}.{next(_ids)}", time.time() + 600
        )

    def refused(
        self, counted: list[tuple[Window, Counter]], admission: Admission, at: int
    ) -> QuotaExhaustedError:
        """The error saying which of this quota's limits is full (`at`: its index in
        `counted`, or past it for the concurrency lease) and when it has room again."""
        if at >= len(counted):
            return QuotaExhaustedError(
                f"{self.key}: {self.concurrent} concurrent requests already", retry_after=1.0
            )
        window, counter = counted[at]
        wait = refill(counter, *admission.buckets)
        return QuotaExhaustedError(
            f"{self.key}: {window.name} limit of {window.limit:g} reached",
            retry_after=round(wait, 3),
        )

    def heard(self, limits: ProviderLimits | None, retry_after: float | None = None) -> None:
        """What the provider said: its headers (no requests left: none are sent until
        their reset; too few tokens left: no request needing more until theirs), or a
        429's retry-after."""
        now = time.monotonic()
        if limits is not None:
            self.provider = limits
            if limits.remaining_requests is not None and limits.remaining_requests <= 0:
                self.provider_until = now + (limits.reset_requests or 1.0)
            self.tokens_until = now + (limits.reset_tokens or 1.0)
        if retry_after is not None:
            self.provider_until = now + retry_after

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Remaining room per window (as last counted), in flight, the provider's word."""
        out: dict[str, dict[str, Any]] = {}
        for w in self.windows:
            used = self.used.get(w.name, 0.0)
            out[w.name] = {"limit": w.limit, "remaining": round(max(0.0, w.limit - used), 6)}
        if self.concurrent is not None:
            out["concurrent"] = {"limit": self.concurrent, "in_flight": self.in_flight}
        if self.provider is not None:
            out["provider"] = {
                "remaining_requests": self.provider.remaining_requests,
                "remaining_tokens": self.provider.remaining_tokens,
            }
        return out


def reserve(
    quotas: Sequence[Quota], request: Request, agent: BaseAgent | None
) -> _steps.Steps[list[Reservation] | QuotaExhaustedError]:
    """Reserve what `request` may use against every one of `quotas` (an agent's, and the
    route's on the call's first admission) in one store call, all or nothing: one
    reservation per quota that limits anything, or the error saying which limit has no
    room and when it will (`.quota` on it: whose)."""
    if not any(q.limited or q.provider is not None or q.provider_until for q in quotas):
        return []  # nothing limits these, and no provider has said a word: most calls
    output = quotas[0].default_output_tokens if quotas else DEFAULT_OUTPUT_TOKENS
    tokens = request.approx_input_tokens() + (request.max_tokens or output)
    for quota in quotas:
        wait = quota.held_off(tokens)
        if wait is not None:
            error = QuotaExhaustedError(
                f"{quota.key}: the provider's rate limit has no room", retry_after=round(wait, 3)
            )
            error.quota = quota
            return error
    limited = [q for q in quotas if q.limited]
    if not limited:
        return []
    usd = _cost(request, agent, tokens) if any(q.budgeted for q in limited) else 0.0
    counted = [(q, q.counters(tokens, usd)) for q in limited]
    leases = [lease for q in limited if (lease := q.lease()) is not None]
    assert len(leases) <= 1, "one concurrency limit per admission (an agent's)"
    lease = leases[0] if leases else None
    store, counters = limited[0].store, [c for _, cs in counted for _, c in cs]
    admission: Admission = yield _steps.Count(
        lambda: store.admit(counters, lease), lambda: store.admit_async(counters, lease)
    )
    at = 0
    for quota, cs in counted:  # what each quota reports follows this count
        for (w, c), used in zip(cs, admission.used[at:], strict=False):
            quota.used[w.name] = used + (c.amount if admission.refused is None else 0.0)
        at += len(cs)
    if admission.refused is not None:
        at, refused = admission.refused, None
        for quota, cs in counted:
            if at < len(cs) or (at == len(cs) and quota.concurrent is not None):
                refused = quota.refused(cs, admission, at)
                refused.quota = quota
                break
            at -= len(cs)
        assert refused is not None
        return refused
    held = admission.store or store
    out = []
    for quota, cs in counted:
        quota.in_flight += 1
        out.append(Reservation(quota, tokens, usd, cs, lease if quota.concurrent else None, held))
    return out


def _cost(request: Request, agent: BaseAgent | None, tokens: int) -> float:
    """USD the request may cost at `agent`: its input and `tokens` in all, at its price."""
    if agent is None:
        return 0.0
    price = agent.price
    if price is None:
        return agent.estimate_cost(request) or 0.0
    inputs = request.approx_input_tokens()
    return price.cost(Usage(inputs, tokens - inputs))


def _counter(base: str, window: Window, amount: float, now: float) -> Counter:
    if window.period == "minute":
        index = math.floor(now / MINUTE)
        elapsed = now - index * MINUTE
        return Counter(
            f"{base}:{index}",
            f"{base}:{index - 1}",
            1.0 - elapsed / MINUTE,
            window.limit,
            amount,
            int(2 * MINUTE) + 5,
            elapsed,
            MINUTE,
        )
    start, end = _calendar(window.period, now)
    label = start.strftime("%Y%m%d%H")
    return Counter(
        f"{base}:{label}",
        f"{base}:-",
        0.0,
        window.limit,
        amount,
        int(end.timestamp() - now) + 60,
        now - start.timestamp(),
        end.timestamp() - start.timestamp(),
    )


def _calendar(period: Calendar, now: float) -> tuple[dt.datetime, dt.datetime]:
    t = dt.datetime.fromtimestamp(now, dt.UTC)
    if period == "hour":
        start = t.replace(minute=0, second=0, microsecond=0)
        return start, start + dt.timedelta(hours=1)
    if period == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + dt.timedelta(days=1)
    start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    return start, end


def refill(c: Counter, current: float, previous: float) -> float:
    """Seconds until `c` has room for its amount again, given its buckets now."""
    left = c.length - c.elapsed
    room = c.limit - c.amount
    if room < 0:
        return c.length  # larger than the whole limit: no sooner than a window from now
    if c.weight == 0:
        return left  # a calendar window: room when the next one starts
    # Sliding minute: the previous bucket slides out as time passes...
    if current <= room and previous > 0:
        return max(0.0, c.length * (1 - (room - current) / previous) - c.elapsed)
    # ...and when this bucket ends it becomes the previous one and slides out in turn.
    return left + c.length * max(0.0, 1 - room / current)


def _per_minute(limits: AgentLimitsConfig | RouteLimitsConfig | None) -> list[Window]:
    """The requests- and tokens-per-minute windows both agents and routes can have."""
    windows = []
    if limits is not None:
        if limits.rpm:
            windows.append(Window("rpm", "requests", limits.rpm, "minute"))
        if limits.tpm:
            windows.append(Window("tpm", "tokens", limits.tpm, "minute"))
    return windows
