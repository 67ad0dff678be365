"""OpenAI Chat Completions codec on recorded openai-python payloads (see data/SOURCES.md)."""

from __future__ import annotations

import json

import orjson
import pytest
from codec_support import (
    assert_same_events_whatever_the_chunking,
    assert_stream_is_the_equivalent_response,
    data_bytes,
    one_byte_at_a_time,
    openai_equivalent,
    run_stream,
    target,
)

from agent._sse import SSEEvent
from agent.errors import APIConnectionError, InvalidResponseError, ServerError
from agent.providers import OpenAICodec, codec_for
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
from agent.wire.carry import uncarried
from agent.wire.openai_chat import strict_schema

codec = OpenAICodec()
WEATHER = ToolSpec(
    "get_weather",
    "Get the weather",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def body_of(request: Request, **target_kw: object) -> dict:
    wire = codec.build(request, target("openai", **target_kw))  # type: ignore[arg-type]
    return json.loads(wire.body)


# ---- build -------------------------------------------------------------------------------


def test_codec_for_maps_every_openai_compatible_provider() -> None:
    for name in ("openai", "deepseek", "groq", "openrouter", "ollama", "vllm"):
        assert codec_for(name).wire == "openai"


def test_url_method_and_bearer_auth() -> None:
    wire = codec.build(Request([Message("user", "hi")]), target("openai"))
    assert wire.method == "POST"
    assert wire.url == "https://api.openai.com/v1/chat/completions"
    assert wire.headers["authorization"] == "Bearer sk-test-key-123456"
    assert wire.headers["content-type"] == "application/json"
    assert wire.stream is False


def test_trailing_slash_in_base_url_and_no_key_means_no_auth_header() -> None:
    wire = codec.build(
        Request([Message("user", "hi")]),
        target("ollama", key=None, base_url="http://localhost:11434/v1/"),
    )
    assert wire.url == "http://localhost:11434/v1/chat/completions"
    assert "authorization" not in wire.headers


def test_target_headers_are_added_last() -> None:
    wire = codec.build(
        Request([Message("user", "hi")]),
        target("openrouter", headers={"HTTP-Referer": "https://example.org", "x-org": "o"}),
    )
    assert wire.headers["HTTP-Referer"] == "https://example.org"
    assert wire.headers["x-org"] == "o"


def test_system_first_then_messages_and_sampling_fields() -> None:
    body = body_of(
        Request([Message("user", "hi")], system="be brief", temperature=0.2, stop=["END"])
    )
    assert body["model"] == "m-1"
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert body["temperature"] == 0.2
    assert body["stop"] == ["END"]
    assert "stream" not in body and "tools" not in body and "response_format" not in body


def test_max_tokens_key_per_provider() -> None:
    req = Request([Message("user", "hi")], max_tokens=77)
    wire = codec.build(req, target("openai"))
    assert json.loads(wire.body)["max_completion_tokens"] == 77
    wire = codec.build(req, target("deepseek"))
    assert json.loads(wire.body)["max_tokens"] == 77
    assert "max_tokens" not in body_of(Request([Message("user", "hi")]))


def test_tools_in_function_format() -> None:
    body = body_of(Request([Message("user", "weather?")], tools=[WEATHER]))
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the weather",
                "parameters": WEATHER.parameters,
            },
        }
    ]


def test_tool_call_round_trip_matches_the_recorded_completion() -> None:
    # The assistant turn as the API returned it (recorded), then our tool results.
    recorded = json.loads(data_bytes("openai", "chat_completion_tool_calls.json"))
    parsed = codec.parse(data_bytes("openai", "chat_completion_tool_calls.json"))
    messages = [
        Message("user", "What's the weather like in Edinburgh?"),
        Message("assistant", "", tool_calls=parsed.tool_calls),
        Message("tool", "12C and raining", tool_call_id=parsed.tool_calls[0].id),
        Message("tool", '{"price": 227.5}', tool_call_id=parsed.tool_calls[1].id),
    ]
    sent = body_of(Request(messages))["messages"]
    assistant = sent[1]
    assert assistant["role"] == "assistant" and assistant["content"] is None
    original = recorded["choices"][0]["message"]["tool_calls"]
    assert [(c["id"], c["type"], c["function"]["name"]) for c in assistant["tool_calls"]] == [
        (c["id"], c["type"], c["function"]["name"]) for c in original
    ]
    # arguments are re-serialized: the same JSON, not necessarily the same bytes
    assert [json.loads(c["function"]["arguments"]) for c in assistant["tool_calls"]] == [
        json.loads(c["function"]["arguments"]) for c in original
    ]
    assert sent[2:] == [
        {
            "role": "tool",
            "tool_call_id": "call_fdNz3vOBKYgOIpMdWotB9MjY",
            "content": "12C and raining",
        },
        {
            "role": "tool",
            "tool_call_id": "call_h1DWI1POMJLb0KwIyQHWXD4p",
            "content": '{"price": 227.5}',
        },
    ]


