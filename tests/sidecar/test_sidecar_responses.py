"""`POST /v1/responses` through a real sidecar to the fakes, with the official openai SDK:
relayed to an OpenAI agent that calls the Responses API, translated for chat-completions,
Anthropic and Gemini agents, refused with a 400 saying why when only OpenAI's servers
could do what was asked. Each test asserts what the upstream fake received."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pydantic
import pytest
import pytest_asyncio
from agent_sidecar import Sidecar
from conftest import SidecarFactory
from fakes import Fail, FakeProvider, Reply, StreamError
from sidecar_support import agent_spec, document, fast_route

TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": False,
}
EVENTS = [
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


@pytest_asyncio.fixture
async def sidecar(
    sidecar_factory: SidecarFactory,
    fake_openai: FakeProvider,
    fake_anthropic: FakeProvider,
    fake_gemini: FakeProvider,
) -> Sidecar:
    """Routes: resp (OpenAI agent on the Responses API), chat (OpenAI agent on chat
    completions), claude, gemini, and mixed (the Responses agent, then Claude)."""
    agents = [
        agent_spec(fake_openai, "resp", api="responses"),
        agent_spec(fake_openai, "chat"),
        agent_spec(fake_anthropic, "claude"),
        agent_spec(fake_gemini, "gemini"),
    ]
    routes = [fast_route(a["name"], [a["name"]]) for a in agents]
    return await sidecar_factory(document(agents, [*routes, fast_route("mixed", ["resp", "claude"])]))


@pytest_asyncio.fixture
async def client(sidecar: Sidecar) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=sidecar.app_url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


async def stream_types(sidecar: Sidecar, body: dict[str, Any]) -> tuple[httpx.Response, list[dict[str, Any]]]:
    """The raw SSE answer to a streamed request, its events parsed (and checked framed)."""
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{sidecar.app_url}/v1/responses", json={**body, "stream": True})
    events = []
    for frame in filter(None, r.text.split("\n\n")):
        head, data = frame.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert head == f"event: {event['type']}"
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return r, events


# ---- pass-through to a Responses agent -----------------------------------------------------


async def test_relay_sends_the_body_as_it_came_and_returns_openais_bytes(
    client: openai.AsyncOpenAI, fake_openai: FakeProvider
) -> None:
    """A Responses agent gets the caller's body (model rewritten, unknown fields kept, the
    idempotency header forwarded) and the caller gets OpenAI's own answer, its id included."""
    raw = await client.responses.with_raw_response.create(
        model="resp",
        input="Hi",
        instructions="Be brief",
        tools=[TOOL],
        extra_body={"future_option": {"x": 1}},
        extra_headers={"idempotency-key": "abc-123"},
    )
    answer = raw.parse()
    sent = fake_openai.last_request
    assert sent.path == "/v1/responses"
    assert sent.json == {
        "model": "gpt-4o-mini",
        "input": "Hi",
        "instructions": "Be brief",
        "tools": [TOOL],
        "future_option": {"x": 1},
    }
    assert sent.headers["idempotency-key"] == "abc-123"
    assert sent.headers["authorization"] == "Bearer test-key"
    assert answer.output_text == "Hello from openai" and answer.store is True
    assert raw.headers["x-agent-provider"] == "openai"
    assert "x-agent-ignored-fields" not in raw.headers


