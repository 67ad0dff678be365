"""Anthropic Messages wire format.

Verified against:
- anthropic-sdk-python `_streaming.py` (`event:` + `data:` frames; `ping` skipped; an
  `error` event raises via `_make_status_error`) and `_error_classes.py` (529 ->
  OverloadedError, 429 -> RateLimitError, ...);
- real recorded streams (claude-sonnet-4-5-20250929, 2025; envoyproxy/ai-gateway and litellm
  test fixtures): compact JSON, `message_start` whose message starts with `model`, then id,
  type, role, content [], stop_reason, stop_sequence, usage {input_tokens,
  cache_creation_input_tokens, cache_read_input_tokens, cache_creation{...}, output_tokens: 1,
  service_tier}; `content_block_start`; `ping` is `{"type": "ping"}` (with a space);
  `text_delta`s; tool_use blocks start with `input: {}` and an empty `input_json_delta`, then
  `partial_json` pieces of `{"location": "San Francisco, CA"}`-style JSON; `message_delta`
  {stop_reason, stop_sequence} + cumulative usage; `message_stop`;
- real non-stream bodies: the same message object, compact;
- real errors: `{"type":"error","error":{"type","message"},"request_id"}`, e.g.
  "anthropic-version: header is required", "max_tokens: Field required",
  "x-api-key header is required", "invalid x-api-key", 529 "Overloaded".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ._common import (
    CORE_PLACEHOLDER,
    Call,
    Rendered,
    compact,
    count_words,
    finish_canon,
    split_json,
    split_text,
    tool_args,
    usage_of,
)
from ._wire import Wire
from .behaviours import Fail, Reply

JSON_HEADERS = {"Content-Type": "application/json"}
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}

_STOP = {"stop": "end_turn", "length": "max_tokens", "tool": "tool_use", "filter": "refusal"}

_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not Found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: (
        "rate_limit_error",
        "Number of request tokens has exceeded your per-minute rate limit "
        "(https://docs.claude.com/en/api/rate-limits); see the response headers for current "
        "usage. Please reduce the prompt length or the maximum tokens requested, or try again "
        "later. You may also contact sales at https://www.anthropic.com/contact-sales to "
        "discuss your options for a rate limit increase.",
    ),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timeout"),
    529: ("overloaded_error", "Overloaded"),
}
_TYPE_STATUS = {t: s for s, (t, _) in _ERRORS.items()}
_TYPE_STATUS["invalid_request_error"] = 400


def _event(name: str, data: str) -> bytes:
    return f"event: {name}\ndata: {data}\n\n".encode()


def _error_body(type_: str, message: str, request_id: bool = True) -> bytes:
    obj: dict[str, Any] = {"type": "error", "error": {"type": type_, "message": message}}
    if request_id:
        obj["request_id"] = f"req_011{CORE_PLACEHOLDER}"
    return compact(obj).encode()


def _error(status: int, type_: str, message: str) -> Rendered:
    return Rendered(status, dict(JSON_HEADERS), body=_error_body(type_, message))


class AnthropicWire(Wire):
    kind = "anthropic"

    def route(self, method: str, path: str, query: Mapping[str, str]) -> tuple[str, str | None] | None:
        p = path.rstrip("/")
        if method == "POST" and p == "/v1/messages":
            return "chat", None
        if method == "POST" and p == "/v1/messages/count_tokens":
            return "count_tokens", None
        if method == "GET" and p == "/v1/models":
            return "models", None
        if method == "GET" and p.startswith("/v1/models/"):
            return "model", p[len("/v1/models/") :]
        return None

    def check_auth(
        self, headers: Mapping[str, str], query: Mapping[str, str], api_key: str | None
    ) -> Rendered | None:
        key = headers.get("x-api-key")
        if key is None:
            auth = headers.get("Authorization", "")
            if auth[:7].lower() == "bearer ":
                key = auth[7:].strip()
        if not key:
            return _error(401, "authentication_error", "x-api-key header is required")
        if api_key is not None and key != api_key:
            return _error(401, "authentication_error", "invalid x-api-key")
        if not headers.get("anthropic-version"):
            return _error(400, "invalid_request_error", "anthropic-version: header is required")
        return None

    def validate(self, endpoint: str, headers: Mapping[str, str], body: Any, raw: bytes) -> Rendered | None:
        if endpoint not in ("chat", "count_tokens"):
            return None
        if not isinstance(body, dict):
            return _error(400, "invalid_request_error",
                          "There was an error parsing the body. Make sure the body is valid JSON.")
        for name in ("model", "messages") + (("max_tokens",) if endpoint == "chat" else ()):
            if name not in body:
                return _error(400, "invalid_request_error", f"{name}: Field required")
        mt = body.get("max_tokens")
        if endpoint == "chat" and (not isinstance(mt, int) or isinstance(mt, bool) or mt < 1):
            return _error(400, "invalid_request_error", "max_tokens: Input should be greater than or equal to 1")
        if not isinstance(body["messages"], list):
            return _error(400, "invalid_request_error", "messages: Input should be a valid list")
        return None

    def call(self, endpoint: str, body: Any, query: Mapping[str, str], path_model: str | None,
             default_model: str) -> Call:
        if not isinstance(body, dict):
            return Call(endpoint, path_model or default_model)
        words = count_words(body.get("messages")) + count_words(body.get("system"))
        return Call(
            endpoint=endpoint,
            model=str(body.get("model") or default_model),
            stream=bool(body.get("stream")),
            input_tokens=max(1, words),
        )

    def render(self, reply: Reply, call: Call) -> Rendered:
        model = reply.model or call.model
        mid = f"msg_01{CORE_PLACEHOLDER}"
        pin, pout = usage_of(reply, call)
        canon = finish_canon(reply.finish_reason)
        tools: list[tuple[str, str, Any]] = []
        for i, tc in enumerate(reply.tool_calls):
            _, obj = tool_args(tc)
            tools.append((str(tc.get("id") or f"toolu_01{CORE_PLACEHOLDER}{i:02d}"), str(tc["name"]), obj))
        if reply.finish_reason is None:
            stop = "tool_use" if tools else "end_turn"
        else:
            stop = _STOP[canon] if canon else reply.finish_reason
        with_text = bool(reply.text) or not tools
        cache = {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}

        if not call.stream:
            content: list[dict[str, Any]] = []
            if reply.thinking is not None:
                content.append({"type": "thinking", "thinking": reply.thinking, "signature": _SIGNATURE})
            if with_text:
                content.append({"type": "text", "text": reply.text})
            for tid, name, obj in tools:
                content.append({"type": "tool_use", "id": tid, "name": name, "input": obj})
            msg = {
                "model": model,
                "id": mid,
                "type": "message",
                "role": "assistant",
                "content": content,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": pin,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "cache_creation": cache,
                    "output_tokens": pout,
                    "service_tier": "standard",
                },
            }
            return Rendered(200, dict(JSON_HEADERS), body=compact(msg).encode())

        start = {
            "type": "message_start",
            "message": {
                "model": model,
                "id": mid,
                "type": "message",
                "role": "assistant",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": pin,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "cache_creation": cache,
                    "output_tokens": 1,
                    "service_tier": "standard",
                },
            },
        }
        frames = [_event("message_start", compact(start))]
        content_idx: list[int] = []
        index = 0
        pinged = False

        def ping() -> None:
            nonlocal pinged
            if not pinged:
                frames.append(b'event: ping\ndata: {"type": "ping"}\n\n')
                pinged = True

        if reply.thinking is not None:
            frames.append(_event("content_block_start", compact(
                {"type": "content_block_start", "index": index,
                 "content_block": {"type": "thinking", "thinking": "", "signature": ""}})))
            ping()
            for piece in split_text(reply.thinking, None):
                frames.append(_event("content_block_delta", compact(
                    {"type": "content_block_delta", "index": index,
                     "delta": {"type": "thinking_delta", "thinking": piece}})))
            frames.append(_event("content_block_delta", compact(
                {"type": "content_block_delta", "index": index,
                 "delta": {"type": "signature_delta", "signature": _SIGNATURE}})))
            frames.append(_event("content_block_stop", compact({"type": "content_block_stop", "index": index})))
            index += 1
        if with_text:
            frames.append(_event("content_block_start", compact(
                {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})))
            ping()
            for piece in split_text(reply.text, reply.chunks):
                content_idx.append(len(frames))
                frames.append(_event("content_block_delta", compact(
                    {"type": "content_block_delta", "index": index,
                     "delta": {"type": "text_delta", "text": piece}})))
            frames.append(_event("content_block_stop", compact({"type": "content_block_stop", "index": index})))
            index += 1
        for tid, name, obj in tools:
            frames.append(_event("content_block_start", compact(
                {"type": "content_block_start", "index": index,
                 "content_block": {"type": "tool_use", "id": tid, "name": name, "input": {}}})))
            ping()
            for piece in ["", *split_json(json.dumps(obj, ensure_ascii=False))]:
                content_idx.append(len(frames))
                frames.append(_event("content_block_delta", compact(
                    {"type": "content_block_delta", "index": index,
                     "delta": {"type": "input_json_delta", "partial_json": piece}})))
            frames.append(_event("content_block_stop", compact({"type": "content_block_stop", "index": index})))
            index += 1
        tail = len(frames)
        frames.append(_event("message_delta", compact({
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"input_tokens": pin, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": pout},
        })))
        frames.append(_event("message_stop", '{"type":"message_stop"}'))
        return Rendered(200, dict(SSE_HEADERS), frames=frames, content=content_idx, tail=tail)

    def fail(self, fail: Fail, call: Call | None) -> Rendered:
        type_, message = _ERRORS.get(
            fail.status, ("api_error" if fail.status >= 500 else "invalid_request_error", f"Error {fail.status}")
        )
        type_ = fail.error_type or type_
        message = fail.message or message
        headers = dict(JSON_HEADERS)
        if fail.body is None:
            body = _error_body(type_, message)
        elif isinstance(fail.body, bytes):
            body = fail.body
        elif isinstance(fail.body, str):
            body = fail.body.encode()
        else:
            body = compact(fail.body).encode()
        if fail.retry_after is not None:
            headers["retry-after"] = _num(fail.retry_after)
            if fail.retry_after_ms:
                headers["retry-after-ms"] = _num(fail.retry_after * 1000)
        return Rendered(fail.status, headers, body=body)

    def stream_error(self, error_type: str, message: str | None) -> tuple[bytes, Fail]:
        status = _TYPE_STATUS.get(error_type, 500)
        msg = message or _ERRORS.get(status, ("", "Internal server error"))[1]
        if error_type == "overloaded_error" and not message:
            msg = "Overloaded"
        data = compact({"type": "error", "error": {"type": error_type, "message": msg}})
        return _event("error", data), Fail(status, message=msg, error_type=error_type)

    def models(self, models: list[str]) -> Rendered:
        data = [
            {"type": "model", "id": m, "display_name": m, "created_at": "2025-10-01T00:00:00Z"}
            for m in models
        ]
        obj = {"data": data, "has_more": False, "first_id": models[0] if models else None,
               "last_id": models[-1] if models else None}
        return Rendered(200, dict(JSON_HEADERS), body=compact(obj).encode())

    def model(self, model: str) -> Rendered:
        obj = {"type": "model", "id": model, "display_name": model, "created_at": "2025-10-01T00:00:00Z"}
        return Rendered(200, dict(JSON_HEADERS), body=compact(obj).encode())

    def count_tokens(self, call: Call) -> Rendered:
        return Rendered(200, dict(JSON_HEADERS), body=compact({"input_tokens": call.input_tokens}).encode())

    def not_found(self, method: str, path: str) -> Rendered:
        return _error(404, "not_found_error", "Not Found")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


# What Anthropic signs a thinking block with (opaque to clients; sent back unchanged).
_SIGNATURE = "EqQBCkYIARgCIkB0ZXN0LXNpZ25hdHVyZQ=="
