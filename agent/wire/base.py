"""What every wire-format codec shares: the I/O-free contract and small helpers.

A codec turns a normalized `Request` into a `WireRequest` (method, URL, headers,
body) and turns what came back (a JSON body, or SSE events one by one) into a
`Parsed` response. It never touches a socket, so the same codec serves the sync,
async and streaming paths of the library and the sidecar.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import orjson

from agent._sse import SSEEvent, SSEParser
from agent.errors import InvalidResponseError, ProviderError, scrub
from agent.types import (
    FinishReason,
    Relay,
    Request,
    StreamEvent,
    ToolCall,
    ToolCallDelta,
    Usage,
)


@dataclass(slots=True)
class Target:
    """Where and as whom one agent calls: resolved at call time, never at construction."""

    provider: str
    model: str
    base_url: str
    api_key: str | None
    headers: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # never show the key
        return (
            f"Target(provider={self.provider!r}, model={self.model!r}, base_url={self.base_url!r})"
        )


@dataclass(slots=True)
class WireRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    stream: bool


@dataclass(slots=True)
class Reply:
    """A whole HTTP answer, as a transport hands it back: a plain call's, or an error's.

    `headers` is looked up with lower-case names (`retry-after`, ...): a case-insensitive
    mapping (httpx.Headers, multidict) or a dict with lower-case keys.
    """

    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass(slots=True)
class Parsed:
    """A provider's answer in normalized form, the same for streamed and plain calls."""

    text: str
    tool_calls: list[ToolCall]
    finish_reason: FinishReason
    usage: Usage
    model: str | None
    id: str | None
    raw: Any
    reasoning: str = ""  # the model's reasoning summary, where its format gives one


# Between two parts of a reasoning summary (two thinking blocks, two summary parts): the
# same in a plain answer's `reasoning` and between a stream's `ReasoningDelta`s.
PART_BREAK = "\n\n"


class StreamDecoder(Protocol):
    """A codec's stream decoder: SSE events in, the caller's events out. The engine's
    fault handling (fallback before the first content, an error in band after it, the
    stream timeouts, `stream_recovery: continue`) holds for every format whose decoder
    and sidecar encoder keep this contract:

    * `feed` returns only content: `TextDelta`, `ReasoningDelta`, `ToolCallDelta`. What
      comes before (a role chunk, `message_start`, `response.created`, pings) returns
      []: the first event it returns is the commit point, before which a failure falls
      back unseen.
    * An in-band error (an OpenAI error chunk, Anthropic `event: error`, Responses
      `error` / `response.failed`) raises the typed `ProviderError`; a malformed event
      raises `InvalidResponseError`. A relayed frame is passed on only when `feed`
      returned, so an error frame never reaches the caller raw.
    * `finish` raises `APIConnectionError` when the stream ended without its format's
      finish marker (`finish_reason` / `[DONE]`, `message_stop`, `response.completed`).
    * A cut connection and a stall are the transport's and the engine's (`StreamLimits`).

    In the sidecar, a `StreamEncoder` frames the caller's side: `done` alone writes the
    format's finish, and `error(failure)` is an in-band error the caller's SDK raises,
    never a finish: a truncated answer never ends like a complete one.
    """

    def feed(self, event: SSEEvent) -> list[StreamEvent]:
        """Events for the caller; raises a ProviderError for an in-stream error."""
        ...

    def finish(self) -> Parsed:
        """The assembled answer; raises APIConnectionError if the stream was cut short."""
        ...


class Codec(Protocol):
    wire: str

    def build(self, request: Request, target: Target) -> WireRequest: ...

    def parse(self, body: bytes) -> Parsed: ...

    def decoder(self) -> StreamDecoder: ...

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError: ...


@runtime_checkable
class Relaying(Protocol):
    """A codec that can also send a caller's own body in its format (see `Relay`)."""

    wire: str

    def relay(self, relay: Relay, extra: dict[str, Any], target: Target) -> WireRequest: ...


