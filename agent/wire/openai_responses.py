"""OpenAI's Responses API, both halves: what an OpenAI agent with `api="responses"` is
sent and answers (the client half, the library's codec), and what the openai SDK's
`client.responses`, the OpenAI Agents SDK, pydantic-ai's and LangChain's Responses models
send the sidecar (`POST /v1/responses`) and expect back (the server half).

A request is `instructions` plus `input` items: messages, `function_call` items (the
model's calls) and `function_call_output` items (their results). An answer is `output`
items: `message`s of `output_text` parts, `function_call`s and `reasoning`. A stream is
typed events with sequence numbers; only text and function-argument deltas are content
(`response.created` and `response.in_progress` come before anything is decided, so they
never commit a route), and a stream that ends without `response.completed` was cut.

Inbound, to an agent that calls the Responses API itself the body goes as it came
(`Relay`). For the others it becomes the engine's request: `instructions` and leading
system or developer messages are the system prompt, input messages, images,
`function_call` and `function_call_output` items are the conversation, function tools are
tools, `text.format` json_schema is structured output. What only OpenAI's servers can do
(continue a stored response, store one, hosted tools, files by id) is refused with a 400
saying why when the route has an agent that would be sent a translation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Required

import orjson
from pydantic import Field
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
    loads,
    parse_arguments,
    relayed_body,
    retry_after,
)
from agent.wire.carry import reasons
from agent.wire.inbound import (
    Call,
    CallerError,
    Failure,
    arguments_text,
    body_schema,
    invalid,
    name_tool_results,
    new_id,
    read_body,
    text_chars,
)
from agent.wire.openai_chat import (
    TOOL_CHOICE,
    OpenAIReplies,
    strict_schema,
    tool_choice_of,
)
from agent.wire.openai_chat import _wire as openai_wire

# ---- the format's tables, both halves read them -----------------------------------------


# `incomplete_details.reason` -> the engine's finish reason
_INCOMPLETE: dict[str, FinishReason] = {
    "max_output_tokens": "length",
    "content_filter": "content_filter",
}

# ... and the engine's finish reason as the reason a response is incomplete
INCOMPLETE_REASON: dict[FinishReason, str] = {v: k for k, v in _INCOMPLETE.items()}

# An error event's `code` -> the HTTP status the same failure gets as an answer
ERROR_STATUS = {
    "rate_limit_exceeded": 429,
    "invalid_prompt": 400,
    "invalid_request_error": 400,
    "context_length_exceeded": 400,
    "server_error": 500,
    "overloaded": 503,
}


def tool_choice(choice: ToolChoice) -> str | dict[str, Any]:
    """The Responses API's tool_choice: Chat Completions' strings; a named tool is flat."""
    if choice.mode == "tool":
        return {"type": "function", "name": choice.name}
    return TOOL_CHOICE[choice.mode]


def usage(value: Any) -> Usage:
    if not isinstance(value, dict):
        return Usage()
    cached = value.get("input_tokens_details") or {}
    reasoning = value.get("output_tokens_details") or {}
    return Usage(
        value.get("input_tokens") or 0,
        value.get("output_tokens") or 0,
        cached_input_tokens=cached.get("cached_tokens") or 0,
        reasoning_tokens=reasoning.get("reasoning_tokens") or 0,
    )


def usage_body(usage: Usage) -> dict[str, Any]:
    """`usage` as the Responses API reports it: cached input and reasoning in details."""
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


# ---- the client half: build a request, parse an answer, decode a stream ------------------


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
        if request.reasoning is not None and reasons(request, self.wire):
            body["reasoning"] = {"effort": request.reasoning.effort or "medium", "summary": "auto"}
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
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
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

    __slots__ = ("_calls", "_final", "_named", "_reasoning", "_text", "_tools")

    def __init__(self) -> None:
        self._text: list[str] = []
        self._tools = ToolCallAssembler()
        self._calls: dict[int, tuple[int, str, str]] = {}  # output index -> (call index, id, name)
        self._named: set[int] = set()  # calls whose id and name went out already
        self._final: dict[str, Any] | None = None
        self._reasoning: list[str] = []

    def feed(self, event: SSEEvent) -> list[StreamEvent]:
        if event.event != "message" and event.event not in _READ:
            return []
        data = loads(event.data, "stream event")
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "response.output_text.delta":
            text = data.get("delta") or ""
            self._text.append(text)
            return [TextDelta(text)] if text else []
        if kind == "response.reasoning_summary_text.delta":
            return self._reason(data.get("delta") or "")
        if kind == "response.reasoning_summary_part.added" and self._reasoning:
            return self._reason(PART_BREAK)  # parts are paragraphs, as a plain answer joins them
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

    def _reason(self, piece: str) -> list[StreamEvent]:
        self._reasoning.append(piece)
        return [ReasoningDelta(piece)] if piece else []

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
        if not parsed.reasoning and self._reasoning:
            parsed.reasoning = "".join(self._reasoning)
        if not parsed.tool_calls and self._tools:
            parsed.tool_calls = self._tools.calls()
            parsed.finish_reason = "tool_calls"
        parsed.raw = None
        return parsed


def _parsed(data: dict[str, Any]) -> Parsed:
    text: list[str] = []
    calls: list[ToolCall] = []
    reasoning: list[str] = []
    for item in data.get("output") or ():
        kind = item.get("type")
        if kind == "reasoning":
            reasoning += [p.get("text") or "" for p in item.get("summary") or ()]
        elif kind == "message":
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
        reasoning=PART_BREAK.join(reasoning),
    )


def finish_reason(data: dict[str, Any], calls: bool) -> FinishReason:
    if data.get("status") == "incomplete":
        reason = (data.get("incomplete_details") or {}).get("reason") or ""
        return _INCOMPLETE.get(reason, "other")
    return "tool_calls" if calls else "stop"


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
        parts = [_input_part(p) for p in m.content if not isinstance(p, AudioPart)]  # see carry
        items.append({"role": m.role, "content": parts})
    return items


def _input_part(p: ContentPart) -> dict[str, Any]:
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


def _wire(target: Target, forwarded: dict[str, str], body: bytes, stream: bool) -> WireRequest:
    return openai_wire(target, forwarded, body, stream, "/responses")


# ---- the server half: parse an inbound request, render an answer, encode a stream -------


class _Body(TypedDict, total=False):
    model: Required[str]
    input: str | list[dict[str, Any]]
    instructions: str | None
    tools: list[dict[str, Any]] | None
    text: dict[str, Any] | None
    temperature: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None
    max_output_tokens: Annotated[int, Field(ge=1)] | None
    parallel_tool_calls: bool | None
    stream: bool | None
    metadata: dict[str, str] | None


_MODELED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "temperature",
        "max_output_tokens",
        "parallel_tool_calls",
        "stream",
    }
)
_FIELDS = _Body.__required_keys__ | _Body.__optional_keys__ | {"tool_choice"}

# What a translated route cannot do, and why: the answer is OpenAI's to keep or find.
_STORED = (
    "it continues a response stored by OpenAI, which only an agent calling OpenAI's "
    "Responses API can read"
)
_RELAY_ONLY = {
    "previous_response_id": _STORED,
    "conversation": _STORED,
    "store": "it asks OpenAI to store the response, which only an agent calling OpenAI's "
    "Responses API does (send store: false, or leave it out)",
    "background": "background responses run and wait on OpenAI's servers",
    "prompt": "a prompt template is stored on OpenAI's servers",
}


class ResponsesApi(OpenAIReplies):
    name = "responses"
    fields = _FIELDS

    def __init__(self) -> None:
        body_schema(_Body)  # built as the sidecar starts, not on its first call

    def parse(self, body: Any, history: bool = True) -> Call:
        data, extra = read_body(body, _Body, _MODELED)
        only = _relay_only(body)
        system, unread = data.get("instructions"), 0
        messages: list[Message] = []
        if not history:
            unread = text_chars(data.get("input", []))
        else:
            try:
                system, messages = _conversation(data.get("input", []), system)
            except CallerError as exc:  # items only OpenAI can read: fine on a same-format route
                only, messages, system = only or exc.failure, [], None
            name_tool_results(messages)
        functions, hosted = _tools(data.get("tools"))
        if hosted and only is None:
            only = _refusal("tools", f"it offers OpenAI's hosted tool {hosted!r}")
        tools = to_tool_specs(functions)
        schema = None
        fmt = (data.get("text") or {}).get("format") or {}
        if fmt.get("type") == "json_schema":
            if not isinstance(fmt.get("schema"), dict) or not isinstance(fmt.get("name"), str):
                raise invalid("text.format json_schema needs a name and a schema", "text.format")
            schema = OutputSchema(fmt["name"], fmt["schema"])
        if fmt.get("type") != "json_object":  # json_object has no schema for the others
            extra.pop("text", None)
        request = Request(
            messages=messages,
            system=system,
            temperature=data.get("temperature"),
            max_tokens=data.get("max_output_tokens"),
            tools=tools,
            tool_choice=tool_choice_of(extra, "tool_choice"),
            parallel_tool_calls=data.get("parallel_tool_calls"),
            reasoning=_reasoning_of(extra),
            output_schema=schema,
            stream=bool(data.get("stream")),
            metadata=dict(data.get("metadata") or {}),
            unread_chars=unread,
        )
        request.origin = Origin(self.name, frozenset(extra))
        return Call(data["model"], request, extra, body, relay_only=only)

    def render(self, response: Response[Any], call: Call) -> bytes:
        return orjson.dumps(_Answer(call, response.model).response(response))

    def encoder(self, call: Call, model: str) -> ResponsesStream:
        return ResponsesStream(_Answer(call, model))


def _reasoning_of(extra: dict[str, Any]) -> Reasoning | None:
    """`reasoning` ({effort, summary}) as the engine's reasoning request."""
    value = extra.get("reasoning")
    if not isinstance(value, dict) or not (value.get("effort") or value.get("summary")):
        return None
    del extra["reasoning"]
    effort = value.get("effort")
    return Reasoning(effort=effort if isinstance(effort, str) else None)


