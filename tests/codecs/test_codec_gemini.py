"""Gemini generateContent codec on recorded payloads (vercel/ai fixtures, issues; data/SOURCES.md)."""

from __future__ import annotations

import json

import orjson
import pytest
from codec_support import (
    assert_same_events_whatever_the_chunking,
    assert_stream_is_the_equivalent_response,
    data_bytes,
    data_json,
    gemini_equivalent,
    gemini_sse,
    jsonl_payloads,
    one_byte_at_a_time,
    run_stream,
    target,
)

from agent._sse import SSEEvent
from agent.errors import (
    APIConnectionError,
    BadRequestError,
    InvalidResponseError,
    OverloadedError,
    ProviderError,
    RateLimitError,
)
from agent.providers import GeminiCodec, codec_for
from agent.types import (
    ImagePart,
    Message,
    OutputSchema,
    Request,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
)

codec = GeminiCodec()
KEY = "AIzaSyTestKey-0123456789abcdef"


def build(request: Request, **kw: object):  # type: ignore[no-untyped-def]
    return codec.build(request, target("gemini", key=KEY, model="gemini-2.5-flash", **kw))  # type: ignore[arg-type]


def body_of(request: Request) -> dict:
    return json.loads(build(request).body)


# ---- build -------------------------------------------------------------------------------


def test_codec_for_gemini() -> None:
    assert codec_for("gemini").wire == "gemini"


def test_urls_and_api_key_header() -> None:
    plain = build(Request([Message("user", "hi")]))
    assert plain.method == "POST"
    assert plain.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    )
    assert plain.headers["x-goog-api-key"] == KEY
    assert KEY not in plain.url  # the key never goes in the query string
    assert plain.stream is False
    streamed = build(Request([Message("user", "hi")], stream=True))
    assert streamed.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/"
        "gemini-2.5-flash:streamGenerateContent?alt=sse"
    )
    assert streamed.stream is True
    assert "stream" not in json.loads(streamed.body)


def test_no_key_no_header_and_trailing_slash() -> None:
    wire = codec.build(
        Request([Message("user", "hi")]),
        target("gemini", key=None, model="g", base_url="http://localhost:9000/"),
    )
    assert wire.url == "http://localhost:9000/v1beta/models/g:generateContent"
    assert "x-goog-api-key" not in wire.headers


def test_system_instruction_and_generation_config() -> None:
    body = body_of(
        Request(
            [Message("user", "hi"), Message("assistant", "hello"), Message("user", "again")],
            system="be brief",
            temperature=0.3,
            max_tokens=100,
            stop=["END"],
        )
    )
    assert body["systemInstruction"] == {"parts": [{"text": "be brief"}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "hi"}]},
        {"role": "model", "parts": [{"text": "hello"}]},
        {"role": "user", "parts": [{"text": "again"}]},
    ]
    assert body["generationConfig"] == {
        "temperature": 0.3,
        "maxOutputTokens": 100,
        "stopSequences": ["END"],
    }


def test_no_generation_config_when_nothing_is_set() -> None:
    body = body_of(Request([Message("user", "hi")]))
    assert set(body) == {"contents"}


def test_tools_as_function_declarations() -> None:
    spec = ToolSpec(
        "weather",
        "Get the weather",
        {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    )
    body = body_of(Request([Message("user", "SF?")], tools=[spec]))
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {"name": "weather", "description": "Get the weather", "parameters": spec.parameters}
            ]
        }
    ]


def test_function_call_and_response_round_trip() -> None:
    parsed = codec.parse(data_bytes("gemini", "generate_tool_call.json"))
    [call] = parsed.tool_calls
    body = body_of(
        Request(
            [
                Message("user", "Weather in SF?"),
                Message("assistant", "", tool_calls=[call]),
                Message("tool", "sunny, 18C", tool_call_id=call.id, name="weather"),
                Message("tool", "no alerts", tool_call_id="call_1", name="alerts"),
            ]
        )
    )
    signature = data_json("gemini", "generate_tool_call.json")["candidates"][0]["content"]["parts"][
        0
    ]["thoughtSignature"]
    assert body["contents"][1] == {
        "role": "model",
        "parts": [
            {
                "functionCall": {"name": "weather", "args": {"location": "San Francisco"}},
                "thoughtSignature": signature,
            }
        ],  # Gemini 3 wants it back with the call
    }
    assert body["contents"][2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "weather", "response": {"result": "sunny, 18C"}}},
            {"functionResponse": {"name": "alerts", "response": {"result": "no alerts"}}},
        ],
    }
    assert len(body["contents"]) == 3


