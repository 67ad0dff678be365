"""Anthropic Messages, both halves: what Claude is sent and answers (the client half, the
library's codec), and what apps using the anthropic SDK send the sidecar and expect back
whichever providers are behind the route (the server half: a `message` object,
`event:`-typed SSE, `{"type": "error", ...}`). One set of tables serves both.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Required

import orjson
from pydantic import Discriminator, Field, Tag
from typing_extensions import TypedDict

from agent._sse import SSEEvent
from agent.errors import APIConnectionError, InvalidResponseError, ProviderError, error_for_status
from agent.tools import to_tool_specs
from agent.types import (
    ContentPart,
    DocumentPart,
    FinishReason,
    ImagePart,
    Message,
    Origin,
    OutputSchema,
    Reasoning,
    ReasoningDelta,
    Relay,
    Request,
    Response,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolSpec,
    Usage,
)
from agent.wire.base import (
    PART_BREAK,
    Parsed,
    Target,
    ToolCallAssembler,
    WireRequest,
    dumps,
    error_message,
    error_object,
    loads,
    loads_exact,
    relayed_body,
    retry_after,
)
from agent.wire.carry import carries, part_kind, reasons
from agent.wire.inbound import (
    Call,
    Failure,
    Kind,
    arguments_text,
    body_schema,
    invalid,
    name_tool_results,
    new_id,
    read_body,
    text_chars,
)

API_VERSION = "2023-06-01"
# The Messages API requires max_tokens; this is what a caller gets who sets none.
DEFAULT_MAX_TOKENS = 4096

# ---- the format's tables, both halves read them -----------------------------------------

FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# The engine's finish reason as Anthropic says it ("error" and "other" end the turn).
STOP_REASON: dict[FinishReason, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
# tool_choice.type for each of the engine's modes.
TOOL_CHOICE = {"auto": "auto", "none": "none", "required": "any", "tool": "tool"}


def tool_choice(choice: ToolChoice | None, parallel: bool | None) -> dict[str, Any] | None:
    """The `tool_choice` object; parallel calls are switched off inside it."""
    if choice is None and parallel is not False:
        return None
    out: dict[str, Any] = {"type": TOOL_CHOICE[choice.mode if choice else "auto"]}
    if choice is not None and choice.mode == "tool":
        out["name"] = choice.name
    if parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


# tool_choice.type as the engine's; other shapes stay an Anthropic-only extra.
_TOOL_CHOICE = {wire: mode for mode, wire in TOOL_CHOICE.items()}


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


# A stream's content blocks the decoder does not hand on as text or tool calls.
_THINKING, _HIDDEN = -2, -1
# Extended thinking needs at least this budget, and less than the answer's max_tokens.
MIN_THINKING = 1024
# OpenAI's reasoning effort as a thinking budget, and back (the largest budget at or under).
EFFORT_BUDGET = {"minimal": MIN_THINKING, "low": 2048, "medium": 8192, "high": 24576}


def thinking(reasoning: Reasoning, max_tokens: int) -> dict[str, Any]:
    """`thinking` for the engine's reasoning request: a budget of its own, or its effort's,
    kept under max_tokens as the API requires (a 400 otherwise)."""
    budget = reasoning.budget_tokens or EFFORT_BUDGET.get(reasoning.effort or "", 8192)
    return {"type": "enabled", "budget_tokens": max(MIN_THINKING, min(budget, max_tokens - 1))}


def reasoning_of(extra: dict[str, Any]) -> Reasoning | None:
    """A caller's `thinking`, when enabled with a budget, as the engine's reasoning
    request; another kind of thinking stays Anthropic's own (an extra)."""
    value = extra.get("thinking")
    if not isinstance(value, dict) or value.get("type") != "enabled":
        return None
    del extra["thinking"]
    budget = value.get("budget_tokens")
    if not isinstance(budget, int):
        raise invalid("thinking.budget_tokens is required when thinking is enabled", "thinking")
    effort = "minimal"
    for name, floor in EFFORT_BUDGET.items():  # from the least
        if budget >= floor:
            effort = name
    return Reasoning(budget_tokens=budget, effort=effort)


def usage_body(usage: Usage) -> dict[str, Any]:
    """`usage` as Anthropic reports it: input_tokens without the cache's reads and writes."""
    uncached = usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens
    return {
        "input_tokens": max(0, uncached),
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "output_tokens": usage.output_tokens,
    }


def _input_tokens(usage: dict[str, Any]) -> int:
    return (
        (usage.get("input_tokens") or 0)
        + (usage.get("cache_read_input_tokens") or 0)
        + (usage.get("cache_creation_input_tokens") or 0)
    )


