"""OpenAI's Responses API (`POST /responses`): what an OpenAI agent speaks with
`api="responses"`.

A request is `instructions` plus `input` items: messages, `function_call` items (the
model's calls) and `function_call_output` items (their results). An answer is `output`
items: `message`s of `output_text` parts, `function_call`s and `reasoning`. A stream is
typed events with sequence numbers; only text and function-argument deltas are content
(`response.created` and `response.in_progress` come before anything is decided, so they
never commit a route), and a stream that ends without `response.completed` was cut.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent._sse import SSEEvent
from agent.errors import APIConnectionError, InvalidResponseError, ProviderError, error_for_status
from agent.types import (
    AudioPart,
    ContentPart,
    DocumentPart,
    FinishReason,
    ImagePart,
    Message,
    Relay,
    Request,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    Usage,
)
from agent.wire.base import (
    Parsed,
    Target,
    ToolCallAssembler,
    WireRequest,
    dumps,
    error_message,
    loads,
    parse_arguments,
    relayed_body,
    retry_after,
)
from agent.wire.openai_chat import TOOL_CHOICE, strict_schema
from agent.wire.openai_chat import _wire as openai_wire

# `incomplete_details.reason` -> the engine's finish reason
_INCOMPLETE: dict[str, FinishReason] = {
    "max_output_tokens": "length",
    "content_filter": "content_filter",
}

# An error event's `code` -> the HTTP status the same failure gets as an answer
ERROR_STATUS = {
    "rate_limit_exceeded": 429,
    "invalid_prompt": 400,
    "invalid_request_error": 400,
    "context_length_exceeded": 400,
    "server_error": 500,
    "overloaded": 503,
}


class ResponsesCodec:
    wire = "responses"

    def build(self, request: Request, target: Target) -> WireRequest:
        body: dict[str, Any] = {"model": target.model, "input": input_items(request.messages)}
        if request.system:
            body["instructions"] = request.system
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body["max_output_tokens"] = request.max_tokens
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                    "strict": False,  # the Responses API's default is strict: keep meaning
                }
                for t in request.tools
            ]
        if request.tools and request.tool_choice is not None:
            body["tool_choice"] = tool_choice(request.tool_choice)
        if request.tools and request.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = request.parallel_tool_calls
        if request.output_schema is not None:
            strict = strict_schema(request.output_schema.schema)
            body["text"] = {
                "format": {
                    "type": "json_schema",
                    "name": request.output_schema.name,
                    "schema": strict or request.output_schema.schema,
                    "strict": strict is not None,
                }
            }
        if request.stream:
            body["stream"] = True
        body.update(request.extra)
        return _wire(target, {}, dumps(body), request.stream)

    def relay(self, relay: Relay, extra: dict[str, Any], target: Target) -> WireRequest:
        body = relayed_body(relay, extra, target)
        return _wire(target, relay.headers, body, relay.body.get("stream") is True)

    def parse(self, body: bytes) -> Parsed:
        data = loads(body)
        if not isinstance(data, dict) or not isinstance(data.get("output"), list):
            if isinstance(data, dict) and isinstance(data.get("error"), dict):
                raise in_band_error(data["error"])
            raise InvalidResponseError(f"unexpected response shape: {str(data)[:200]}")
        return _parsed(data)

    def decoder(self) -> ResponsesStreamDecoder:
        return ResponsesStreamDecoder()

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        message, parsed = error_message(body)
        return error_for_status(status, message, retry_after=retry_after(headers), body=parsed)


# The events the decoder reads; the others (created, in_progress, content parts, the
# `.done` repeats of what the deltas said, ...) are skipped by their `event:` name unread.
_READ = frozenset(
    {
        "response.output_text.delta",
        "response.function_call_arguments.delta",
        "response.output_item.added",
        "response.output_item.done",
        "response.completed",
        "response.incomplete",
        "response.failed",
        "error",
    }
)


class ResponsesStreamDecoder:
    """Events in, content events out; the answer from `response.completed`."""

    __slots__ = ("_calls", "_final", "_named", "_text", "_tools")

    def __init__(self) -> None:
        self._text: list[str] = []
        self._tools = ToolCallAssembler()
        self._calls: dict[int, tuple[int, str, str]] = {}  # output index -> (call index, id, name)
        self._named: set[int] = set()  # calls whose id and name went out already
        self._final: dict[str, Any] | None = None

    def feed(self, event: SSEEvent) -> list[StreamEvent]:
        if event.event != "message" and event.event not in _READ:
            return []
        data = loads(event.data, "stream event")
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "response.output_text.delta":
            text = data.get("delta") or ""
            self._text.append(text)
            return [TextDelta(text)] if text else []
        if kind == "response.function_call_arguments.delta":
            return self._piece(data.get("output_index", 0), data.get("delta") or "")
        if kind == "response.output_item.added":
            item = data.get("item") or {}
            if item.get("type") == "function_call":
                index = len(self._calls)
                self._calls[data.get("output_index", 0)] = (
                    index,
                    item.get("call_id") or "",
                    item.get("name") or "",
                )
            return []
        if kind == "response.output_item.done":
            item = data.get("item") or {}
            at = data.get("output_index", 0)
            if item.get("type") == "function_call" and at in self._calls and at not in self._named:
                return self._piece(at, "")  # a call with no argument deltas still happened
            return []
        if kind in ("response.completed", "response.incomplete"):
            self._final = data.get("response") or {}
            return []
        if kind == "response.failed":
            error = (data.get("response") or {}).get("error") or {}
            raise in_band_error(error)
        if kind == "error":
            raise in_band_error(data.get("error") if isinstance(data.get("error"), dict) else data)
        return []

    def _piece(self, output_index: int, arguments: str) -> list[StreamEvent]:
        index, call_id, name = self._calls.get(output_index, (output_index, "", ""))
        first = output_index not in self._named
        self._named.add(output_index)
        delta = ToolCallDelta(index, call_id if first else None, name if first else None, arguments)
        self._tools.add(delta)
        return [delta]

    def finish(self) -> Parsed:
        if self._final is None:
            raise APIConnectionError("the stream ended before response.completed")
        parsed = _parsed(self._final)
        if not parsed.text and self._text:  # a final event without its output repeated
            parsed.text = "".join(self._text)
        if not parsed.tool_calls and self._tools:
            parsed.tool_calls = self._tools.calls()
            parsed.finish_reason = "tool_calls"
        parsed.raw = None
        return parsed


def _parsed(data: dict[str, Any]) -> Parsed:
    text: list[str] = []
    calls: list[ToolCall] = []
    for item in data.get("output") or ():
        kind = item.get("type")
        if kind == "message":
            for part in item.get("content") or ():
                if part.get("type") == "output_text":
                    text.append(part.get("text") or "")
                elif part.get("type") == "refusal":
                    text.append(part.get("refusal") or "")
        elif kind == "function_call":
            calls.append(
                ToolCall(
                    item.get("call_id") or item.get("id") or "",
                    item.get("name") or "",
                    parse_arguments(item.get("arguments") or ""),
                )
            )
    if data.get("status") == "failed":
        raise in_band_error(data.get("error") or {})
    finish = finish_reason(data, bool(calls))
    return Parsed(
        text="".join(text),
        tool_calls=calls,
        finish_reason=finish,
        usage=usage(data.get("usage")),
        model=data.get("model"),
        id=data.get("id"),
        raw=data,
    )


def finish_reason(data: dict[str, Any], calls: bool) -> FinishReason:
    if data.get("status") == "incomplete":
        reason = (data.get("incomplete_details") or {}).get("reason") or ""
        return _INCOMPLETE.get(reason, "other")
    return "tool_calls" if calls else "stop"


def usage(value: Any) -> Usage:
    if not isinstance(value, dict):
        return Usage()
    return Usage(value.get("input_tokens") or 0, value.get("output_tokens") or 0)


def in_band_error(error: Any) -> ProviderError:
    """An `error` event, `response.failed` or a failed response, as the typed error."""
    error = error if isinstance(error, dict) else {}
    message = str(error.get("message") or "the response failed")
    code = str(error.get("code") or error.get("type") or "")
    status = ERROR_STATUS.get(code, 500)
    return error_for_status(status, message, overloaded="overload" in message.lower())


def input_items(messages: list[Message]) -> list[dict[str, Any]]:
    """The engine's messages as Responses API input items."""
    items: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": m.tool_call_id or "",
                    "output": m.text,
                }
            )
            continue
        if m.role == "assistant":
            if m.text:
                items.append({"role": "assistant", "content": m.text})
            items += [
                {
                    "type": "function_call",
                    "call_id": c.id,
                    "name": c.name,
                    "arguments": dumps(c.arguments).decode(),
                }
                for c in m.tool_calls
            ]
            continue
        if isinstance(m.content, str):
            items.append({"role": m.role, "content": m.content})
            continue
        parts = [_part(p) for p in m.content if not isinstance(p, AudioPart)]  # see carry
        items.append({"role": m.role, "content": parts})
    return items


def _part(p: ContentPart) -> dict[str, Any]:
    if isinstance(p, ImagePart):
        return {"type": "input_image", "image_url": p.url or f"data:{p.media_type};base64,{p.data}"}
    if isinstance(p, DocumentPart):
        if p.text is not None:  # a plain-text document is text to every model
            return {"type": "input_text", "text": p.text}
        if p.url is not None:
            return {"type": "input_file", "file_url": p.url}
        data = f"data:{p.media_type};base64,{p.data}"
        return {"type": "input_file", "file_data": data, "filename": p.name or "document.pdf"}
    assert isinstance(p, TextPart)
    return {"type": "input_text", "text": p.text}


def tool_choice(choice: ToolChoice) -> str | dict[str, Any]:
    """The Responses API's tool_choice: Chat Completions' strings; a named tool is flat."""
    if choice.mode == "tool":
        return {"type": "function", "name": choice.name}
    return TOOL_CHOICE[choice.mode]


def _wire(target: Target, forwarded: dict[str, str], body: bytes, stream: bool) -> WireRequest:
    return openai_wire(target, forwarded, body, stream, "/responses")