def relayed_body(relay: Relay, extra: dict[str, Any], target: Target) -> bytes:
    """The caller's body as it came, but for the agent's model and its own `extra`."""
    return dumps({**relay.body, **extra, "model": target.model})


# ---- helpers ---------------------------------------------------------------------------


# orjson keeps integers exact up to 64 bits only: it reads longer ones as floats and
# refuses to write them. Tool-call arguments are the model's data, handed to functions and
# back to callers unchanged, so JSON that may carry them and holds a number of 19 digits
# or more goes through the standard library instead (rarely: orjson stays the fast path).
_LONG_NUMBER = re.compile(r"\d{19}")
_LONG_NUMBER_BYTES = re.compile(rb"\d{19}")


def dumps(value: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """Compact JSON; integers beyond 64 bits are written exactly (never an error)."""
    try:
        return orjson.dumps(value, default=default)
    except orjson.JSONEncodeError as exc:
        if "64-bit" not in str(exc):
            raise
    return json.dumps(value, default=default, ensure_ascii=False, separators=(",", ":")).encode()


def loads(data: bytes | str, what: str = "response") -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        shown = data[:200] if isinstance(data, str) else data[:200].decode("utf-8", "replace")
        raise InvalidResponseError(
            f"the provider sent a {what} that is not JSON: {shown!r}"
        ) from exc


def loads_exact(data: bytes | str, what: str = "response") -> Any:
    """`loads` for JSON that carries tool arguments: integers of any size stay exact."""
    long = _LONG_NUMBER.search(data) if isinstance(data, str) else _LONG_NUMBER_BYTES.search(data)
    if long is None:
        return loads(data, what)
    try:
        return json.loads(data)
    except ValueError as exc:
        raise InvalidResponseError(f"the provider sent a {what} that is not JSON") from exc


def parse_arguments(text: str) -> dict[str, Any]:
    """A tool call's JSON arguments; models sometimes send none or broken JSON."""
    if not text:
        return {}
    try:
        value = loads_exact(text, "tool call")
    except InvalidResponseError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"value": value}


