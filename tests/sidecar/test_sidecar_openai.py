"""The official openai SDK against a real sidecar, unchanged: plain, streamed, tools,
structured output, fallback in the headers, and errors in OpenAI's format."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pydantic
import pytest
from agent_sidecar import Sidecar
from conftest import SidecarFactory
from fakes import Fail, FakeProvider, Reply, StreamError
from sidecar_support import agent_spec, document

USER = [{"role": "user", "content": "Say hello"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


async def test_plain_call_answers_with_routing_headers(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeProvider
) -> None:
    fake_openai.script(Reply(text="Hello there", usage=(12, 3)))
    raw = await openai_client.chat.completions.with_raw_response.create(
        model="default",
        messages=[{"role": "system", "content": "Be brief"}, *USER],
        temperature=0.2,
        max_tokens=50,
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (12, 3)
    headers = raw.headers
    assert headers["x-agent-route"] == "default"
    assert headers["x-agent-provider"] == "openai"
    assert headers["x-agent-model"] == "gpt-4o-mini"
    assert headers["x-agent-attempts"] == "1"
    assert headers["x-agent-route-reason"] == "in the given order"
    assert float(headers["x-agent-cost-usd"]) > 0
    # Upstream: the config's key, not the app's; the body as the app sent it (same format).
    sent = fake_openai.last_request
    assert sent.headers["authorization"] == "Bearer test-key"
    assert sent.json["messages"][0] == {"role": "system", "content": "Be brief"}
    assert sent.json["temperature"] == 0.2
    assert sent.json["max_tokens"] == 50 and "max_completion_tokens" not in sent.json


async def test_stream_relays_chunks_and_usage(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeProvider
) -> None:
    fake_openai.script(Reply(text="one two three", usage=(7, 3)))
    stream = await openai_client.chat.completions.create(
        model="gpt", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (7, 3)
    assert fake_openai.last_request.json["stream"] is True


@pytest.mark.parametrize("chunk_delay", [0, 0.02], ids=["arrives-whole", "trickles"])
async def test_a_stream_is_the_same_whether_it_arrives_whole_or_trickles(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeProvider, chunk_delay: float
) -> None:
    # Whole: one response with a length. Trickling: chunked, written as it comes.
    fake_openai.script(Reply(text="one two three", usage=(7, 3), chunk_delay=chunk_delay))
    raw = await openai_client.chat.completions.with_raw_response.create(
        model="gpt", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunked = raw.headers.get("transfer-encoding") == "chunked"
    assert chunked == bool(chunk_delay)
    assert raw.headers["x-agent-provider"] == "openai"
    chunks = [chunk async for chunk in raw.parse()]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "one two three"
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


async def test_stream_without_include_usage_sends_no_usage_chunk(
    openai_client: openai.AsyncOpenAI,
) -> None:
    stream = await openai_client.chat.completions.create(model="gpt", messages=USER, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


async def test_tool_calls_come_back_to_the_app_and_results_go_upstream(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeProvider
) -> None:
    fake_openai.script(
        Reply(tool_calls=[{"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}]),
        Reply(text="Sunny in Paris"),
    )
    first = await openai_client.chat.completions.create(model="gpt", messages=USER, tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name) == ("call_1", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert fake_openai.requests[0].json["tools"][0]["function"]["name"] == "get_weather"

    follow_up = [
        *USER,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 24C"},
    ]
    second = await openai_client.chat.completions.create(
        model="gpt", messages=follow_up, tools=[WEATHER]
    )
    assert second.choices[0].message.content == "Sunny in Paris"
    sent = fake_openai.requests[1].json["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_1"
    assert sent[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 24C"}


async def test_streamed_tool_calls_accumulate_in_the_sdk(
    openai_client: openai.AsyncOpenAI, fake_anthropic: FakeProvider
) -> None:
    # An Anthropic upstream, streamed to an OpenAI client: tool_use becomes tool_calls.
    fake_anthropic.script(
        Reply(tool_calls=[{"id": "toolu_1", "name": "get_weather", "arguments": {"city": "Oslo"}}])
    )
    async with openai_client.chat.completions.stream(
        model="claude", messages=USER, tools=[WEATHER]
    ) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name) == ("toolu_1", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    assert final.choices[0].finish_reason == "tool_calls"
    assert fake_anthropic.last_request.json["tools"][0]["name"] == "get_weather"


class Weather(pydantic.BaseModel):
    city: str
    celsius: int


async def test_structured_output_with_an_openai_upstream(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeProvider
) -> None:
    fake_openai.script(Reply(text='{"city": "Rome", "celsius": 25}'))
    completion = await openai_client.chat.completions.parse(
        model="gpt", messages=USER, response_format=Weather
    )
    assert completion.choices[0].message.parsed == Weather(city="Rome", celsius=25)
    sent = fake_openai.last_request.json["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "Weather"
    assert sent["json_schema"]["schema"]["required"] == ["city", "celsius"]


async def test_structured_output_with_an_anthropic_upstream(
    openai_client: openai.AsyncOpenAI, fake_anthropic: FakeProvider
) -> None:
    fake_anthropic.script(
        Reply(
            tool_calls=[{"name": "structured_output", "arguments": {"city": "Rome", "celsius": 25}}]
        )
    )
    completion = await openai_client.chat.completions.parse(
        model="claude", messages=USER, response_format=Weather
    )
    assert completion.choices[0].message.parsed == Weather(city="Rome", celsius=25)
    sent = fake_anthropic.last_request.json
    assert sent["tool_choice"] == {"type": "tool", "name": "structured_output"}
    assert sent["tools"][0]["input_schema"]["properties"]["celsius"]["type"] == "integer"


async def test_fallback_is_visible_in_the_headers(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeProvider
) -> None:
    fake_openai.script(Fail(500))
    raw = await openai_client.chat.completions.with_raw_response.create(
        model="default", messages=USER
    )
    assert raw.parse().choices[0].message.content == "Hello from anthropic"
    assert raw.headers["x-agent-provider"] == "anthropic"
    assert raw.headers["x-agent-model"] == "claude-haiku-4-5"
    assert raw.headers["x-agent-attempts"] == "2"
    reason = raw.headers["x-agent-route-reason"]
    assert reason == "in the given order; fell back to claude after 1 failed attempt(s)"


async def test_stream_fallback_before_the_first_token_has_the_winners_headers(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeProvider
) -> None:
    fake_openai.script(Fail(429))
    raw = await openai_client.chat.completions.with_raw_response.create(
        model="default", messages=USER, stream=True
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers["x-agent-provider"] == "anthropic"
    assert raw.headers["x-agent-model"] == "claude-haiku-4-5"
    assert raw.headers["x-agent-attempts"] == "2"
    assert raw.headers["x-agent-route-reason"] == (
        "in the given order; fell back to claude after 1 failed attempt(s)"
    )
    chunks = [c async for c in raw.parse()]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from anthropic"


async def test_stream_failing_before_the_first_token_is_an_http_error(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeProvider
) -> None:
    fake_openai.script(Fail(429, retry_after=3))
    with pytest.raises(openai.RateLimitError) as caught:
        await openai_client.chat.completions.create(model="gpt", messages=USER, stream=True)
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "3"
    assert caught.value.response.headers["x-agent-attempts"] == "1"


async def test_every_agent_failing_lists_each_error_without_keys(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeProvider, fake_anthropic: FakeProvider
) -> None:
    fake_openai.script(Fail(500))
    fake_anthropic.script(Fail(529))
    with pytest.raises(openai.APIStatusError) as caught:
        await openai_client.chat.completions.create(model="default", messages=USER)
    error = caught.value
    assert error.status_code == 502
    body: Any = error.body
    assert body["code"] == "all_agents_failed"
    assert [(e["agent"], e["type"], e["status"]) for e in body["errors"]] == [
        ("openai/gpt-4o-mini", "ServerError", 500),
        ("anthropic/claude-haiku-4-5", "OverloadedError", 529),
    ]
    assert "agent 0: openai/gpt-4o-mini: ServerError" in body["message"]
    assert "test-key" not in error.response.text


async def test_all_rate_limited_is_429_with_the_shortest_retry_after(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeProvider, fake_anthropic: FakeProvider
) -> None:
    fake_openai.script(Fail(429, retry_after=30))
    fake_anthropic.script(Fail(429, retry_after=20))
    with pytest.raises(openai.RateLimitError) as caught:
        await openai_client.chat.completions.create(model="default", messages=USER)
    assert caught.value.response.headers["retry-after"] == "20"
    assert caught.value.body["type"] == "rate_limit_error"  # type: ignore[index]


async def test_a_request_every_provider_refuses_is_a_400(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeProvider, fake_anthropic: FakeProvider
) -> None:
    fake_openai.script(Fail(400, message="context too long"))
    fake_anthropic.script(Fail(400, message="prompt is too long"))
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client.chat.completions.create(model="default", messages=USER)
    assert "context too long" in caught.value.message


async def test_unknown_model_is_404_listing_the_routes(openai_client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await openai_client.chat.completions.create(model="gpt-5", messages=USER)
    body: Any = caught.value.body
    assert body["code"] == "model_not_found" and body["param"] == "model"
    assert "routes: default, gpt, claude" in body["message"]


async def test_default_route_takes_unknown_models(
    sidecar_factory: SidecarFactory, fake_openai: FakeProvider
) -> None:
    config = document([agent_spec(fake_openai, "gpt")], default_route="default")
    sidecar = await sidecar_factory(config)
    async with openai.AsyncOpenAI(base_url=sidecar.app_url + "/v1", api_key="x") as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="whatever-the-app-says", messages=USER
        )
    assert raw.headers["x-agent-route"] == "default"
    assert raw.parse().choices[0].message.content == "Hello from openai"


async def test_models_lists_the_routes(openai_client: openai.AsyncOpenAI) -> None:
    models = [m.id async for m in openai_client.models.list()]
    assert models == ["default", "gpt", "claude"]
    one = await openai_client.models.retrieve("claude")
    assert one.id == "claude"
    with pytest.raises(openai.NotFoundError):
        await openai_client.models.retrieve("nope")


async def test_an_error_after_the_first_token_ends_the_stream_in_band(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeProvider
) -> None:
    fake_openai.script(StreamError(after=2, reply=Reply(text="one two three four")))
    stream = await openai_client.chat.completions.create(
        model="default", messages=USER, stream=True
    )
    seen: list[str] = []
    with pytest.raises(openai.APIError, match="verloaded"):
        async for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "")
    assert "".join(seen) == "one two"  # no silent switch to the other agent after content


async def test_unmodeled_fields_pass_through_only_to_the_same_wire(
    sidecar: Sidecar, fake_openai: FakeProvider, fake_anthropic: FakeProvider
) -> None:
    body = {"messages": USER, "seed": 7, "top_p": 0.5, "tool_choice": "auto", "tools": [WEATHER]}
    async with httpx.AsyncClient(base_url=sidecar.app_url) as client:
        same = await client.post("/v1/chat/completions", json={"model": "gpt", **body})
        assert same.status_code == 200 and "x-agent-ignored-fields" not in same.headers
        sent = fake_openai.last_request.json
        assert (sent["seed"], sent["top_p"], sent["tool_choice"]) == (7, 0.5, "auto")

        # tool_choice is translated (tests/sidecar/test_sidecar_translation.py); the
        # others have no place in Anthropic's format.
        mixed = await client.post("/v1/chat/completions", json={"model": "claude", **body})
        assert mixed.status_code == 200
        assert mixed.headers["x-agent-ignored-fields"] == "seed,top_p"
        sent = fake_anthropic.last_request.json
        assert "seed" not in sent and "top_p" not in sent
        assert sent["tool_choice"] == {"type": "auto"}


async def test_bad_bodies_are_400_in_openai_format(openai_client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client.chat.completions.create(model="gpt", messages=[])
    assert "messages" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client.chat.completions.create(
            model="gpt",
            messages=[{"role": "wizard", "content": "hi"}],  # type: ignore[list-item]
        )
    assert caught.value.body["param"] == "messages.0.role"  # type: ignore[index]
    # n > 1 only where every agent speaks OpenAI's format (default has a Claude agent).
    with pytest.raises(openai.BadRequestError, match="n > 1"):
        await openai_client.chat.completions.create(model="default", messages=USER, n=2)


async def test_a_raced_stream_names_the_racer_that_won(
    sidecar_factory: SidecarFactory, fake_openai: FakeProvider, fake_anthropic: FakeProvider
) -> None:
    config = document(
        [agent_spec(fake_openai, "gpt"), agent_spec(fake_anthropic, "claude")],
        [{"name": "race", "agents": ["gpt", "claude"], "strategy": "fastest"}],
    )
    sidecar = await sidecar_factory(config)
    fake_openai.script(Reply(text="slow", delay=1.0))
    async with openai.AsyncOpenAI(base_url=sidecar.app_url + "/v1", api_key="x") as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="race", messages=USER, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    assert text == "Hello from anthropic"
    assert raw.headers["x-agent-provider"] == "anthropic"
    assert raw.headers["x-agent-attempts"] == "2"
    assert raw.headers["x-agent-route-reason"] == "race; claude answered first"
    assert await fake_openai.wait_disconnect(timeout=2.0) == 1  # the loser was cancelled


async def test_an_empty_config_serves_no_routes(sidecar_factory: SidecarFactory) -> None:
    sidecar = await sidecar_factory({"version": 3, "agents": [], "routes": []})
    async with openai.AsyncOpenAI(base_url=sidecar.app_url + "/v1", api_key="x") as client:
        with pytest.raises(openai.NotFoundError, match="it serves no routes"):
            await client.chat.completions.create(model="default", messages=USER)
        assert [m.id async for m in client.models.list()] == []


async def test_integers_beyond_64_bits_in_tool_arguments_reach_the_app_exactly(
    openai_client: openai.AsyncOpenAI, fake_anthropic: FakeProvider
) -> None:
    big = 2**70
    call = {"id": "toolu_1", "name": "get_weather", "arguments": {"city": "Oslo", "n": big}}
    fake_anthropic.script(Reply(tool_calls=[call]), Reply(tool_calls=[call]))
    plain = await openai_client.chat.completions.create(
        model="claude", messages=USER, tools=[WEATHER]
    )
    assert json.loads(plain.choices[0].message.tool_calls[0].function.arguments)["n"] == big
    async with openai_client.beta.chat.completions.stream(
        model="claude", messages=USER, tools=[WEATHER]
    ) as stream:
        final = await stream.get_final_completion()
    assert json.loads(final.choices[0].message.tool_calls[0].function.arguments)["n"] == big