def _refusal(param: str, why: str) -> Failure:
    return Failure(
        "invalid_request",
        f"this request needs a route whose agents all call OpenAI's Responses API "
        f"(api: responses): {why}",
        param,
        "responses_api_only",
    )


def _relay_only(body: dict[str, Any]) -> Failure | None:
    for name, why in _RELAY_ONLY.items():
        if body.get(name) not in (None, False):
            return _refusal(name, why)
    return None


def _tools(tools: list[dict[str, Any]] | None) -> tuple[list[dict[str, Any]], str | None]:
    """Function tools in chat completions' shape (what the engine reads), and the first
    hosted tool (web search, file search, ...) if any."""
    functions: list[dict[str, Any]] = []
    for tool in tools or ():
        if tool.get("type") != "function":
            return functions, str(tool.get("type"))
        if not isinstance(tool.get("name"), str):
            raise invalid("a function tool needs a name", "tools")
        spec = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
        functions.append({"type": "function", "function": spec})
    return functions, None


# ---- input items -> the engine's conversation ---------------------------------------------


def _conversation(
    items: str | list[dict[str, Any]], instructions: str | None
) -> tuple[str | None, list[Message]]:
    """The system prompt (instructions, then leading system or developer messages) and
    the messages; consecutive function calls join the assistant turn before them."""
    if isinstance(items, str):
        return instructions, [Message("user", items)]
    system = [instructions] if instructions else []
    messages: list[Message] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise invalid(f"input[{i}] must be an object", "input")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise invalid(
                    f"input[{i}].role must be user, assistant, system or developer", "input"
                )
            content = _content(item.get("content"), i)
            if role == "user" or role == "assistant":
                messages.append(Message(role, content))
            elif messages:  # a later system or developer message stays in its place
                messages.append(Message("system", content))
            else:
                system.append(_text(content))
        elif kind == "function_call":
            call = ToolCall(
                str(item.get("call_id") or ""),
                str(item.get("name") or ""),
                _arguments(item.get("arguments"), i),
            )
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":
                last.tool_calls.append(call)
            else:
                messages.append(Message("assistant", "", [call]))
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else _text(_content(output, i))
            messages.append(Message("tool", text, tool_call_id=str(item.get("call_id") or "")))
        elif kind == "reasoning":
            continue  # the model's own reasoning: only the model that wrote it reads it back
        else:
            raise CallerError(_refusal("input", f"input[{i}] is a {kind!r} item"))
    return ("\n\n".join(system) if system else None), messages


