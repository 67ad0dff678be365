"""Anthropic Messages codec on recorded anthropic-sdk-python / docs payloads (data/SOURCES.md)."""

from __future__ import annotations

import json

import orjson
import pytest
from codec_support import (
    anthropic_equivalent,
    assert_same_events_whatever_the_chunking,
    assert_stream_is_the_equivalent_response,
    comparable,
    data_bytes,
    data_json,
    one_byte_at_a_time,
    run_stream,
    target,
    to_crlf,
)

from agent._sse import SSEEvent
from agent.errors import (
    APIConnectionError,
    AuthenticationError,
    InvalidResponseError,
    OverloadedError,
    RateLimitError,
    ServerError,
)
from agent.providers import AnthropicCodec, codec_for
from agent.types import (
    ImagePart,
    Message,
    OutputSchema,
    ReasoningDelta,
    Request,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
)
from agent.wire.anthropic import DEFAULT_MAX_TOKENS, OUTPUT_TOOL

codec = AnthropicCodec()


def body_of(request: Request) -> dict:
    return json.loads(codec.build(request, target("anthropic")).body)


# ---- build -------------------------------------------------------------------------------


def test_codec_for_anthropic() -> None:
    assert codec_for("anthropic").wire == "anthropic"


def test_url_version_and_x_api_key() -> None:
    wire = codec.build(Request([Message("user", "Hello")]), target("anthropic"))
    assert wire.method == "POST"
    assert wire.url == "https://api.anthropic.com/v1/messages"
    assert wire.headers["anthropic-version"] == "2023-06-01"
    assert wire.headers["x-api-key"] == "sk-test-key-123456"
    assert "authorization" not in wire.headers


def test_no_key_no_auth_header_and_base_url_slash() -> None:
    wire = codec.build(
        Request([Message("user", "Hello")]),
        target("anthropic", key=None, base_url="http://proxy.local:8080/"),
    )
    assert wire.url == "http://proxy.local:8080/v1/messages"
    assert "x-api-key" not in wire.headers
    assert wire.headers["anthropic-version"] == "2023-06-01"


def test_max_tokens_default_and_explicit() -> None:
    assert body_of(Request([Message("user", "Hello")]))["max_tokens"] == DEFAULT_MAX_TOKENS
    assert body_of(Request([Message("user", "Hello")], max_tokens=256))["max_tokens"] == 256


def test_system_is_top_level_and_sampling_fields() -> None:
    body = body_of(
        Request([Message("user", "Hello")], system="be brief", temperature=0.1, stop=["END"])
    )
    assert body["system"] == "be brief"
    assert body["messages"] == [{"role": "user", "content": "Hello"}]
    assert body["temperature"] == 0.1
    assert body["stop_sequences"] == ["END"]
    assert "stream" not in body and "tools" not in body and "tool_choice" not in body


def test_system_message_inside_the_list_becomes_a_user_turn() -> None:
    body = body_of(Request([Message("system", "rules"), Message("user", "hi")]))
    assert body["messages"][0] == {"role": "user", "content": "rules"}
    assert "system" not in body


def test_tool_round_trip_matches_the_recorded_request() -> None:
    """anthropic-sdk-python's recorded tool-runner exchange: the second request, which the
    API accepted, is rebuilt from our normalized messages."""
    recorded = data_json("anthropic", "request_tool_round_trip.json")
    first = codec.parse(data_bytes("anthropic", "message_tool_use.json"))
    tool = recorded["tools"][0]
    request = Request(
        [
            Message("user", "What's the weather in SF in Celsius?"),
            Message("assistant", "", tool_calls=first.tool_calls),
            Message(
                "tool",
                recorded["messages"][2]["content"][0]["content"],
                tool_call_id=first.tool_calls[0].id,
                name="get_weather",
            ),
        ],
        max_tokens=1024,
        tools=[ToolSpec(tool["name"], tool["description"], tool["input_schema"])],
    )
    wire = codec.build(request, target("anthropic", model="claude-haiku-4-5"))
    assert json.loads(wire.body) == recorded


