"""Anthropic Messages, inbound: what apps using the anthropic SDK send, and what they
expect back (a `message` object, `event:`-typed SSE, `{"type": "error", ...}`),
whichever providers are behind the route."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Required

import orjson
from pydantic import Discriminator, Field, Tag, TypeAdapter
from typing_extensions import TypedDict

from agent.providers.anthropic import STOP_REASON, TOOL_CHOICE, usage_body
from agent.tools import to_tool_specs
from agent.types import (
    ContentPart,
    DocumentPart,
    ImagePart,
    Message,
    OutputSchema,
    Request,
    Response,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCall,
    ToolChoice,
    ToolSpec,
)
from agent.wire.base import dumps
from agent.wire.inbound import (
    Call,
    Failure,
    Kind,
    arguments_text,
    invalid,
    name_tool_results,
    new_id,
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


class _DocumentBlock(TypedDict, total=False):
    type: Required[Literal["document"]]
    source: Required[dict[str, Any]]  # base64, url, text, or a file_id of Anthropic's
    title: str


class _OtherBlock(TypedDict):
    # Earlier turns' reasoning (only the provider that wrote it can read it back), server
    # tools' calls and results, and kinds of block newer than this sidecar: they reach an
    # Anthropic agent in the body as sent, and are named when another format answers.
    type: str


_KNOWN = frozenset({"text", "image", "tool_use", "tool_result", "document"})


def _block_kind(block: Any) -> str:
    kind = block.get("type") if isinstance(block, dict) else None
    return kind if kind in _KNOWN else "other"


_Block = Annotated[
    Annotated[_TextBlock, Tag("text")]
    | Annotated[_ImageBlock, Tag("image")]
    | Annotated[_ToolUseBlock, Tag("tool_use")]
    | Annotated[_ToolResultBlock, Tag("tool_result")]
    | Annotated[_DocumentBlock, Tag("document")]
    | Annotated[_OtherBlock, Tag("other")],
    Discriminator(_block_kind),
]


class _Message(TypedDict):
    role: Literal["user", "assistant"]
    content: str | list[_Block]


class _Tool(TypedDict, total=False):
    name: Required[str]
    type: str  # "custom", or one of Anthropic's server tools (web_search_20250305, ...)
    description: str
    input_schema: dict[str, Any]


class _OutputFormat(TypedDict, total=False):
    type: Required[str]  # "json_schema" (another kind stays Anthropic's own)
    schema: dict[str, Any]


class _OutputConfig(TypedDict, total=False):
    format: _OutputFormat


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
    output_format: _OutputFormat | None  # structured outputs, first as a beta
    output_config: _OutputConfig | None


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

# tool_choice.type as the engine's; other shapes stay an Anthropic-only extra.
_TOOL_CHOICE = {wire: mode for mode, wire in TOOL_CHOICE.items()}

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
        dropped: set[str] = set()
        messages = _messages(data["messages"], dropped)
        name_tool_results(messages)
        system = data.get("system")
        if isinstance(system, list):
            system = "\n\n".join(b["text"] for b in system)
        choice, parallel = _tool_choice(extra)
        request = Request(
            messages=messages,
            system=system or None,
            temperature=data.get("temperature"),
            max_tokens=data["max_tokens"],
            stop=data.get("stop_sequences") or None,
            tools=_tools(data, dropped),
            output_schema=_output_schema(data, extra),
            tool_choice=choice,
            parallel_tool_calls=parallel,
            stream=bool(data.get("stream")),
            metadata=dict(data.get("metadata") or {}),
        )
        return Call(data["model"], request, extra, body, dropped=dropped)

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
                # An answer of the sidecar's making (the provider's went untouched as
                # `response.body`) gets an id of its own, in this format's shape.
                "id": new_id("msg_"),
                "type": "message",
                "role": "assistant",
                "model": response.model,
                "content": content,
                "stop_reason": STOP_REASON.get(response.finish_reason, "end_turn"),
                "stop_sequence": None,
                "usage": usage_body(response.usage),
            }
        )

    def encoder(self, call: Call, model: str) -> AnthropicStream:
        return AnthropicStream(model, call.request.approx_input_tokens())

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


def _tools(data: _Body, dropped: set[str]) -> list[ToolSpec]:
    """The tools the model may call; Anthropic's server tools (Claude runs them itself)
    are Anthropic's own."""
    tools: list[Any] = []
    for tool in data.get("tools") or ():
        if "input_schema" in tool:
            tools.append(tool)
        elif tool.get("type", "custom") != "custom":
            dropped.add(f"tools.{tool.get('type')}")
        else:
            raise invalid("a tool needs an input_schema", "tools")
    return to_tool_specs(tools)