def _content(content: Any, i: int) -> str | list[ContentPart]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(f"input[{i}].content must be text or a list of parts", "input")
    parts: list[ContentPart] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append(TextPart(str(part.get("text") or "")))
        elif kind == "refusal":
            parts.append(TextPart(str(part.get("refusal") or "")))
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append(_image(part["image_url"]))
        elif kind == "input_image":
            raise CallerError(
                _refusal("input", "an image by file_id is stored on OpenAI's servers")
            )
        else:
            raise CallerError(_refusal("input", f"a {kind!r} content part"))
    return parts


def _image(url: str) -> ImagePart:
    if url.startswith("data:") and ";base64," in url:
        head, data = url[5:].split(";base64,", 1)
        return ImagePart(data=data, media_type=head or "image/png")
    return ImagePart(url=url)


def _text(content: str | list[ContentPart]) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.text for p in content if isinstance(p, TextPart))


def _arguments(text: Any, i: int) -> dict[str, Any]:
    if isinstance(text, dict):
        return text
    try:
        value = orjson.loads(text or "{}")
    except orjson.JSONDecodeError:
        raise invalid(f"input[{i}].arguments is not valid JSON", "input") from None
    return value if isinstance(value, dict) else {"value": value}


# ---- answers -------------------------------------------------------------------------------


