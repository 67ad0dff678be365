"""Every error the library raises, in one tree.

    AgentError                      base: .message, .provider, .model, .status
    ├── ConfigurationError          unknown provider, missing API key, bad arguments
    ├── InvalidRequestError         the call's own input is unusable (a malformed message)
    ├── ProviderError               a provider call failed
    │   ├── AuthenticationError     401
    │   ├── PermissionDeniedError   403
    │   ├── NotFoundError           404 (unknown model, wrong base URL)
    │   ├── BadRequestError         400, 413, 422: the request itself was refused
    │   ├── RateLimitError          429; .retry_after in seconds when the provider said
    │   ├── ServerError             500 and other 5xx
    │   │   └── OverloadedError     529, 503
    │   ├── APIConnectionError      could not connect, connection reset, stream cut
    │   │   └── APITimeoutError     no answer within the timeout
    │   └── InvalidResponseError    the provider answered something we cannot parse
    ├── OutputValidationError       structured output did not match the schema; .raw_text
    ├── CircuitOpenError            a router skipped the agent: its circuit breaker is open
    └── RoutingError                every candidate failed; .errors lists each agent's error
        └── NoCapableAgentError     no agent can serve what the request needs

Foreign exceptions (httpx, aiohttp, json) are mapped into this tree at exactly one
boundary per transport (`agent._transport` for httpx; every `agent.transport.AsyncTransport`
does the same) with ``raise ... from exc``; none escape to callers.
Messages never contain API keys: provider error bodies are scrubbed before use.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from agent.types import Attempt, RouteInfo

__all__ = [
    "APIConnectionError",
    "APITimeoutError",
    "AgentError",
    "AuthenticationError",
    "BadRequestError",
    "CircuitOpenError",
    "ConfigurationError",
    "InvalidRequestError",
    "InvalidResponseError",
    "NoCapableAgentError",
    "NotFoundError",
    "OutputValidationError",
    "OverloadedError",
    "PermissionDeniedError",
    "ProviderError",
    "RateLimitError",
    "RoutingError",
    "ServerError",
    "error_for_status",
    "register_secret",
    "scrub",
    "url_credentials",
]

# Anything that looks like a credential in text we did not write ourselves.
_SECRET = re.compile(
    r"(sk-[A-Za-z0-9_\-]{6,}|AIza[0-9A-Za-z_\-]{10,}|gsk_[A-Za-z0-9]{6,}"
    r"|(?i:bearer)\s+[A-Za-z0-9._\-]{6,})"
)
# The user-info of a URL (`https://user:password@host`): whatever it is, it is a credential.
_URL_USERINFO = re.compile(r"(?<=://)[^/\s@?#]+@")
_SHORTEST = 4  # shorter "secrets" would scrub ordinary words

# Secrets of the whole process (the sidecar's admin token): scrubbed from every text.
_PROCESS_SECRETS: set[str] = set()


def register_secret(secret: str | None) -> None:
    """Scrub `secret` from every text `scrub` sees from now on, in this process."""
    if secret and len(secret) >= _SHORTEST:
        _PROCESS_SECRETS.add(secret)


def url_credentials(url: str | None) -> tuple[str, ...]:
    """The user name and password in a URL, as written and decoded (else nothing)."""
    if not url or "@" not in url:
        return ()
    parts = urlsplit(url)
    found = [parts.username, parts.password]
    return tuple(v for raw in found if raw for v in {raw, unquote(raw)})


def scrub(text: str, *secrets: str | None) -> str:
    """`text` without secrets: the ones given (an agent's key, header values, URL
    credentials), the process's (`register_secret`), URL user-info and anything shaped
    like an API key. The one scrubber: errors, stream frames, spans and logs use it."""
    for secret in sorted({s for s in (*secrets, *_PROCESS_SECRETS) if s}, key=len, reverse=True):
        if len(secret) >= _SHORTEST:
            text = text.replace(secret, "***")
    return _SECRET.sub("***", _URL_USERINFO.sub("***@", text))


class AgentError(Exception):
    """Base of every error raised by the library.

    `partial_text`: on a stream that failed after content reached the caller, the text
    it had received (None otherwise): the caller knows exactly what it holds."""

    partial_text: str | None = None

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        model: str | None = None,
        status: int | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.model = model
        self.status = status
        self.body = body

    @property
    def agent(self) -> str:
        """`provider/model` of the agent this error belongs to (or '?')."""
        if self.provider or self.model:
            return f"{self.provider or '?'}/{self.model or '?'}"
        return "?"

    @property
    def kind(self) -> str:
        return type(self).__name__

    def __str__(self) -> str:
        where = f"{self.agent}: " if (self.provider or self.model) else ""
        status = f" (HTTP {self.status})" if self.status else ""
        return f"{where}{self.kind}{status}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message={self.message!r}, provider={self.provider!r}, "
            f"model={self.model!r}, status={self.status!r})"
        )

    def redact(self, *secrets: str | None) -> AgentError:
        """Remove these secrets from the message and the provider's error body."""
        self.message = scrub(self.message, *secrets)
        self.args = (self.message,)
        if self.body is not None:
            import json

            try:
                self.body = json.loads(scrub(json.dumps(self.body), *secrets))
            except ValueError:  # a secret that cut through JSON syntax: keep nothing
                self.body = None
        return self

    def at(self, provider: str | None, model: str | None) -> AgentError:
        """Fill in which agent this happened at (codecs do not know it)."""
        self.provider = self.provider or provider
        self.model = self.model or model
        return self