async def test_stored_responses_continue_on_a_responses_route(
    client: openai.AsyncOpenAI, fake_openai: FakeProvider
) -> None:
    """previous_response_id reaches OpenAI, which stored the first answer."""
    first = await client.responses.create(model="resp", input="Remember 7")
    second = await client.responses.create(model="resp", input="Which number?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    assert fake_openai.last_request.json["previous_response_id"] == first.id


async def test_relayed_stream_is_openais_event_sequence(sidecar: Sidecar, fake_openai: FakeProvider) -> None:
    """Streamed to a Responses agent: OpenAI's own events, sequence numbers and all."""
    fake_openai.script(Reply(text="one two"))
    r, events = await stream_types(sidecar, {"model": "resp", "input": "count"})
    assert r.headers["x-agent-provider"] == "openai"
    assert [e["type"] for e in events] == EVENTS
    assert events[0]["response"]["id"] == events[-1]["response"]["id"]
    assert "obfuscation" in events[4]  # OpenAI's field, passed on as sent
    assert fake_openai.last_request.json["stream"] is True


async def test_sdk_stream_helper_and_parse_on_the_relay(client: openai.AsyncOpenAI, fake_openai: FakeProvider) -> None:
    """`responses.stream` with a tool call and `responses.parse` with a pydantic model."""

    class City(pydantic.BaseModel):
        name: str

    fake_openai.script(
        Reply(text="Looking", tool_calls=[{"id": "call_1", "name": "get_weather", "arguments": {"city": "Oslo"}}]),
        Reply(text='{"name": "Oslo"}'),
    )
    async with client.responses.stream(model="resp", input="Weather?", tools=[TOOL]) as stream:
        final = await stream.get_final_response()
    assert final.output_text == "Looking"
    assert final.output[1].type == "function_call" and final.output[1].call_id == "call_1"
    parsed = await client.responses.parse(model="resp", input="A city", text_format=City)
    assert parsed.output_parsed == City(name="Oslo")
    assert fake_openai.last_request.json["text"]["format"]["name"] == "City"


# ---- translation ---------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["chat", "claude", "gemini"])
async def test_translated_plain_answer(client: openai.AsyncOpenAI, sidecar: Sidecar, route: str) -> None:
    """A chat-completions, Claude or Gemini agent answers a Responses call: the caller gets
    a response object with the sidecar's own id, the text and the usage."""
    answer = await client.responses.create(model=route, input="Hi", instructions="Be brief", max_output_tokens=50)
    assert answer.output_text.startswith("Hello from")
    assert answer.id.startswith("resp_") and answer.status == "completed"
    assert answer.usage is not None and answer.usage.output_tokens == 3
    assert answer.store is False  # a translated answer is stored nowhere


async def test_translated_request_reaches_claude_as_messages(
    client: openai.AsyncOpenAI, fake_anthropic: FakeProvider
) -> None:
    """Instructions and a developer message become the system prompt; an image, a function
    call and its output become Claude's blocks; function tools become Claude's tools."""
    image = "data:image/png;base64,iVBORw0KGgo="
    await client.responses.create(
        model="claude",
        instructions="Be brief",
        input=[
            {"role": "developer", "content": "Answer in English"},
            {"role": "user", "content": [
                {"type": "input_text", "text": "What is this?"},
                {"type": "input_image", "image_url": image, "detail": "auto"},
            ]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "rain"},
        ],
        tools=[TOOL],
        max_output_tokens=100,
    )
    sent = fake_anthropic.last_request.json
    assert sent["system"] == "Be brief\n\nAnswer in English"
    assert sent["max_tokens"] == 100
    user, assistant, result = sent["messages"]
    assert user["content"][1]["source"] == {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    assert assistant["content"][0] == {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}}
    assert result["content"][0]["tool_use_id"] == "call_1"
    assert sent["tools"][0]["name"] == "get_weather"


async def test_translated_stream_has_the_official_sequence(sidecar: Sidecar, fake_gemini: FakeProvider) -> None:
    """Streamed from Gemini, the caller still gets created, in_progress, the item and part,
    text deltas, their done events and completed, numbered in order."""
    fake_gemini.script(Reply(text="one two"))
    r, events = await stream_types(sidecar, {"model": "gemini", "input": "count"})
    assert r.headers["x-agent-provider"] == "gemini"
    assert [e["type"] for e in events] == EVENTS
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "one two"
    done = events[-1]["response"]
    assert done["output"][0]["content"][0]["text"] == "one two" and done["usage"]["output_tokens"] == 2


async def test_translated_stream_with_tool_calls_through_the_sdk_helper(
    client: openai.AsyncOpenAI, fake_anthropic: FakeProvider
) -> None:
    """Claude's text and tool use arrive as a message item and a function_call item the
    SDK's stream helper accumulates."""
    fake_anthropic.script(Reply(text="Checking", tool_calls=[{"id": "toolu_1", "name": "get_weather", "arguments": {"city": "Rome"}}]))
    async with client.responses.stream(model="claude", input="Weather?", tools=[TOOL]) as stream:
        final = await stream.get_final_response()
    assert final.output_text == "Checking"
    call = final.output[1]
    assert call.type == "function_call" and call.call_id == "toolu_1" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Rome"}


async def test_structured_output_translates_to_chat_completions(
    client: openai.AsyncOpenAI, fake_openai: FakeProvider
) -> None:
    """`text.format` json_schema becomes chat completions' response_format."""

    class City(pydantic.BaseModel):
        name: str

    fake_openai.script(Reply(text='{"name": "Lima"}'))
    parsed = await client.responses.parse(model="chat", input="A city", text_format=City)
    assert parsed.output_parsed == City(name="Lima")
    sent = fake_openai.last_request
    assert sent.path == "/v1/chat/completions"
    assert sent.json["response_format"]["json_schema"]["name"] == "City"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"previous_response_id": "resp_abc"}, "previous_response_id"),
        ({"store": True}, "store"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"background": True}, "background"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}]}, "input"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_2"}]}]}, "input"),
    ],
)
async def test_what_only_openai_can_do_is_a_clear_400_on_a_translated_route(
    client: openai.AsyncOpenAI, fake_anthropic: FakeProvider, extra: dict[str, Any], param: str
) -> None:
    """Stored responses, storing, hosted tools and stored items need OpenAI's servers: on
    a route with a Claude agent the caller gets a 400 naming the field and the reason,
    and nothing goes upstream."""
    body = {"model": "mixed", "input": "Hi", **extra}
    with pytest.raises(openai.BadRequestError) as info:
        await client.responses.create(**body)
    error = info.value.body
    assert isinstance(error, dict)
    assert error["param"] == param and error["code"] == "responses_api_only"
    assert "api: responses" in error["message"]
    assert not fake_anthropic.requests


