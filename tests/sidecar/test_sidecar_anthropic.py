"""The official anthropic SDK against a real sidecar, whatever providers are behind the
route: plain, streamed (event: lines), tool use round trips, and Anthropic's errors."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import pytest
from agent_sidecar import Sidecar
from fakes import Fail, FakeProvider, Reply, StreamError

USER: list[Any] = [{"role": "user", "content": "Say hello"}]
WEATHER: Any = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


async def answer_tool_use(
    client: anthropic.AsyncAnthropic, first: Any, *blocks: dict[str, Any]
) -> Any:
    """The next turn after `first` asked for a tool: its content back, then `blocks`."""
    return await client.messages.create(
        model="gpt",
        max_tokens=64,
        tools=[WEATHER],
        messages=[
            *USER,
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": list(blocks)},
        ],
    )


async def test_plain_message_from_an_openai_upstream(
    anthropic_client: anthropic.AsyncAnthropic, fake_openai: FakeProvider
) -> None:
    fake_openai.script(Reply(text="Hi!", usage=(9, 2)))
    raw = await anthropic_client.messages.with_raw_response.create(
        model="gpt", max_tokens=64, system="Be brief", messages=USER, stop_sequences=["END"]
    )
    message = await raw.parse()
    assert message.content[0].type == "text" and message.content[0].text == "Hi!"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (9, 2)
    assert message.model == "gpt-4o-mini"
    assert raw.headers["x-agent-provider"] == "openai"
    sent = fake_openai.last_request.json
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "Say hello"},
    ]
    assert sent["stop"] == ["END"] and sent["max_completion_tokens"] == 64


async def test_stream_from_an_openai_upstream_speaks_anthropic_events(
    anthropic_client: anthropic.AsyncAnthropic, fake_openai: FakeProvider
) -> None:
    fake_openai.script(Reply(text="one two three", usage=(5, 3)))
    async with anthropic_client.messages.stream(
        model="gpt", max_tokens=64, messages=USER
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "content_block_stop" in kinds
    assert final.content[0].text == "one two three"  # type: ignore[union-attr]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (5, 3)
    assert final.stop_reason == "end_turn"


async def test_raw_stream_framing(sidecar: Sidecar) -> None:
    body = {"model": "claude", "max_tokens": 20, "messages": USER, "stream": True}
    headers = {"anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(base_url=sidecar.app_url) as client:
        response = await client.post("/v1/messages", json=body, headers=headers)
    assert response.headers["content-type"] == "text/event-stream"
    frames = response.text.split("\n\n")
    assert frames[0].startswith("event: message_start\ndata: {")
    names = [f.split("\n", 1)[0] for f in frames if f]
    assert names[-2:] == ["event: message_delta", "event: message_stop"]


async def test_tool_use_round_trip_through_an_openai_upstream(
    anthropic_client: anthropic.AsyncAnthropic, fake_openai: FakeProvider
) -> None:
    fake_openai.script(
        Reply(tool_calls=[{"id": "call_9", "name": "get_weather", "arguments": {"city": "Lima"}}]),
        Reply(text="Cloudy in Lima"),
    )
    first = await anthropic_client.messages.create(
        model="gpt", max_tokens=64, messages=USER, tools=[WEATHER]
    )
    assert first.stop_reason == "tool_use"
    use = first.content[-1]
    assert use.type == "tool_use"
    assert (use.id, use.name, use.input) == ("call_9", "get_weather", {"city": "Lima"})

    second = await answer_tool_use(
        anthropic_client,
        first,
        {"type": "tool_result", "tool_use_id": "call_9", "content": "cloudy, 18C"},
        {"type": "text", "text": "and tomorrow?"},
    )
    assert second.content[0].text == "Cloudy in Lima"  # type: ignore[union-attr]
    sent = fake_openai.requests[1].json["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_9"
    assert sent[2] == {"role": "tool", "tool_call_id": "call_9", "content": "cloudy, 18C"}
    assert sent[3] == {"role": "user", "content": "and tomorrow?"}
    assert (
        fake_openai.requests[1].json["tools"][0]["function"]["parameters"]
        == WEATHER["input_schema"]
    )


async def test_streamed_tool_use_arrives_whole(
    anthropic_client: anthropic.AsyncAnthropic, fake_openai: FakeProvider
) -> None:
    fake_openai.script(
        Reply(
            text="Let me look.",
            tool_calls=[{"id": "call_2", "name": "get_weather", "arguments": {"city": "Kyiv"}}],
        )
    )
    async with anthropic_client.messages.stream(
        model="gpt", max_tokens=64, messages=USER, tools=[WEATHER]
    ) as stream:
        final = await stream.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[1].input == {"city": "Kyiv"}  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use"


async def test_errors_in_anthropic_format(
    anthropic_client: anthropic.AsyncAnthropic,
    fake_openai: FakeProvider,
    fake_anthropic: FakeProvider,
) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        await anthropic_client.messages.create(model="nope", max_tokens=5, messages=USER)
    assert missing.value.body["type"] == "error"  # type: ignore[index]
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]

    fake_openai.script(Fail(529))
    fake_anthropic.script(Fail(503))
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        await anthropic_client.messages.create(model="default", max_tokens=5, messages=USER)
    assert overloaded.value.status_code == 529
    assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert len(overloaded.value.body["error"]["errors"]) == 2  # type: ignore[index]


async def test_a_bad_body_is_400_in_anthropic_format(sidecar: Sidecar) -> None:
    headers = {"anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(base_url=sidecar.app_url) as client:
        response = await client.post(
            "/v1/messages", json={"model": "gpt", "messages": USER}, headers=headers
        )
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert "max_tokens: Field required" in error["error"]["message"]


async def test_an_error_after_content_is_an_error_event(
    anthropic_client: anthropic.AsyncAnthropic, fake_anthropic: FakeProvider
) -> None:
    fake_anthropic.script(StreamError(after=1))
    with pytest.raises(anthropic.APIError, match="verloaded"):
        async with anthropic_client.messages.stream(
            model="claude", max_tokens=64, messages=USER
        ) as stream:
            async for _ in stream:
                pass


async def test_models_in_anthropic_shape(anthropic_client: anthropic.AsyncAnthropic) -> None:
    page = await anthropic_client.models.list()
    assert [m.id for m in page.data] == ["default", "gpt", "claude"]
    assert page.data[0].type == "model"


async def test_images_reach_the_provider(
    anthropic_client: anthropic.AsyncAnthropic, fake_openai: FakeProvider
) -> None:
    image = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    await anthropic_client.messages.create(
        model="gpt",
        max_tokens=10,
        messages=[
            {
                "role": "user",
                "content": [{"type": "image", "source": image}, {"type": "text", "text": "What?"}],
            }
        ],
    )
    parts = fake_openai.last_request.json["messages"][0]["content"]
    assert parts[0] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
    }
    assert parts[1] == {"type": "text", "text": "What?"}


async def test_integers_beyond_64_bits_in_tool_inputs_round_trip_exactly(
    anthropic_client: anthropic.AsyncAnthropic, fake_openai: FakeProvider
) -> None:
    big = 2**70
    fake_openai.script(
        Reply(tool_calls=[{"id": "call_1", "name": "get_weather", "arguments": {"n": big}}]),
        Reply(text="done"),
    )
    first = await anthropic_client.messages.create(
        model="gpt", max_tokens=64, messages=USER, tools=[WEATHER]
    )
    use = first.content[-1]
    assert use.type == "tool_use" and use.input == {"n": big}
    await answer_tool_use(
        anthropic_client,
        first,
        {"type": "tool_result", "tool_use_id": "call_1", "content": "ok"},
    )
    resent = fake_openai.requests[1].json["messages"][1]["tool_calls"][0]["function"]
    assert resent["arguments"] == f'{{"n":{big}}}'
