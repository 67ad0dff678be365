"""Scripted behaviours for the fake providers.

Each behaviour answers exactly one request. A `FakeProvider` keeps a FIFO of them
(`fake.script(...)`), per-model FIFOs (`fake.script_for(model, ...)`) and a default.
Whether a `Reply` is streamed is decided by the request (OpenAI/Anthropic: `"stream": true`;
Gemini: `:streamGenerateContent`), never by the behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from .provider import Recorded


ToolCall: TypeAlias = Mapping[str, Any]
"""`{"name": str, "arguments": dict | str, "id": str (optional)}`.

`arguments` may be a dict (encoded per provider) or an already-encoded JSON string.
"""


@dataclass(frozen=True)
class Reply:
    """A successful answer, identical in content whether streamed or not.

    text:          assistant text ("" for none).
    tool_calls:    sequence of `{"name", "arguments", "id"?}` mappings.
    usage:         `(input_tokens, output_tokens)`; None = computed (words in the request's
                   messages / words in the reply).
    delay:         seconds to wait before sending the status line and headers.
    chunk_delay:   seconds between consecutive streamed content chunks.
    chunks:        streaming only: split the text into this many pieces (default: one per word).
    finish_reason: None = automatic (stop, or tool calls when there are any). Accepts the
                   neutral names "stop" | "length" | "tool_calls" | "content_filter" or any
                   provider-native value ("end_turn", "max_tokens", "MAX_TOKENS", "SAFETY", ...),
                   translated to the provider's vocabulary.
    model:         model name reported in the response; None = echo the request's model.
    thinking:      Anthropic only: a `thinking` block (with a signature) before the text.
    headers:       extra response headers (a provider's `x-ratelimit-*`, ...).
    """

    text: str = ""
    tool_calls: Sequence[ToolCall] = ()
    usage: tuple[int, int] | None = None
    delay: float = 0.0
    chunk_delay: float = 0.0
    chunks: int | None = None
    finish_reason: str | None = None
    model: str | None = None
    thinking: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Fail:
    """An HTTP error in the provider's real error shape.

    status:         HTTP status (401, 429, 500, 503, 529, ...).
    retry_after:    seconds; sets `retry-after` (and, for Gemini 429, a RetryInfo detail).
    retry_after_ms: also send OpenAI's non-standard `retry-after-ms` header.
    message:        override the provider's default message for the status.
    error_type:     override the error type (OpenAI `type`, Anthropic `error.type`,
                    Gemini `status`, e.g. "RESOURCE_EXHAUSTED").
    code:           OpenAI only: override `error.code`.
    body:           raw body override (str/bytes sent as is, a dict is JSON-encoded).
    headers:        extra response headers.
    should_retry:   sets `x-should-retry: true|false` (honoured by the OpenAI/Anthropic SDKs).
    delay:          seconds before answering.
    """

    status: int
    retry_after: float | None = None
    retry_after_ms: bool = False
    message: str | None = None
    error_type: str | None = None
    code: str | None = None
    body: str | bytes | Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    should_retry: bool | None = None
    delay: float = 0.0


@dataclass(frozen=True)
class Hang:
    """Never answer: no status line, no headers, until the client gives up (counted as a
    disconnect) or the fake is stopped (not counted)."""


@dataclass(frozen=True)
class Reset:
    """Close the TCP connection abruptly (RST) without sending any response.

    delay: seconds to wait first (the client sees nothing during that time)."""

    delay: float = 0.0


@dataclass(frozen=True)
class Malformed:
    """Answer `status` with a body that is not valid JSON (or whatever `body` holds)."""

    body: bytes = b'{"choices": ['
    status: int = 200
    content_type: str = "application/json"


@dataclass(frozen=True)
class CutStream:
    """Stream `after` content chunks of `reply`, then drop the connection without the stream
    terminator (no `[DONE]` / `message_stop` / finishReason frame, no final HTTP chunk).

    On a non-streaming request, sends the headers and half of the JSON body, then drops."""

    after: int = 1
    reply: Reply = field(default_factory=lambda: Reply(text="one two three four five six"))


@dataclass(frozen=True)
class StreamError:
    """Stream `after` content chunks of `reply`, then the provider's in-stream error, then end.

    OpenAI: `data: {"error": {...}}`; Anthropic: `event: error`; Gemini: `data: {"error": {...}}`.
    `error_type` may be neutral/Anthropic-style ("overloaded_error", "rate_limit_error",
    "api_error") or provider-native; it is translated per provider.
    On a non-streaming request, answers the equivalent HTTP error (e.g. Anthropic 529)."""

    after: int = 1
    reply: Reply = field(default_factory=lambda: Reply(text="one two three four five six"))
    error_type: str = "overloaded_error"
    message: str | None = None


@dataclass(frozen=True)
class Stall:
    """Stream `after` content chunks of `reply` (0: only what precedes the first content,
    e.g. OpenAI's role chunk, Anthropic's message_start), then go silent with the
    connection open until the client closes it (counted as a disconnect)."""

    after: int = 1
    reply: Reply = field(default_factory=lambda: Reply(text="one two three four five six"))


@dataclass(frozen=True)
class EndWithoutFinish:
    """Stream `after` content chunks of `reply`, then end the HTTP response cleanly (a
    proper last chunk) without the stream's finish: no `finish_reason` / `[DONE]`, no
    `message_delta` / `message_stop`, no `finishReason`."""

    after: int = 1
    reply: Reply = field(default_factory=lambda: Reply(text="one two three four five six"))


@dataclass(frozen=True)
class MalformedEvent:
    """Stream `after` content chunks of `reply`, then the next event with its JSON cut in
    half (framed as a complete event), then end the response cleanly."""

    after: int = 1
    reply: Reply = field(default_factory=lambda: Reply(text="one two three four five six"))


StreamFault: TypeAlias = CutStream | StreamError | Stall | EndWithoutFinish | MalformedEvent
# Every way a stream can fail, by the name the tests give it.
STREAM_FAULTS: dict[str, type[StreamFault]] = {
    "cut": CutStream,
    "stall": Stall,
    "error_event": StreamError,
    "no_finish": EndWithoutFinish,
    "malformed": MalformedEvent,
}
"""The ways a stream fails once it has begun, each placed by its `after`."""

Behaviour: TypeAlias = (
    Reply | Fail | Hang | Reset | Malformed | CutStream | StreamError | Stall | EndWithoutFinish
    | MalformedEvent
)
"""A behaviour, or a callable computing one from the recorded request."""

BehaviourLike: TypeAlias = Behaviour | Callable[["Recorded"], Behaviour]

BEHAVIOUR_TYPES: tuple[type, ...] = (
    Reply, Fail, Hang, Reset, Malformed, CutStream, StreamError, Stall, EndWithoutFinish,
    MalformedEvent,
)