async def test_fallback_to_claude_names_the_fields_it_dropped(
    client: openai.AsyncOpenAI, fake_openai: FakeProvider, fake_anthropic: FakeProvider
) -> None:
    """The Responses agent fails; Claude answers the translation, without the fields
    Anthropic's format cannot carry, which the answer's header names (`tool_choice`
    translates, so it is not among them)."""
    fake_openai.script(Fail(500))
    raw = await client.responses.with_raw_response.create(
        model="mixed", input="Hi", top_p=0.5, tool_choice="auto", store=False
    )
    answer = raw.parse()
    assert answer.output_text == "Hello from anthropic"
    assert raw.headers["x-agent-provider"] == "anthropic"
    assert raw.headers["x-agent-ignored-fields"] == "store,top_p"
    assert "top_p" not in fake_anthropic.last_request.json
    assert fake_openai.last_request.json["top_p"] == 0.5  # the Responses agent had it all


async def test_in_band_failure_after_content_is_error_then_failed(sidecar: Sidecar, fake_anthropic: FakeProvider) -> None:
    """A failure after the first text is an `error` event and `response.failed`, the
    stream's last two events."""
    fake_anthropic.script(StreamError(after=1, reply=Reply(text="a b c")))
    r, events = await stream_types(sidecar, {"model": "claude", "input": "x"})
    assert r.status_code == 200
    assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["message"]
    assert failed["id"] == events[0]["response"]["id"]


async def test_relayed_stream_failing_after_content_ends_with_an_error_event(
    sidecar: Sidecar, fake_openai: FakeProvider
) -> None:
    """Relayed, OpenAI's own events reach the caller, then the sidecar's scrubbed `error`
    event (OpenAI's error frame itself is never relayed: providers echo keys into them)."""
    leaked = "failed for sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"
    fake_openai.script(StreamError(after=1, reply=Reply(text="a b c"), message=leaked))
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{sidecar.app_url}/v1/responses", json={"model": "resp", "input": "x", "stream": True})
    events = [json.loads(f.split("\ndata: ")[1]) for f in filter(None, r.text.split("\n\n"))]
    assert [e["type"] for e in events] == [*EVENTS[:5], "error"]
    assert events[-1]["code"] == "server_error" and "failed for" in events[-1]["message"]
    assert "sk-proj" not in r.text


async def test_bad_bodies_get_openais_error_shape(sidecar: Sidecar) -> None:
    """A missing model, a bad item, a GET: OpenAI-format errors naming what is wrong."""
    async with httpx.AsyncClient() as http:
        url = f"{sidecar.app_url}/v1/responses"
        no_model = await http.post(url, json={"input": "Hi"})
        bad_item = await http.post(url, json={"model": "claude", "input": [{"role": "robot", "content": "x"}]})
        get = await http.get(url)
    assert no_model.status_code == 400 and no_model.json()["error"]["param"] == "model"
    assert bad_item.status_code == 400 and "role" in bad_item.json()["error"]["message"]
    assert get.status_code == 405 and get.json()["error"]["type"] == "invalid_request_error"


