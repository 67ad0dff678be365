"""OpenAI Responses API wire format (`POST /v1/responses`), served by the "openai" fake
beside Chat Completions, as OpenAI serves both.

Verified against:
- openai-python's `types/responses` models (`Response`, `ResponseOutputMessage`,
  `ResponseFunctionToolCall`, the stream event classes with `sequence_number`) and its
  stream accumulator `lib/streaming/responses/_responses.py` (`response.created` first,
  one `output_item.added` per output index before its deltas, `response.completed` last);
- OpenAI's API reference streams: `event: <type>` + `data: {...}` frames, compact JSON
  whose first member is `type` then `sequence_number`; `response.created` and
  `response.in_progress` carry the response with `status: "in_progress"`, no output and
  `usage: null`; text deltas carry `logprobs: []` and an `obfuscation` string; a function
  call streams `output_item.added` (empty `arguments`), argument deltas, `arguments.done`;
- the non-stream body: 2-space indented JSON, `object: "response"`, `status`
  ("completed", or "incomplete" with `incomplete_details.reason`), `output` items, usage
  with `input_tokens_details.cached_tokens` and `output_tokens_details.reasoning_tokens`;
- stored responses: `store` defaults to true; `previous_response_id` naming a response
  that was not stored is a 400 `previous_response_not_found` on `previous_response_id`.
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
from ._openai import JSON_HEADERS, SSE_HEADERS, OpenAIWire, _error
from .behaviours import Fail, Reply

_OBF = "Qm3xT8vLp2Zc"
# Request fields a response object repeats back (and `store`, which decides if it is kept).
_ECHOED = ("instructions", "max_output_tokens", "metadata", "parallel_tool_calls",
           "previous_response_id", "store", "temperature", "text", "tool_choice", "tools", "top_p")


class ResponsesWire(OpenAIWire):
    """OpenAI's own API: Chat Completions (inherited) and the Responses API."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: set[str] = set()  # ids of responses created with store (the default)

    def route(self, method: str, path: str, query: Mapping[str, str]) -> tuple[str, str | None] | None:
        if method == "POST" and path.rstrip("/").endswith("/responses"):
            return "responses", None
        return super().route(method, path, query)

    def validate(self, endpoint: str, headers: Mapping[str, str], body: Any, raw: bytes) -> Rendered | None:
        if endpoint != "responses":
            return super().validate(endpoint, headers, body, raw)
        if not isinstance(body, dict):
            return _error(400, "We could not parse the JSON body of your request.", "invalid_request_error")
        if "model" not in body:
            return _error(400, "Missing required parameter: 'model'.", "invalid_request_error",
                          "model", "missing_required_parameter")
        if "input" not in body and "previous_response_id" not in body:
            return _error(400, "Missing required parameter: 'input'.", "invalid_request_error",
                          "input", "missing_required_parameter")
        previous = body.get("previous_response_id")
        if previous is not None and previous not in self.stored:
            return _error(400, f"Previous response with id '{previous}' not found.",
                          "invalid_request_error", "previous_response_id", "previous_response_not_found")
        return None

    def call(self, endpoint: str, body: Any, query: Mapping[str, str], path_model: str | None,
             default_model: str) -> Call:
        if endpoint != "responses" or not isinstance(body, dict):
            return super().call(endpoint, body, query, path_model, default_model)
        words = count_words(body.get("input")) + count_words(body.get("instructions"))
        return Call(
            endpoint=endpoint,
            model=str(body.get("model") or default_model),
            stream=bool(body.get("stream")),
            input_tokens=max(1, words),
            request={k: body[k] for k in _ECHOED if k in body},
        )

    def stream_error_for(
        self, call: Call, error_type: str, message: str | None, sequence: int
    ) -> tuple[bytes, Fail]:
        frame, fail = self.stream_error(error_type, message)
        if call.endpoint != "responses":
            return frame, fail
        data = compact({"type": "error", "sequence_number": sequence, "code": fail.code or fail.error_type,
                        "message": fail.message, "param": None})
        return f"event: error\ndata: {data}\n\n".encode(), fail

    def issued(self, call: Call, core: str) -> None:
        if call.endpoint == "responses" and call.request.get("store", True) is not False:
            self.stored.add(f"resp_{core}")

    def render(self, reply: Reply, call: Call) -> Rendered:
        if call.endpoint != "responses":
            return super().render(reply, call)
        return _Rendering(reply, call).rendered()