def _tool_choice(extra: dict[str, Any]) -> tuple[ToolChoice | None, bool | None]:
    """tool_choice as the engine's choice and whether parallel calls are allowed."""
    choice = extra.get("tool_choice")
    if not isinstance(choice, dict) or choice.get("type") not in _TOOL_CHOICE:
        return None, None
    mode = _TOOL_CHOICE[choice["type"]]
    name = choice.get("name")
    if mode == "tool" and not isinstance(name, str):
        raise invalid("tool_choice.name is required for a tool choice of type tool", "tool_choice")
    del extra["tool_choice"]
    parallel = False if choice.get("disable_parallel_tool_use") else None
    return ToolChoice(mode, name if mode == "tool" else None), parallel  # type: ignore[arg-type]


def _output_schema(data: _Body, extra: dict[str, Any]) -> OutputSchema | None:
    """output_format, or output_config.format (its name since structured outputs left
    beta), as the engine's structured output; the rest of output_config stays an extra."""
    fmt, config = data.get("output_format"), data.get("output_config")
    if fmt is None and config is not None:
        fmt = config.get("format")
    if fmt is None or fmt["type"] != "json_schema":
        return None
    if "schema" not in fmt:
        raise invalid("a json_schema output format needs its schema", "output_format")
    if "output_format" in extra:
        del extra["output_format"]
    elif rest := {k: v for k, v in extra["output_config"].items() if k != "format"}:
        extra["output_config"] = rest
    else:
        del extra["output_config"]
    return OutputSchema("output", fmt["schema"])


def _messages(items: list[_Message], dropped: set[str]) -> list[Message]:
    """Content blocks as engine messages: tool results become tool messages (they come
    first in a user turn), tool_use blocks the assistant's tool calls. Blocks the engine
    has no place for are named in `dropped`."""
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
            b: Any = block
            if kind == "text":
                parts.append(TextPart(b["text"]))
            elif kind == "image":
                parts.append(_image(b["source"]))
            elif kind == "document" and b["source"].get("type") in _DOCUMENT_SOURCES:
                parts.append(_document(b))
            elif kind == "tool_use":
                calls.append(ToolCall(b["id"], b["name"], b["input"]))
            elif kind == "tool_result":
                answered = True
                out.append(_tool_result(b))
            else:
                dropped.add(f"{kind}.file" if kind == "document" else kind)
        if parts or calls or not answered:
            texts = [p.text for p in parts if isinstance(p, TextPart)]
            if len(texts) == len(parts):
                out.append(Message(role, "".join(texts), calls))
            else:
                out.append(Message(role, parts, calls))
    return out


_DOCUMENT_SOURCES = frozenset({"base64", "url", "text"})


def _document(block: Any) -> DocumentPart:
    source, title = block["source"], block.get("title")
    if source["type"] == "base64":
        return DocumentPart(data=source["data"], media_type=source["media_type"], name=title)
    if source["type"] == "text":
        return DocumentPart(text=source["data"], media_type="text/plain", name=title)
    return DocumentPart(url=source["url"], name=title)


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

    __slots__ = ("_blocks", "_id", "_input", "_model", "_text_open")

    def __init__(self, model: str, input_tokens: int) -> None:
        self._id = new_id("msg_")
        self._model = model
        # message_start carries the input count, known to a translated stream only at its
        # end: an estimate here, the provider's count in message_delta.
        self._input = input_tokens
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
            "usage": {"input_tokens": self._input, "output_tokens": 0},
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
        usage = usage_body(response.usage)
        stop = {
            "stop_reason": STOP_REASON.get(response.finish_reason, "end_turn"),
            "stop_sequence": None,
        }
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
