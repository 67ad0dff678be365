"""The openai fake's Responses API, driven by the official `openai` SDK and read as bytes."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pydantic
import pytest
from fakes import CutStream, Fail, FakeProvider, Reply, StreamError

TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def client(fake: FakeProvider) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.base_url, api_key="test-key", max_retries=0)


async def test_plain_answer_usage_and_recording(fake_openai: FakeProvider) -> None:
    """`responses.create` gets a completed response; the fake records what it was sent."""
    fake_openai.script(Reply(text="Paris is sunny", usage=(9, 3)))
    async with client(fake_openai) as c:
        r = await c.responses.create(model="gpt-4o-mini", input="Weather?", instructions="Be brief")
    assert r.output_text == "Paris is sunny"
    assert r.status == "completed" and r.id.startswith("resp_")
    assert r.instructions == "Be brief"
    assert r.usage is not None and (r.usage.input_tokens, r.usage.output_tokens) == (9, 3)
    rec = fake_openai.last_request
    assert rec.path == "/v1/responses" and rec.model == "gpt-4o-mini"
    assert rec.json["input"] == "Weather?" and rec.json["instructions"] == "Be brief"


async def test_stream_event_sequence_bytes(fake_openai: FakeProvider) -> None:
    """A stream is `event:`/`data:` frames with consecutive sequence numbers, created
    and in_progress first, completed last, a text delta per word."""
    fake_openai.script(Reply(text="one two"))
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{fake_openai.base_url}/responses",
            json={"model": "gpt-4o-mini", "input": "count", "stream": True},
            headers={"authorization": "Bearer test-key"},
        )
    frames = [f for f in r.text.split("\n\n") if f]
    events = []
    for n, frame in enumerate(frames):
        head, data = frame.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert head == f"event: {event['type']}"
        assert event["sequence_number"] == n
        assert data.startswith('data: {"type":')  # compact, type first
        events.append(event["type"])
    assert events == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]


async def test_stream_helper_tools_and_text(fake_openai: FakeProvider) -> None:
    """The SDK's stream helper accumulates text and a function call to the final response."""
    fake_openai.script(Reply(text="Let me look", tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}]))
    async with client(fake_openai) as c:
        async with c.responses.stream(model="gpt-4o-mini", input="Weather?", tools=[TOOL]) as s:
            deltas = [e.delta async for e in s if e.type == "response.output_text.delta"]
            final = await s.get_final_response()
    assert "".join(deltas) == "Let me look" == final.output_text
    call = final.output[1]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"} and call.call_id.startswith("call_")
    assert fake_openai.last_request.json["tools"] == [TOOL]


async def test_parse_structured_output(fake_openai: FakeProvider) -> None:
    """`responses.parse` with a pydantic model reads the fake's JSON text."""

    class City(pydantic.BaseModel):
        name: str
        sunny: bool

    fake_openai.script(Reply(text='{"name":"Paris","sunny":true}'))
    async with client(fake_openai) as c:
        r = await c.responses.parse(model="gpt-4o-mini", input="A city", text_format=City)
    assert r.output_parsed == City(name="Paris", sunny=True)
    assert fake_openai.last_request.json["text"]["format"]["type"] == "json_schema"


async def test_stored_responses_and_previous_id(fake_openai: FakeProvider) -> None:
    """A stored response can be continued; one sent with store=false, or an unknown id,
    gets OpenAI's 400 on previous_response_id."""
    async with client(fake_openai) as c:
        first = await c.responses.create(model="gpt-4o-mini", input="Hi")
        second = await c.responses.create(model="gpt-4o-mini", input="More", previous_response_id=first.id)
        assert second.previous_response_id == first.id
        unstored = await c.responses.create(model="gpt-4o-mini", input="Hi", store=False)
        with pytest.raises(openai.BadRequestError) as info:
            await c.responses.create(model="gpt-4o-mini", input="More", previous_response_id=unstored.id)
    assert info.value.body["code"] == "previous_response_not_found"  # type: ignore[index]
    assert info.value.body["param"] == "previous_response_id"  # type: ignore[index]


async def test_errors_incomplete_and_in_stream_error(fake_openai: FakeProvider) -> None:
    """HTTP errors as for chat; a length finish is `incomplete`; a failure after the 200
    is an `error` event the SDK hands over."""
    fake_openai.script(
        Fail(429, retry_after=2),
        Reply(text="cut short", finish_reason="length"),
        StreamError(after=1, reply=Reply(text="a b c")),
    )
    async with client(fake_openai) as c:
        with pytest.raises(openai.RateLimitError):
            await c.responses.create(model="gpt-4o-mini", input="x")
        r = await c.responses.create(model="gpt-4o-mini", input="x")
        assert r.status == "incomplete" and r.incomplete_details is not None
        assert r.incomplete_details.reason == "max_output_tokens"
        events = [e async for e in await c.responses.create(model="gpt-4o-mini", input="x", stream=True)]
    assert [e.type for e in events][-2:] == ["response.output_text.delta", "error"]
    assert events[-1].sequence_number == len(events) - 1


async def test_cut_stream_has_no_completed(fake_openai: FakeProvider) -> None:
    """A cut stream ends without `response.completed`: the SDK's helper says so."""
    fake_openai.script(CutStream(after=1, reply=Reply(text="a b c")))
    async with client(fake_openai) as c:
        with pytest.raises((RuntimeError, openai.APIError, httpx.HTTPError)):
            async with c.responses.stream(model="gpt-4o-mini", input="x") as s:
                async for _ in s:
                    pass
                await s.get_final_response()


def test_sync_client(fake_openai_sync: FakeProvider) -> None:
    """The sync client against the thread-served fake; missing input is OpenAI's 400."""
    c = openai.OpenAI(base_url=fake_openai_sync.base_url, api_key="test-key", max_retries=0)
    assert c.responses.create(model="gpt-4o-mini", input="hi").output_text == "Hello from openai"
    with pytest.raises(openai.BadRequestError, match="input"):
        c.responses.create(model="gpt-4o-mini")  # type: ignore[call-overload]
    c.close()