def test_tool_results_of_one_turn_are_merged_in_one_user_message() -> None:
    calls = [ToolCall("toolu_1", "a", {}), ToolCall("toolu_2", "b", {"x": 1})]
    body = body_of(
        Request(
            [
                Message("user", "go"),
                Message("assistant", "Calling both.", tool_calls=calls),
                Message("tool", "A done", tool_call_id="toolu_1"),
                Message("tool", "B done", tool_call_id="toolu_2"),
                Message("user", "thanks"),
            ]
        )
    )
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Calling both."},
            {"type": "tool_use", "id": "toolu_1", "name": "a", "input": {}},
            {"type": "tool_use", "id": "toolu_2", "name": "b", "input": {"x": 1}},
        ],
    }
    assert body["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "A done"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "B done"},
        ],
    }
    assert body["messages"][3] == {"role": "user", "content": "thanks"}


def test_images_url_and_base64_sources() -> None:
    parts = [
        TextPart("what is this?"),
        ImagePart(url="https://example.org/cat.png"),
        ImagePart(data="/9j/4AAQ", media_type="image/jpeg"),
    ]
    [msg] = body_of(Request([Message("user", parts)]))["messages"]
    assert msg["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image", "source": {"type": "url", "url": "https://example.org/cat.png"}},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"},
        },
    ]


def test_tools_and_structured_output_by_forced_tool() -> None:
    spec = ToolSpec("get_weather", "Weather", {"type": "object", "properties": {}})
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    body = body_of(
        Request([Message("user", "SF?")], tools=[spec], output_schema=OutputSchema("Loc", schema))
    )
    assert body["tools"] == [
        {"name": "get_weather", "description": "Weather", "input_schema": spec.parameters},
        {
            "name": OUTPUT_TOOL,
            "description": "Respond with the Loc object.",
            "input_schema": schema,
        },
    ]
    assert body["tool_choice"] == {"type": "tool", "name": OUTPUT_TOOL}


def test_stream_flag_and_extras_merged_last() -> None:
    wire = codec.build(
        Request(
            [Message("user", "Hello")],
            stream=True,
            extra={"max_tokens": 20000, "thinking": {"type": "enabled", "budget_tokens": 16000}},
        ),
        target("anthropic"),
    )
    body = json.loads(wire.body)
    assert wire.stream is True and body["stream"] is True
    assert body["max_tokens"] == 20000
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 16000}


# ---- parse -------------------------------------------------------------------------------


def test_parse_recorded_tool_use_message() -> None:
    p = codec.parse(data_bytes("anthropic", "message_tool_use.json"))
    assert p.text == ""
    assert [(c.id, c.name, c.arguments) for c in p.tool_calls] == [
        (
            "toolu_01RVA12CSF1d8nekhZFR7Bcb",
            "get_weather",
            {"location": "San Francisco, CA", "units": "c"},
        )
    ]
    assert p.finish_reason == "tool_calls"
    assert (p.usage.input_tokens, p.usage.output_tokens) == (659, 74)
    assert p.model == "claude-haiku-4-5-20251001"
    assert p.id == "msg_01RbvNtiaJHKHJF3hmfMWMRU"


def test_parse_recorded_text_message() -> None:
    p = codec.parse(data_bytes("anthropic", "message_text.json"))
    assert p.text.startswith("The weather in San Francisco, CA is currently **sunny**")
    assert "20°C" in p.text
    assert p.finish_reason == "stop"
    assert (p.usage.input_tokens, p.usage.output_tokens) == (763, 31)


def test_input_usage_counts_cache_reads_and_writes() -> None:
    data = data_json("anthropic", "message_text.json")
    data["usage"].update(cache_read_input_tokens=1000, cache_creation_input_tokens=200)
    assert codec.parse(orjson.dumps(data)).usage.input_tokens == 763 + 1000 + 200


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("model_context_window_exceeded", "length"),
        (None, "other"),
    ],
)
def test_stop_reason_mapping(reason: str | None, expected: str) -> None:
    data = data_json("anthropic", "message_tool_use.json")
    data["stop_reason"] = reason
    assert codec.parse(orjson.dumps(data)).finish_reason == expected


