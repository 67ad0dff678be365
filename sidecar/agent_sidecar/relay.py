"""Same-format pass-through: what the sidecar adds around the engine's `Relay`.

When the agent that answers speaks the caller's wire format, the caller's body went
upstream as it came and the provider's answer comes back as it was sent: a plain answer
as `Response.body`, a stream as `WireBytes` events. Here are the caller's headers that
go upstream with the body, and the stream encoder that writes the provider's bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from agent.types import Response, StreamEvent, WireBytes
from agent.wire.inbound import Failure, StreamEncoder
from agent.wire.openai_chat import without_usage_chunk

# Provider headers that shape what a request means (a beta feature, an API version) or
# make it safe to retry; never credentials or hop-by-hop headers: the agent sends its own.
FORWARDED = ("anthropic-beta", "anthropic-version", "openai-beta", "idempotency-key")


def forwarded(headers: Mapping[str, str]) -> dict[str, str]:
    """The caller's headers that go upstream with a relayed body."""
    return {name: value for name in FORWARDED if (value := headers.get(name)) is not None}


class Relayed:
    """A stream encoder for either kind of answer: a relayed stream's `WireBytes` are
    written as they came; anything else goes to the caller's format encoder, made by
    `encoder()` only then (a relayed stream never needs one). Which one it is shows at
    the first event: a relayed stream's first batch always begins with its bytes."""

    __slots__ = ("_encoder", "_made", "_relayed", "_started", "_strip_usage")

    def __init__(self, encoder: Callable[[], StreamEncoder], strip_usage: bool = False) -> None:
        self._encoder = encoder
        self._made: StreamEncoder | None = None
        self._relayed = False
        self._started = False
        # An OpenAI caller who did not ask for stream usage: the chunk the agent asked
        # for on its behalf stays here (see `agent.wire.openai_chat.without_usage_chunk`).
        self._strip_usage = strip_usage

    def start(self) -> bytes:
        return b""  # known at the first event

    @property
    def _inner(self) -> StreamEncoder:
        if self._made is None:
            self._made = self._encoder()
        return self._made

    def _begin(self) -> bytes:
        self._started = True
        return self._inner.start()

    def event(self, event: StreamEvent) -> bytes:
        if isinstance(event, WireBytes):
            self._started = self._relayed = True
            return without_usage_chunk(event.data) if self._strip_usage else event.data
        if self._relayed:
            return b""
        head = b"" if self._started else self._begin()
        return head + self._inner.event(event)

    def done(self, response: Response[Any]) -> bytes:
        if self._relayed:
            return b""  # the provider's own last events went out as its bytes
        head = b"" if self._started else self._begin()
        return head + self._inner.done(response)

    def error(self, failure: Failure) -> bytes:
        head = b"" if self._started else self._begin()
        return head + self._inner.error(failure)