async def test_a_forced_tool_and_parallel_calls_reach_claude_and_the_responses_agent(
    client: openai.AsyncOpenAI, fake_openai: FakeProvider, fake_anthropic: FakeProvider
) -> None:
    """What was tried: a named `tool_choice` (flat, as the Responses API writes it) and
    `parallel_tool_calls: false`, to Claude by translation and to a Responses agent by
    relay: Claude gets its own forced tool without parallel use, the relay the body as
    sent; neither is named as ignored."""
    tool = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
    choice = {"type": "function", "name": "get_weather"}
    raw = await client.responses.with_raw_response.create(
        model="claude", input="Paris?", tools=[tool], tool_choice=choice, parallel_tool_calls=False
    )
    assert "x-agent-ignored-fields" not in raw.headers
    assert fake_anthropic.last_request.json["tool_choice"] == {
        "type": "tool",
        "name": "get_weather",
        "disable_parallel_tool_use": True,
    }
    await client.responses.create(
        model="resp", input="Paris?", tools=[tool], tool_choice=choice, parallel_tool_calls=False
    )
    sent = fake_openai.last_request.json
    assert (sent["tool_choice"], sent["parallel_tool_calls"]) == (choice, False)


# ---- reasoning summaries across formats -----------------------------------------------------


async def test_reasoning_asked_of_claude_comes_back_as_a_summary_plain_and_streamed(
    client: openai.AsyncOpenAI, fake_anthropic: FakeProvider
) -> None:
    """Tried: the openai SDK asks a Claude route for reasoning with a summary. Claude is
    asked to think (the effort as a budget under max_tokens), and its thinking comes back
    as the reasoning item's summary, before the message: plain, then streamed."""
    fake_anthropic.script(Reply(text="12,231", thinking="27 * 453: 10,800 + 1,350 + 81."))
    answer = await client.responses.create(
        model="claude", input="27 * 453?", reasoning={"effort": "low", "summary": "auto"}
    )
    assert fake_anthropic.last_request.json["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    reasoning, message = answer.output
    assert reasoning.type == "reasoning" and message.type == "message"
    assert [s.text for s in reasoning.summary] == ["27 * 453: 10,800 + 1,350 + 81."]
    assert answer.output_text == "12,231"

    fake_anthropic.script(Reply(text="12,231", thinking="Multiply, then add."))
    summary: list[str] = []
    async with client.responses.stream(
        model="claude", input="27 * 453?", reasoning={"effort": "low", "summary": "auto"}
    ) as stream:
        async for event in stream:
            if event.type == "response.reasoning_summary_text.delta":
                summary.append(event.delta)
        final = await stream.get_final_response()
    assert "".join(summary) == "Multiply, then add."
    assert [i.type for i in final.output] == ["reasoning", "message"]
    assert final.output_text == "12,231"


async def test_claude_thinking_asked_of_a_responses_agent_comes_back_as_thinking(
    sidecar: Sidecar, fake_openai: FakeProvider
) -> None:
    """Tried: the anthropic SDK with thinking enabled on a route whose agent calls the
    Responses API. The agent is asked for reasoning at the budget's effort with a summary,
    and the summary comes back as a thinking block, unsigned (only Claude signs its own
    thinking, and a Claude agent's blocks are relayed untouched)."""
    import anthropic

    summary = [{"type": "summary_text", "text": "Multiply, then add."}]
    fake_openai.script(
        Fail(
            200,
            body={
                "id": "resp_upstream",
                "object": "response",
                "status": "completed",
                "model": "gpt-5-mini",
                "output": [
                    {"id": "rs_1", "type": "reasoning", "summary": summary},
                    {
                        "id": "msg_1",
                        "type": "message",
                        "role": "assistant",
                        "status": "completed",
                        "content": [{"type": "output_text", "text": "12,231", "annotations": []}],
                    },
                ],
                "usage": {"input_tokens": 9, "output_tokens": 40},
            },
        )
    )
    async with anthropic.AsyncAnthropic(base_url=sidecar.app_url, api_key="unused", max_retries=0) as claude:
        answer = await claude.messages.create(
            model="resp",
            max_tokens=16000,
            thinking={"type": "enabled", "budget_tokens": 8192},
            messages=[{"role": "user", "content": "27 * 453?"}],
        )
    assert fake_openai.last_request.json["reasoning"] == {"effort": "medium", "summary": "auto"}
    thinking, text = answer.content
    assert thinking.type == "thinking" and thinking.thinking == "Multiply, then add."
    assert thinking.signature == ""
    assert text.type == "text" and text.text == "12,231"
    assert answer.id != "resp_upstream"
