"""Reasoning summaries in the formats that have them: Anthropic's thinking blocks and the
Responses API's reasoning items, asked for, read (plain and streamed) and rendered back in
the other's words; the formats without them name the request as one they cannot carry."""

from __future__ import annotations

import json

import orjson
from codec_support import data_bytes, one_byte_at_a_time, run_stream, target

from agent.types import (
    Message,
    OutputSchema,
    Reasoning,
    ReasoningDelta,
    Request,
    Response,
    TextDelta,
    ToolChoice,
    ToolSpec,
    Usage,
)
from agent.wire.anthropic import AnthropicApi, AnthropicCodec
from agent.wire.carry import uncarried
from agent.wire.openai_responses import ResponsesApi, ResponsesCodec

ASK = [Message("user", "What is 27 * 453?")]


def _response(text: str, reasoning: str) -> Response[str]:
    return Response(
        text, text, "anthropic", "m", 1.0, Usage(3, 5), 0.0, "stop", reasoning=reasoning
    )


def test_an_effort_becomes_a_thinking_budget_under_max_tokens_and_a_budget_passes() -> None:
    # Tried: OpenAI's effort words and Anthropic's own budget, with max_tokens above and
    # below the effort's budget (the API refuses a budget at or over max_tokens).
    def thinking(reasoning: Reasoning, max_tokens: int) -> object:
        request = Request(ASK, max_tokens=max_tokens, reasoning=reasoning)
        return json.loads(AnthropicCodec().build(request, target("anthropic")).body)["thinking"]

    assert thinking(Reasoning(effort="low"), 8000) == {"type": "enabled", "budget_tokens": 2048}
    assert thinking(Reasoning(effort="high"), 8000) == {"type": "enabled", "budget_tokens": 7999}
    assert thinking(Reasoning(budget_tokens=3000), 8000)["budget_tokens"] == 3000  # type: ignore[index]


def test_the_responses_api_is_asked_for_a_summary_at_the_effort_given() -> None:
    request = Request(ASK, reasoning=Reasoning(effort="low"))
    body = json.loads(ResponsesCodec().build(request, target("openai")).body)
    assert body["reasoning"] == {"effort": "low", "summary": "auto"}


def test_chat_completions_and_gemini_name_the_reasoning_they_cannot_carry() -> None:
    request = Request(ASK, reasoning=Reasoning(effort="low"))
    assert "reasoning" in uncarried(request, "openai")
    assert "reasoning" in uncarried(request, "gemini")
    assert "reasoning" not in uncarried(request, "anthropic") | uncarried(request, "responses")


def test_claude_is_not_asked_to_think_when_a_tool_call_is_forced_and_says_so() -> None:
    # Tried: reasoning with structured output (a forced tool for Claude) and with a forced
    # tool choice: Claude refuses thinking with either (a 400), so it goes without and the
    # request is named; the Responses API takes both.
    schema = OutputSchema("Answer", {"type": "object", "properties": {}})
    tool = ToolSpec("add", "Add", {"type": "object", "properties": {}})
    for request in (
        Request(ASK, reasoning=Reasoning(effort="low"), output_schema=schema),
        Request(
            ASK, reasoning=Reasoning(effort="low"), tools=[tool], tool_choice=ToolChoice("required")
        ),
    ):
        assert "thinking" not in json.loads(
            AnthropicCodec().build(request, target("anthropic")).body
        )
        assert "reasoning" in uncarried(request, "anthropic")
        assert "reasoning" in json.loads(ResponsesCodec().build(request, target("openai")).body)
        assert "reasoning" not in uncarried(request, "responses")
    auto = Request(
        ASK, reasoning=Reasoning(effort="low"), tools=[tool], tool_choice=ToolChoice("auto")
    )
    assert "thinking" in json.loads(AnthropicCodec().build(auto, target("anthropic")).body)


def test_a_thinking_block_is_the_answer_s_reasoning() -> None:
    data = orjson.loads(data_bytes("anthropic", "message_text.json"))
    data["content"].insert(0, {"type": "thinking", "thinking": "27*453 is 12231", "signature": "s"})
    parsed = AnthropicCodec().parse(orjson.dumps(data))
    assert parsed.reasoning == "27*453 is 12231"
    assert "12231" not in parsed.text