def _usage(usage: Any) -> Usage:
    if not usage:
        return Usage()
    return Usage(
        _input_tokens(usage),
        usage.get("output_tokens") or 0,
        cached_input_tokens=usage.get("cache_read_input_tokens") or 0,
        cache_write_tokens=usage.get("cache_creation_input_tokens") or 0,
    )


# Structured output rides on forced tool use, which every Claude model supports: the
# model must call this tool, and its input is the JSON answer.
OUTPUT_TOOL = "structured_output"

_STATUS_BY_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


# ---- the client half: build a request, parse an answer, decode a stream ------------------


class AnthropicCodec:
    wire = "anthropic"

    def build(self, request: Request, target: Target) -> WireRequest:
        body: dict[str, Any] = {
            "model": target.model,
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
            "messages": _messages(request.messages),
        }
        if request.system:
            body["system"] = request.system
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop:
            body["stop_sequences"] = request.stop
        if request.reasoning is not None and reasons(request, self.wire):
            body["thinking"] = thinking(request.reasoning, body["max_tokens"])
        tools = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in request.tools
        ]
        if request.output_schema is not None:
            tools.append(
                {
                    "name": OUTPUT_TOOL,
                    "description": f"Respond with the {request.output_schema.name} object.",
                    "input_schema": request.output_schema.schema,
                }
            )
            body["tool_choice"] = {"type": "tool", "name": OUTPUT_TOOL}
        elif request.tools and (
            choice := tool_choice(request.tool_choice, request.parallel_tool_calls)
        ):
            body["tool_choice"] = choice
        if tools:
            body["tools"] = tools
        if request.stream:
            body["stream"] = True
        body.update(request.extra)
        return _wire(target, {}, dumps(body), request.stream)

    def relay(self, relay: Relay, extra: dict[str, Any], target: Target) -> WireRequest:
        body = relayed_body(relay, extra, target)
        return _wire(target, relay.headers, body, relay.body.get("stream") is True)

    def count_tokens(self, relay: Relay, target: Target) -> WireRequest:
        """A caller's `count_tokens` body, for the agent's model (none of the agent's
        `extra`: the endpoint refuses what a message request may carry)."""
        body = relayed_body(relay, {}, target)
        return _wire(target, relay.headers, body, False, "/v1/messages/count_tokens")

    def parse(self, body: bytes) -> Parsed:
        data = loads_exact(body)  # tool_use inputs are in it
        if not isinstance(data, dict) or data.get("type") != "message":
            if isinstance(data, dict) and data.get("type") == "error":
                raise _error_from_payload(data)
            raise InvalidResponseError(f"unexpected response shape: {str(data)[:200]}")
        text: list[str] = []
        calls: list[ToolCall] = []
        reasoning: list[str] = []
        for block in data.get("content") or ():
            kind = block.get("type")
            if kind == "text":
                text.append(block.get("text", ""))
            elif kind == "thinking":
                reasoning.append(block.get("thinking") or "")
            elif kind == "tool_use":
                if block.get("name") == OUTPUT_TOOL:
                    text.append(dumps(block.get("input") or {}).decode())
                else:
                    calls.append(ToolCall(block["id"], block["name"], block.get("input") or {}))
        finish = FINISH.get(data.get("stop_reason") or "", "other")
        if finish == "tool_calls" and not calls:
            finish = "stop"  # the structured-output tool is our mechanism, not a tool call
        return Parsed(
            "".join(text),
            calls,
            finish,
            _usage(data.get("usage")),
            data.get("model"),
            data.get("id"),
            data,
            PART_BREAK.join(reasoning),
        )

    def decoder(self) -> AnthropicStreamDecoder:
        return AnthropicStreamDecoder()

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        message, parsed = error_message(body)
        kind = error_object(parsed).get("type")
        return error_for_status(
            status,
            message,
            retry_after=retry_after(headers),
            overloaded=kind == "overloaded_error",
            body=parsed,
        )


