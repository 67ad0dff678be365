"""Middleware: hooks around every call of an agent or a router.

Each hook may be a plain method or a coroutine. `before` may return a changed
request, `after` a changed response (returning None keeps what was passed in).
For a stream, `after` runs once it ends, with the assembled response.
"""

from __future__ import annotations

from typing import Any

from agent.errors import AgentError
from agent.types import Request, Response

__all__ = ["Middleware"]


class Middleware:
    """Subclass and override what you need; the rest costs nothing."""

    def before(self, request: Request) -> Request | Any | None:
        return None

    def after(self, request: Request, response: Response[Any]) -> Response[Any] | Any | None:
        return response

    def on_error(self, request: Request, error: AgentError) -> Any | None:
        return None


def overrides(middleware: Middleware, hook: str) -> bool:
    """Whether `middleware` really implements `hook` (skip the no-op defaults)."""
    return getattr(type(middleware), hook) is not getattr(Middleware, hook)
