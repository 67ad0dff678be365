"""Shared helpers for the codec tests: recorded payloads, chunkings, reference accumulators.

The reference accumulators turn a recorded stream into "the equivalent non-stream
response" the way each provider documents its stream (written here from the providers'
docs, independently of the codecs), so a stream can be checked against `codec.parse`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from agent._sse import SSEEvent, SSEParser
from agent.types import StreamEvent, TextDelta, ToolCallDelta
from agent.wire.base import Codec, Parsed, StreamReader, Target

DATA = Path(__file__).resolve().parent / "data"


def data_bytes(provider: str, name: str) -> bytes:
    return (DATA / provider / name).read_bytes()


def data_json(provider: str, name: str) -> Any:
    return json.loads(data_bytes(provider, name))


def jsonl_payloads(provider: str, name: str) -> list[bytes]:
    """One recorded JSON payload per line (vercel/ai stores Gemini stream frames so)."""
    return [line for line in data_bytes(provider, name).splitlines() if line.strip()]


def gemini_sse(name: str) -> bytes:
    """Frame recorded Gemini payloads the way `streamGenerateContent?alt=sse` sends them."""
    return b"".join(b"data: " + p + b"\n\n" for p in jsonl_payloads("gemini", name))


# ---- chunkings ---------------------------------------------------------------------------


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    out, start = [], 0
    for p in points:
        out.append(data[start:p])
        start = p
    out.append(data[start:])
    return out


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def to_crlf(data: bytes) -> bytes:
    # Recorded payloads are JSON on one line: no raw newline inside any data value.
    return data.replace(b"\n", b"\r\n")


def to_cr(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r")


def sse_events(chunks: Sequence[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events + parser.close()


def run_stream(codec: Codec, chunks: Sequence[bytes]) -> tuple[list[StreamEvent], Parsed]:
    """Drive a stream's bytes through `StreamReader`, as `agent.agent._stream_once` does."""
    reader = StreamReader(codec)
    out: list[StreamEvent] = []
    for chunk in chunks:
        if chunk:
            out += reader.feed(chunk)
    last, parsed = reader.close()
    return out + last, parsed


def decoder_events(codec: Codec, events: Sequence[SSEEvent]) -> list[StreamEvent]:
    decoder = codec.decoder()
    out: list[StreamEvent] = []
    for event in events:
        out += decoder.feed(event)
    return out


def comparable(parsed: Parsed) -> dict[str, Any]:
    """A Parsed without `raw` (the stream keeps no single payload)."""
    return {
        "text": parsed.text,
        "tool_calls": [(c.id, c.name, c.arguments) for c in parsed.tool_calls],
        "finish_reason": parsed.finish_reason,
        "usage": (parsed.usage.input_tokens, parsed.usage.output_tokens),
        "model": parsed.model,
        "id": parsed.id,
    }