class AnthropicStreamDecoder:
    __slots__ = (
        "_blocks",
        "_finish",
        "_id",
        "_model",
        "_reasoning",
        "_stopped",
        "_text",
        "_tools",
        "_usage",
    )

    def __init__(self) -> None:
        self._text: list[str] = []
        self._tools = ToolCallAssembler()
        # content block index -> tool index; None: text (or our output tool); THINKING:
        # the model's reasoning; HIDDEN: a block the caller never sees (server tools, ...)
        self._blocks: dict[int, int | None] = {}
        self._reasoning: list[str] = []
        self._finish: str | None = None
        self._id: str | None = None
        self._model: str | None = None
        self._usage: dict[str, Any] = {}  # message_start's, updated by message_delta's
        self._stopped = False

    def feed(self, event: SSEEvent) -> list[StreamEvent]:
        kind = event.event
        if kind == "ping":
            return []
        data = loads(event.data, "stream event")
        kind = data.get("type", kind)
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            slot = self._blocks.get(data.get("index", 0))
            if slot == _HIDDEN:
                return []
            if delta.get("type") == "thinking_delta" and slot == _THINKING:
                piece = delta.get("thinking") or ""
                self._reasoning.append(piece)
                return [ReasoningDelta(piece)] if piece else []
            if delta.get("type") == "text_delta":
                self._text.append(delta.get("text", ""))
                return [TextDelta(delta.get("text", ""))]
            if delta.get("type") == "input_json_delta":
                piece = delta.get("partial_json", "")
                if slot is None:  # the structured-output tool: its JSON is the answer text
                    self._text.append(piece)
                    return [TextDelta(piece)] if piece else []
                tool = ToolCallDelta(slot, arguments=piece)
                self._tools.add(tool)
                return [tool]
            return []
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            index = data.get("index", 0)
            block_type = block.get("type")
            if block_type == "thinking":
                self._blocks[index] = _THINKING
                if not self._reasoning:
                    return []
                self._reasoning.append(PART_BREAK)  # as a plain answer joins its blocks
                return [ReasoningDelta(PART_BREAK)]
            if block_type not in ("text", "tool_use"):
                self._blocks[index] = _HIDDEN
                return []
            if block_type == "tool_use" and block.get("name") != OUTPUT_TOOL:
                slot = sum(1 for v in self._blocks.values() if v is not None and v >= 0)
                self._blocks[index] = slot
                tool = ToolCallDelta(slot, block.get("id"), block.get("name"))
                self._tools.add(tool)
                return [tool]
            self._blocks[index] = None
            text = block.get("text") or ""
            if text:
                self._text.append(text)
                return [TextDelta(text)]
            return []
        if kind == "message_start":
            message = data.get("message") or {}
            self._id = message.get("id")
            self._model = message.get("model")
            self._usage = dict(message.get("usage") or {})
        elif kind == "message_delta":
            self._finish = (data.get("delta") or {}).get("stop_reason") or self._finish
            # message_delta's counts are cumulative; those it leaves out stand.
            self._usage.update((k, v) for k, v in (data.get("usage") or {}).items() if v)
        elif kind == "message_stop":
            self._stopped = True
        elif kind == "error":
            raise _error_from_payload(data)
        return []

    def finish(self) -> Parsed:
        if not self._stopped:
            raise APIConnectionError("the stream ended before message_stop")
        calls = self._tools.calls()
        finish = FINISH.get(self._finish or "", "other")
        if finish == "tool_calls" and not calls:
            finish = "stop"
        return Parsed(
            "".join(self._text),
            calls,
            finish,
            _usage(self._usage),
            self._model,
            self._id,
            None,
            "".join(self._reasoning),
        )


def _error_from_payload(data: dict[str, Any]) -> ProviderError:
    err = data.get("error") or {}
    kind = err.get("type", "api_error")
    return error_for_status(
        _STATUS_BY_TYPE.get(kind, 500),
        err.get("message", kind),
        overloaded=kind == "overloaded_error",
        body=data,
    )