def tool_result_text(call: ToolCall) -> str:
    if call.error is not None:
        return f"Error: {call.error}"
    if isinstance(call.result, str):
        return call.result
    return dumps(call.result, default=str).decode()


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from `retry-after-ms`, `retry-after` (seconds or an HTTP date)."""
    if ms := headers.get("retry-after-ms"):
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):  # neither seconds nor a date: no hint
        return None
    return max(0.0, when.timestamp() - time.time())


def error_message(body: bytes, key_path: tuple[str, ...] = ("error", "message")) -> tuple[str, Any]:
    """The human message inside an error body (and the parsed body), scrubbed of secrets."""
    text = scrub(body.decode("utf-8", "replace"))  # providers echo wrong keys back
    try:
        parsed = orjson.loads(text) if text else None
    except orjson.JSONDecodeError:
        return text[:300] or "(empty body)", None
    node: Any = parsed
    for key in key_path:
        node = node.get(key) if isinstance(node, dict) else None
    message = node if isinstance(node, str) else text[:300]
    return message or "(empty body)", parsed


def error_object(parsed: Any) -> dict[str, Any]:
    """`body["error"]` when it is an object; proxies also send a string or null there."""
    err = parsed.get("error") if isinstance(parsed, dict) else None
    return err if isinstance(err, dict) else {}


class StreamReader:
    """Bytes of a streamed answer in, caller events out, the answer at the end: the
    SSE framing and the codec's decoder together, with what the network adds (a stream
    cut inside a frame, a raw error object after the events). No I/O.

    With `relay`, the bytes of every frame decoded without error are kept for the caller
    too (`relayed()`): an error frame never is (providers echo keys into errors), and the
    caller hears of the error in band, scrubbed, from whoever relays the bytes."""

    __slots__ = ("_codec", "_decoder", "_failed", "_relayed", "_sse")

    def __init__(self, codec: Codec, relay: bool = False) -> None:
        self._codec = codec
        self._sse = SSEParser()
        self._decoder = codec.decoder()
        self._failed: ProviderError | None = None
        self._relayed: list[bytes] | None = [] if relay else None

    def relayed(self) -> bytes:
        """The relayed bytes decoded since the last call (b"" without `relay`)."""
        if not self._relayed:
            return b""
        out = b"".join(self._relayed)
        self._relayed.clear()
        return out

    def check(self) -> None:
        """Raise the error that ended the last chunk (after its events were handed on)."""
        if self._failed is not None:
            raise self._failed

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        """Events in this chunk. An error inside it is raised by `check()` or the next
        call, so the content that came before it in the same chunk reaches the caller."""
        self.check()
        out: list[StreamEvent] = []
        sse, relayed = self._sse, self._relayed
        quick = sse.quick(chunk)
        if quick is not None:  # the common case: every frame plain, parsed in one pass
            events, end = quick
            decoded = self._decode(events, out)
            if relayed is not None:  # the chunk as it came, up to an error frame
                whole = decoded == len(events)
                relayed.append(chunk[: end if whole else _frame_ends(chunk, decoded)])
            return out
        framed = [(e, frame) for frame in sse.frames(chunk) if (e := sse.parse(frame)) is not None]
        decoded = self._decode([event for event, _ in framed], out)
        if relayed is not None:
            relayed += [frame + b"\n\n" for _, frame in framed[:decoded]]
        return out

    def _decode(self, events: list[SSEEvent], out: list[StreamEvent]) -> int:
        """Feed `events` to the decoder, their stream events into `out`; how many were
        decoded before an error. An error before any content is raised at once; after
        content it waits for `check()`."""
        for i, event in enumerate(events):
            try:
                out += self._decoder.feed(event)
            except ProviderError as exc:
                if not out:
                    raise
                self._failed = exc
                return i
        return len(events)

    def close(self) -> tuple[list[StreamEvent], Parsed]:
        """The stream ended: the last events and the assembled answer."""
        self.check()
        out: list[StreamEvent] = []
        rest = self._sse.rest()
        event = self._sse.parse(rest) if rest else None
        if event is not None:
            try:
                out += self._decoder.feed(event)
            except InvalidResponseError as exc:  # the connection ended inside this frame
                raise _cut("the stream ended inside an event") from exc
            if self._relayed is not None:
                self._relayed.append(rest + b"\n\n")
        if self._sse.stray:
            self._raise_stray("\n".join(self._sse.stray))
        return out, self._decoder.finish()

    def _raise_stray(self, text: str) -> None:
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            return  # noise around the events: the events decide
        err = error_object(parsed)
        if err:
            code = err.get("code")
            raise self._codec.error(code if isinstance(code, int) else 500, {}, text.encode())


def _frame_ends(chunk: bytes, count: int) -> int:
    """Where the first `count` frames of a chunk `SSEParser.quick` read end (no blank
    line inside such a frame)."""
    end = 0
    for _ in range(count):
        end = chunk.index(b"\n\n", end) + 2
    return end


def _cut(message: str) -> ProviderError:
    from agent.errors import APIConnectionError

    return APIConnectionError(message)


class ToolCallAssembler:
    """Joins streamed tool-call pieces by index, as every wire format streams them."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[int, list[str]] = {}  # index -> [id, name, arguments...]

    def add(self, delta: ToolCallDelta) -> None:
        slot = self._calls.setdefault(delta.index, ["", ""])
        if delta.id:
            slot[0] = delta.id
        if delta.name:
            slot[1] = delta.name
        if delta.arguments:
            slot.append(delta.arguments)

    def calls(self) -> list[ToolCall]:
        return [
            ToolCall(slot[0] or f"call_{i}", slot[1], parse_arguments("".join(slot[2:])))
            for i, slot in sorted(self._calls.items())
        ]

    def __bool__(self) -> bool:
        return bool(self._calls)
