"""OpenAI Chat Completions, inbound: what apps using the openai SDK send, and what they
expect back (JSON, `data:` SSE chunks ending in `[DONE]`, `{"error": {...}}`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Required

import orjson
from pydantic import Field, TypeAdapter
from typing_extensions import TypedDict

from agent.errors import InvalidResponseError
from agent.providers.base import dumps, loads_exact
from agent.types import (
    OutputSchema,
    Request,
    Response,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    as_messages,
)
from agent_sidecar.wire import (
    Call,
    Failure,
    Kind,
    arguments_text,
    invalid,
    name_tool_results,
    new_id,
    offered_tools,
    read_body,
)

# ---- the request body, as far as the sidecar reads it ------------------------------------


class _ImageURL(TypedDict, total=False):
    url: Required[str]
    detail: str


class _TextPart(TypedDict):
    type: Literal["text"]
    text: str


class _ImagePart(TypedDict):
    type: Literal["image_url"]
    image_url: _ImageURL | str


_Part = Annotated[_TextPart | _ImagePart, Field(discriminator="type")]


class _Function(TypedDict, total=False):
    name: Required[str]
    arguments: str


class _ToolCall(TypedDict, total=False):
    id: Required[str]
    type: str
    function: Required[_Function]


class _Message(TypedDict, total=False):
    role: Required[Literal["system", "developer", "user", "assistant", "tool"]]
    content: str | list[_Part] | None
    name: str
    tool_calls: list[_ToolCall] | None
    tool_call_id: str


class _FunctionDef(TypedDict, total=False):
    name: Required[str]
    description: str | None
    parameters: dict[str, Any] | None
    strict: bool | None


class _Tool(TypedDict):
    type: Literal["function"]
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
    response_format: _ResponseFormat | None
    n: int | None
    metadata: dict[str, str] | None


_BODY: TypeAdapter[_Body] = TypeAdapter(_Body)
# Every member the sidecar reads (validated, or looked at among the extras).
_FIELDS = _Body.__required_keys__ | _Body.__optional_keys__ | {"tool_choice"}

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
        "n",
    }
)

_FINISH = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
}

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


class OpenAIApi:
    fields = _FIELDS
    name = "openai"

    def parse(self, body: Any) -> Call:
        data, extra = read_body(body, _BODY, _MODELED)
        if data.get("n") not in (None, 1):
            raise invalid("n > 1 is not supported by the sidecar: ask once per choice", "n")
        system, history = _split_system(data["messages"])
        messages = as_messages(history)
        name_tool_results(messages)
        tools = offered_tools(data.get("tools"), extra, extra.get("tool_choice") == "none")
        schema = None
        fmt = data.get("response_format")
        if fmt is not None and fmt["type"] != "json_object":
            # json_schema is modeled (every provider gets structured output); json_object
            # has no schema to give the others, so it stays an OpenAI-only extra.
            del extra["response_format"]
            if fmt["type"] == "json_schema":
                if "json_schema" not in fmt:
                    raise invalid("response_format.json_schema is required", "response_format")
                spec = fmt["json_schema"]
                schema = OutputSchema(spec["name"], spec["schema"])
        stop = data.get("stop")
        stream = bool(data.get("stream"))
        options = data.get("stream_options") or {}
        request = Request(
            messages=messages,
            system=system,
            temperature=data.get("temperature"),
            max_tokens=data.get("max_completion_tokens") or data.get("max_tokens"),
            stop=[stop] if isinstance(stop, str) else (stop or None),
            tools=tools,
            output_schema=schema,
            stream=stream,
            metadata=dict(data.get("metadata") or {}),
        )
        return Call(data["model"], request, extra, bool(options.get("include_usage")))

    def render(self, response: Response[Any], call: Call) -> bytes:
        message: dict[str, Any] = {"role": "assistant", "content": response.text, "refusal": None}
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
        usage = response.usage
        return orjson.dumps(
            {
                "id": response.id or new_id("chatcmpl-"),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": response.model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": _FINISH.get(response.finish_reason, "stop"),
                    }
                ],
                "usage": {
                    "prompt_tokens": usage.input_tokens,
                    "completion_tokens": usage.output_tokens,
                    "total_tokens": usage.total_tokens,
                },
            }
        )

    def encoder(self, call: Call, model: str) -> OpenAIStream:
        return OpenAIStream(model, call.include_usage)

    def status(self, failure: Failure) -> int:
        return failure.status

    def error_body(self, failure: Failure) -> bytes:
        return _error_body(failure)

    def models(self, routes: Sequence[str], created: int) -> bytes:
        return orjson.dumps(
            {
                "object": "list",
                "data": [
                    {"id": r, "object": "model", "created": created, "owned_by": "agent-router"}
                    for r in routes
                ],
            }
        )

    def model(self, route: str, created: int) -> bytes:
        return orjson.dumps(
            {"id": route, "object": "model", "created": created, "owned_by": "agent-router"}
        )


def _error_body(failure: Failure) -> bytes:
    error: dict[str, Any] = {
        "message": failure.message,
        "type": _TYPES[failure.kind],
        "param": failure.param,
        "code": failure.code,
    }
    if failure.errors:
        error["errors"] = failure.errors
    return orjson.dumps({"error": error})


def _split_system(messages: list[_Message]) -> tuple[str | None, list[dict[str, Any]]]:
    """Leading system/developer messages become the request's system prompt (every
    provider has one); later ones stay in place as system messages."""
    system: list[str] = []
    rest: list[dict[str, Any]] = []
    for m in messages:
        role = m["role"]
        if role in ("system", "developer"):
            if not rest:
                system.append(_text(m.get("content")))
                continue
            m = {**m, "role": "system"}
        rest.append(dict(m))
        for call in m.get("tool_calls") or ():
            call["function"]["arguments"] = _arguments(call["function"].get("arguments"))
    return ("\n\n".join(system) if system else None), rest


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
        finish = orjson.dumps(_FINISH.get(response.finish_reason, "stop"))
        out = self._head + b'{},"finish_reason":' + finish + b"}]}\n\n"
        if self._include_usage:
            usage = response.usage
            out += (
                b"data: "
                + orjson.dumps(
                    {
                        "id": self._id,
                        "object": "chat.completion.chunk",
                        "created": self._created,
                        "model": response.model,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": usage.input_tokens,
                            "completion_tokens": usage.output_tokens,
                            "total_tokens": usage.total_tokens,
                        },
                    }
                )
                + b"\n\n"
            )
        return out + b"data: [DONE]\n\n"

    def error(self, failure: Failure) -> bytes:
        # The openai SDK raises APIError for a `data:` payload with an "error" key.
        return b"data: " + _error_body(failure) + b"\n\n"
