"""Gemini native (generativelanguage) wire format.

Verified against:
- google-genai `_api_client.py` (SSE lines split at CR/LF/CRLF, `data: ` prefix, a frame whose
  JSON starts with `{"error":` raises ClientError/ServerError by `error.code`; default
  api_version `v1`, `v1beta` with GOOGLE_GENAI_API_VERSION=beta; `x-goog-api-key` header)
  and `models.py` (`{model}:streamGenerateContent?alt=sse`);
- a real `gemini-2.5-flash` `:streamGenerateContent?alt=sse` capture: frames
  `data: {json}\\r\\n\\r\\n`, JSON with `": "` after keys and `","` between items,
  `{"candidates": [{"content": {"parts": [{"text": ...}],"role": "model"},"index": 0}],
  "usageMetadata": {...},"modelVersion": ...,"responseId": ...}`; the last frame carries
  `"finishReason": "STOP"` (content `{"role": "model"}` or the functionCall parts);
  usage is cumulative on every frame; no `[DONE]`; `<`/`>` escaped as `\\u003c`/`\\u003e`;
- real non-stream bodies and errors: 2-space indented JSON; errors
  `{"error": {"code", "message", "status", "details"?}}` (429 RESOURCE_EXHAUSTED,
  400 INVALID_ARGUMENT "API key not valid. Please pass a valid API key.", 503 UNAVAILABLE).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ._common import (
    CORE_PLACEHOLDER,
    Call,
    Rendered,
    count_words,
    finish_canon,
    split_text,
    tool_args,
    usage_of,
)
from ._wire import Wire
from .behaviours import Fail, Reply

JSON_HEADERS = {"Content-Type": "application/json; charset=UTF-8"}
SSE_HEADERS = {"Content-Type": "text/event-stream"}

_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool": "STOP", "filter": "SAFETY"}

_ERRORS: dict[int, tuple[str, str]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "Requested entity was not found."),
    429: (
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
    ),
    500: (
        "INTERNAL",
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
    ),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "The request timed out. Please try again."),
}
_STATUS_CODE = {s: c for c, (s, _) in _ERRORS.items()}
# neutral / Anthropic-style in-stream error names -> Gemini status
_STREAM_TYPES = {
    "overloaded_error": "UNAVAILABLE",
    "api_error": "INTERNAL",
    "server_error": "INTERNAL",
    "rate_limit_error": "RESOURCE_EXHAUSTED",
    "invalid_request_error": "INVALID_ARGUMENT",
    "timeout_error": "DEADLINE_EXCEEDED",
}

_PATH = re.compile(r"^/(v1beta|v1|v1alpha)/models/([^/:]+):([A-Za-z]+)$")
_MODELS = re.compile(r"^/(v1beta|v1|v1alpha)/models/?$")
_MODEL = re.compile(r"^/(v1beta|v1|v1alpha)/models/([^/:]+)$")


def _google_escape(s: str) -> str:
    # Google's JSON encoder escapes these HTML-significant characters (only found inside
    # strings in our output).
    return (s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("=", "\\u003d").replace("'", "\\u0027"))


def _frame_json(obj: Any) -> str:
    return _google_escape(json.dumps(obj, separators=(",", ": "), ensure_ascii=False))


def _pretty(obj: Any) -> bytes:
    return _google_escape(json.dumps(obj, indent=2, ensure_ascii=False)).encode()


def _error_obj(code: int, message: str, status: str, details: list[Any] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        err["details"] = details
    return {"error": err}


def _error(code: int, message: str, status: str, details: list[Any] | None = None) -> Rendered:
    return Rendered(code, dict(JSON_HEADERS), body=_pretty(_error_obj(code, message, status, details)))


class GeminiWire(Wire):
    kind = "gemini"

    def route(self, method: str, path: str, query: Mapping[str, str]) -> tuple[str, str | None] | None:
        m = _PATH.match(path)
        if m and method == "POST":
            model, op = m.group(2), m.group(3)
            if op == "generateContent":
                return "chat", model
            if op == "streamGenerateContent":
                return "stream", model
            if op == "countTokens":
                return "count_tokens", model
            return None
        if method == "GET":
            if _MODELS.match(path):
                return "models", None
            m2 = _MODEL.match(path)
            if m2:
                return "model", m2.group(2)
        return None

    def check_auth(
        self, headers: Mapping[str, str], query: Mapping[str, str], api_key: str | None
    ) -> Rendered | None:
        key = headers.get("x-goog-api-key") or query.get("key")
        if not key:
            return _error(
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
                "PERMISSION_DENIED",
            )
        if api_key is not None and key != api_key:
            return _error(
                400,
                "API key not valid. Please pass a valid API key.",
                "INVALID_ARGUMENT",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    },
                    {
                        "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                        "locale": "en-US",
                        "message": "API key not valid. Please pass a valid API key.",
                    },
                ],
            )
        return None

    def validate(self, endpoint: str, headers: Mapping[str, str], body: Any, raw: bytes) -> Rendered | None:
        if endpoint not in ("chat", "stream", "count_tokens"):
            return None
        if not isinstance(body, dict):
            return _error(400, "Invalid JSON payload received. Unexpected token.", "INVALID_ARGUMENT")
        if not body.get("contents"):
            return _error(400, "* GenerateContentRequest.contents: contents is not specified\n",
                          "INVALID_ARGUMENT")
        return None

    def call(self, endpoint: str, body: Any, query: Mapping[str, str], path_model: str | None,
             default_model: str) -> Call:
        model = path_model or default_model
        words = 0
        if isinstance(body, dict):
            words = count_words(body.get("contents")) + count_words(body.get("systemInstruction"))
        return Call(
            endpoint="chat" if endpoint == "stream" else endpoint,
            model=model,
            stream=endpoint == "stream",
            sse=query.get("alt") == "sse",
            input_tokens=max(1, words),
        )

    def render(self, reply: Reply, call: Call) -> Rendered:
        model = reply.model or call.model
        rid = CORE_PLACEHOLDER
        pin, pout = usage_of(reply, call)
        canon = finish_canon(reply.finish_reason)
        if reply.finish_reason is None:
            finish = "STOP"
        else:
            finish = _FINISH[canon] if canon else reply.finish_reason
        calls: list[dict[str, Any]] = []
        for tc in reply.tool_calls:
            _, obj = tool_args(tc)
            calls.append({"functionCall": {"name": str(tc["name"]), "args": obj}})

        def usage(out: int) -> dict[str, Any]:
            return {
                "promptTokenCount": pin,
                "candidatesTokenCount": out,
                "totalTokenCount": pin + out,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": pin}],
            }

        if not call.stream:
            parts: list[dict[str, Any]] = []
            if reply.text or not calls:
                parts.append({"text": reply.text})
            parts.extend(calls)
            obj = {
                "candidates": [
                    {"content": {"parts": parts, "role": "model"}, "finishReason": finish, "index": 0}
                ],
                "usageMetadata": usage(pout),
                "modelVersion": model,
                "responseId": rid,
            }
            return Rendered(200, dict(JSON_HEADERS), body=_pretty(obj))

        chunks: list[dict[str, Any]] = []
        pieces = split_text(reply.text, reply.chunks)
        for k, piece in enumerate(pieces):
            out = max(1, round(pout * (k + 1) / (len(pieces) + (1 if calls else 0))))
            chunks.append({
                "candidates": [{"content": {"parts": [{"text": piece}], "role": "model"}, "index": 0}],
                "usageMetadata": usage(min(out, pout)),
                "modelVersion": model,
                "responseId": rid,
            })
        content: dict[str, Any] = {"parts": calls, "role": "model"} if calls else {"role": "model"}
        chunks.append({
            "candidates": [{"content": content, "finishReason": finish, "index": 0}],
            "usageMetadata": usage(pout),
            "modelVersion": model,
            "responseId": rid,
        })
        n = len(pieces)
        if not call.sse:
            # streamGenerateContent without alt=sse: one streamed JSON array
            texts = [_google_escape(json.dumps(c, indent=2, ensure_ascii=False)) for c in chunks]
            frames = [("[" if i == 0 else ",\r\n") + t for i, t in enumerate(texts)]
            frames[-1] += "]"
            return Rendered(200, dict(JSON_HEADERS), frames=[f.encode() for f in frames],
                            content=list(range(n)), tail=n)
        frames_b = [f"data: {_frame_json(c)}\r\n\r\n".encode() for c in chunks]
        return Rendered(200, dict(SSE_HEADERS), frames=frames_b, content=list(range(n)), tail=n)

    def fail(self, fail: Fail, call: Call | None) -> Rendered:
        status, message = _ERRORS.get(
            fail.status, ("INTERNAL" if fail.status >= 500 else "FAILED_PRECONDITION", f"Error {fail.status}")
        )
        status = fail.error_type or status
        message = fail.message or message
        headers = dict(JSON_HEADERS)
        details: list[Any] = []
        if fail.retry_after is not None:
            headers["retry-after"] = _num(fail.retry_after)
            if fail.status == 429:
                details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                "retryDelay": f"{_num(fail.retry_after)}s"})
        if fail.body is None:
            body = _pretty(_error_obj(fail.status, message, status, details))
        elif isinstance(fail.body, bytes):
            body = fail.body
        elif isinstance(fail.body, str):
            body = fail.body.encode()
        else:
            body = _pretty(fail.body)
        return Rendered(fail.status, headers, body=body)

    def stream_error(self, error_type: str, message: str | None) -> tuple[bytes, Fail]:
        status = _STREAM_TYPES.get(error_type, error_type)
        code = _STATUS_CODE.get(status, 500)
        msg = message or _ERRORS.get(code, ("", "An internal error has occurred."))[1]
        frame = f"data: {_frame_json(_error_obj(code, msg, status))}\r\n\r\n"
        return frame.encode(), Fail(code, message=msg, error_type=status)

    def models(self, models: list[str]) -> Rendered:
        data = [
            {
                "name": f"models/{m}",
                "version": "001",
                "displayName": m,
                "inputTokenLimit": 1048576,
                "outputTokenLimit": 65536,
                "supportedGenerationMethods": ["generateContent", "countTokens"],
            }
            for m in models
        ]
        return Rendered(200, dict(JSON_HEADERS), body=_pretty({"models": data}))

    def model(self, model: str) -> Rendered:
        obj = {
            "name": f"models/{model}",
            "version": "001",
            "displayName": model,
            "inputTokenLimit": 1048576,
            "outputTokenLimit": 65536,
            "supportedGenerationMethods": ["generateContent", "countTokens"],
        }
        return Rendered(200, dict(JSON_HEADERS), body=_pretty(obj))

    def count_tokens(self, call: Call) -> Rendered:
        obj = {"totalTokens": call.input_tokens,
               "promptTokensDetails": [{"modality": "TEXT", "tokenCount": call.input_tokens}]}
        return Rendered(200, dict(JSON_HEADERS), body=_pretty(obj))

    def not_found(self, method: str, path: str) -> Rendered:
        return _error(404, f"The requested URL {path} was not found on this server.", "NOT_FOUND")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))