def test_assistant_text_with_tool_calls_keeps_its_text() -> None:
    call = ToolCall("call_1", "get_weather", {"city": "Oslo"})
    [msg] = body_of(Request([Message("assistant", "Let me check.", tool_calls=[call])]))["messages"]
    assert msg["content"] == "Let me check."
    assert msg["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city":"Oslo"}',
    }


def test_images_as_image_url_parts() -> None:
    parts = [
        TextPart("what is this?"),
        ImagePart(url="https://example.org/cat.png"),
        ImagePart(data="iVBORw0KGgo=", media_type="image/png"),
    ]
    [msg] = body_of(Request([Message("user", parts)]))["messages"]
    assert msg["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.org/cat.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]


def test_structured_output_strict_when_schema_allows_it() -> None:
    # The schema openai-python sends for `class Location(BaseModel)` in its recorded test.
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "temperature": {"type": "number"},
            "units": {"type": "string", "enum": ["c", "f"]},
        },
        "required": ["city", "temperature", "units"],
    }
    body = body_of(
        Request([Message("user", "SF?")], output_schema=OutputSchema("Location", schema))
    )
    rf = body["response_format"]
    assert rf["type"] == "json_schema"
    assert rf["json_schema"]["name"] == "Location"
    assert rf["json_schema"]["strict"] is True
    assert rf["json_schema"]["schema"] == {**schema, "additionalProperties": False}
    assert "additionalProperties" not in schema  # the caller's schema is not mutated


def test_structured_output_not_strict_when_a_property_is_optional() -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "note": {"type": "string"}},
        "required": ["city"],
    }
    rf = body_of(Request([Message("user", "SF?")], output_schema=OutputSchema("Loc", schema)))[
        "response_format"
    ]
    assert rf["json_schema"] == {"name": "Loc", "schema": schema, "strict": False}


def test_strict_schema_closes_nested_objects_and_defs() -> None:
    schema = {
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"}}},
        "required": ["items"],
        "$defs": {
            "Item": {
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "required": ["name"],
            }
        },
    }
    closed = strict_schema(schema)
    assert closed is not None
    assert closed["additionalProperties"] is False
    assert closed["$defs"]["Item"]["additionalProperties"] is False


def test_strict_schema_refuses_open_objects() -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "required": ["name"],
        "additionalProperties": True,
    }
    assert strict_schema(schema) is None


def test_strict_schema_refuses_free_form_dict_fields() -> None:
    import pydantic

    class Scores(pydantic.BaseModel):
        name: str
        scores: dict[str, int]

    assert strict_schema(Scores.model_json_schema()) is None


def test_stream_flags_and_include_usage() -> None:
    wire = codec.build(Request([Message("user", "hi")], stream=True), target("openai"))
    body = json.loads(wire.body)
    assert wire.stream is True
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_extra_fields_are_merged_last() -> None:
    body = body_of(
        Request(
            [Message("user", "hi")],
            temperature=0.5,
            extra={"temperature": 0.9, "seed": 7, "logprobs": True},
        )
    )
    assert body["temperature"] == 0.9 and body["seed"] == 7 and body["logprobs"] is True


def test_system_role_message_inside_the_list_is_kept() -> None:
    body = body_of(Request([Message("system", "rules"), Message("user", "hi")]))
    assert body["messages"][0] == {"role": "system", "content": "rules"}


# ---- parse -------------------------------------------------------------------------------


def test_parse_recorded_text_completion() -> None:
    p = codec.parse(data_bytes("openai", "chat_completion_text.json"))
    assert p.text.startswith("I'm unable to provide real-time weather updates.")
    assert p.tool_calls == []
    assert p.finish_reason == "stop"
    assert (p.usage.input_tokens, p.usage.output_tokens) == (14, 37)
    assert p.model == "gpt-4o-2024-08-06"
    assert p.id == "chatcmpl-ABfvaueLEMLNYbT8YzpJxsmiQ6HSY"
    assert p.raw["system_fingerprint"] == "fp_b40fb1c6fb"


