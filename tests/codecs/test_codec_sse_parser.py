"""SSEParser (agent/_sse.py): WHATWG framing, fed in awkward chunks, on recorded streams."""

from __future__ import annotations

import pytest
from codec_support import (
    data_bytes,
    gemini_sse,
    one_byte_at_a_time,
    split_at,
    sse_events,
    to_cr,
    to_crlf,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent._sse import SSEEvent, SSEParser

RECORDED = {
    "openai/stream_parallel_tool_calls.sse": lambda: data_bytes(
        "openai", "stream_parallel_tool_calls.sse"
    ),
    "anthropic/stream_tool_use.sse": lambda: data_bytes("anthropic", "stream_tool_use.sse"),
    "anthropic/stream_text_after_tool_result.sse": lambda: data_bytes(
        "anthropic", "stream_text_after_tool_result.sse"
    ),
    "gemini/stream_text.jsonl": lambda: gemini_sse("stream_text.jsonl"),
}


def test_single_event_default_name() -> None:
    assert SSEParser().feed(b"data: hello\n\n") == [SSEEvent("message", "hello")]


def test_event_names_and_one_optional_space() -> None:
    events = SSEParser().feed(b"event: ping\ndata: {}\n\nevent:message_stop\ndata:x\n\n")
    assert events == [SSEEvent("ping", "{}"), SSEEvent("message_stop", "x")]


def test_only_the_first_space_after_the_colon_is_dropped() -> None:
    assert SSEParser().feed(b"data:  two spaces\n\n") == [SSEEvent("message", " two spaces")]


def test_comments_and_comment_only_frames_are_ignored() -> None:
    # OpenRouter keeps idle streams alive with `: OPENROUTER PROCESSING` comment frames.
    raw = b": OPENROUTER PROCESSING\n\n: keep-alive\ndata: a\n: mid-frame comment\n\n"
    assert SSEParser().feed(raw) == [SSEEvent("message", "a")]


def test_multi_line_data_is_joined_with_newlines() -> None:
    raw = b'data: {\ndata:   "a": 1\ndata: }\n\n'
    [event] = SSEParser().feed(raw)
    assert event.data == '{\n  "a": 1\n}'


def test_unknown_fields_id_and_retry_are_ignored() -> None:
    raw = b"id: 7\nretry: 1000\nfoo: bar\ndata: x\n\n"
    assert SSEParser().feed(raw) == [SSEEvent("message", "x")]


def test_frame_without_data_is_not_an_event() -> None:
    assert SSEParser().feed(b"event: ping\n\n") == []


def test_incomplete_frame_waits_for_its_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n") == []
    assert parser.feed(b"\n") == [SSEEvent("message", "a")]


def test_close_flushes_a_last_frame_without_blank_line() -> None:
    # The anthropic-sdk-python fixture ends right after `data: {"type":"message_stop"}`.
    raw = data_bytes("anthropic", "stream_basic_no_final_newline.sse")
    assert not raw.endswith(b"\n")
    parser = SSEParser()
    events = parser.feed(raw)
    assert events[-1].event == "message_delta"
    assert parser.close() == [SSEEvent("message_stop", '{"type":"message_stop"}')]
    assert parser.close() == []  # nothing left twice


def test_close_on_empty_or_blank_buffer() -> None:
    parser = SSEParser()
    assert parser.close() == []
    parser.feed(b"\n\n\n")
    assert parser.close() == []


def test_cr_only_line_endings() -> None:
    parser = SSEParser()
    events = parser.feed(b"event: e\rdata: a\r\rdata: b\r\r")
    assert events[0] == SSEEvent("e", "a")
    assert [*events[1:], *parser.close()] == [SSEEvent("message", "b")]


def test_cr_terminated_event_is_dispatched_without_waiting_for_more_bytes() -> None:
    assert SSEParser().feed(b"data: a\r\r") == [SSEEvent("message", "a")]


def test_crlf_split_across_chunks_is_one_line_ending() -> None:
    """Tried: CR | LF between the data line and the blank line, and CR | LF ending the
    blank line itself (which must not start a second, empty line)."""
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n\r") == [SSEEvent("message", "a")]
    assert parser.feed(b"\ndata: b\r\n\r\n") == [SSEEvent("message", "b")]


def test_utf8_character_split_across_chunks() -> None:
    raw = "data: 20°C ✓\n\n".encode()
    parser = SSEParser()
    got = [e for chunk in one_byte_at_a_time(raw) for e in parser.feed(chunk)]
    assert got == [SSEEvent("message", "20°C ✓")]


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_stream_same_events_for_every_line_ending_and_one_byte_feeding(
    name: str,
) -> None:
    raw = RECORDED[name]()
    expected = sse_events([raw])
    assert expected, "the recording has events"
    assert sse_events(one_byte_at_a_time(raw)) == expected
    assert sse_events([to_crlf(raw)]) == expected
    assert sse_events(one_byte_at_a_time(to_crlf(raw))) == expected
    assert sse_events([to_cr(raw)]) == expected
    assert sse_events(one_byte_at_a_time(to_cr(raw))) == expected


@settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    name=st.sampled_from(sorted(RECORDED)),
    ending=st.sampled_from(["lf", "crlf", "cr"]),
    cuts=st.lists(st.integers(min_value=1, max_value=9000), max_size=60),
)
def test_recorded_stream_any_chunking(name: str, ending: str, cuts: list[int]) -> None:
    raw = RECORDED[name]()
    expected = sse_events([raw])
    raw = {"lf": raw, "crlf": to_crlf(raw), "cr": to_cr(raw)}[ending]
    assert sse_events(split_at(raw, cuts)) == expected
