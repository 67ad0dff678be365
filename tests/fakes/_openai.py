"""OpenAI Chat Completions wire format.

Verified against:
- openai-python `_streaming.py` (SSE `data:` frames, `[DONE]`, a payload with an `error` key
  raises `APIError`) and `_base_client.py` (retry-after-ms / retry-after / x-should-retry);
- real recorded streams (gpt-3.5-turbo-0125 and gpt-4o-2024-08-06, 2025): compact chunk JSON
  with key order id, object, created, model, service_tier, system_fingerprint, choices, usage
  (only with include_usage: `null` on every chunk, then a last chunk with `choices: []`),
  obfuscation; first delta `{"role":"assistant","content":"","refusal":null}`; tool calls
  start `{"index","id","type":"function","function":{"name","arguments":""}}` then argument
  pieces; a closing chunk with `delta: {}` and the finish_reason;
- a real non-stream body (gpt-4o-mini-2024-07-18): 2-space indented JSON, message with
  refusal and annotations, usage details, service_tier, system_fingerprint;
- real error bodies: 4-space indented JSON with a trailing newline,
  `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import json
import time
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

_FINISH = {"stop": "stop", "length": "length", "tool": "tool_calls", "filter": "content_filter"}

# status -> (type, code, message); {model} is filled in when known.
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided: sk-test***********key. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    403: (
        "invalid_request_error",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported",
    ),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model `{model}` does not exist or you do not have access to it.",
    ),
    409: ("invalid_request_error", None, "Conflict."),
    422: ("invalid_request_error", None, "Unprocessable entity."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for {model} in organization org-fake on requests per min (RPM): "
        "Limit 3, Used 3, Requested 1. Please try again in 20s. Visit "
        "https://platform.openai.com/account/rate-limits to learn more.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The server is overloaded or not ready yet."),
    504: ("server_error", None, "Gateway timeout."),
}

# in-stream error types (neutral/Anthropic names accepted) -> (type, code, message, http status)
_STREAM_ERRORS: dict[str, tuple[str, str | None, str, int]] = {
    "overloaded_error": ("server_error", None, "The server is overloaded or not ready yet.", 503),
    "api_error": ("server_error", None, _ERRORS[500][2], 500),
    "server_error": ("server_error", None, _ERRORS[500][2], 500),
    "rate_limit_error": ("requests", "rate_limit_exceeded", "Rate limit reached.", 429),
    "rate_limit_exceeded": ("requests", "rate_limit_exceeded", "Rate limit reached.", 429),
    "invalid_request_error": ("invalid_request_error", None, "Invalid request.", 400),
}

_OBF = "K7qvX2mPz9LdR4tWbN8cYhF3sJ6gQ1eA"


def _mask(key: str) -> str:
    if len(key) <= 8:
        return "*" * len(key)
    return key[:3] + "*" * max(1, len(key) - 7) + key[-4:]


def _error_body(message: str, type_: str, param: str | None, code: str | None) -> bytes:
    obj = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return (json.dumps(obj, indent=4, ensure_ascii=False) + "\n").encode()


def _error(status: int, message: str, type_: str, param: str | None = None,
           code: str | None = None) -> Rendered:
    return Rendered(status, dict(JSON_HEADERS), body=_error_body(message, type_, param, code))


class OpenAIWire(Wire):
    kind = "openai"

    def __init__(self, fingerprint: str = "fp_f0a1b2c3d4") -> None:
        self.fingerprint = fingerprint

    # -- routing & validation -------------------------------------------------------------
    def route(self, method: str, path: str, query: Mapping[str, str]) -> tuple[str, str | None] | None:
        if method == "POST" and path.endswith("/chat/completions"):
            return "chat", None
        if method == "GET":
            p = path.rstrip("/")
            if p.endswith("/models"):
                return "models", None
            i = p.rfind("/models/")
            if i >= 0:
                return "model", p[i + len("/models/") :]
        return None

    def check_auth(
        self, headers: Mapping[str, str], query: Mapping[str, str], api_key: str | None
    ) -> Rendered | None:
        auth = headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not token:
            return _error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), "
                "or as the password field (with blank username) if you're accessing the API "
                "from your browser and are prompted for a username. You can obtain an API key "
                "from https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
            )
        if api_key is not None and token != api_key:
            return _error(
                401,
                f"Incorrect API key provided: {_mask(token)}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                code="invalid_api_key",
            )
        return None

    def validate(self, endpoint: str, headers: Mapping[str, str], body: Any, raw: bytes) -> Rendered | None:
        if endpoint != "chat":
            return None
        if not isinstance(body, dict):
            return _error(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                "payload, but what was sent was not valid JSON. If you have trouble figuring "
                "out how to fix this, please contact us through our help center at "
                "help.openai.com.)",
                "invalid_request_error",
            )
        if "model" not in body:
            return _error(400, "you must provide a model parameter", "invalid_request_error")
        if "messages" not in body:
            return _error(400, "Missing required parameter: 'messages'.", "invalid_request_error",
                          "messages", "missing_required_parameter")
        if not isinstance(body["messages"], list) or not body["messages"]:
            return _error(400, "Invalid 'messages': empty array. Expected an array with "
                          "minimum length 1, but got an empty array instead.",
                          "invalid_request_error", "messages", "empty_array")
        return None

    def call(self, endpoint: str, body: Any, query: Mapping[str, str], path_model: str | None,
             default_model: str) -> Call:
        if not isinstance(body, dict):
            return Call(endpoint, path_model or default_model)
        so = body.get("stream_options") or {}
        return Call(
            endpoint=endpoint,
            model=str(body.get("model") or default_model),
            stream=bool(body.get("stream")),
            include_usage=bool(isinstance(so, dict) and so.get("include_usage")),
            include_obfuscation=not (isinstance(so, dict) and so.get("include_obfuscation") is False),
            input_tokens=max(1, count_words(body.get("messages"))),
            choices=body["n"] if isinstance(body.get("n"), int) and body["n"] > 1 else 1,
            logprobs=body.get("logprobs") is True,
        )

    # -- success --------------------------------------------------------------------------
    def render(self, reply: Reply, call: Call) -> Rendered:
        model = reply.model or call.model
        created = int(time.time())
        rid = f"chatcmpl-{CORE_PLACEHOLDER}"
        tools: list[tuple[str, str, str]] = []  # (id, name, arguments)
        for i, tc in enumerate(reply.tool_calls):
            raw, obj = tool_args(tc)
            args = raw or compact(obj)
            tools.append((str(tc.get("id") or f"call_{CORE_PLACEHOLDER}{i:02d}"), str(tc["name"]), args))
        pin, pout = usage_of(reply, call)
        usage = {
            "prompt_tokens": pin,
            "completion_tokens": pout,
            "total_tokens": pin + pout,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        canon = finish_canon(reply.finish_reason)
        if reply.finish_reason is None:
            finish = "tool_calls" if tools else "stop"
        else:
            finish = _FINISH[canon] if canon else reply.finish_reason
        content: str | None = reply.text if (reply.text or not tools) else None

        if not call.stream:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if tools:
                message["tool_calls"] = [
                    {"id": tid, "type": "function", "function": {"name": name, "arguments": args}}
                    for tid, name, args in tools
                ]
            message["refusal"] = None
            message["annotations"] = []
            logprobs = _logprobs(split_text(reply.text, None)) if call.logprobs else None
            obj = {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish}
                    for i in range(call.choices)
                ],
                "usage": usage,
                "service_tier": "default",
                "system_fingerprint": self.fingerprint,
            }
            body = json.dumps(obj, indent=2, ensure_ascii=False).encode()
            return Rendered(200, dict(JSON_HEADERS), body=body)

        head = (
            f'{{"id":"{rid}","object":"chat.completion.chunk","created":{created},'
            f'"model":{compact(model)},"service_tier":"default",'
            f'"system_fingerprint":"{self.fingerprint}","choices":'
        )
        usage_null = ',"usage":null' if call.include_usage else ""
        n = 0

        def chunk(delta: Any, finish_reason: str | None = None) -> bytes:
            nonlocal n
            n += 1
            text = delta.get("content") if call.logprobs else None
            logprobs = compact(_logprobs([text])) if text else "null"
            choice = (
                f'[{{"index":0,"delta":{compact(delta)},"logprobs":{logprobs},'
                f'"finish_reason":{compact(finish_reason)}}}]'
            )
            obf = f',"obfuscation":"{_OBF[: (n * 7) % 12 + 1]}"' if call.include_obfuscation else ""
            return f"data: {head}{choice}{usage_null}{obf}}}\n\n".encode()

        frames: list[bytes] = []
        content_idx: list[int] = []
        pieces = split_text(reply.text, reply.chunks)
        first: dict[str, Any] = {"role": "assistant", "content": "" if (reply.text or not tools) else None}
        if not reply.text and tools:
            tid, name, _ = tools[0]
            first["tool_calls"] = [
                {"index": 0, "id": tid, "type": "function", "function": {"name": name, "arguments": ""}}
            ]
        first["refusal"] = None
        frames.append(chunk(first))
        for p in pieces:
            content_idx.append(len(frames))
            frames.append(chunk({"content": p}))
        for i, (tid, name, args) in enumerate(tools):
            if i > 0 or reply.text:
                frames.append(chunk({"tool_calls": [
                    {"index": i, "id": tid, "type": "function", "function": {"name": name, "arguments": ""}}
                ]}))
            for piece in split_json(args):
                content_idx.append(len(frames))
                frames.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
        tail = len(frames)
        frames.append(chunk({}, finish))
        if call.include_usage:
            obf = f',"obfuscation":"{_OBF[:12]}"' if call.include_obfuscation else ""
            frames.append(f'data: {head}[],"usage":{compact(usage)}{obf}}}\n\n'.encode())
        frames.append(b"data: [DONE]\n\n")
        return Rendered(200, dict(SSE_HEADERS), frames=frames, content=content_idx, tail=tail)

    # -- errors ---------------------------------------------------------------------------
    def fail(self, fail: Fail, call: Call | None) -> Rendered:
        type_, code, message = _ERRORS.get(
            fail.status,
            ("server_error" if fail.status >= 500 else "invalid_request_error", None,
             f"Error {fail.status}."),
        )
        model = call.model if call else "gpt-4o-mini"
        message = (fail.message or message).replace("{model}", model)
        type_ = fail.error_type or type_
        code = fail.code if fail.code is not None else code
        headers = dict(JSON_HEADERS)
        if fail.body is None:
            body = _error_body(message, type_, None, code)
        elif isinstance(fail.body, bytes):
            body = fail.body
        elif isinstance(fail.body, str):
            body = fail.body.encode()
        else:
            body = (json.dumps(fail.body, indent=4, ensure_ascii=False) + "\n").encode()
        if fail.retry_after is not None:
            headers["retry-after"] = _num(fail.retry_after)
            if fail.retry_after_ms:
                headers["retry-after-ms"] = _num(fail.retry_after * 1000)
        if fail.status == 429:
            headers.setdefault("x-ratelimit-limit-requests", "3")
            headers.setdefault("x-ratelimit-remaining-requests", "0")
        return Rendered(fail.status, headers, body=body)

    def stream_error(self, error_type: str, message: str | None) -> tuple[bytes, Fail]:
        type_, code, default, status = _STREAM_ERRORS.get(
            error_type, (error_type, None, "An error occurred during streaming.", 500)
        )
        msg = message or default
        frame = f"data: {compact({'error': {'message': msg, 'type': type_, 'param': None, 'code': code}})}\n\n"
        return frame.encode(), Fail(status, message=msg, error_type=type_, code=code)

    # -- misc endpoints -------------------------------------------------------------------
    def models(self, models: list[str]) -> Rendered:
        data = [{"id": m, "object": "model", "created": 1715367049, "owned_by": "system"} for m in models]
        body = json.dumps({"object": "list", "data": data}, indent=2).encode()
        return Rendered(200, dict(JSON_HEADERS), body=body)

    def model(self, model: str) -> Rendered:
        obj = {"id": model, "object": "model", "created": 1715367049, "owned_by": "system"}
        return Rendered(200, dict(JSON_HEADERS), body=json.dumps(obj, indent=2).encode())

    def not_found(self, method: str, path: str) -> Rendered:
        return _error(404, f"Invalid URL ({method} {path})", "invalid_request_error")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _logprobs(tokens: list[str]) -> dict[str, Any]:
    """Log probabilities for `tokens` (one per piece of text), in OpenAI's shape."""
    return {
        "content": [
            {"token": t, "logprob": -0.25, "bytes": list(t.encode()), "top_logprobs": []}
            for t in tokens
        ],
        "refusal": None,
    }
