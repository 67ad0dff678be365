"""OpenAI Chat Completions, both halves: what OpenAI, DeepSeek, Groq and every compatible
server are sent and answer (the client half, the library's codec), and what apps using
the openai SDK send the sidecar and expect back (the server half: JSON, `data:` SSE chunks
ending in `[DONE]`, `{"error": {...}}`). One set of tables serves both.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Required

import orjson
from pydantic import Discriminator, Field, Tag
from typing_extensions import TypedDict

from agent._sse import SSEEvent
from agent.errors import APIConnectionError, InvalidResponseError, ProviderError, error_for_status
from agent.tools import to_tool_specs
from agent.types import (
    AudioPart,
    ContentPart,
    DocumentPart,
    FinishReason,
    ImagePart,
    Message,
    Origin,
    OutputSchema,
    ReasoningDelta,
    Relay,
    Request,
    Response,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolSpec,
    Usage,
    as_messages,
)
from agent.wire.base import (
    Parsed,
    Target,
    ToolCallAssembler,
    WireRequest,
    dumps,
    error_message,
    loads,
    loads_exact,
    parse_arguments,
    relayed_body,
    retry_after,
)
from agent.wire.carry import carries, part_kind, stops
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

# ---- the format's tables, both halves read them -----------------------------------------

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


# A tool_choice string or {"type": "function", ...} as the engine's; any other shape
# (a newer kind of choice) stays an OpenAI-only extra.
_TOOL_CHOICE = {wire: ToolChoice(mode) for mode, wire in TOOL_CHOICE.items()}  # type: ignore[arg-type]


def tool_choice(choice: ToolChoice) -> str | dict[str, Any]:
    if choice.mode == "tool":
        return {"type": "function", "function": {"name": choice.name}}
    return TOOL_CHOICE[choice.mode]


def tool_choice_of(extra: dict[str, Any], key: str) -> ToolChoice | None:
    """`tool_choice` (or the older `function_call`: "auto", "none", {"name": ...}; the
    Responses API's named tool is flat, {"type": "function", "name": ...})."""
    choice = extra.get(key)
    if isinstance(choice, str) and choice in _TOOL_CHOICE:
        del extra[key]
        return _TOOL_CHOICE[choice]
    if isinstance(choice, dict) and choice.get("type", "function") == "function":
        name = (choice.get("function") or choice).get("name")
        if isinstance(name, str):
            del extra[key]
            return ToolChoice("tool", name)
    return None


def usage_body(usage: Usage) -> dict[str, Any]:
    """`usage` as OpenAI reports it: cached input and reasoning output in their details."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


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


# ---- the client half: build a request, parse an answer, decode a stream ------------------


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
            body["stop"] = stops(request, self.wire)
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
            reasoning=_reasoning_of(message),
        )

    def decoder(self) -> OpenAIStreamDecoder:
        return OpenAIStreamDecoder()

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        message, parsed = error_message(body)
        return error_for_status(status, message, retry_after=retry_after(headers), body=parsed)


class OpenAIStreamDecoder:
    __slots__ = (
        "_done",
        "_finish",
        "_id",
        "_model",
        "_reasoning",
        "_refused",
        "_text",
        "_tools",
        "_usage",
    )

    def __init__(self) -> None:
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._tools = ToolCallAssembler()
        self._finish: str | None = None
        self._usage: Any = None
        self._id: str | None = None
        self._model: str | None = None
        self._done = False
        self._refused = False

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
            delta = choice.get("delta")
            if delta and len(delta) == 1 and (text := delta.get("content")):
                self._text.append(text)  # most chunks: a piece of text and nothing else
                out.append(TextDelta(text))
            elif delta:
                if thought := delta.get(REASONING_CONTENT):
                    self._reasoning.append(thought)
                    out.append(ReasoningDelta(thought))
                if text := delta.get("content"):
                    self._text.append(text)
                    out.append(TextDelta(text))
                if refusal := delta.get("refusal"):  # the model declined, in its words
                    self._refused = True
                    self._text.append(refusal)
                    out.append(TextDelta(refusal))
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
            finish_reason="content_filter"
            if self._refused
            else FINISH.get(self._finish or "", "other"),
            usage=_usage(self._usage),
            model=self._model,
            id=self._id,
            raw=None,
            reasoning="".join(self._reasoning),
        )


# Chat completions has no reasoning in OpenAI's own answers; the servers that give one
# (DeepSeek, vLLM, OpenRouter, LiteLLM translating Claude's thinking) put it here, beside
# `content`, in a message and in a stream's deltas alike.
REASONING_CONTENT = "reasoning_content"


def _reasoning_of(message: dict[str, Any]) -> str:
    thought = message.get(REASONING_CONTENT)
    return thought if isinstance(thought, str) else ""


def without_usage_chunk(frames: bytes) -> bytes:
    """Relayed stream bytes (whole SSE frames) without the usage chunk, the only one
    whose `choices` is empty: for a caller who did not ask for it, asked for upstream
    all the same (see `OpenAICodec.relay`). Quotes inside content are escaped, so the
    marker matches that chunk only."""
    if b'"choices":[]' not in frames:
        return frames
    kept = [f for f in frames.split(b"\n\n") if f and b'"choices":[]' not in f]
    return b"".join(f + b"\n\n" for f in kept)


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
        item["content"] = [_part(p) for p in m.content if carries("openai", part_kind(p))]
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


# ---- the server half: parse an inbound request, render an answer, encode a stream -------

# The request body, as far as the server half reads it.


class _ImageURL(TypedDict, total=False):
    url: Required[str]
    detail: str


class _TextPart(TypedDict):
    type: Literal["text"]
    text: str


class _ImagePart(TypedDict):
    type: Literal["image_url"]
    image_url: _ImageURL | str


class _File(TypedDict, total=False):
    file_data: str
    file_id: str
    filename: str


class _FilePart(TypedDict):
    type: Literal["file"]
    file: _File


class _InputAudio(TypedDict):
    data: str
    format: str


class _AudioPart(TypedDict):
    type: Literal["input_audio"]
    input_audio: _InputAudio


class _RefusalPart(TypedDict):
    type: Literal["refusal"]
    refusal: str


class _OtherPart(TypedDict):
    # A kind of part newer than this sidecar: an OpenAI agent gets it in the body as
    # sent; it is named when an agent of another format answers.
    type: str


_PARTS = frozenset({"text", "image_url", "file", "input_audio", "refusal"})
_PLAIN = _PARTS - {"file"}  # parts every format is given (or that carry.py names)


def _part_kind(part: Any) -> str:
    kind = part.get("type") if isinstance(part, dict) else None
    return kind if kind in _PARTS else "other"


_Part = Annotated[
    Annotated[_TextPart, Tag("text")]
    | Annotated[_ImagePart, Tag("image_url")]
    | Annotated[_FilePart, Tag("file")]
    | Annotated[_AudioPart, Tag("input_audio")]
    | Annotated[_RefusalPart, Tag("refusal")]
    | Annotated[_OtherPart, Tag("other")],
    Discriminator(_part_kind),
]


class _Function(TypedDict, total=False):
    name: Required[str]
    arguments: str


class _ToolCall(TypedDict, total=False):
    id: Required[str]
    type: str
    function: Required[_Function]


class _Message(TypedDict, total=False):
    role: Required[Literal["system", "developer", "user", "assistant", "tool", "function"]]
    content: str | list[_Part] | None
    name: str
    tool_calls: list[_ToolCall] | None
    function_call: _Function | None  # the assistant's call before tool_calls existed
    tool_call_id: str


class _FunctionDef(TypedDict, total=False):
    name: Required[str]
    description: str | None
    parameters: dict[str, Any] | None
    strict: bool | None


class _Tool(TypedDict, total=False):
    type: Required[str]  # "function", or a kind of tool only OpenAI has ("custom", ...)
    function: _FunctionDef


class _JSONSchema(TypedDict, total=False):
    name: Required[str]
    schema: Required[dict[str, Any]]
    description: str
    strict: bool | None


class _ResponseFormat(TypedDict, total=False):
    type: Required[Literal["text", "json_object", "json_schema"]]
    json_schema: _JSONSchema


class _StreamOptions(TypedDict, total=False):
    include_usage: bool | None


class _Body(TypedDict, total=False):
    model: Required[str]
    messages: Required[Annotated[list[_Message], Field(min_length=1)]]
    stream: bool | None
    stream_options: _StreamOptions | None
    temperature: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None
    max_tokens: Annotated[int, Field(ge=1)] | None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None
    stop: str | list[str] | None
    tools: list[_Tool] | None
    functions: list[_FunctionDef] | None  # tools, before `tools` existed
    response_format: _ResponseFormat | None
    parallel_tool_calls: bool | None
    n: int | None
    metadata: dict[str, str] | None


# Every member the sidecar reads (validated, or looked at among the extras).
_FIELDS = _Body.__required_keys__ | _Body.__optional_keys__ | {"tool_choice", "function_call"}

# Fields the sidecar turns into the engine's request; everything else is `extra`.
_MODELED = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "temperature",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "tools",
        "functions",
        "parallel_tool_calls",
        "n",
    }
)

_TYPES: dict[Kind, str] = {
    "invalid_request": "invalid_request_error",
    "forbidden": "permission_error",
    "not_found": "invalid_request_error",
    "method_not_allowed": "invalid_request_error",
    "request_timeout": "invalid_request_error",
    "too_large": "invalid_request_error",
    "rate_limit": "rate_limit_error",
    "internal": "server_error",
    "upstream": "upstream_error",
    "overloaded": "server_error",
    "unavailable": "server_error",
    "timeout": "timeout_error",
}


class OpenAIReplies:
    """What OpenAI's two ways in (chat completions, the Responses API) answer alike: the
    status and body of an error, and the model list."""

    def status(self, failure: Failure) -> int:
        return failure.status

    def error_body(self, failure: Failure) -> bytes:
        return error_body(failure)

    def models(self, routes: Sequence[str], created: int) -> bytes:
        return models_body(routes, created)

    def model(self, route: str, created: int) -> bytes:
        return model_body(route, created)


class OpenAIApi(OpenAIReplies):
    fields = _FIELDS
    name = "openai"

    def __init__(self) -> None:
        body_schema(_Body)  # built as the sidecar starts, not on its first call

    def parse(self, body: Any, history: bool = True) -> Call:
        data, extra = read_body(body, _Body, _MODELED)
        system: str | None = None
        messages: list[Message] = []
        dropped: set[str] = set()
        unread = 0
        if history:
            system, past, dropped = _history(data["messages"])
            messages = as_messages(past)
            name_tool_results(messages)
        else:
            unread = text_chars(data["messages"])
        stop = data.get("stop")
        stream = bool(data.get("stream"))
        options = data.get("stream_options") or {}
        request = Request(
            messages=messages,
            system=system,
            temperature=data.get("temperature"),
            max_tokens=data.get("max_completion_tokens") or data.get("max_tokens"),
            stop=[stop] if isinstance(stop, str) else (stop or None),
            tools=_tools(data, dropped),
            output_schema=_output_schema(data.get("response_format"), extra),
            tool_choice=tool_choice_of(extra, "tool_choice")
            or tool_choice_of(extra, "function_call"),
            parallel_tool_calls=data.get("parallel_tool_calls"),
            stream=stream,
            metadata=dict(data.get("metadata") or {}),
            unread_chars=unread,
        )
        only = None
        if data.get("n") not in (None, 1):
            only = Failure(
                "invalid_request",
                "n > 1 needs a route whose agents all speak OpenAI's format: ask once per choice",
                "n",
            )
        request.origin = Origin(self.name, frozenset({*extra, *dropped}))
        return Call(
            data["model"],
            request,
            extra,
            body,
            bool(options.get("include_usage")),
            only,
            dropped,
        )

    def render(self, response: Response[Any], call: Call) -> bytes:
        message: dict[str, Any] = {"role": "assistant", "content": response.text, "refusal": None}
        if response.reasoning:  # another format's thinking, where compatible servers put it
            message[REASONING_CONTENT] = response.reasoning
        if response.tool_calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": arguments_text(c)},
                }
                for c in response.tool_calls
            ]
            if not response.text:
                message["content"] = None
        return orjson.dumps(
            {
                # An answer of the sidecar's making (the provider's went untouched as
                # `response.body`) gets an id of its own, in this format's shape.
                "id": new_id("chatcmpl-"),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": response.model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": FINISH_REASON.get(response.finish_reason, "stop"),
                    }
                ],
                "usage": usage_body(response.usage),
            }
        )

    def encoder(self, call: Call, model: str) -> OpenAIStream:
        return OpenAIStream(model, call.include_usage)


# The error body and model list of OpenAI's API, the Responses API's too.


def models_body(routes: Sequence[str], created: int) -> bytes:
    return orjson.dumps({"object": "list", "data": [_model(r, created) for r in routes]})


def model_body(route: str, created: int) -> bytes:
    return orjson.dumps(_model(route, created))


def _model(route: str, created: int) -> dict[str, Any]:
    return {"id": route, "object": "model", "created": created, "owned_by": "agent-router"}


def error_body(failure: Failure) -> bytes:
    error: dict[str, Any] = {
        "message": failure.message,
        "type": _TYPES[failure.kind],
        "param": failure.param,
        "code": failure.code,
    }
    if failure.errors:
        error["errors"] = failure.errors
    return orjson.dumps({"error": error})


def _history(messages: list[_Message]) -> tuple[str | None, list[dict[str, Any]], set[str]]:
    """The system prompt, the rest of the history as the engine reads it, and what of it
    the engine has no place for.

    Leading system/developer messages become the request's system prompt (every provider
    has one); later ones stay in place as system messages. The `function` role and an
    assistant's `function_call` (the API's older tool calls, which carry no id) become a
    tool result and a tool call paired by an id of the sidecar's own. A `file` part by
    `file_id` names a file stored at OpenAI: no other provider can read it.
    """
    system: list[str] = []
    rest: list[dict[str, Any]] = []
    dropped: set[str] = set()
    calls: dict[str, str] = {}  # function name -> id of its last call
    for m in messages:
        role = m["role"]
        if role in ("system", "developer"):
            if not rest:
                system.append(_text(m.get("content")))
                continue
            m = {**m, "role": "system"}
        item: dict[str, Any] = dict(m)
        if (call := m.get("function_call")) is not None:
            calls[call["name"]] = f"call_{len(rest)}"
            item["tool_calls"] = [{"id": calls[call["name"]], "function": call}]
        if role == "function":
            name = m.get("name", "")
            item.update(role="tool", tool_call_id=calls.get(name, f"call_{name}"))
        content = m.get("content")
        if isinstance(content, list) and not all(p["type"] in _PLAIN for p in content):
            item["content"] = [p for p in content if _translatable(p, dropped)]
        rest.append(item)
        for tool_call in item.get("tool_calls") or ():
            tool_call["function"]["arguments"] = _arguments(tool_call["function"].get("arguments"))
    return ("\n\n".join(system) if system else None), rest, dropped


def _translatable(part: Any, dropped: set[str]) -> bool:
    """Whether another format can be given this part; if not, it is named in `dropped`.
    A `file` by `file_id` names a file stored at OpenAI: no other provider can read it."""
    if part["type"] == "file" and "file_data" not in part["file"]:
        dropped.add("file_id")
        return False
    if part["type"] not in _PARTS:
        dropped.add(part["type"])
        return False
    return True


def _tools(data: _Body, dropped: set[str]) -> list[ToolSpec]:
    """Function tools (or the older `functions`); tools of other kinds are OpenAI's own."""
    tools: list[Any] = [*(data.get("functions") or ())]
    for tool in data.get("tools") or ():
        if tool["type"] != "function":
            dropped.add(f"tools.{tool['type']}")
        elif "function" not in tool:
            raise invalid("a function tool needs its function", "tools")
        else:
            tools.append(tool)
    return to_tool_specs(tools)