def test_parse_recorded_structured_completion() -> None:
    p = codec.parse(data_bytes("openai", "chat_completion_structured.json"))
    assert json.loads(p.text) == {"city": "San Francisco", "temperature": 65, "units": "f"}
    assert p.finish_reason == "stop"


def test_parse_recorded_parallel_tool_calls() -> None:
    p = codec.parse(data_bytes("openai", "chat_completion_tool_calls.json"))
    assert p.text == ""
    assert p.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.arguments) for c in p.tool_calls] == [
        (
            "call_fdNz3vOBKYgOIpMdWotB9MjY",
            "GetWeatherArgs",
            {"city": "Edinburgh", "country": "GB", "units": "c"},
        ),
        (
            "call_h1DWI1POMJLb0KwIyQHWXD4p",
            "get_stock_price",
            {"ticker": "AAPL", "exchange": "NASDAQ"},
        ),
    ]
    assert (p.usage.input_tokens, p.usage.output_tokens) == (149, 60)


def test_parse_recorded_length_finish() -> None:
    p = codec.parse(data_bytes("openai", "chat_completion_length.json"))
    assert p.text == '{"'
    assert p.finish_reason == "length"
    assert p.usage.output_tokens == 1


def test_parse_recorded_refusal_is_the_refusal_text_and_a_content_filter_finish() -> None:
    # A refusal comes with no content: its words are the answer, and the finish says why
    # (an Anthropic caller then sees stop_reason "refusal").
    p = codec.parse(data_bytes("openai", "chat_completion_refusal.json"))
    assert p.text == "I'm very sorry, but I can't assist with that."
    assert p.finish_reason == "content_filter"


def test_a_streamed_refusal_is_the_answer_s_text_and_a_content_filter_finish() -> None:
    # Tried: a stream whose deltas carry `refusal` (structured output declined), in the
    # shape OpenAI streams it: the same answer as the plain path's.
    head = '{"id":"chatcmpl-r","object":"chat.completion.chunk","model":"gpt-4o","choices":'
    frames = [
        '[{"index":0,"delta":{"role":"assistant","content":null,"refusal":""},"finish_reason":null}]',
        '[{"index":0,"delta":{"refusal":"I\'m very sorry, "},"finish_reason":null}]',
        '[{"index":0,"delta":{"refusal":"but I can\'t assist with that."},"finish_reason":null}]',
        '[{"index":0,"delta":{},"finish_reason":"stop"}]',
    ]
    raw = "".join(f"data: {head}{f}}}\n\n" for f in frames) + "data: [DONE]\n\n"
    events, p = run_stream(codec, one_byte_at_a_time(raw.encode()))
    assert events == [TextDelta("I'm very sorry, "), TextDelta("but I can't assist with that.")]
    assert p.text == "I'm very sorry, but I can't assist with that."
    assert p.finish_reason == "content_filter"


def test_more_than_four_stop_sequences_keep_the_first_four() -> None:
    # Tried: six stop sequences, which OpenAI refuses with a 400: the first four are sent,
    # and the rest is named as what this format could not carry.
    request = Request([Message("user", "hi")], stop=["a", "b", "c", "d", "e", "f"])
    assert body_of(request)["stop"] == ["a", "b", "c", "d"]
    assert uncarried(request, "openai") == {"stop[4:]"}
    assert uncarried(request, "anthropic") == set()
    four = Request([Message("user", "hi")], stop=["a", "b", "c", "d"])
    assert body_of(four)["stop"] == ["a", "b", "c", "d"] and uncarried(four, "openai") == set()


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("tool_calls", "tool_calls"),
        ("function_call", "tool_calls"),
        ("content_filter", "content_filter"),
        ("something_new", "other"),
        (None, "other"),
    ],
)
def test_finish_reason_mapping(reason: str | None, expected: str) -> None:
    data = json.loads(data_bytes("openai", "chat_completion_text.json"))
    data["choices"][0]["finish_reason"] = reason
    assert codec.parse(orjson.dumps(data)).finish_reason == expected