def test_parse_structured_output_tool_becomes_text() -> None:
    data = data_json("anthropic", "message_tool_use.json")
    data["content"][0]["name"] = OUTPUT_TOOL
    p = codec.parse(orjson.dumps(data))
    assert json.loads(p.text) == {"location": "San Francisco, CA", "units": "c"}
    assert p.tool_calls == []
    assert p.finish_reason == "stop"


def test_parse_error_payload_and_garbage() -> None:
    with pytest.raises(OverloadedError):
        codec.parse(data_bytes("anthropic", "error_529_overloaded.json"))
    with pytest.raises(InvalidResponseError):
        codec.parse(b'{"type": "completion", "completion": "x"}')
    with pytest.raises(InvalidResponseError):
        codec.parse(b"upstream connect error")


# ---- streams -----------------------------------------------------------------------------

STREAMS = [
    "stream_basic_no_final_newline.sse",
    "stream_tool_use.sse",
    "stream_tool_use_cumulative_usage.sse",
    "stream_text_after_tool_result.sse",
    "stream_docs_thinking.sse",
]


@pytest.mark.parametrize("name", STREAMS)
def test_stream_equals_parse_of_the_equivalent_message(name: str) -> None:
    assert_stream_is_the_equivalent_response(
        codec, data_bytes("anthropic", name), anthropic_equivalent(data_bytes("anthropic", name)))


@pytest.mark.parametrize("name", STREAMS)
def test_stream_same_events_whatever_the_chunking(name: str) -> None:
    assert_same_events_whatever_the_chunking(codec, data_bytes("anthropic", name), 97)


def test_recorded_basic_stream() -> None:
    events, p = run_stream(codec, [data_bytes("anthropic", "stream_basic_no_final_newline.sse")])
    assert events == [TextDelta("Hello"), TextDelta(" there"), TextDelta("!")]
    assert p.text == "Hello there!"
    assert p.finish_reason == "stop"
    assert (p.usage.input_tokens, p.usage.output_tokens) == (11, 6)  # message_delta is cumulative
    assert p.id == "msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK"
    assert p.model == "claude-3-opus-latest"


def test_recorded_tool_use_stream_events() -> None:
    events, p = run_stream(codec, [data_bytes("anthropic", "stream_tool_use.sse")])
    assert events[:2] == [
        TextDelta("I"),
        TextDelta("'ll check the current weather in Paris for you."),
    ]
    assert events[2] == ToolCallDelta(0, "toolu_01NRLabsLyVHZPKxbKvkfSMn", "get_weather")
    assert [e.arguments for e in events[3:] if e.arguments] == ['{"locati', 'on": "P', "ar", 'is"}']
    assert all(e.index == 0 for e in events[2:])
    assert [(c.id, c.name, c.arguments) for c in p.tool_calls] == [
        ("toolu_01NRLabsLyVHZPKxbKvkfSMn", "get_weather", {"location": "Paris"})
    ]
    assert p.finish_reason == "tool_calls"
    assert (p.usage.input_tokens, p.usage.output_tokens) == (377, 65)


def test_recorded_thinking_stream_is_reasoning_then_the_answer() -> None:
    # Tried: Anthropic's documented thinking stream. The thinking deltas are the answer's
    # reasoning (what another format's caller gets as a summary), never its text.
    events, p = run_stream(codec, [data_bytes("anthropic", "stream_docs_thinking.sse")])
    thought = [e.text for e in events if isinstance(e, ReasoningDelta)]
    assert thought[0].startswith("Let me solve this step by step")
    assert [e for e in events if not isinstance(e, ReasoningDelta)] == [
        TextDelta("27 * 453 = 12,231")
    ]
    assert p.reasoning == "".join(thought) and p.reasoning.endswith("= 12,231")
    assert p.text == "27 * 453 = 12,231"
    assert p.usage.input_tokens == 0 and p.usage.output_tokens == 0  # the docs example has none