class _Rendering:
    """One response: its output items and the body or events that carry them."""

    def __init__(self, reply: Reply, call: Call) -> None:
        self.reply, self.call = reply, call
        self.created = int(time.time())
        self.calls: list[dict[str, Any]] = []
        for i, tc in enumerate(reply.tool_calls):
            raw, obj = tool_args(tc)
            self.calls.append({
                "id": f"fc_{CORE_PLACEHOLDER}{i:02d}",
                "type": "function_call",
                "status": "completed",
                "arguments": raw or compact(obj),
                "call_id": str(tc.get("id") or f"call_{CORE_PLACEHOLDER}{i:02d}"),
                "name": str(tc["name"]),
            })
        pin, pout = usage_of(reply, call)
        self.usage = {
            "input_tokens": pin,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": pout,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": pin + pout,
        }
        canon = finish_canon(reply.finish_reason)
        self.incomplete = {"length": "max_output_tokens", "filter": "content_filter"}.get(canon or "")

    def message(self, text: str, status: str) -> dict[str, Any]:
        return {
            "id": f"msg_{CORE_PLACEHOLDER}",
            "type": "message",
            "status": status,
            "content": [self.part(text)] if status != "in_progress" else [],
            "role": "assistant",
        }

    @staticmethod
    def part(text: str) -> dict[str, Any]:
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}

    def output(self) -> list[dict[str, Any]]:
        out = [self.message(self.reply.text, "completed")] if self.reply.text or not self.calls else []
        return out + self.calls

    def response(self, done: bool) -> dict[str, Any]:
        req = self.call.request
        status = ("incomplete" if self.incomplete else "completed") if done else "in_progress"
        text = req.get("text") if isinstance(req.get("text"), dict) else {}
        return {
            "id": f"resp_{CORE_PLACEHOLDER}",
            "object": "response",
            "created_at": self.created,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": {"reason": self.incomplete} if done and self.incomplete else None,
            "instructions": req.get("instructions"),
            "max_output_tokens": req.get("max_output_tokens"),
            "max_tool_calls": None,
            "model": self.reply.model or self.call.model,
            "output": self.output() if done else [],
            "parallel_tool_calls": req.get("parallel_tool_calls", True),
            "previous_response_id": req.get("previous_response_id"),
            "prompt_cache_key": None,
            "reasoning": {"effort": None, "summary": None},
            "safety_identifier": None,
            "service_tier": "default",
            "store": req.get("store", True),
            "temperature": req.get("temperature", 1.0),
            "text": {"format": text.get("format") or {"type": "text"}, "verbosity": "medium"},
            "tool_choice": req.get("tool_choice", "auto"),
            "tools": req.get("tools") or [],
            "top_logprobs": 0,
            "top_p": req.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": self.usage if done else None,
            "user": None,
            "metadata": req.get("metadata") or {},
        }

    def rendered(self) -> Rendered:
        if not self.call.stream:
            body = json.dumps(self.response(True), indent=2, ensure_ascii=False).encode()
            return Rendered(200, dict(JSON_HEADERS), body=body)
        frames: list[bytes] = []
        content: list[int] = []

        def event(kind: str, **fields: Any) -> None:
            data = compact({"type": kind, "sequence_number": len(frames), **fields})
            frames.append(f"event: {kind}\ndata: {data}\n\n".encode())

        event("response.created", response=self.response(False))
        event("response.in_progress", response=self.response(False))
        index = 0
        if self.reply.text or not self.calls:
            item_id = f"msg_{CORE_PLACEHOLDER}"
            at = {"item_id": item_id, "output_index": 0, "content_index": 0}
            event("response.output_item.added", output_index=0, item=self.message("", "in_progress"))
            event("response.content_part.added", **at, part=self.part(""))
            for n, piece in enumerate(split_text(self.reply.text, self.reply.chunks)):
                content.append(len(frames))
                event("response.output_text.delta", **at, delta=piece, logprobs=[],
                      obfuscation=_OBF[: (n * 5) % 10 + 1])
            event("response.output_text.done", **at, text=self.reply.text, logprobs=[])
            event("response.content_part.done", **at, part=self.part(self.reply.text))
            event("response.output_item.done", output_index=0,
                  item=self.message(self.reply.text, "completed"))
            index = 1
        for i, fc in enumerate(self.calls, start=index):
            event("response.output_item.added", output_index=i,
                  item={**fc, "status": "in_progress", "arguments": ""})
            for piece in split_json(fc["arguments"]):
                content.append(len(frames))
                event("response.function_call_arguments.delta", item_id=fc["id"], output_index=i,
                      delta=piece, obfuscation=_OBF[:4])
            event("response.function_call_arguments.done", item_id=fc["id"], name=fc["name"],
                  output_index=i, arguments=fc["arguments"])
            event("response.output_item.done", output_index=i, item=fc)
        tail = len(frames)
        last = "response.incomplete" if self.incomplete else "response.completed"
        event(last, response=self.response(True))
        return Rendered(200, dict(SSE_HEADERS), frames=frames, content=content, tail=tail)