def test_parse_broken_tool_arguments_are_kept_raw() -> None:
    data = json.loads(data_bytes("openai", "chat_completion_tool_calls.json"))
    data["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = '{"city": "Edin'
    p = codec.parse(orjson.dumps(data))
    assert p.tool_calls[0].arguments == {"_raw": '{"city": "Edin'}


def test_parse_in_band_error_and_garbage() -> None:
    with pytest.raises(ServerError):
        codec.parse(b'{"error": {"message": "boom", "type": "server_error", "code": null}}')
    with pytest.raises(InvalidResponseError):
        codec.parse(b"<html>502 Bad Gateway</html>")
    with pytest.raises(InvalidResponseError):
        codec.parse(b'{"object": "list", "data": []}')


# ---- streams -----------------------------------------------------------------------------

STREAMS = [
    "stream_structured_include_usage.sse",
    "stream_parallel_tool_calls.sse",
    "stream_length.sse",
]


@pytest.mark.parametrize("name", STREAMS)
def test_stream_equals_parse_of_the_equivalent_completion(name: str) -> None:
    assert_stream_is_the_equivalent_response(
        codec, data_bytes("openai", name), openai_equivalent(data_bytes("openai", name)))


@pytest.mark.parametrize("name", STREAMS)
def test_stream_same_events_whatever_the_chunking(name: str) -> None:
    assert_same_events_whatever_the_chunking(codec, data_bytes("openai", name), 333)


def test_recorded_include_usage_stream_details() -> None:
    events, p = run_stream(codec, [data_bytes("openai", "stream_structured_include_usage.sse")])
    # the recorded first chunk has content "": no empty delta is emitted for it
    assert all(isinstance(e, TextDelta) and e.text for e in events)
    assert json.loads(p.text) == {"city": "San Francisco", "temperature": 68, "units": "f"}
    assert (p.usage.input_tokens, p.usage.output_tokens) == (17, 14)
    assert p.id == "chatcmpl-9tXji2y8kKxlOO3muVvfdJ7ECJVlD"
    assert p.model == "gpt-4o-2024-08-06"
    assert p.finish_reason == "stop"


def test_recorded_parallel_tool_call_stream_events() -> None:
    events, p = run_stream(codec, [data_bytes("openai", "stream_parallel_tool_calls.sse")])
    assert all(isinstance(e, ToolCallDelta) for e in events)
    starts = [e for e in events if e.name]
    assert [(e.index, e.id, e.name) for e in starts] == [
        (0, "call_lQnnsesjFMWMQ5IeWPHzR4th", "GetWeatherArgs"),
        (1, "call_2xjOUgaCdiwAcl9ZBL9LyMUU", "get_stock_price"),
    ]
    assert [c.arguments for c in p.tool_calls] == [
        {"city": "Edinburgh", "country": "UK", "units": "c"},
        {"ticker": "AAPL", "exchange": "NASDAQ"},
    ]
    assert p.finish_reason == "tool_calls"
    assert (p.usage.input_tokens, p.usage.output_tokens) == (149, 60)


def test_stream_cut_before_finish_raises_connection_error() -> None:
    raw = data_bytes("openai", "stream_parallel_tool_calls.sse")
    cut = raw[: raw.index(b'"finish_reason":"tool_calls"')]
    cut = cut[: cut.rindex(b"\n\n") + 2]  # whole frames only, no finish chunk, no [DONE]
    with pytest.raises(APIConnectionError):
        run_stream(codec, [cut])


def test_stream_cut_in_the_middle_of_a_frame_is_not_a_silent_success() -> None:
    raw = data_bytes("openai", "stream_structured_include_usage.sse")
    with pytest.raises((APIConnectionError, InvalidResponseError)):
        run_stream(codec, [raw[: len(raw) // 2]])


def test_stream_with_done_but_no_finish_reason_is_complete() -> None:
    raw = data_bytes("openai", "stream_structured_include_usage.sse")
    frames = [f for f in raw.split(b"\n\n") if f and b'"finish_reason":"stop"' not in f]
    _, p = run_stream(codec, [b"\n\n".join(frames) + b"\n\n"])
    assert p.finish_reason == "other"
    assert p.usage.output_tokens == 14


def test_in_stream_error_frame_raises_server_error() -> None:
    # go-openai#69: OpenAI sends `data: {"error": {...}}` inside a 200 stream.
    head = data_bytes("openai", "stream_structured_include_usage.sse").split(b"\n\n")[:3]
    raw = b"\n\n".join(head) + b"\n\n" + data_bytes("openai", "stream_error_frame.sse")
    with pytest.raises(ServerError) as info:
        run_stream(codec, one_byte_at_a_time(raw))
    assert "The server had an error processing your request" in info.value.message


def test_in_stream_error_with_numeric_code_uses_it_as_status() -> None:
    decoder = codec.decoder()
    with pytest.raises(Exception) as info:
        decoder.feed(SSEEvent("message", '{"error": {"message": "slow down", "code": 429}}'))
    assert type(info.value).__name__ == "RateLimitError"


def test_decoder_rejects_a_frame_that_is_not_json() -> None:
    with pytest.raises(InvalidResponseError):
        codec.decoder().feed(SSEEvent("message", "not json"))
