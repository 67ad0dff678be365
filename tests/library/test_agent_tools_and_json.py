"""Tools (the agent runs the loop) and structured output (each provider's mechanism)."""

from __future__ import annotations

import pytest
from fakes import Reply
from pydantic import BaseModel

from agent import Agent, Tool, ToolCallDelta, ToolResult
from agent.errors import OutputValidationError

calls: list[str] = []


def get_weather(city: str, unit: str = "celsius") -> dict[str, object]:
    """Current weather for a city.

    Longer text that is not part of the description.
    """
    calls.append(city)
    return {"city": city, "temp": 21, "unit": unit}


async def get_time(zone: str) -> str:
    """The time in a time zone."""
    return f"12:00 in {zone}"


class Analysis(BaseModel):
    sentiment: str
    keywords: list[str]


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
async def test_tool_loop_runs_tools_and_records_calls(fake_factory, use_fake, kind) -> None:
    fake = await fake_factory(kind)
    use_fake(fake)
    fake.script(
        Reply(
            tool_calls=[
                {"name": "get_weather", "arguments": {"city": "Paris"}},
                {"name": "get_time", "arguments": {"zone": "CET"}},
            ]
        ),
        Reply(text="It is 21 degrees in Paris at noon.", usage=(30, 9)),
    )
    model = {"openai": "gpt-4o", "anthropic": "claude-sonnet", "gemini": "gemini-flash"}[kind]
    agent = Agent(provider=kind, model=model, tools=[get_weather, get_time])
    response = await agent.run_async("Weather in Paris?")
    assert response.text == "It is 21 degrees in Paris at noon."
    assert [c.name for c in response.tool_calls] == ["get_weather", "get_time"]
    assert response.tool_calls[0].result == {"city": "Paris", "temp": 21, "unit": "celsius"}
    assert response.tool_calls[1].result == "12:00 in CET"  # the async tool was awaited
    assert len(fake.requests) == 2
    first, second = fake.requests[0].json, fake.requests[1].json
    # The schema came from the signature and the docstring's first paragraph.
    declared = str(first)
    assert "Current weather for a city." in declared and "Longer text" not in declared
    assert "21" in str(second)  # the tool's result went back to the model
    assert response.usage.input_tokens >= 30  # usage adds up over both model turns


def test_tool_schema_from_signature() -> None:
    spec = Tool(get_weather)
    assert spec.name == "get_weather"
    assert spec.parameters["required"] == ["city"]
    assert spec.parameters["properties"]["unit"]["default"] == "celsius"


def test_tools_without_function_come_back_to_the_caller(fake_openai_sync, use_fake) -> None:
    use_fake(fake_openai_sync)
    fake_openai_sync.script(Reply(tool_calls=[{"name": "lookup", "arguments": {"q": "x"}}]))
    spec = Tool(
        name="lookup",
        description="Look up",
        parameters={"type": "object", "properties": {"q": {"type": "string"}}},
    )
    response = Agent(provider="openai", model="gpt-4o").run("Find x", tools=[spec])
    assert response.finish_reason == "tool_calls"
    assert response.tool_calls[0].name == "lookup" and response.tool_calls[0].arguments == {
        "q": "x"
    }
    assert len(fake_openai_sync.requests) == 1


def test_a_failing_tool_is_reported_to_the_model(fake_anthropic_sync, use_fake) -> None:
    def explode(x: int) -> int:
        """Always fails."""
        raise ValueError("boom")

    use_fake(fake_anthropic_sync)
    fake_anthropic_sync.script(
        Reply(tool_calls=[{"name": "explode", "arguments": {"x": 1}}]),
        Reply(text="The tool failed."),
    )
    response = Agent(provider="anthropic", model="claude-haiku", tools=[explode]).run("Go")
    assert response.tool_calls[0].error == "ValueError: boom"
    assert "boom" in str(fake_anthropic_sync.requests[1].json["messages"][-1])


