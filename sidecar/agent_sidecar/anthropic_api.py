"""Anthropic Messages, inbound: what apps using the anthropic SDK send, and what they
expect back (a `message` object, `event:`-typed SSE, `{"type": "error", ...}`),
whichever providers are behind the route."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Required

import orjson
from pydantic import Field, TypeAdapter
from typing_extensions import TypedDict

from agent.providers.base import dumps
from agent.types import (
    ContentPart,
    ImagePart,
    Message,
    Request,
    Response,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCall,
)
from agent_sidecar.wire import (
    Call,
    Failure,
    Kind,
    arguments_text,
    name_tool_results,
    new_id,
    offered_tools,
    read_body,
)

# ---- the request body, as far as the sidecar reads it ------------------------------------


class _TextBlock(TypedDict):
    type: Literal["text"]
    text: str


class _Base64Source(TypedDict):
    type: Literal["base64"]
    media_type: str
    data: str


class _URLSource(TypedDict):
    type: Literal["url"]
    url: str


class _ImageBlock(TypedDict):
    type: Literal["image"]
    source: Annotated[_Base64Source | _URLSource, Field(discriminator="type")]


class _ToolUseBlock(TypedDict):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


_ResultPart = Annotated[_TextBlock | _ImageBlock, Field(discriminator="type")]


class _ToolResultBlock(TypedDict, total=False):
    type: Required[Literal["tool_result"]]
    tool_use_id: Required[str]
    content: str | list[_ResultPart]
    is_error: bool


class _ThinkingBlock(TypedDict, total=False):
    # Earlier turns' reasoning: only the provider that wrote it can read it back.
    type: Required[Literal["thinking", "redacted_thinking"]]


_Block = Annotated[
    _TextBlock | _ImageBlock | _ToolUseBlock | _ToolResultBlock | _ThinkingBlock,
    Field(discriminator="type"),
]


class _Message(TypedDict):
    role: Literal["user", "assistant"]
    content: str | list[_Block]


class _Tool(TypedDict, total=False):
    name: Required[str]
    description: str
    input_schema: Required[dict[str, Any]]


class _Body(TypedDict, total=False):
    model: Required[str]
    messages: Required[Annotated[list[_Message], Field(min_length=1)]]
    max_tokens: Required[Annotated[int, Field(ge=1)]]
    system: str | list[_TextBlock]
    temperature: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None
    stop_sequences: list[str] | None
    tools: list[_Tool] | None
    stream: bool | None
    metadata: dict[str, Any] | None


_BODY: TypeAdapter[_Body] = TypeAdapter(_Body)
# Every member the sidecar reads (validated, or looked at among the extras).
_FIELDS = _Body.__required_keys__ | _Body.__optional_keys__ | {"tool_choice"}

_MODELED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "temperature",
        "stop_sequences",
        "tools",
        "stream",
    }
)

_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}

_TYPES: dict[Kind, str] = {
    "invalid_request": "invalid_request_error",
    "forbidden": "permission_error",
    "not_found": "not_found_error",
    "method_not_allowed": "invalid_request_error",
    "request_timeout": "invalid_request_error",
    "too_large": "request_too_large",
    "rate_limit": "rate_limit_error",
    "internal": "api_error",
    "upstream": "api_error",
    "overloaded": "overloaded_error",
    "unavailable": "api_error",
    "timeout": "timeout_error",
}


class AnthropicApi:
    fields = _FIELDS
    name = "anthropic"

    def parse(self, body: Any) -> Call:
        data, extra = read_body(body, _BODY, _MODELED)
        messages = _messages(data["messages"])
        name_tool_results(messages)
        choice = extra.get("tool_choice")
        none = isinstance(choice, dict) and choice.get("type") == "none"
        tools = offered_tools(data.get("tools"), extra, none)
        system = data.get("system")
        if isinstance(system, list):
            system = "\n\n".join(b["text"] for b in system)
        request = Request(
            messages=messages,
            system=system or None,
            temperature=data.get("temperature"),
            max_tokens=data["max_tokens"],
            stop=data.get("stop_sequences") or None,
            tools=tools,
            stream=bool(data.get("stream")),
            metadata=dict(data.get("metadata") or {}),
        )
        return Call(data["model"], request, extra)

    def render(self, response: Response[Any], call: Call) -> bytes:
        content: list[dict[str, Any]] = []
        if response.text or not response.tool_calls:
            content.append({"type": "text", "text": response.text})
        content += [
            {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
            for c in response.tool_calls
        ]
        return dumps(  # tool_use inputs may hold integers beyond 64 bits
            {
                "id": response.id if (response.id or "").startswith("msg_") else new_id("msg_"),
                "type": "message",
                "role": "assistant",
                "model": response.model,
                "content": content,
                "stop_reason": _STOP.get(response.finish_reason, "end_turn"),
                "stop_sequence": None,
                "usage": {
                    "input_tokens": response.usage.input_tokens,
                    "output_tokens": response.usage.output_tokens,
                },
            }
        )

    def encoder(self, call: Call, model: str) -> AnthropicStream:
        return AnthropicStream(model)

    def status(self, failure: Failure) -> int:
        return 529 if failure.kind == "overloaded" else failure.status

    def error_body(self, failure: Failure) -> bytes:
        return _error_body(failure)

    def models(self, routes: Sequence[str], created: int) -> bytes:
        return orjson.dumps(
            {
                "data": [_model(r, created) for r in routes],
                "has_more": False,
                "first_id": routes[0] if routes else None,
                "last_id": routes[-1] if routes else None,
            }
        )

    def model(self, route: str, created: int) -> bytes:
        return orjson.dumps(_model(route, created))


def _error_body(failure: Failure) -> bytes:
    error: dict[str, Any] = {"type": _TYPES[failure.kind], "message": failure.message}
    if failure.errors:
        error["errors"] = failure.errors
    return orjson.dumps({"type": "error", "error": error})


def _model(route: str, created: int) -> dict[str, Any]:
    when = datetime.datetime.fromtimestamp(created, datetime.UTC).isoformat().replace("+00:00", "Z")
    return {"type": "model", "id": route, "display_name": route, "created_at": when}


def _messages(items: list[_Message]) -> list[Message]:
    """Content blocks as engine messages: tool results become tool messages (they come
    first in a user turn), tool_use blocks the assistant's tool calls."""
    out: list[Message] = []
    for item in items:
        role, content = item["role"], item["content"]
        if isinstance(content, str):
            out.append(Message(role, content))
            continue
        parts: list[ContentPart] = []
        calls: list[ToolCall] = []
        answered = False
        for block in content:
            kind = block["type"]
            if kind == "text":
                parts.append(TextPart(block["text"]))  # type: ignore[typeddict-item]
            elif kind == "image":
                parts.append(_image(block["source"]))  # type: ignore[typeddict-item]
            elif kind == "tool_use":
                b: Any = block
                calls.append(ToolCall(b["id"], b["name"], b["input"]))
            elif kind == "tool_result":
                answered = True
                out.append(_tool_result(block))  # type: ignore[arg-type]
        if parts or calls or not answered:
            if all(isinstance(p, TextPart) for p in parts):
                out.append(Message(role, "".join(p.text for p in parts), calls))  # type: ignore[union-attr]
            else:
                out.append(Message(role, parts, calls))
    return out