class _Answer:
    """The response object of one call: its id (the sidecar's own), the request's fields
    it repeats, and its output items."""

    __slots__ = ("created", "echo", "id", "model")

    def __init__(self, call: Call, model: str) -> None:
        self.id = new_id("resp_")
        self.created = int(time.time())
        self.model = model
        body = call.body
        text = body.get("text") if isinstance(body.get("text"), dict) else {}
        self.echo = {
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": None,
            "store": False,  # a translated answer is stored nowhere
            "temperature": body.get("temperature", 1.0),
            "text": {"format": (text or {}).get("format") or {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0),
            "metadata": body.get("metadata") or {},
        }

    def response(
        self,
        done: Response[Any] | None,
        output: list[dict[str, Any]] | None = None,
        status: str | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        incomplete = None
        if done is not None:
            incomplete = INCOMPLETE_REASON.get(done.finish_reason)
            status = status or ("incomplete" if incomplete else "completed")
            if output is None:
                output = message_items(done)
        usage = usage_body(done.usage) if done is not None else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status or "in_progress",
            "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "model": done.model if done is not None else self.model,
            "output": output or [],
            **self.echo,
            "usage": usage,
        }


def message_items(response: Response[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if response.reasoning:
        out.append(_reasoning_item(new_id("rs_"), response.reasoning))
    if response.text or not response.tool_calls:
        out.append(_message(new_id("msg_"), response.text, "completed"))
    out += [
        _function_call(new_id("fc_"), c.id, c.name, arguments_text(c)) for c in response.tool_calls
    ]
    return out


def _message(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [_output_text(text)]
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "content": content,
        "role": "assistant",
    }


def _reasoning_item(item_id: str, summary: str | None) -> dict[str, Any]:
    """Another format's reasoning (Claude's thinking) as a reasoning item's summary."""
    parts = [] if summary is None else [_summary_text(summary)]
    return {"id": item_id, "type": "reasoning", "summary": parts}


def _summary_text(text: str) -> dict[str, Any]:
    return {"type": "summary_text", "text": text}


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _function_call(
    item_id: str, call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }


# A message's text and a reasoning summary stream alike, each under its own names: item
# type -> a new item, its part's name, the part it starts with, the part's and the text's
# first events.
_TEXT_ITEMS: dict[str, tuple[Callable[[], dict[str, Any]], str, dict[str, Any], str, str]] = {
    "message": (
        lambda: _message(new_id("msg_"), None, "in_progress"),
        "content",
        _output_text(""),
        "response.content_part.added",
        "response.output_text.delta",
    ),
    "reasoning": (
        lambda: _reasoning_item(new_id("rs_"), None),
        "summary",
        _summary_text(""),
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
    ),
}


class ResponsesStream:
    """Engine stream events as the Responses API's typed events: an output item per
    message or function call, opened at its first piece and closed before the next."""

    __slots__ = ("_answer", "_call", "_items", "_open", "_seq", "_text")

    def __init__(self, answer: _Answer) -> None:
        self._answer = answer
        self._seq = 0
        self._items: list[dict[str, Any]] = []  # output items, completed or streaming
        self._open: dict[str, Any] | None = None  # the item being streamed
        self._call = -1  # the engine's index of the function call being streamed
        self._text: list[str] = []  # the open message's text

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = orjson.dumps({"type": kind, "sequence_number": self._seq, **fields})
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"

    def start(self) -> bytes:
        now = self._answer.response(None)
        return self._event("response.created", response=now) + self._event(
            "response.in_progress", response=now
        )

    def event(self, event: StreamEvent) -> bytes:
        if isinstance(event, TextDelta):
            return self._text_piece("message", event.text, logprobs=[])
        if isinstance(event, ReasoningDelta):
            return self._text_piece("reasoning", event.text)
        if isinstance(event, ToolCallDelta):
            out = b""
            if (
                self._open is None
                or self._open["type"] != "function_call"
                or self._call != event.index
            ):
                item = _function_call(
                    new_id("fc_"), event.id or "", event.name or "", "", "in_progress"
                )
                out = self._close() + self._add(item)
                self._call = event.index
            assert self._open is not None
            self._open["arguments"] += event.arguments
            return out + self._event(
                "response.function_call_arguments.delta",
                item_id=self._open["id"],
                output_index=len(self._items) - 1,
                delta=event.arguments,
            )
        return b""  # ToolResult: the sidecar never runs tools

    def _text_piece(self, kind: str, text: str, **more: Any) -> bytes:
        """A piece of a message's text or of a reasoning summary (`kind`), opening an
        item of that kind and its part first unless that is the open one."""
        new_item, part, empty, added, delta = _TEXT_ITEMS[kind]
        out = b""
        if self._open is None or self._open["type"] != kind:
            out = self._close() + self._add(new_item())
            out += self._event(added, **self._at(part), part=empty)
        self._text.append(text)
        return out + self._event(delta, **self._at(part), delta=text, **more)

    def _at(self, part: str) -> dict[str, Any]:
        assert self._open is not None
        return {
            "item_id": self._open["id"],
            "output_index": len(self._items) - 1,
            f"{part}_index": 0,
        }

    def _add(self, item: dict[str, Any]) -> bytes:
        self._items.append(item)
        self._open = item
        return self._event(
            "response.output_item.added", output_index=len(self._items) - 1, item=item
        )

    def _close(self) -> bytes:
        item, self._open = self._open, None
        if item is None:
            return b""
        at = len(self._items) - 1
        text = "".join(self._text)
        self._text.clear()
        if item["type"] == "message":
            where = {"item_id": item["id"], "output_index": at, "content_index": 0}
            out = self._event("response.output_text.done", **where, text=text, logprobs=[])
            out += self._event("response.content_part.done", **where, part=_output_text(text))
            item.update(status="completed", content=[_output_text(text)])
        elif item["type"] == "reasoning":
            where = {"item_id": item["id"], "output_index": at, "summary_index": 0}
            out = self._event("response.reasoning_summary_text.done", **where, text=text)
            out += self._event(
                "response.reasoning_summary_part.done", **where, part=_summary_text(text)
            )
            item["summary"] = [_summary_text(text)]
        else:
            out = self._event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                name=item["name"],
                output_index=at,
                arguments=item["arguments"],
            )
            item["status"] = "completed"
        return out + self._event("response.output_item.done", output_index=at, item=item)

    def done(self, response: Response[Any]) -> bytes:
        out = self._close()
        if not self._items:  # an empty answer still has its message
            out += self.event(TextDelta("")) + self._close()
        final = self._answer.response(response, self._items)
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        return out + self._event(kind, response=final)

    def error(self, failure: Failure) -> bytes:
        # OpenAI ends a failing stream with an `error` event and `response.failed`. A
        # relayed stream (nothing of this encoder's was sent: OpenAI's own events were)
        # gets the `error` event only: its response, and id, are OpenAI's.
        code = failure.code or (
            "rate_limit_exceeded" if failure.kind == "rate_limit" else "server_error"
        )
        relayed = self._seq == 0
        out = self._event("error", code=code, message=failure.message, param=failure.param)
        if relayed:
            return out
        failed = self._answer.response(
            None, self._items, "failed", {"code": code, "message": failure.message}
        )
        return out + self._event("response.failed", response=failed)
