"""Google Gemini, native generateContent / streamGenerateContent: the client half only
(apps call the sidecar in OpenAI's or Anthropic's format, never in Gemini's)."""

from __future__ import annotations

import mimetypes
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
    Request,
    StreamEvent,
    TextDelta,
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
    retry_after,
)
from agent.wire.carry import carries, part_kind

# ---- the format's tables ------------------------------------------------------------------

FINISH: dict[str, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "LANGUAGE": "content_filter",
}
# functionCallingConfig.mode for each of the engine's tool choices.
TOOL_MODE = {"auto": "AUTO", "none": "NONE", "required": "ANY", "tool": "ANY"}


def tool_config(choice: ToolChoice) -> dict[str, Any]:
    config: dict[str, Any] = {"mode": TOOL_MODE[choice.mode]}
    if choice.mode == "tool":
        config["allowedFunctionNames"] = [choice.name]
    return {"functionCallingConfig": config}

_STATUS_BY_NAME = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


class GeminiCodec:
    wire = "gemini"

    def build(self, request: Request, target: Target) -> WireRequest:
        body: dict[str, Any] = {"contents": _contents(request.messages)}
        if request.system:
            body["systemInstruction"] = {"parts": [{"text": request.system}]}
        config: dict[str, Any] = {}
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.max_tokens is not None:
            config["maxOutputTokens"] = request.max_tokens
        if request.stop:
            config["stopSequences"] = request.stop
        if request.output_schema is not None:
            config["responseMimeType"] = "application/json"
            if not request.output_schema.any_object:
                # responseJsonSchema takes full JSON Schema ($defs, refs), responseSchema not.
                config["responseJsonSchema"] = request.output_schema.schema
        if config:
            body["generationConfig"] = config
        if request.tools:
            body["tools"] = [
                {
                    "functionDeclarations": [
                        {"name": t.name, "description": t.description, "parameters": t.parameters}
                        for t in request.tools
                    ]
                }
            ]
            if request.tool_choice is not None:
                body["toolConfig"] = tool_config(request.tool_choice)
        body.update(request.extra)
        headers = {"content-type": "application/json", "accept": "application/json"}
        if target.api_key:
            headers["x-goog-api-key"] = target.api_key
        headers.update(target.headers)
        base = target.base_url.rstrip("/")
        action = "streamGenerateContent?alt=sse" if request.stream else "generateContent"
        url = f"{base}/v1beta/models/{target.model}:{action}"
        return WireRequest("POST", url, headers, dumps(body), request.stream)

    def parse(self, body: bytes) -> Parsed:
        data = loads_exact(body)  # functionCall args are in it
        if not isinstance(data, dict) or ("candidates" not in data and "error" in data):
            if isinstance(data, dict):
                raise _error_from_payload(data)
            raise InvalidResponseError(f"unexpected response shape: {str(data)[:200]}")
        acc = _Accumulator()
        acc.add(data)
        return acc.parsed(data)

    def decoder(self) -> GeminiStreamDecoder:
        return GeminiStreamDecoder()

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        message, parsed = error_message(body)
        err = error_object(parsed)
        raw_details = err.get("details")
        details: list[Any] = raw_details if isinstance(raw_details, list) else []
        if status == 400 and any(
            isinstance(d, dict) and d.get("reason") == "API_KEY_INVALID" for d in details
        ):
            status = 401  # Gemini says 400 for a bad key; it is the key, not the request
        return error_for_status(
            status,
            message,
            retry_after=retry_after(headers) or _retry_delay(details),
            overloaded=err.get("status") == "UNAVAILABLE",
            body=parsed,
        )