async def test_streaming_tool_loop_emits_calls_and_results(fake_openai, use_fake) -> None:
    use_fake(fake_openai)
    fake_openai.script(
        Reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}]),
        Reply(text="Cold in Oslo."),
    )
    agent = Agent(provider="openai", model="gpt-4o", tools=[get_weather])
    events = [e async for e in await agent.stream_async("Weather?")]
    assert any(isinstance(e, ToolCallDelta) and e.name == "get_weather" for e in events)
    results = [e for e in events if isinstance(e, ToolResult)]
    assert results[0].call.result["city"] == "Oslo"
    assert events[-1].response.text == "Cold in Oslo."


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
async def test_json_uses_native_mechanism_and_validates(fake_factory, use_fake, kind) -> None:
    fake = await fake_factory(kind)
    use_fake(fake)
    payload = '{"sentiment": "positive", "keywords": ["great", "product"]}'
    if kind == "anthropic":  # structured output arrives as the forced tool's input
        import json

        fake.script(
            Reply(tool_calls=[{"name": "structured_output", "arguments": json.loads(payload)}])
        )
    else:
        fake.script(Reply(text=payload))
    model = {"openai": "gpt-4o", "anthropic": "claude-sonnet", "gemini": "gemini-flash"}[kind]
    response = await Agent(provider=kind, model=model).json_async(
        "Analyze: Great product!", schema=Analysis
    )
    assert isinstance(response.output, Analysis)
    assert response.output.sentiment == "positive"
    assert response.output.keywords == ["great", "product"]
    sent = fake.last_request.json
    if kind == "openai":
        fmt = sent["response_format"]
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "Analysis"
        assert fmt["json_schema"]["strict"] is True
        assert fmt["json_schema"]["schema"]["additionalProperties"] is False
    elif kind == "anthropic":
        assert sent["tool_choice"] == {"type": "tool", "name": "structured_output"}
    else:
        assert sent["generationConfig"]["responseMimeType"] == "application/json"
        assert "sentiment" in str(sent["generationConfig"]["responseJsonSchema"])


async def test_json_streams_for_anthropic_structured_output(fake_anthropic, use_fake) -> None:
    use_fake(fake_anthropic)
    fake_anthropic.script(
        Reply(
            tool_calls=[
                {"name": "structured_output", "arguments": {"sentiment": "ok", "keywords": []}}
            ]
        )
    )
    agent = Agent(provider="anthropic", model="claude-sonnet")
    events = [e async for e in await agent.stream_async("x", schema=Analysis)]
    done = events[-1].response
    assert isinstance(done.output, Analysis) and done.output.sentiment == "ok"
    assert done.tool_calls == []  # our mechanism is not the caller's tool call


def test_json_that_does_not_validate_shows_what_came_back(fake_openai_sync, use_fake) -> None:
    use_fake(fake_openai_sync)
    fake_openai_sync.script(Reply(text='{"sentiment": 3}'))
    with pytest.raises(OutputValidationError) as info:
        Agent(provider="openai", model="gpt-4o").json("Analyze", schema=Analysis)
    err = info.value
    assert err.raw_text == '{"sentiment": 3}'
    assert "keywords" in err.message and "Analysis" in err.message
    assert '{"sentiment": 3}' in str(err)
    assert err.provider == "openai"


BIG = 2**70  # beyond the 64 bits orjson keeps exact


def count_grains(n: int) -> str:
    """Count grains of sand."""
    return f"{n} grains, {type(n).__name__}; next: {n + 1}"


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_integers_beyond_64_bits_in_tool_arguments_stay_exact(
    fake_factory, use_fake, kind, stream
) -> None:
    fake = await fake_factory(kind)
    use_fake(fake)
    fake.script(
        Reply(tool_calls=[{"name": "count_grains", "arguments": {"n": BIG}}]),
        Reply(text="That is a lot of sand."),
    )
    model = {"openai": "gpt-4o", "anthropic": "claude-sonnet", "gemini": "gemini-flash"}[kind]
    agent = Agent(provider=kind, model=model, tools=[count_grains])
    if stream:
        events = [e async for e in await agent.stream_async("How many grains?")]
        response = events[-1].response
    else:
        response = await agent.run_async("How many grains?")
    call = response.tool_calls[0]
    assert call.arguments == {"n": BIG} and isinstance(call.arguments["n"], int)
    assert call.result == f"{BIG} grains, int; next: {BIG + 1}"
    # The next turn carried the model's call back, exactly, and the tool's result.
    resent = fake.requests[1].raw.decode()
    assert str(BIG) in resent and str(BIG + 1) in resent


def test_messages_with_big_integers_are_sent_exactly(fake_openai_sync, use_fake) -> None:
    use_fake(fake_openai_sync)
    history = [
        {"role": "user", "content": "How many?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "count_grains", "arguments": f'{{"n": {BIG}}}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "many"},
    ]
    Agent(provider="openai", model="gpt-4o").run(history)
    sent = fake_openai_sync.requests[0].json["messages"][1]["tool_calls"][0]
    assert sent["function"]["arguments"] == f'{{"n":{BIG}}}'