class ConfigurationError(AgentError):
    """The agent cannot be called as configured: unknown provider, missing key, ..."""


class InvalidRequestError(AgentError):
    """The call's own input cannot be sent: a malformed message, a schema pydantic cannot
    use, a tool whose arguments are not JSON. No agent was asked."""


class ProviderError(AgentError):
    """A call to a provider failed."""


class AuthenticationError(ProviderError):
    pass


class PermissionDeniedError(ProviderError):
    pass


class NotFoundError(ProviderError):
    pass


class BadRequestError(ProviderError):
    pass


class RateLimitError(ProviderError):
    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} (retry after {self.retry_after:g}s)" if self.retry_after else base


class ServerError(ProviderError):
    pass


class OverloadedError(ServerError):
    pass


class APIConnectionError(ProviderError):
    pass


class APITimeoutError(APIConnectionError):
    pass


class InvalidResponseError(ProviderError):
    pass


class OutputValidationError(AgentError):
    """Structured output that did not validate against the requested schema."""

    def __init__(self, message: str, *, raw_text: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.raw_text = raw_text

    def __str__(self) -> str:
        shown = self.raw_text if len(self.raw_text) <= 500 else self.raw_text[:500] + "..."
        return f"{super().__str__()}\n  the model returned: {shown}"


class CircuitOpenError(AgentError):
    """The agent was not tried: too many recent failures opened its circuit breaker."""


class RoutingError(AgentError):
    """Every candidate agent failed. `.errors` has one typed error per agent tried."""

    def __init__(
        self,
        message: str,
        errors: Sequence[AgentError] = (),
        attempts: Sequence[Attempt] = (),
        **kw: Any,
    ) -> None:
        super().__init__(message, **kw)
        self.errors: list[AgentError] = list(errors)
        self.attempts: list[Attempt] = list(attempts)
        self.route: RouteInfo | None = None  # set by the router that raised it

    def __str__(self) -> str:
        # One line per agent tried (or skipped), each naming its agent; an agent that
        # was never tried (the deadline came first) has none.
        lines = [self.message]
        lines += [f"  agent {i}: {err}" for i, err in enumerate(self.errors)]
        return "\n".join(lines)


class NoCapableAgentError(RoutingError):
    """No agent offers what the request needs; `.missing` maps agent -> features."""

    def __init__(self, message: str, missing: dict[str, list[str]], **kw: Any) -> None:
        super().__init__(message, **kw)
        self.missing = missing

    def __str__(self) -> str:
        lines = [self.message]
        lines += [f"  {agent}: lacks {', '.join(feats)}" for agent, feats in self.missing.items()]
        return "\n".join(lines)


_BY_STATUS: dict[int, type[ProviderError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: BadRequestError,
    422: BadRequestError,
    429: RateLimitError,
    503: OverloadedError,
    529: OverloadedError,
}


def error_for_status(
    status: int,
    message: str,
    *,
    retry_after: float | None = None,
    overloaded: bool = False,
    body: Any = None,
) -> ProviderError:
    """The typed error for an HTTP status (codecs add what the body says)."""
    cls = _BY_STATUS.get(status)
    if overloaded:
        cls = OverloadedError
    if cls is None:
        cls = ServerError if status >= 500 else BadRequestError
    if cls is RateLimitError:
        return RateLimitError(message, retry_after=retry_after, status=status, body=body)
    return cls(message, status=status, body=body)