class _Accumulator:
    """Gemini sends whole GenerateContentResponse objects, one per SSE frame or one in all."""

    __slots__ = ("finish", "id", "model", "signatures", "text", "tools", "usage")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.tools = ToolCallAssembler()
        self.signatures: dict[int, str] = {}
        self.finish: str | None = None
        self.usage: dict[str, Any] = {}
        self.id: str | None = None
        self.model: str | None = None

    def add(self, data: dict[str, Any]) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        self.id = self.id or data.get("responseId")
        self.model = self.model or data.get("modelVersion")
        if data.get("usageMetadata"):
            self.usage = data["usageMetadata"]
        candidates = data.get("candidates") or ()
        if not candidates and (data.get("promptFeedback") or {}).get("blockReason"):
            self.finish = "SAFETY"
        for cand in candidates[:1]:
            for part in (cand.get("content") or {}).get("parts") or ():
                if part.get("thought"):
                    continue
                if "text" in part:
                    if part["text"]:
                        self.text.append(part["text"])
                        out.append(TextDelta(part["text"]))
                elif "functionCall" in part:
                    call = part["functionCall"]
                    index = len(self.tools.calls())
                    delta = ToolCallDelta(
                        index,
                        call.get("id") or f"call_{index}",
                        call["name"],
                        dumps(call.get("args") or {}).decode(),
                    )
                    self.tools.add(delta)
                    out.append(delta)
                    if part.get("thoughtSignature"):  # must go back with the call (Gemini 3)
                        self.signatures[index] = part["thoughtSignature"]
            if cand.get("finishReason"):
                self.finish = cand["finishReason"]
        return out

    def parsed(self, raw: Any) -> Parsed:
        calls = self.tools.calls()
        for index, signature in self.signatures.items():
            calls[index].provider_data["thoughtSignature"] = signature
        finish: FinishReason = FINISH.get(self.finish or "", "other")
        if calls and finish == "stop":
            finish = "tool_calls"
        thoughts = self.usage.get("thoughtsTokenCount") or 0
        usage = Usage(
            self.usage.get("promptTokenCount") or 0,
            (self.usage.get("candidatesTokenCount") or 0) + thoughts,
            cached_input_tokens=self.usage.get("cachedContentTokenCount") or 0,
            reasoning_tokens=thoughts,
        )
        return Parsed("".join(self.text), calls, finish, usage, self.model, self.id, raw)


class GeminiStreamDecoder:
    __slots__ = ("_acc",)

    def __init__(self) -> None:
        self._acc = _Accumulator()

    def feed(self, event: SSEEvent) -> list[StreamEvent]:
        text = event.data  # functionCall args come whole, in a chunk's JSON
        data = (
            loads_exact(text, "stream chunk")
            if "functionCall" in text
            else loads(text, "stream chunk")
        )
        if "error" in data and "candidates" not in data:
            raise _error_from_payload(data)
        return self._acc.add(data)

    def finish(self) -> Parsed:
        if self._acc.finish is None:  # Gemini has no end marker: the last chunk has a reason
            raise APIConnectionError("the stream ended before a finishReason")
        return self._acc.parsed(None)


def _retry_delay(details: list[Any]) -> float | None:
    """google.rpc.RetryInfo's retryDelay ("34.4s"): Gemini's retry-after."""
    for d in details:
        if isinstance(d, dict) and str(d.get("@type", "")).endswith("RetryInfo"):
            try:
                return float(str(d.get("retryDelay", "")).rstrip("s"))
            except ValueError:
                return None
    return None


def _error_from_payload(data: dict[str, Any]) -> ProviderError:
    err = data.get("error") or {}
    status = err.get("code") if isinstance(err.get("code"), int) else None
    status = status or _STATUS_BY_NAME.get(err.get("status", ""), 500)
    return error_for_status(
        status,
        err.get("message", "error"),
        overloaded=err.get("status") == "UNAVAILABLE",
        body=data,
    )


def _contents(messages: list[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "tool":
            part = {"functionResponse": {"name": m.name or "tool", "response": {"result": m.text}}}
            if out and out[-1]["role"] == "user" and "functionResponse" in out[-1]["parts"][-1]:
                out[-1]["parts"].append(part)
            else:
                out.append({"role": "user", "parts": [part]})
            continue
        parts: list[dict[str, Any]] = []
        for p in [m.content] if isinstance(m.content, str) else m.content:
            if isinstance(p, str):
                if p:
                    parts.append({"text": p})
            elif carries("gemini", part_kind(p)):
                parts.append(_part(p))
        parts += [
            {"functionCall": {"name": c.name, "args": c.arguments}, **c.provider_data}
            for c in m.tool_calls
        ]
        out.append({"role": "model" if m.role == "assistant" else "user", "parts": parts})
    return out


def _part(p: ContentPart) -> dict[str, Any]:
    if isinstance(p, AudioPart):
        return {"inlineData": {"mimeType": f"audio/{p.format}", "data": p.data}}
    if isinstance(p, ImagePart | DocumentPart):
        if isinstance(p, DocumentPart) and p.text is not None:
            return {"text": p.text}
        if p.url:  # the URL's own type when it shows one (a .jpg is no image/png)
            mime = mimetypes.guess_type(p.url)[0] or p.media_type
            return {"fileData": {"mimeType": mime, "fileUri": p.url}}
        return {"inlineData": {"mimeType": p.media_type, "data": p.data}}
    return {"text": p.text}
