"""Anthropic Messages API."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from agent._sse import SSEEvent
from agent.errors import APIConnectionError, InvalidResponseError, ProviderError, error_for_status
from agent.types import (
    ContentPart,
    DocumentPart,
    FinishReason,
    ImagePart,
    Message,
    Relay,
    Request,
    StreamEvent,
    TextDelta,
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
    error_object,
    loads,
    loads_exact,
    relayed_body,
    retry_after,
)
from agent.wire.carry import carries, part_kind

API_VERSION = "2023-06-01"
# The Messages API requires max_tokens; this is what a caller gets who sets none.
DEFAULT_MAX_TOKENS = 4096

# ---- the format's tables, both ways (the sidecar's inbound half reads them too) ----------

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


def usage_body(usage: Usage) -> dict[str, Any]:
    """`usage` as Anthropic reports it: input_tokens without the cache's reads and writes."""
    uncached = usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens
    return {
        "input_tokens": max(0, uncached),
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "output_tokens": usage.output_tokens,
    }

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
        for block in data.get("content") or ():
            kind = block.get("type")
            if kind == "text":
                text.append(block.get("text", ""))
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
        "_stopped",
        "_text",
        "_tools",
        "_usage",
    )

    def __init__(self) -> None:
        self._text: list[str] = []
        self._tools = ToolCallAssembler()
        # content block index -> tool index; None: text (or our output tool); -1: a block
        # the caller never sees (server tools, thinking)
        self._blocks: dict[int, int | None] = {}
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
            if slot == -1:
                return []
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
            if block_type not in ("text", "tool_use"):
                self._blocks[index] = -1
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
        )


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