def test_a_reasoning_item_s_summary_is_the_answer_s_reasoning_plain_and_streamed() -> None:
    summary = [
        {"type": "summary_text", "text": "Multiply."},
        {"type": "summary_text", "text": "Add."},
    ]
    answer = {
        "id": "resp_1",
        "object": "response",
        "status": "completed",
        "model": "o4-mini",
        "output": [
            {"id": "rs_1", "type": "reasoning", "summary": summary},
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "12231", "annotations": []}],
            },
        ],
        "usage": {"input_tokens": 9, "output_tokens": 30},
    }
    codec = ResponsesCodec()
    assert codec.parse(orjson.dumps(answer)).reasoning == "Multiply.\n\nAdd."

    # The stream as OpenAI sends it: summary text deltas, then the message's text.
    def event(kind: str, **fields: object) -> bytes:
        return f"event: {kind}\ndata: ".encode() + orjson.dumps({"type": kind, **fields}) + b"\n\n"

    def part(index: int, *deltas: str) -> bytes:
        where = {"item_id": "rs_1", "output_index": 0, "summary_index": index}
        added = event(
            "response.reasoning_summary_part.added",
            **where,
            part={"type": "summary_text", "text": ""},
        )
        return added + b"".join(
            event("response.reasoning_summary_text.delta", **where, delta=d) for d in deltas
        )

    def stream(final: dict[str, object]) -> bytes:
        return (
            event(
                "response.output_item.added",
                output_index=0,
                item={"id": "rs_1", "type": "reasoning", "summary": []},
            )
            + part(0, "Multi", "ply.")
            + part(1, "Add.")
            + event(
                "response.output_text.delta",
                item_id="msg_1",
                output_index=1,
                content_index=0,
                delta="12231",
            )
            + event("response.completed", response=final)
        )

    events, parsed = run_stream(codec, one_byte_at_a_time(stream(answer)))
    thought = [
        ReasoningDelta("Multi"),
        ReasoningDelta("ply."),
        ReasoningDelta("\n\n"),
        ReasoningDelta("Add."),
    ]
    assert events == [*thought, TextDelta("12231")]
    # The streamed summary is the plain one, parts as paragraphs, even when the final
    # event does not repeat the reasoning item.
    assert parsed.reasoning == "".join(e.text for e in thought) == "Multiply.\n\nAdd."
    without = {**answer, "output": answer["output"][1:]}  # type: ignore[index]
    assert run_stream(codec, [stream(without)])[1].reasoning == "Multiply.\n\nAdd."


def test_two_thinking_blocks_stream_as_the_plain_answer_joins_them() -> None:
    # Tried: Anthropic's documented thinking stream with a second thinking block added.
    raw = data_bytes("anthropic", "stream_docs_thinking.sse").decode()
    frames = raw.split("\n\n")
    start = next(
        i for i, f in enumerate(frames) if '"type": "text"' in f and "content_block_start" in f
    )
    second = [
        'event: content_block_start\ndata: {"type": "content_block_start", "index": 5, "content_block": {"type": "thinking", "thinking": ""}}',
        'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 5, "delta": {"type": "thinking_delta", "thinking": "Check: 12,231."}}',
    ]
    events, parsed = run_stream(
        AnthropicCodec(), ["\n\n".join([*frames[:start], *second, *frames[start:]]).encode()]
    )
    streamed = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    assert streamed == parsed.reasoning and streamed.endswith("= 12,231\n\nCheck: 12,231.")


def test_a_caller_s_thinking_and_reasoning_are_the_engine_s_reasoning_request() -> None:
    # Tried: Anthropic's `thinking` and the Responses API's `reasoning` as callers send them.
    call = AnthropicApi().parse(
        {
            "model": "r",
            "max_tokens": 9000,
            "messages": [{"role": "user", "content": "hi"}],
            "thinking": {"type": "enabled", "budget_tokens": 8192},
        }
    )
    assert call.request.reasoning == Reasoning(budget_tokens=8192, effort="medium")
    assert "thinking" not in call.extra
    call = ResponsesApi().parse(
        {"model": "r", "input": "hi", "reasoning": {"effort": "high", "summary": "auto"}}
    )
    assert call.request.reasoning == Reasoning(effort="high")
    assert "reasoning" not in call.extra


def test_another_format_s_reasoning_rendered_plain_and_streamed_in_each_format() -> None:
    # Tried: an answer with reasoning rendered for an Anthropic caller (a thinking block
    # before the text, unsigned: only Claude signs its own) and a Responses caller (a
    # reasoning item with its summary before the message).
    call = AnthropicApi().parse(
        {"model": "r", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]}
    )
    body = orjson.loads(AnthropicApi().render(_response("12231", "Multiply."), call))
    assert body["content"][0] == {"type": "thinking", "thinking": "Multiply.", "signature": ""}
    assert body["content"][1] == {"type": "text", "text": "12231"}
    stream = AnthropicApi().encoder(call, "m")
    frames = stream.event(ReasoningDelta("Multi")) + stream.event(ReasoningDelta("ply."))
    frames += stream.event(TextDelta("12231")) + stream.done(_response("12231", "Multiply."))
    blocks = [orjson.loads(f.split(b"data: ", 1)[1]) for f in frames.split(b"\n\n") if f]
    assert blocks[0]["content_block"]["type"] == "thinking"
    assert [b["delta"].get("thinking") for b in blocks if b["type"] == "content_block_delta"][
        :2
    ] == ["Multi", "ply."]
    assert blocks[3] == {"type": "content_block_stop", "index": 0}
    assert blocks[4]["index"] == 1 and blocks[4]["content_block"]["type"] == "text"

    call = ResponsesApi().parse({"model": "r", "input": "hi"})
    body = orjson.loads(ResponsesApi().render(_response("12231", "Multiply."), call))
    reasoning, message = body["output"]
    assert reasoning["type"] == "reasoning" and reasoning["summary"] == [
        {"type": "summary_text", "text": "Multiply."}
    ]
    assert message["content"][0]["text"] == "12231"
    encoder = ResponsesApi().encoder(call, "m")
    frames = (
        encoder.start()
        + encoder.event(ReasoningDelta("Multiply."))
        + encoder.event(TextDelta("12231"))
    )
    frames += encoder.done(_response("12231", "Multiply."))
    kinds = [orjson.loads(f.split(b"data: ", 1)[1])["type"] for f in frames.split(b"\n\n") if f]
    assert kinds[2:8] == [
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
    ]
    final = orjson.loads(frames.split(b"\n\n")[-2].split(b"data: ", 1)[1])["response"]
    assert [i["type"] for i in final["output"]] == ["reasoning", "message"]