def _messages(messages: list[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":  # a system message inside the list: Anthropic has no such role
            m = Message("user", m.content)
        if m.role == "tool":
            block = {"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.text}
            # All results of one turn go back in one user message, right after the call.
            if (
                out
                and out[-1]["role"] == "user"
                and isinstance(out[-1]["content"], list)
                and out[-1]["content"]
                and out[-1]["content"][-1].get("type") == "tool_result"
            ):
                out[-1]["content"].append(block)
            else:
                out.append({"role": "user", "content": [block]})
            continue
        content: Any
        if isinstance(m.content, str) and not m.tool_calls:
            content = m.content
        else:
            parts = [m.content] if isinstance(m.content, str) else m.content
            content = []
            for p in parts:
                if isinstance(p, str):
                    if p:
                        content.append({"type": "text", "text": p})
                elif carries("anthropic", part_kind(p)):
                    content.append(_block(p))
            content += [
                {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
                for c in m.tool_calls
            ]
        out.append({"role": m.role, "content": content})
    return out


def _block(p: ContentPart) -> dict[str, Any]:
    if isinstance(p, ImagePart | DocumentPart):
        source: dict[str, Any]
        if p.url:
            source = {"type": "url", "url": p.url}
        elif isinstance(p, DocumentPart) and p.text is not None:
            source = {"type": "text", "media_type": "text/plain", "data": p.text}
        elif isinstance(p, DocumentPart) and p.media_type.startswith("text/") and p.data:
            # Claude takes inline documents as PDF only; a text file is its text.
            text = base64.b64decode(p.data).decode("utf-8", "replace")
            source = {"type": "text", "media_type": "text/plain", "data": text}
        else:
            source = {"type": "base64", "media_type": p.media_type, "data": p.data}
        if isinstance(p, ImagePart):
            return {"type": "image", "source": source}
        block = {"type": "document", "source": source}
        return {**block, "title": p.name} if p.name else block
    return {"type": "text", "text": getattr(p, "text", "")}


def _wire(
    target: Target,
    forwarded: dict[str, str],
    body: bytes,
    stream: bool,
    path: str = "/v1/messages",
) -> WireRequest:
    """The request around a body: the caller's `forwarded` headers (its `anthropic-beta`,
    or an `anthropic-version` of its own) under the agent's key and headers."""
    headers = {
        "content-type": "application/json",
        "accept": "application/json",
        "anthropic-version": API_VERSION,
        **forwarded,
    }
    if target.api_key:
        headers["x-api-key"] = target.api_key
    headers.update(target.headers)
    base = target.base_url.rstrip("/")
    return WireRequest("POST", base + path, headers, body, stream)


# ---- the server half: parse an inbound request, render an answer, encode a stream -------

# The request body, as far as the server half reads it.


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

    def __init__(self) -> None:
        body_schema(_Body)  # built as the sidecar starts, not on its first call

    def parse(self, body: Any, history: bool = True) -> Call:
        data, extra = read_body(body, _Body, _MODELED)
        dropped: set[str] = set()
        messages: list[Message] = []
        unread = 0
        if history:
            messages = _conversation(data["messages"], dropped)
            name_tool_results(messages)
        else:
            unread = text_chars(data["messages"])
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
            reasoning=reasoning_of(extra),
            stream=bool(data.get("stream")),
            metadata=dict(data.get("metadata") or {}),
            unread_chars=unread,
        )
        request.origin = Origin(self.name, frozenset({*extra, *dropped}))
        return Call(data["model"], request, extra, body, dropped=dropped)

    def render(self, response: Response[Any], call: Call) -> bytes:
        content: list[dict[str, Any]] = []
        if response.reasoning:
            content.append(_thinking_block(response.reasoning))
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


def _conversation(items: list[_Message], dropped: set[str]) -> list[Message]:
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


def _thinking_block(text: str) -> dict[str, Any]:
    """Another format's reasoning summary as a thinking block. Its signature is empty:
    only Claude signs its own thinking, and a Claude agent relays its blocks untouched."""
    return {"type": "thinking", "thinking": text, "signature": ""}


def _event(name: bytes, payload: dict[str, Any]) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class AnthropicStream:
    """Engine stream events as Messages SSE events. Text streams as it comes; tool
    calls are sent whole when the answer is complete (a tool_use block cannot be
    reopened, and upstream formats may interleave calls)."""

    __slots__ = ("_blocks", "_id", "_input", "_model", "_open")

    def __init__(self, model: str, input_tokens: int) -> None:
        self._id = new_id("msg_")
        self._model = model
        # message_start carries the input count, known to a translated stream only at its
        # end: an estimate here, the provider's count in message_delta.
        self._input = input_tokens
        self._blocks = 0  # content blocks started so far
        self._open: str | None = None  # the kind of the block streaming: text or thinking

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
        if isinstance(event, TextDelta) and event.text:
            kind, delta = "text", {"type": "text_delta", "text": event.text}
        elif isinstance(event, ReasoningDelta) and event.text:
            kind, delta = "thinking", {"type": "thinking_delta", "thinking": event.text}
        else:
            return b""
        out = b""
        if self._open != kind:
            block = _thinking_block("") if kind == "thinking" else {"type": "text", "text": ""}
            out = self._close() + _event(
                b"content_block_start",
                {"type": "content_block_start", "index": self._blocks, "content_block": block},
            )
            self._open = kind
            self._blocks += 1
        return out + _event(
            b"content_block_delta",
            {"type": "content_block_delta", "index": self._blocks - 1, "delta": delta},
        )

    def done(self, response: Response[Any]) -> bytes:
        out = [self._close()]
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

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return _event(
            b"content_block_stop", {"type": "content_block_stop", "index": self._blocks - 1}
        )

    def error(self, failure: Failure) -> bytes:
        return b"event: error\ndata: " + _error_body(failure) + b"\n\n"
