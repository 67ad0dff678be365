"""How an engine failure becomes the caller's HTTP status, whichever format it called
in (each format renders the `Failure` in its own shape: `agent.wire`), and the small
HTTP details the handlers share.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import Any

from agent.errors import (
    AgentError,
    APITimeoutError,
    BadRequestError,
    CircuitOpenError,
    NoCapableAgentError,
    OverloadedError,
    RateLimitError,
    RoutingError,
)
from agent.wire.inbound import Failure, Kind

# ---- engine failures -> HTTP ---------------------------------------------------------------


def describe_failure(error: BaseException) -> Failure:
    """An engine error as a Failure: the status every agent's errors agree on, else 502.

    When every agent failed the same way, that way is what the caller sees (all rate
    limited: 429 with the shortest retry-after; all refused the request: 400; all timed
    out: 504). A mix, or errors that are the sidecar's own business (keys, auth), is 502.
    """
    if isinstance(error, NoCapableAgentError):
        return Failure("invalid_request", str(error), code="no_capable_agent")
    if isinstance(error, RoutingError):
        errors = error.errors or [error]
        tried = [e for e in errors if not isinstance(e, CircuitOpenError)]
        kinds: set[Kind] = {_kind_of(e) for e in tried} if tried else {"overloaded"}
        kind: Kind = kinds.pop() if len(kinds) == 1 else "upstream"
        return Failure(
            kind,
            str(error),
            code="all_agents_failed",
            retry_after=_retry_after(errors) if kind in ("rate_limit", "overloaded") else None,
            errors=[agent_error(e) for e in errors],
        )
    if isinstance(error, AgentError):
        kind = _kind_of(error)
        return Failure(
            kind,
            str(error),
            retry_after=_retry_after([error]) if kind == "rate_limit" else None,
            errors=[agent_error(error)],
        )
    return Failure("internal", "internal error in the sidecar")


def _kind_of(error: AgentError) -> Kind:
    if isinstance(error, BadRequestError):
        return "too_large" if error.status == 413 else "invalid_request"
    if isinstance(error, RateLimitError):
        return "rate_limit"
    if isinstance(error, APITimeoutError):
        return "timeout"
    if isinstance(error, OverloadedError | CircuitOpenError):
        return "overloaded"
    return "upstream"


def _retry_after(errors: Iterable[AgentError]) -> float | None:
    waits = [
        e.retry_after for e in errors if isinstance(e, RateLimitError) and e.retry_after is not None
    ]
    return min(waits) if waits else None


def agent_error(error: AgentError) -> dict[str, Any]:
    """One agent's error for an error body (messages are scrubbed of keys by the engine)."""
    return {
        "agent": error.agent,
        "type": error.kind,
        "status": error.status,
        "message": error.message,
    }


def retry_after_header(seconds: float | None) -> dict[str, str]:
    if seconds is None:
        return {}
    return {"retry-after": str(max(0, math.ceil(seconds)))}



def header_value(text: str, limit: int = 512) -> str:
    """Text safe for an HTTP header: one ASCII line, bounded."""
    if len(text) <= 256:  # models and route reasons: the same request after request
        return _short_header_value(text, limit)
    return _safe_header_value(text, limit)  # a caller's field names, say: not kept


def _safe_header_value(text: str, limit: int) -> str:
    text = " ".join(text.split())
    if not (text.isascii() and text.isprintable()):  # control characters would be refused
        text = text.encode("unicode_escape").decode("ascii")
    return text[:limit]


_short_header_value = functools.lru_cache(maxsize=1024)(_safe_header_value)