def test_recorded_stream_stopped_by_max_tokens_inside_tool_input() -> None:
    _, p = run_stream(codec, [data_bytes("anthropic", "stream_max_tokens_inside_tool_input.sse")])
    assert p.finish_reason == "length"
    [call] = p.tool_calls
    assert call.name == "make_file"
    assert set(call.arguments) == {"_raw"}  # the input JSON was cut off: kept, not dropped
    assert call.arguments["_raw"].startswith('{"filename": "taxes.txt", "lines_of_text": [')
    assert p.text.endswith("Let me do that for you now.")
    assert (p.usage.input_tokens, p.usage.output_tokens) == (450, 124)


def test_structured_output_stream_becomes_text() -> None:
    """The recorded tool_use stream with its text block dropped and the tool renamed to the
    structured-output tool, as forced tool_choice produces it."""
    raw = data_bytes("anthropic", "stream_tool_use.sse").decode()
    frames = raw.split("\n\n")
    kept = [f for f in frames if '"index":0' not in f]  # drop text block 0 (start/deltas/stop)
    raw2 = (
        "\n\n".join(kept)
        .replace('"name":"get_weather"', f'"name":"{OUTPUT_TOOL}"')
        .replace('"index":1', '"index":0')
    )
    events, p = run_stream(codec, [raw2.encode()])
    assert all(isinstance(e, TextDelta) for e in events)
    assert json.loads(p.text) == {"location": "Paris"}
    assert p.tool_calls == []
    assert p.finish_reason == "stop"
    equivalent = codec.parse(orjson.dumps(anthropic_equivalent(raw2.encode())))
    assert json.loads(equivalent.text) == json.loads(p.text)
    assert equivalent.finish_reason == p.finish_reason


def test_server_tool_use_input_is_not_streamed_as_answer_text() -> None:
    raw = data_bytes("anthropic", "stream_docs_web_search_excerpt.sse")
    _, p = run_stream(codec, [raw])
    assert p.text == "I'll check the current weather in New York City for you."
    assert comparable(p) == comparable(codec.parse(orjson.dumps(anthropic_equivalent(raw))))


def test_stream_cut_before_message_stop_raises_connection_error() -> None:
    raw = data_bytes("anthropic", "stream_tool_use.sse")
    cut = raw[: raw.index(b"event: message_delta")]
    with pytest.raises(APIConnectionError):
        run_stream(codec, one_byte_at_a_time(cut))
    cut = raw[: raw.index(b"event: message_stop")]  # stop_reason seen, message_stop not
    with pytest.raises(APIConnectionError):
        run_stream(codec, [cut])


def test_empty_stream_raises_connection_error() -> None:
    with pytest.raises(APIConnectionError):
        run_stream(codec, [])


def test_in_stream_overloaded_error_event() -> None:
    raw = data_bytes("anthropic", "stream_basic_no_final_newline.sse")
    head = raw[: raw.index(b"event: content_block_stop")]
    raw = head + data_bytes("anthropic", "stream_error_event_docs.sse")
    with pytest.raises(OverloadedError) as info:
        run_stream(codec, one_byte_at_a_time(to_crlf(raw)))
    assert info.value.status == 529
    assert info.value.message == "Overloaded"


@pytest.mark.parametrize(
    ("kind", "cls", "status"),
    [
        ("rate_limit_error", RateLimitError, 429),
        ("authentication_error", AuthenticationError, 401),
        ("api_error", ServerError, 500),
    ],
)
def test_in_stream_error_types(kind: str, cls: type, status: int) -> None:
    decoder = codec.decoder()
    data = json.dumps({"type": "error", "error": {"type": kind, "message": "m"}})
    with pytest.raises(cls) as info:
        decoder.feed(SSEEvent("error", data))
    assert info.value.status == status


def test_ping_needs_no_json_and_unknown_events_are_ignored() -> None:
    decoder = codec.decoder()
    assert decoder.feed(SSEEvent("ping", "")) == []
    assert decoder.feed(SSEEvent("some_future_event", '{"type": "some_future_event"}')) == []
