"""OpenAI Chat Completions, spoken by OpenAI, DeepSeek, Groq and every compatible server."""

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
from agent.wire.carry import carries, part_kind

# ---- the format's tables, both ways (the sidecar's inbound half reads them too) ----------

FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}
# The engine's finish reason as OpenAI says it ("error" and "other" have no word of their own).
FINISH_REASON: dict[FinishReason, str] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
}
# tool_choice strings; a named tool is {"type": "function", "function": {"name": ...}}.
TOOL_CHOICE = {"auto": "auto", "none": "none", "required": "required"}


def tool_choice(choice: ToolChoice) -> str | dict[str, Any]:
    if choice.mode == "tool":
        return {"type": "function", "function": {"name": choice.name}}
    return TOOL_CHOICE[choice.mode]


def usage_body(usage: Usage) -> dict[str, Any]:
    """`usage` as OpenAI reports it: cached input and reasoning output in their details."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def strict_schema(schema: dict[str, Any]) -> dict[str, Any] | None:
    """The schema if OpenAI's strict mode accepts it as is (every property required,
    no extra properties), else None. Strict mode changes meaning otherwise."""

    def ok(node: Any) -> bool:
        if isinstance(node, dict):
            if node.get("type") == "object":
                # Strict mode wants closed objects with every property required: a map
                # (dict[str, X]) or an explicitly open object cannot be expressed.
                if "properties" not in node or node.get("additionalProperties", False):
                    return False
                if set(node.get("required", ())) != set(node["properties"]):
                    return False
            return all(ok(v) for v in node.values())
        if isinstance(node, list):
            return all(ok(v) for v in node)
        return True

    def close(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: close(v) for k, v in node.items()}
            if out.get("type") == "object" and "properties" in out:
                out["additionalProperties"] = False
            return out
        if isinstance(node, list):
            return [close(v) for v in node]
        return node

    return close(schema) if ok(schema) else None


class OpenAICodec:
    wire = "openai"

    def build(self, request: Request, target: Target) -> WireRequest:
        body: dict[str, Any] = {"model": target.model, "messages": _messages(request)}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            # OpenAI's own API deprecated max_tokens (its reasoning models refuse it);
            # compatible servers mostly know only max_tokens.
            key = "max_completion_tokens" if target.provider == "openai" else "max_tokens"
            body[key] = request.max_tokens
        if request.stop:
            body["stop"] = request.stop
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in request.tools
            ]
        if request.tools and request.tool_choice is not None:
            body["tool_choice"] = tool_choice(request.tool_choice)
        if request.tools and request.parallel_tool_calls is not None:
            # OpenAI refuses parallel_tool_calls in a request without tools.
            body["parallel_tool_calls"] = request.parallel_tool_calls
        if request.output_schema is not None and request.output_schema.any_object:
            body["response_format"] = {"type": "json_object"}
        elif request.output_schema is not None:
            strict = strict_schema(request.output_schema.schema)
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": request.output_schema.name,
                    "schema": strict or request.output_schema.schema,
                    "strict": strict is not None,
                },
            }
        if request.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        body.update(request.extra)
        return _wire(target, {}, dumps(body), request.stream)

    def relay(self, relay: Relay, extra: dict[str, Any], target: Target) -> WireRequest:
        stream = relay.body.get("stream") is True
        options = relay.body.get("stream_options")
        if stream and not (isinstance(options, dict) and options.get("include_usage")):
            # The route's usage and cost need the count, which OpenAI streams only when
            # asked: ask, and whoever relays the bytes drops that last chunk for a caller
            # who did not (see `without_usage_chunk`).
            options = {**(options if isinstance(options, dict) else {}), "include_usage": True}
            relay = Relay(relay.wire, {**relay.body, "stream_options": options}, relay.headers)
        body = relayed_body(relay, extra, target)
        return _wire(target, relay.headers, body, stream)

    def parse(self, body: bytes) -> Parsed:
        data = loads(body)
        if not isinstance(data, dict) or "choices" not in data:
            if isinstance(data, dict) and "error" in data:
                raise _in_band_error(data)
            raise InvalidResponseError(f"unexpected response shape: {str(data)[:200]}")
        choice = data["choices"][0] if data["choices"] else {}
        message = choice.get("message") or {}
        calls = [
            ToolCall(
                c.get("id", ""),
                c["function"]["name"],
                parse_arguments(c["function"].get("arguments", "")),
            )
            for c in message.get("tool_calls") or ()
        ]
        finish = FINISH.get(choice.get("finish_reason") or "", "other")
        text = message.get("content") or ""
        if not text and message.get("refusal"):  # the model declined: say so, in its words
            text, finish = message["refusal"], "content_filter"
        return Parsed(
            text=text,
            tool_calls=calls,
            finish_reason=finish,
            usage=_usage(data.get("usage")),
            model=data.get("model"),
            id=data.get("id"),
            raw=data,
        )

    def decoder(self) -> OpenAIStreamDecoder:
        return OpenAIStreamDecoder()

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        message, parsed = error_message(body)
        return error_for_status(status, message, retry_after=retry_after(headers), body=parsed)


class OpenAIStreamDecoder:
    __slots__ = ("_done", "_finish", "_id", "_model", "_text", "_tools", "_usage")

    def __init__(self) -> None:
        self._text: list[str] = []
        self._tools = ToolCallAssembler()
        self._finish: str | None = None
        self._usage: Any = None
        self._id: str | None = None
        self._model: str | None = None
        self._done = False

    def feed(self, event: SSEEvent) -> list[StreamEvent]:
        if event.data == "[DONE]":
            self._done = True
            return []
        chunk = loads(event.data, "stream chunk")
        if "error" in chunk:
            raise _in_band_error(chunk)
        if not self._id:
            self._id = chunk.get("id")
        if not self._model:
            self._model = chunk.get("model")
        if usage := chunk.get("usage"):
            self._usage = usage
        out: list[StreamEvent] = []
        for choice in chunk.get("choices") or ():
            if delta := choice.get("delta"):
                if text := delta.get("content"):
                    self._text.append(text)
                    out.append(TextDelta(text))
                for call in delta.get("tool_calls") or ():
                    fn = call.get("function") or {}
                    piece = ToolCallDelta(
                        call.get("index", 0),
                        call.get("id"),
                        fn.get("name"),
                        fn.get("arguments") or "",
                    )
                    self._tools.add(piece)
                    out.append(piece)
            if finish := choice.get("finish_reason"):
                self._finish = finish
        return out

    def finish(self) -> Parsed:
        if not self._done and self._finish is None:
            raise APIConnectionError("the stream ended before the response was complete")
        return Parsed(
            text="".join(self._text),
            tool_calls=self._tools.calls(),
            finish_reason=FINISH.get(self._finish or "", "other"),
            usage=_usage(self._usage),
            model=self._model,
            id=self._id,
            raw=None,
        )


def without_usage_chunk(frames: bytes) -> bytes:
    """Relayed stream bytes (whole SSE frames) without the usage chunk, the only one
    whose `choices` is empty: for a caller who did not ask for it, asked for upstream
    all the same (see `OpenAICodec.relay`). Quotes inside content are escaped, so the
    marker matches that chunk only."""
    if b'"choices":[]' not in frames:
        return frames
    kept = [f for f in frames.split(b"\n\n") if f and b'"choices":[]' not in f]
    return b"".join(f + b"\n\n" for f in kept)


def _usage(usage: Any) -> Usage:
    if not usage:
        return Usage()
    prompt = usage.get("prompt_tokens_details") or {}
    completion = usage.get("completion_tokens_details") or {}
    return Usage(
        usage.get("prompt_tokens") or 0,
        usage.get("completion_tokens") or 0,
        cached_input_tokens=prompt.get("cached_tokens") or 0,
        reasoning_tokens=completion.get("reasoning_tokens") or 0,
    )


def _in_band_error(data: dict[str, Any]) -> ProviderError:
    err = data.get("error") or {}
    message = err.get("message", "error") if isinstance(err, dict) else str(err)
    code = err.get("code") if isinstance(err, dict) else None
    status = code if isinstance(code, int) else 500
    return error_for_status(status, message, overloaded="overload" in str(message).lower())


def _part(p: ContentPart) -> dict[str, Any]:
    if isinstance(p, ImagePart):
        return {
            "type": "image_url",
            "image_url": {"url": p.url or f"data:{p.media_type};base64,{p.data}"},
        }
    if isinstance(p, DocumentPart):
        if p.text is not None:  # a plain-text document is text to every model
            return {"type": "text", "text": p.text}
        file = {"file_data": f"data:{p.media_type};base64,{p.data}"}
        return {"type": "file", "file": {**file, "filename": p.name or "document.pdf"}}
    if isinstance(p, AudioPart):
        return {"type": "input_audio", "input_audio": {"data": p.data, "format": p.format}}
    return {"type": "text", "text": p.text}


def _messages(request: Request) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if request.system:
        out.append({"role": "system", "content": request.system})
    for m in request.messages:
        out.append(_message(m))
    return out


def _message(m: Message) -> dict[str, Any]:
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.text}
    item: dict[str, Any] = {"role": m.role}
    if isinstance(m.content, str):
        item["content"] = m.content
    else:
        item["content"] = [
            _part(p) for p in m.content if carries("openai", part_kind(p))
        ]
    if m.tool_calls:
        item["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": dumps(c.arguments).decode()},
            }
            for c in m.tool_calls
        ]
        if not m.text:
            item["content"] = None
    return item


def _wire(
    target: Target,
    forwarded: dict[str, str],
    body: bytes,
    stream: bool,
    path: str = "/chat/completions",
) -> WireRequest:
    headers = {"content-type": "application/json", "accept": "application/json", **forwarded}
    if target.api_key:
        headers["authorization"] = f"Bearer {target.api_key}"
    headers.update(target.headers)
    url = target.base_url.rstrip("/") + path
    return WireRequest("POST", url, headers, body, stream)
