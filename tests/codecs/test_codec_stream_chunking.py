"""Properties of every decoder on every recorded stream: chunking never matters, and a
stream cut anywhere before its terminal frame never passes for a complete answer."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from codec_support import (
    comparable,
    data_bytes,
    gemini_sse,
    run_stream,
    split_at,
    to_cr,
    to_crlf,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import APIConnectionError, InvalidResponseError, OverloadedError
from agent.providers import AnthropicCodec, GeminiCodec, OpenAICodec
from agent.types import TextDelta
from agent.wire.base import Codec, StreamReader

# name -> (codec, recorded bytes, marker of the frame that completes the stream)
STREAMS: dict[str, tuple[Codec, Callable[[], bytes], bytes]] = {
    "openai/structured_include_usage": (
        OpenAICodec(),
        lambda: data_bytes("openai", "stream_structured_include_usage.sse"),
        b'"finish_reason":"stop"',
    ),
    "openai/parallel_tool_calls": (
        OpenAICodec(),
        lambda: data_bytes("openai", "stream_parallel_tool_calls.sse"),
        b'"finish_reason":"tool_calls"',
    ),
    "openai/length": (
        OpenAICodec(),
        lambda: data_bytes("openai", "stream_length.sse"),
        b'"finish_reason":"length"',
    ),
    "anthropic/basic_no_final_newline": (
        AnthropicCodec(),
        lambda: data_bytes("anthropic", "stream_basic_no_final_newline.sse"),
        b'data: {"type":"message_stop"',
    ),
    "anthropic/tool_use": (
        AnthropicCodec(),
        lambda: data_bytes("anthropic", "stream_tool_use.sse"),
        b'data: {"type":"message_stop"',
    ),
    "anthropic/text_after_tool_result": (
        AnthropicCodec(),
        lambda: data_bytes("anthropic", "stream_text_after_tool_result.sse"),
        b'data: {"type":"message_stop"',
    ),
    "anthropic/docs_thinking": (
        AnthropicCodec(),
        lambda: data_bytes("anthropic", "stream_docs_thinking.sse"),
        b'data: {"type": "message_stop"',
    ),
    "gemini/text": (GeminiCodec(), lambda: gemini_sse("stream_text.jsonl"), b'"finishReason"'),
    "gemini/tool_call": (
        GeminiCodec(),
        lambda: gemini_sse("stream_tool_call.jsonl"),
        b'"finishReason"',
    ),
    "gemini/prompt_blocked": (
        GeminiCodec(),
        lambda: gemini_sse("stream_prompt_blocked.jsonl"),
        b'"blockReason"',
    ),
}

ENDINGS = {"lf": lambda b: b, "crlf": to_crlf, "cr": to_cr}


def terminal_end(raw: bytes, marker: bytes) -> int:
    """Where the line holding the completing frame's data ends (its JSON is whole there)."""
    at = raw.index(marker)
    end = raw.find(b"\n", at)
    return len(raw) if end < 0 else end


@settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    name=st.sampled_from(sorted(STREAMS)),
    ending=st.sampled_from(sorted(ENDINGS)),
    cuts=st.lists(st.integers(min_value=1, max_value=8000), max_size=80),
)
def test_any_chunking_and_line_ending_gives_the_same_events_and_answer(
    name: str, ending: str, cuts: list[int]
) -> None:
    codec, recorded, _ = STREAMS[name]
    raw = recorded()
    expected_events, expected = run_stream(codec, [raw])
    events, parsed = run_stream(codec, split_at(ENDINGS[ending](raw), cuts))
    assert events == expected_events
    assert comparable(parsed) == comparable(expected)


@settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    name=st.sampled_from(sorted(STREAMS)),
    ending=st.sampled_from(sorted(ENDINGS)),
    data=st.data(),
)
def test_a_stream_cut_before_its_terminal_frame_never_looks_complete(
    name: str, ending: str, data: st.DataObject
) -> None:
    codec, recorded, marker = STREAMS[name]
    raw = recorded()
    cut = data.draw(st.integers(min_value=0, max_value=terminal_end(raw, marker) - 1), "cut")
    cuts = data.draw(st.lists(st.integers(min_value=1, max_value=cut + 1), max_size=10), "cuts")
    prefix = ENDINGS[ending](raw[:cut])
    with pytest.raises((APIConnectionError, InvalidResponseError)):
        run_stream(codec, split_at(prefix, cuts))


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_the_full_recording_completes(name: str) -> None:
    codec, recorded, marker = STREAMS[name]
    raw = recorded()
    _, parsed = run_stream(codec, [raw[: terminal_end(raw, marker)]])
    assert parsed.finish_reason != "error"


@pytest.mark.parametrize(
    "name", ["openai/parallel_tool_calls", "anthropic/tool_use", "gemini/text"]
)
def test_a_stream_cut_inside_a_frame_is_a_connection_error(name: str) -> None:
    codec, recorded, marker = STREAMS[name]
    raw = recorded()
    with pytest.raises(APIConnectionError):
        run_stream(codec, [raw[: raw.index(marker) + 5]])


@settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    name=st.sampled_from(sorted(STREAMS)),
    cuts=st.lists(st.integers(min_value=1, max_value=8000), max_size=80),
)
def test_relayed_bytes_are_the_stream_as_it_came_for_any_chunking(
    name: str, cuts: list[int]
) -> None:
    # Chunks made of whole plain frames are read in one pass, the others frame by frame:
    # either way the bytes handed on are the provider's, every frame once, in order.
    codec, recorded, _ = STREAMS[name]
    raw = recorded()
    reader = StreamReader(codec, relay=True)
    relayed = b""
    for chunk in split_at(raw, cuts):
        if chunk:
            reader.feed(chunk)
            relayed += reader.relayed()
    reader.close()
    relayed += reader.relayed()
    assert relayed == raw.rstrip(b"\n") + b"\n\n"


@pytest.mark.parametrize("whole", [True, False], ids=["one-chunk", "frame-by-frame"])
def test_an_error_frame_is_never_relayed_and_the_content_before_it_is(whole: bool) -> None:
    # Tried: an overloaded error in band after some text, in the same chunk as the text
    # (read in one pass) and in chunks of their own. The text reaches the caller, the
    # error frame (providers echo keys into errors) never does, and the error follows.
    frames = [
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"m",'
        b'"model":"claude","usage":{"input_tokens":3}}}\n\n',
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":""}}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"Hel"}}\n\n',
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
        b'"message":"Overloaded sk-ant-secret"}}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"lo"}}\n\n',
    ]
    reader = StreamReader(AnthropicCodec(), relay=True)
    events: list[object] = []
    with pytest.raises(OverloadedError):
        for chunk in [b"".join(frames)] if whole else frames:
            events += reader.feed(chunk)
        reader.check()
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hel"]
    assert reader.relayed() == b"".join(frames[:3])