def _image(source: Any) -> ImagePart:
    if source["type"] == "base64":
        return ImagePart(data=source["data"], media_type=source["media_type"])
    return ImagePart(url=source["url"])


def _tool_result(block: _ToolResultBlock) -> Message:
    content = block.get("content", "")
    text = (
        content
        if isinstance(content, str)
        else "".join(p["text"] for p in content if p["type"] == "text")
    )
    if block.get("is_error"):
        text = f"Error: {text}"
    return Message("tool", text, tool_call_id=block["tool_use_id"])


def _event(name: bytes, payload: dict[str, Any]) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class AnthropicStream:
    """Engine stream events as Messages SSE events. Text streams as it comes; tool
    calls are sent whole when the answer is complete (a tool_use block cannot be
    reopened, and upstream formats may interleave calls)."""

    __slots__ = ("_blocks", "_id", "_model", "_text_open")

    def __init__(self, model: str) -> None:
        self._id = new_id("msg_")
        self._model = model
        self._blocks = 0  # content blocks started so far
        self._text_open = False

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _event(b"message_start", {"type": "message_start", "message": message})

    def event(self, event: StreamEvent) -> bytes:
        if not isinstance(event, TextDelta) or not event.text:
            return b""
        out = b""
        if not self._text_open:
            out = _event(
                b"content_block_start",
                {
                    "type": "content_block_start",
                    "index": self._blocks,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            self._text_open = True
            self._blocks += 1
        delta = {"type": "text_delta", "text": event.text}
        return out + _event(
            b"content_block_delta",
            {"type": "content_block_delta", "index": self._blocks - 1, "delta": delta},
        )

    def done(self, response: Response[Any]) -> bytes:
        out = [self._close_text()]
        for call in response.tool_calls:
            index = self._blocks
            self._blocks += 1
            block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": arguments_text(call)}
            out += [
                _event(
                    b"content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": block},
                ),
                _event(
                    b"content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                ),
                _event(b"content_block_stop", {"type": "content_block_stop", "index": index}),
            ]
        usage = {
            "input_tokens": response.usage.input_tokens,
            "output_tokens": response.usage.output_tokens,
        }
        stop = {"stop_reason": _STOP.get(response.finish_reason, "end_turn"), "stop_sequence": None}
        out.append(
            _event(b"message_delta", {"type": "message_delta", "delta": stop, "usage": usage})
        )
        out.append(_event(b"message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def _close_text(self) -> bytes:
        if not self._text_open:
            return b""
        self._text_open = False
        return _event(
            b"content_block_stop", {"type": "content_block_stop", "index": self._blocks - 1}
        )

    def error(self, failure: Failure) -> bytes:
        return b"event: error\ndata: " + _error_body(failure) + b"\n\n"