def test_gemini3_function_call_replay_keeps_its_thought_signature() -> None:
    recorded = data_json("gemini", "generate_tool_call.json")
    signature = recorded["candidates"][0]["content"]["parts"][0]["thoughtSignature"]
    parsed = codec.parse(data_bytes("gemini", "generate_tool_call.json"))
    body = body_of(
        Request([Message("user", "SF?"), Message("assistant", "", tool_calls=parsed.tool_calls)])
    )
    part = body["contents"][1]["parts"][0]
    assert part.get("thoughtSignature") == signature


def test_images_inline_and_file_data() -> None:
    parts = [
        TextPart("describe"),
        ImagePart(data="iVBORw0KGgo=", media_type="image/png"),
        ImagePart(url="gs://bucket/cat.jpg", media_type="image/jpeg"),
    ]
    [content] = body_of(Request([Message("user", parts)]))["contents"]
    assert content["parts"] == [
        {"text": "describe"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "gs://bucket/cat.jpg"}},
    ]


def test_structured_output_uses_response_json_schema() -> None:
    schema = {
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/I"}}},
        "$defs": {"I": {"type": "object", "properties": {"n": {"type": "string"}}}},
    }
    body = body_of(Request([Message("user", "x")], output_schema=OutputSchema("Out", schema)))
    assert body["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,
    }


def test_extras_merged_last() -> None:
    body = body_of(
        Request(
            [Message("user", "x")],
            temperature=0.1,
            extra={
                "safetySettings": [
                    {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}
                ]
            },
        )
    )
    assert body["safetySettings"][0]["threshold"] == "BLOCK_NONE"
    assert body["generationConfig"] == {"temperature": 0.1}


def test_target_headers_override() -> None:
    wire = build(Request([Message("user", "x")]), headers={"x-goog-user-project": "p1"})
    assert wire.headers["x-goog-user-project"] == "p1"


# ---- parse -------------------------------------------------------------------------------


def test_parse_recorded_text() -> None:
    p = codec.parse(data_bytes("gemini", "generate_text.json"))
    assert (
        p.text == "There are **3** r's in strawberry.\n\nHere is the breakdown: st**r**awbe**rr**y."
    )
    assert p.tool_calls == []
    assert p.finish_reason == "stop"
    assert (p.usage.input_tokens, p.usage.output_tokens) == (9, 28 + 244)  # thoughts are output
    assert p.model == "gemini-3-pro-preview"
    assert p.id == "Un6LacrVMcjUxs0PmJfWoQc"


def test_parse_recorded_function_call() -> None:
    p = codec.parse(data_bytes("gemini", "generate_tool_call.json"))
    assert p.text == ""
    assert [(c.id, c.name, c.arguments) for c in p.tool_calls] == [
        ("call_0", "weather", {"location": "San Francisco"})
    ]
    assert p.finish_reason == "tool_calls"  # Gemini says STOP; a call makes it tool_calls
    assert (p.usage.input_tokens, p.usage.output_tokens) == (29, 15 + 893)


def test_parse_recorded_prompt_block() -> None:
    p = codec.parse(data_bytes("gemini", "generate_prompt_blocked.json"))
    assert p.text == ""
    assert p.finish_reason == "content_filter"
    assert p.usage.input_tokens == 9


def test_thought_parts_are_not_answer_text() -> None:
    data = data_json("gemini", "generate_text.json")
    parts = data["candidates"][0]["content"]["parts"]
    parts.insert(0, {"text": "**Counting letters**\n\nI look at each r.", "thought": True})
    assert codec.parse(orjson.dumps(data)).text.startswith("There are **3** r's")


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("MALFORMED_FUNCTION_CALL", "other"),
    ],
)
def test_finish_reason_mapping(reason: str, expected: str) -> None:
    data = data_json("gemini", "generate_text.json")
    data["candidates"][0]["finishReason"] = reason
    assert codec.parse(orjson.dumps(data)).finish_reason == expected


def test_parse_error_body_and_garbage() -> None:
    with pytest.raises(RateLimitError):
        codec.parse(data_bytes("gemini", "error_429_resource_exhausted.json"))
    with pytest.raises(InvalidResponseError):
        codec.parse(b"[1, 2]")
    with pytest.raises(InvalidResponseError):
        codec.parse(b"")


# ---- streams -----------------------------------------------------------------------------

STREAMS = ["stream_text.jsonl", "stream_tool_call.jsonl", "stream_prompt_blocked.jsonl"]


@pytest.mark.parametrize("name", STREAMS)
def test_stream_equals_parse_of_the_equivalent_response(name: str) -> None:
    assert_stream_is_the_equivalent_response(
        codec, gemini_sse(name), gemini_equivalent(jsonl_payloads("gemini", name)))