def _output_schema(fmt: _ResponseFormat | None, extra: dict[str, Any]) -> OutputSchema | None:
    """response_format as the engine's structured output (every provider has some)."""
    if fmt is None:
        return None
    del extra["response_format"]
    if fmt["type"] == "json_object":
        return OutputSchema("json_object", {"type": "object"}, any_object=True)
    if fmt["type"] == "json_schema":
        if "json_schema" not in fmt:
            raise invalid("response_format.json_schema is required", "response_format")
        spec = fmt["json_schema"]
        return OutputSchema(spec["name"], spec["schema"])
    return None


def _arguments(text: str | None) -> str:
    """A tool call's arguments, checked and normalized (integers of any size stay exact)."""
    if not text:
        return "{}"
    try:
        return dumps(loads_exact(text, "tool call")).decode()
    except InvalidResponseError:
        raise invalid("a tool call's function.arguments is not valid JSON", "messages") from None


def _text(content: str | list[Any] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(p.get("text", "") for p in content if p.get("type") == "text")


class OpenAIStream:
    """Engine stream events as `chat.completion.chunk` SSE frames."""

    __slots__ = ("_created", "_head", "_id", "_include_usage", "_model")

    _TAIL = b',"finish_reason":null}]}\n\n'

    def __init__(self, model: str, include_usage: bool) -> None:
        self._id = new_id("chatcmpl-")
        self._created = int(time.time())
        self._model = model
        self._include_usage = include_usage
        head = orjson.dumps(
            {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": model,
            }
        )
        # Every chunk shares this prefix; only the delta and the tail differ.
        self._head = b"data: " + head[:-1] + b',"choices":[{"index":0,"delta":'

    def start(self) -> bytes:
        return self._head + b'{"role":"assistant","content":""}' + self._TAIL

    def event(self, event: StreamEvent) -> bytes:
        if isinstance(event, TextDelta):
            return self._head + orjson.dumps({"content": event.text}) + self._TAIL
        if isinstance(event, ReasoningDelta):
            return self._head + orjson.dumps({REASONING_CONTENT: event.text}) + self._TAIL
        if isinstance(event, ToolCallDelta):
            item: dict[str, Any] = {"index": event.index}
            function: dict[str, str] = {}
            if event.id:
                item["id"] = event.id
                item["type"] = "function"
            if event.name:
                function["name"] = event.name
            function["arguments"] = event.arguments
            item["function"] = function
            return self._head + orjson.dumps({"tool_calls": [item]}) + self._TAIL
        return b""  # ToolResult: the sidecar never runs tools

    def done(self, response: Response[Any]) -> bytes:
        finish = orjson.dumps(FINISH_REASON.get(response.finish_reason, "stop"))
        out = self._head + b'{},"finish_reason":' + finish + b"}]}\n\n"
        if self._include_usage:
            out += (
                b"data: "
                + orjson.dumps(
                    {
                        "id": self._id,
                        "object": "chat.completion.chunk",
                        "created": self._created,
                        "model": response.model,
                        "choices": [],
                        "usage": usage_body(response.usage),
                    }
                )
                + b"\n\n"
            )
        return out + b"data: [DONE]\n\n"

    def error(self, failure: Failure) -> bytes:
        # The openai SDK raises APIError for a `data:` payload with an "error" key.
        return b"data: " + error_body(failure) + b"\n\n"
