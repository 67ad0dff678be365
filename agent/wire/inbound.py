"""The server half every wire format shares: a caller's parsed call, the problems a
caller can cause, and the contract of a format's inbound side (parse a request, render an
answer, encode a stream). Pure functions and data, no I/O: the sidecar serves them over
HTTP, and each format module (`openai_chat`, `anthropic`, `openai_responses`) renders
them in its own shape.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import pydantic

from agent.types import Message, Request, Response, StreamEvent, ToolCall
from agent.wire.base import dumps

B = TypeVar("B")  # a format's request body, as its typed dict

# What went wrong, independent of the caller's format; each API names it its own way.
Kind = Literal[
    "invalid_request",  # 400: the caller's body
    "forbidden",  # 403: a browser's request, or a foreign Host
    "not_found",  # 404: unknown model (route) or path
    "method_not_allowed",  # 405
    "request_timeout",  # 408: the body did not arrive in time
    "too_large",  # 413
    "rate_limit",  # 429: every agent was rate limited
    "internal",  # 500: a bug in the sidecar or the engine
    "upstream",  # 502: the agents failed (auth, bad answers, a mix of errors)
    "overloaded",  # 503: providers overloaded, circuits open
    "unavailable",  # 503: no config loaded yet
    "timeout",  # 504: no answer in time
]

STATUS: dict[Kind, int] = {
    "invalid_request": 400,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "request_timeout": 408,
    "too_large": 413,
    "rate_limit": 429,
    "internal": 500,
    "upstream": 502,
    "overloaded": 503,
    "unavailable": 503,
    "timeout": 504,
}


@dataclass(slots=True)
class Failure:
    """A problem to report to the caller: in its format, with the right status."""

    kind: Kind
    message: str
    param: str | None = None
    code: str | None = None
    retry_after: float | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)  # one per agent tried

    @property
    def status(self) -> int:
        return STATUS[self.kind]


class CallerError(Exception):
    """The caller sent something we cannot route (raised while parsing the body)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def invalid(message: str, param: str | None = None) -> CallerError:
    return CallerError(Failure("invalid_request", message, param))


_SCHEMAS: dict[Any, pydantic.TypeAdapter[Any]] = {}


def body_schema(body: type[B]) -> pydantic.TypeAdapter[B]:
    """The validator of a format's request body, built the first time it is asked for (a
    format's server half asks when it is made, in the sidecar): building one takes a
    while, and the library's users never need it."""
    schema = _SCHEMAS.get(body)
    if schema is None:
        schema = _SCHEMAS[body] = pydantic.TypeAdapter(body)
    return schema


def read_body(body: Any, schema: type[B], modeled: frozenset[str]) -> tuple[B, dict[str, Any]]:
    """A request body checked against its format's schema (else the caller's 400, naming
    what is wrong), and the fields the engine does not model (a `Call`'s `extra`)."""
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object")
    try:
        data = body_schema(schema).validate_python(body)
    except pydantic.ValidationError as exc:
        raise from_validation(exc) from None
    return data, {k: v for k, v in body.items() if k not in modeled}


def from_validation(exc: pydantic.ValidationError) -> CallerError:
    """A body that failed validation, as one readable message (never echoing values)."""
    problems = []
    for e in exc.errors()[:5]:
        where = ".".join(str(p) for p in e["loc"]) or "body"
        problems.append(f"{where}: {e['msg']}")
    first = exc.errors()[0]["loc"] if exc.error_count() else ()
    more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return invalid("; ".join(problems) + more, ".".join(str(p) for p in first) or None)


@dataclass(slots=True)
class Call:
    """One parsed inbound call: the route it names and the engine request.

    `body` is the body as it came: an agent that speaks the caller's format sends it on
    as it is (see `agent.types.Relay`). `extra` holds the body fields the engine does not
    model (top_p, seed, tool_choice, ...): an agent of another format cannot carry them,
    so they are dropped for it and named in a header. `relay_only` is set when the call
    asks for what only its own format can give (OpenAI's n > 1): a route with an agent of
    another format refuses it.
    """

    model: str
    request: Request
    extra: dict[str, Any]
    body: dict[str, Any]
    include_usage: bool = False  # OpenAI stream_options.include_usage
    relay_only: Failure | None = None
    # Parts of the body the engine's request has no place for (a file_id, a server tool's
    # block): named, like `extra`, when an agent of another format answers.
    dropped: set[str] = field(default_factory=set)


class StreamEncoder(Protocol):
    """Engine events as one inbound format's stream. `done` alone writes the format's
    finish; `error` is an in-band error its SDK raises, never a finish (the stream
    contract: `agent.wire.base.StreamDecoder`)."""

    def start(self) -> bytes:
        """Bytes before the first event (Anthropic's message_start, OpenAI's role chunk)."""
        ...

    def event(self, event: StreamEvent) -> bytes: ...

    def done(self, response: Response[Any]) -> bytes: ...

    def error(self, failure: Failure) -> bytes: ...


class Api(Protocol):
    """One inbound wire format."""

    name: str  # also the engine's wire name ("openai", "anthropic")
    fields: frozenset[str]  # the body members it reads; a large body's others stay unparsed

    def parse(self, body: Any, history: bool = True) -> Call:
        """The call in a decoded body. Without `history` its conversation is not read
        into the request's messages (only counted: `Request.unread_chars`): for a route
        whose agents all send the body on as it came (`agent_sidecar.routes`)."""
        ...

    def render(self, response: Response[Any], call: Call) -> bytes: ...

    def encoder(self, call: Call, model: str) -> StreamEncoder:
        """Frames for a stream answered by `model` (as the router announced it)."""
        ...

    def status(self, failure: Failure) -> int: ...

    def error_body(self, failure: Failure) -> bytes: ...

    def models(self, routes: Sequence[str], created: int) -> bytes: ...

    def model(self, route: str, created: int) -> bytes: ...


# ---- small shared conversions ------------------------------------------------------------


def name_tool_results(messages: list[Message]) -> None:
    """Give each tool result the name of the call it answers (Gemini needs the name;
    neither inbound format sends it)."""
    names: dict[str, str] = {}
    for m in messages:
        for c in m.tool_calls:
            names[c.id] = c.name
        if m.role == "tool" and not m.name and m.tool_call_id:
            m.name = names.get(m.tool_call_id)


def text_chars(items: Any) -> int:
    """The length of the text in a body's conversation (messages or input items, or a
    prompt string), read without building it: what the token estimate counts. A part's
    own `content` counts too (an Anthropic tool result, as text or text blocks)."""
    if isinstance(items, str):
        return len(items)
    chars = 0
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            continue
        chars += len(text) if isinstance(text := item.get("text"), str) else 0
        for key in ("content", "output"):  # a message's or a part's, a tool result's
            value = item.get(key)
            if isinstance(value, str):
                chars += len(value)
            elif isinstance(value, list):
                chars += text_chars(value)
    return chars


def new_id(prefix: str) -> str:
    """A response id: unique, not secret (so no system call for random bytes each time)."""
    return f"{prefix}{random.getrandbits(96):024x}"


def arguments_text(call: ToolCall) -> str:
    """A tool call's arguments as the JSON text the caller expects back."""
    args = call.arguments
    # The engine keeps unparseable arguments as {"_raw": text}: give the text back as is.
    if len(args) == 1 and isinstance(args.get("_raw"), str):
        return str(args["_raw"])
    return dumps(args).decode()  # integers of any size, exactly