def streamed_text(events: Sequence[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def streamed_calls(events: Sequence[StreamEvent]) -> dict[int, dict[str, Any]]:
    calls: dict[int, dict[str, Any]] = {}
    for e in events:
        if isinstance(e, ToolCallDelta):
            slot = calls.setdefault(e.index, {"id": None, "name": None, "arguments": ""})
            slot["id"] = e.id or slot["id"]
            slot["name"] = e.name or slot["name"]
            slot["arguments"] += e.arguments
    return calls


def assert_stream_is_the_equivalent_response(codec: Codec, raw: bytes,
                                             equivalent: dict[str, Any]) -> None:
    """A stream's events and its final Parsed agree with `codec.parse` of the response
    the provider documents as its non-stream equivalent."""
    events, streamed = run_stream(codec, [raw])
    assert comparable(streamed) == comparable(codec.parse(json.dumps(equivalent).encode()))
    assert streamed_text(events) == streamed.text
    calls = streamed_calls(events)
    assert [
        (c["id"], c["name"], json.loads(c["arguments"] or "{}")) for _, c in sorted(calls.items())
    ] == [(c.id, c.name, c.arguments) for c in streamed.tool_calls]


def assert_same_events_whatever_the_chunking(codec: Codec, raw: bytes, step: int) -> None:
    """One byte at a time, CRLF or CR line ends, cuts every `step` bytes: same result."""
    whole = run_stream(codec, [raw])
    for chunks in (
        one_byte_at_a_time(raw),
        [to_crlf(raw)],
        one_byte_at_a_time(to_crlf(raw)),
        [to_cr(raw)],
        split_at(raw, range(3, len(raw), step)),
    ):
        events, parsed = run_stream(codec, chunks)
        assert events == whole[0]
        assert comparable(parsed) == comparable(whole[1])


def target(provider: str, key: str | None = "sk-test-key-123456", **kw: Any) -> Target:
    from agent.catalog import PROVIDERS

    base = kw.pop("base_url", None) or PROVIDERS[provider].default_base_url or "http://x"
    return Target(provider, kw.pop("model", "m-1"), base, key, **kw)


# ---- reference accumulators --------------------------------------------------------------


def openai_equivalent(raw_sse: bytes) -> dict[str, Any]:
    """The chat.completion object a recorded chat.completion.chunk stream adds up to."""
    completion: dict[str, Any] = {"object": "chat.completion", "choices": []}
    content: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    for event in sse_events([raw_sse]):
        if event.data == "[DONE]":
            continue
        chunk = json.loads(event.data)
        completion.setdefault("id", chunk["id"])
        completion.setdefault("model", chunk["model"])
        if chunk.get("usage"):
            completion["usage"] = chunk["usage"]
        for choice in chunk["choices"]:
            delta = choice["delta"]
            if delta.get("content"):
                content.append(delta["content"])
            for tc in delta.get("tool_calls") or ():
                slot = calls.setdefault(
                    tc["index"], {"id": None, "type": "function", "function": {"name": None}}
                )
                slot["id"] = tc.get("id") or slot["id"]
                fn = tc.get("function") or {}
                slot["function"]["name"] = fn.get("name") or slot["function"]["name"]
                slot["function"]["arguments"] = slot["function"].get("arguments", "") + (
                    fn.get("arguments") or ""
                )
            finish = choice.get("finish_reason") or finish
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content) or None}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    completion["choices"] = [{"index": 0, "message": message, "finish_reason": finish}]
    return completion


def anthropic_equivalent(raw_sse: bytes) -> dict[str, Any]:
    """The Message object a recorded Messages stream adds up to (per the streaming docs)."""
    message: dict[str, Any] = {}
    blocks: dict[int, dict[str, Any]] = {}
    partial: dict[int, str] = {}
    for event in sse_events([raw_sse]):
        data = json.loads(event.data)
        kind = data["type"]
        if kind == "message_start":
            message = json.loads(json.dumps(data["message"]))
        elif kind == "content_block_start":
            blocks[data["index"]] = dict(data["content_block"])
        elif kind == "content_block_delta":
            block, delta = blocks[data["index"]], data["delta"]
            if delta["type"] == "text_delta":
                block["text"] = block.get("text", "") + delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + delta["thinking"]
            elif delta["type"] == "input_json_delta":
                partial[data["index"]] = partial.get(data["index"], "") + delta["partial_json"]
        elif kind == "content_block_stop":
            block = blocks[data["index"]]
            if data["index"] in partial:
                block["input"] = json.loads(partial[data["index"]] or "{}")
        elif kind == "message_delta":
            message["stop_reason"] = data["delta"].get("stop_reason")
            message.setdefault("usage", {}).update(data.get("usage") or {})
    message["content"] = [blocks[i] for i in sorted(blocks)]
    return message


def gemini_equivalent(payloads: Sequence[bytes]) -> dict[str, Any]:
    """The GenerateContentResponse a recorded stream adds up to: parts in order, last
    finishReason and usageMetadata (each frame carries the running totals)."""
    parts: list[dict[str, Any]] = []
    out: dict[str, Any] = {}
    finish = None
    for raw in payloads:
        data = json.loads(raw)
        for key in ("modelVersion", "responseId", "usageMetadata", "promptFeedback"):
            if key in data:
                out[key] = data[key]
        for cand in data.get("candidates") or ():
            for part in (cand.get("content") or {}).get("parts") or ():
                if (
                    "text" in part
                    and parts
                    and "text" in parts[-1]
                    and part.get("thought") == parts[-1].get("thought")
                ):
                    parts[-1] = {**parts[-1], "text": parts[-1]["text"] + part["text"]}
                else:
                    parts.append(dict(part))
            finish = cand.get("finishReason") or finish
    if parts or finish:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        out["candidates"] = [candidate]
    return out
