"""Shared machinery around every strategy: retry policy, circuit breakers, latency.

Which errors do what (the router's documented table):

    error                                   retried (same agent)   then
    RateLimitError (429)                    yes, after retry-after  fall back
    OverloadedError (529/503), ServerError  yes, with backoff       fall back
    APITimeoutError, APIConnectionError     yes, with backoff       fall back
    InvalidResponseError                    no                      fall back
    Authentication/PermissionDenied/NotFound no                     fall back
    BadRequestError (400/413/422)           no                      fall back
    ConfigurationError (no key, unknown)    no                      fall back
    OutputValidationError                   no                      fall back
    CircuitOpenError (breaker open)         not tried               fall back
    anything else (your middleware, a       no                      stops the chain:
      custom router, cancellation)                                  raised as is

A retry-after longer than `max_retry_after` is not waited for: the router falls back
at once. Every failure but a bad request counts against the agent's breaker.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Literal

from agent.errors import (
    AgentError,
    APIConnectionError,
    BadRequestError,
    OutputValidationError,
    RateLimitError,
    ServerError,
)

Decision = Literal["retry", "fallback"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Per-agent retries with exponential backoff and full jitter."""

    retries: int = 1
    backoff: float = 0.25  # first delay, doubled each retry
    max_backoff: float = 8.0
    max_retry_after: float = 10.0

    def decide(self, error: AgentError, retry: int) -> tuple[Decision, float]:
        """Retry this agent (after how long) or fall back to the next one."""
        if retry >= self.retries or not isinstance(
            error, RateLimitError | ServerError | APIConnectionError
        ):
            return "fallback", 0.0
        if isinstance(error, RateLimitError) and error.retry_after is not None:
            if error.retry_after > self.max_retry_after:
                return "fallback", 0.0
            return "retry", error.retry_after
        ceiling = min(self.max_backoff, self.backoff * (2**retry))
        return "retry", random.uniform(ceiling / 2, ceiling)


def counts_against_agent(error: AgentError) -> bool:
    """A bad request or bad output is the request's fault, not the agent's health."""
    return not isinstance(error, BadRequestError | OutputValidationError)


class CircuitBreaker:
    """Open after `failures` consecutive failures. After `cooldown` seconds it is due a
    probe: with `probe=True` (the router's default) the router sends one small request
    in the background, so no user request waits on an agent that may still hang; with
    `probe=False` the next user request is let through as the probe (half-open). A
    successful probe closes it; a failed one opens it for another cooldown."""

    __slots__ = (
        "_lock",
        "_probing",
        "background",
        "consecutive",
        "cooldown",
        "failures",
        "opened_at",
    )

    def __init__(self, failures: int = 5, cooldown: float = 30.0, background: bool = False) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self.background = background
        self.consecutive = 0
        self.opened_at: float | None = None
        self._probing = False
        self._lock = threading.Lock()

    @property
    def state(self) -> Literal["closed", "open", "half_open"]:
        """half_open: a probe is on its way (or, without background probes, is due)."""
        if self.opened_at is None:
            return "closed"
        if self._probing:
            return "half_open"
        if not self.background and time.monotonic() - self.opened_at >= self.cooldown:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """Whether a user request may try the agent now."""
        if self.opened_at is None:  # fast path, no lock
            return True
        if self.background:
            return False
        return self.claim_probe()

    def claim_probe(self) -> bool:
        """True (once per cooldown) when the probe is due: the caller sends it."""
        with self._lock:
            # Re-checked under the lock: another thread may have closed or probed it.
            if self.opened_at is None:
                return not self.background
            if self._probing or time.monotonic() - self.opened_at < self.cooldown:
                return False
            self._probing = True  # exactly one probe while half-open
            return True

    def success(self) -> None:
        if self.consecutive or self.opened_at is not None:
            with self._lock:
                self.consecutive = 0
                self.opened_at = None
                self._probing = False

    def failure(self) -> None:
        with self._lock:
            self.consecutive += 1
            if self._probing or (self.failures and self.consecutive >= self.failures):
                self.opened_at = time.monotonic()
            self._probing = False


class AgentHealth:
    """What the router knows about one agent: breaker, latency, counts."""

    __slots__ = ("breaker", "errors", "latency_ms", "requests")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker
        self.latency_ms: float | None = None  # exponentially weighted moving average
        self.requests = 0
        self.errors = 0

    def observe(self, latency_ms: float, error: AgentError | None) -> None:
        self.requests += 1
        if error is None:
            self.breaker.success()
            prev = self.latency_ms
            self.latency_ms = latency_ms if prev is None else prev * 0.8 + latency_ms * 0.2
        else:
            self.errors += 1
            if counts_against_agent(error):
                self.breaker.failure()

    def snapshot(self) -> dict[str, object]:
        b = self.breaker
        remaining = None
        if b.opened_at is not None:
            remaining = round(max(0.0, b.cooldown - (time.monotonic() - b.opened_at)), 3)
        return {
            "state": b.state,
            "consecutive_failures": b.consecutive,
            "cooldown_remaining_s": remaining,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 3),
            "requests": self.requests,
            "errors": self.errors,
        }