@pytest.mark.parametrize("name", STREAMS)
def test_stream_same_events_whatever_the_chunking(name: str) -> None:
    assert_same_events_whatever_the_chunking(codec, gemini_sse(name), 211)


def test_recorded_text_stream() -> None:
    events, p = run_stream(codec, [gemini_sse("stream_text.jsonl")])
    assert [e.text for e in events if isinstance(e, TextDelta) and e.text] == [
        "There are **3**",
        ' "r"s in strawberry.\n\nst**r**awbe**rr**y',
    ]
    assert p.finish_reason == "stop"
    assert (p.usage.input_tokens, p.usage.output_tokens) == (9, 23 + 185)
    assert p.id == "bH6LaZW8Fp_3nsEPqtaSwQ4"
    assert p.model == "gemini-3-pro-preview"


def test_recorded_tool_call_stream() -> None:
    events, p = run_stream(codec, [gemini_sse("stream_tool_call.jsonl")])
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert deltas == [ToolCallDelta(0, "call_0", "weather", '{"location":"San Francisco"}')]
    assert p.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in p.tool_calls] == [
        ("weather", {"location": "San Francisco"})
    ]


def test_stream_emits_no_empty_text_deltas() -> None:
    for name in ("stream_text.jsonl", "stream_tool_call.jsonl"):
        events, _ = run_stream(codec, [gemini_sse(name)])
        assert all(e.text for e in events if isinstance(e, TextDelta))


def test_two_function_calls_in_one_stream_get_two_indexes() -> None:
    payload = json.loads(jsonl_payloads("gemini", "stream_tool_call.jsonl")[0])
    second = json.loads(json.dumps(payload))
    second["candidates"][0]["content"]["parts"][0]["functionCall"] = {
        "name": "weather",
        "args": {"location": "Tokyo"},
    }
    raw = b"".join(b"data: " + orjson.dumps(x) + b"\n\n" for x in (payload, second))
    raw += b"data: " + jsonl_payloads("gemini", "stream_tool_call.jsonl")[1] + b"\n\n"
    _, p = run_stream(codec, [raw])
    assert [(c.id, c.arguments["location"]) for c in p.tool_calls] == [
        ("call_0", "San Francisco"),
        ("call_1", "Tokyo"),
    ]


def test_stream_without_finish_reason_raises_connection_error() -> None:
    first = jsonl_payloads("gemini", "stream_text.jsonl")[:2]
    raw = b"".join(b"data: " + p + b"\n\n" for p in first)
    with pytest.raises(APIConnectionError):
        run_stream(codec, one_byte_at_a_time(raw))


def test_in_stream_error_frame_raises_typed_error() -> None:
    decoder = codec.decoder()
    decoder.feed(SSEEvent("message", jsonl_payloads("gemini", "stream_text.jsonl")[0].decode()))
    with pytest.raises(OverloadedError) as info:
        decoder.feed(
            SSEEvent("message", data_bytes("gemini", "error_503_unavailable.json").decode())
        )
    assert info.value.status == 503


def test_in_stream_resource_exhausted_is_a_rate_limit() -> None:
    with pytest.raises(RateLimitError):
        codec.decoder().feed(
            SSEEvent("message", data_bytes("gemini", "error_429_resource_exhausted.json").decode())
        )


@pytest.mark.parametrize(
    "name", ["stream_thoughts_then_raw_503.txt", "stream_2_0_flash_then_raw_503.txt"]
)
def test_recorded_mid_stream_raw_503_raises_overloaded(name: str) -> None:
    with pytest.raises(OverloadedError):
        run_stream(codec, [data_bytes("gemini", name)])


def test_recorded_mid_stream_raw_503_without_finish_is_at_least_a_failure() -> None:
    with pytest.raises(ProviderError):
        run_stream(codec, [data_bytes("gemini", "stream_thoughts_then_raw_503.txt")])


def test_decoder_rejects_non_json() -> None:
    with pytest.raises(InvalidResponseError):
        codec.decoder().feed(SSEEvent("message", "{oops"))


def test_parse_bad_request_error_payload() -> None:
    with pytest.raises(BadRequestError):
        codec.parse(data_bytes("gemini", "error_400_invalid_argument.json"))


def test_tool_call_message_without_text_has_only_function_call_parts() -> None:
    body = body_of(Request([Message("assistant", "", tool_calls=[ToolCall("c", "f", {"a": 1})])]))
    assert body["contents"] == [
        {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"a": 1}}}]}
    ]
