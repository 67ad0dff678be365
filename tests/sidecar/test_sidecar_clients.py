"""The popular client libraries through the sidecar, as their users call them: each test
drives a real library against a real sidecar, and the fake provider behind the route
records what it received. Routes (conftest): gpt (OpenAI), claude (Anthropic), default
(OpenAI, then Anthropic). A same-format route relays the library's own body; a
cross-format one translates it, and the tests check that the meaning arrived.

The compatibility table in docs/sidecar.md names these tests cell by cell."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from agent_sidecar import Sidecar
from fakes import FakeProvider, Reply
from pydantic import BaseModel

# litellm fetches its price table from the internet at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from langchain_anthropic import ChatAnthropic
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic_ai import Agent
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.anthropic import AnthropicProvider
from pydantic_ai.providers.openai import OpenAIProvider

USER: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
PARIS = {"city": "Paris"}


class City(BaseModel):
    city: str


@tool
def get_weather(city: str) -> str:
    """Weather in a city."""
    return "Sunny"


def fake_for(route: str, fake_openai: FakeProvider, fake_anthropic: FakeProvider) -> FakeProvider:
    return fake_openai if route == "gpt" else fake_anthropic


def lc_openai(sidecar: Sidecar, route: str) -> ChatOpenAI:
    return ChatOpenAI(
        model=route, base_url=sidecar.app_url + "/v1", api_key="unused", max_retries=0
    )  # type: ignore[arg-type]


def lc_anthropic(sidecar: Sidecar, route: str) -> ChatAnthropic:
    return ChatAnthropic(model=route, base_url=sidecar.app_url, api_key="unused", max_retries=0)  # type: ignore[call-arg,arg-type]


def tool_names(fake: FakeProvider) -> list[str]:
    """The tools the provider was offered, whichever format it speaks."""
    sent = fake.last_request.json
    return [t.get("name") or t["function"]["name"] for t in sent.get("tools") or ()]


def forced(fake: FakeProvider) -> str | None:
    """The tool the provider was made to call, whichever format it speaks."""
    choice = fake.last_request.json.get("tool_choice")
    if isinstance(choice, dict):  # a named tool, or Anthropic's {"type": "any"}
        return choice.get("name") or (choice.get("function") or {}).get("name") or choice["type"]
    return choice


# ---- langchain-openai -----------------------------------------------------------------------


@pytest.mark.parametrize("route", ["gpt", "claude"])
async def test_langchain_openai_invoke_and_stream(
    sidecar: Sidecar, fake_openai: FakeProvider, fake_anthropic: FakeProvider, route: str
) -> None:
    fake = fake_for(route, fake_openai, fake_anthropic)
    fake.script(Reply(text="Sunny in Paris", usage=(12, 4)))
    model = lc_openai(sidecar, route)
    answer = await model.ainvoke("Weather in Paris?")
    assert answer.content == "Sunny in Paris"
    assert answer.usage_metadata is not None
    assert (answer.usage_metadata["input_tokens"], answer.usage_metadata["output_tokens"]) == (
        12,
        4,
    )
    assert fake.last_request.json["messages"][-1]["content"] == "Weather in Paris?"

    fake.script(Reply(text="Sunny in Paris", usage=(12, 4)))
    # With a base_url of its own, langchain-openai asks for stream usage only when told.
    chunks = [chunk async for chunk in model.astream("Weather in Paris?", stream_usage=True)]
    assert "".join(str(c.content) for c in chunks) == "Sunny in Paris"
    usage = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert usage and usage[-1]["input_tokens"] == 12
    assert fake.last_request.json["stream"] is True


@pytest.mark.parametrize("route", ["gpt", "claude"])
async def test_langchain_openai_structured_output(
    sidecar: Sidecar, fake_openai: FakeProvider, fake_anthropic: FakeProvider, route: str
) -> None:
    fake = fake_for(route, fake_openai, fake_anthropic)
    if route == "gpt":
        fake.script(Reply(text='{"city": "Paris"}'))
    else:  # Claude answers structured output through its forced tool
        fake.script(Reply(tool_calls=[{"name": "structured_output", "arguments": PARIS}]))
    structured = lc_openai(sidecar, route).with_structured_output(City)
    assert await structured.ainvoke("Where?") == City(city="Paris")
    sent = fake.last_request.json
    if route == "gpt":
        assert sent["response_format"]["json_schema"]["name"] == "City"
    else:
        assert forced(fake) == "structured_output"
        assert sent["tools"][0]["input_schema"]["properties"] == {
            "city": {"title": "City", "type": "string"}
        }


@pytest.mark.parametrize("route", ["gpt", "claude"])
@pytest.mark.parametrize(
    ("choice", "as_openai", "as_anthropic"),
    [("get_weather", "get_weather", "get_weather"), ("any", "required", "any")],
)
async def test_langchain_openai_bind_tools_with_a_forced_choice(
    sidecar: Sidecar,
    fake_openai: FakeProvider,
    fake_anthropic: FakeProvider,
    route: str,
    choice: str,
    as_openai: str,
    as_anthropic: str,
) -> None:
    fake = fake_for(route, fake_openai, fake_anthropic)
    fake.script(Reply(tool_calls=[{"name": "get_weather", "arguments": PARIS}]))
    model = lc_openai(sidecar, route).bind_tools([get_weather], tool_choice=choice)
    answer = await model.ainvoke("Weather in Paris?")
    assert [(c["name"], c["args"]) for c in answer.tool_calls] == [("get_weather", PARIS)]
    assert tool_names(fake) == ["get_weather"]
    assert forced(fake) == (as_openai if route == "gpt" else as_anthropic)


# ---- langchain-anthropic --------------------------------------------------------------------


@pytest.mark.parametrize("route", ["claude", "gpt"])
async def test_langchain_anthropic_invoke_and_stream(
    sidecar: Sidecar, fake_openai: FakeProvider, fake_anthropic: FakeProvider, route: str
) -> None:
    fake = fake_for(route, fake_openai, fake_anthropic)
    fake.script(Reply(text="Sunny in Paris", usage=(12, 4)))
    model = lc_anthropic(sidecar, route)
    answer = await model.ainvoke("Weather in Paris?")
    assert answer.content == "Sunny in Paris"
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["input_tokens"] == 12
    assert answer.usage_metadata["output_tokens"] == 4

    fake.script(Reply(text="Sunny in Paris", usage=(12, 4)))
    chunks = [chunk async for chunk in model.astream("Weather in Paris?")]
    text = "".join(
        part["text"] if isinstance(part, dict) else part
        for c in chunks
        for part in (c.content if isinstance(c.content, list) else [c.content])
    )
    assert text == "Sunny in Paris"
    assert fake.last_request.json["stream"] is True
    total = chunks[0]
    for c in chunks[1:]:
        total += c  # type: ignore[assignment]
    assert total.usage_metadata is not None
    assert (total.usage_metadata["input_tokens"], total.usage_metadata["output_tokens"]) == (12, 4)


@pytest.mark.parametrize("route", ["claude", "gpt"])
async def test_langchain_anthropic_structured_output(
    sidecar: Sidecar, fake_openai: FakeProvider, fake_anthropic: FakeProvider, route: str
) -> None:
    fake = fake_for(route, fake_openai, fake_anthropic)
    # langchain-anthropic forces a tool named after the schema.
    fake.script(Reply(tool_calls=[{"name": "City", "arguments": PARIS}]))
    structured = lc_anthropic(sidecar, route).with_structured_output(City)
    assert await structured.ainvoke("Where?") == City(city="Paris")
    assert tool_names(fake) == ["City"] and forced(fake) == "City"

    # ... or asks for the schema itself (output_format / output_config).
    fake.script(Reply(text='{"city": "Paris"}'))
    native = lc_anthropic(sidecar, route).with_structured_output(City, method="json_schema")
    assert await native.ainvoke("Where?") == City(city="Paris")
    sent = fake.last_request.json
    if route == "gpt":
        assert sent["response_format"]["type"] == "json_schema"
        assert sent["response_format"]["json_schema"]["schema"]["properties"]["city"]
    else:
        assert "output_format" in sent or "output_config" in sent


@pytest.mark.parametrize("route", ["claude", "gpt"])
async def test_langchain_anthropic_bind_tools_with_a_forced_choice(
    sidecar: Sidecar, fake_openai: FakeProvider, fake_anthropic: FakeProvider, route: str
) -> None:
    fake = fake_for(route, fake_openai, fake_anthropic)
    fake.script(Reply(tool_calls=[{"name": "get_weather", "arguments": PARIS}]))
    model = lc_anthropic(sidecar, route).bind_tools([get_weather], tool_choice="get_weather")
    answer = await model.ainvoke("Weather in Paris?")
    assert [(c["name"], c["args"]) for c in answer.tool_calls] == [("get_weather", PARIS)]
    assert tool_names(fake) == ["get_weather"] and forced(fake) == "get_weather"

    fake.script(Reply(tool_calls=[{"name": "get_weather", "arguments": PARIS}]))
    anyone = lc_anthropic(sidecar, route).bind_tools([get_weather], tool_choice="any")
    await anyone.ainvoke("Weather in Paris?")
    assert fake.last_request.json["tool_choice"] == (
        {"type": "any"} if route == "claude" else "required"
    )


# ---- pydantic-ai ----------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["gpt", "claude"])
async def test_pydantic_ai_openai_chat_model(
    sidecar: Sidecar, fake_openai: FakeProvider, fake_anthropic: FakeProvider, route: str
) -> None:
    fake = fake_for(route, fake_openai, fake_anthropic)
    provider = OpenAIProvider(base_url=sidecar.app_url + "/v1", api_key="unused")
    agent = Agent(OpenAIChatModel(route, provider=provider))
    fake.script(Reply(text="Sunny in Paris", usage=(12, 4)))
    result = await agent.run("Weather in Paris?")
    assert result.output == "Sunny in Paris"
    assert (result.usage.input_tokens, result.usage.output_tokens) == (12, 4)

    # Structured output: pydantic-ai offers a final_result tool and requires a call.
    fake.script(Reply(tool_calls=[{"name": "final_result", "arguments": PARIS}]))
    typed = Agent(OpenAIChatModel(route, provider=provider), output_type=City)
    assert (await typed.run("Where?")).output == City(city="Paris")
    assert tool_names(fake) == ["final_result"]
    assert forced(fake) == ("required" if route == "gpt" else "any")


@pytest.mark.parametrize("route", ["claude", "gpt"])
async def test_pydantic_ai_anthropic_model(
    sidecar: Sidecar, fake_openai: FakeProvider, fake_anthropic: FakeProvider, route: str
) -> None:
    fake = fake_for(route, fake_openai, fake_anthropic)
    provider = AnthropicProvider(base_url=sidecar.app_url, api_key="unused")
    fake.script(Reply(text="Sunny in Paris", usage=(12, 4)))
    result = await Agent(AnthropicModel(route, provider=provider)).run("Weather in Paris?")
    assert result.output == "Sunny in Paris"
    assert (result.usage.input_tokens, result.usage.output_tokens) == (12, 4)

    fake.script(Reply(tool_calls=[{"name": "final_result", "arguments": PARIS}]))
    typed = Agent(AnthropicModel(route, provider=provider), output_type=City)
    assert (await typed.run("Where?")).output == City(city="Paris")
    assert tool_names(fake) == ["final_result"]

    # A tool the agent runs: the call goes out, its result comes back next turn.
    fake.script(
        Reply(tool_calls=[{"name": "weather", "arguments": PARIS}]), Reply(text="It is sunny.")
    )
    with_tool = Agent(AnthropicModel(route, provider=provider))

    @with_tool.tool_plain
    def weather(city: str) -> str:
        return f"Sunny in {city}"

    assert (await with_tool.run("Weather in Paris?")).output == "It is sunny."
    history = str(fake.last_request.json["messages"])
    assert "Sunny in Paris" in history  # the tool's result reached the provider


# ---- litellm as a client --------------------------------------------------------------------


@pytest.mark.parametrize(("prefix", "route"), [("openai", "gpt"), ("openai", "claude")])
async def test_litellm_completion_plain_and_streamed(
    sidecar: Sidecar,
    fake_openai: FakeProvider,
    fake_anthropic: FakeProvider,
    prefix: str,
    route: str,
) -> None:
    fake = fake_for(route, fake_openai, fake_anthropic)
    options: dict[str, Any] = {
        "model": f"{prefix}/{route}",
        "api_base": sidecar.app_url + "/v1",
        "api_key": "unused",
        "messages": USER,
    }
    fake.script(Reply(text="Sunny in Paris", usage=(12, 4)))
    answer = await litellm.acompletion(**options)
    assert answer.choices[0].message.content == "Sunny in Paris"  # type: ignore[union-attr]
    assert answer.usage.prompt_tokens == 12  # type: ignore[union-attr]
    assert fake.last_request.json["messages"][-1]["content"] == "Weather in Paris?"

    fake.script(Reply(text="Sunny in Paris"))
    stream = await litellm.acompletion(**options, stream=True)
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])  # type: ignore[union-attr]
    assert text == "Sunny in Paris"
    assert fake.last_request.json["stream"] is True


async def test_litellm_anthropic_client_through_the_messages_endpoint(
    sidecar: Sidecar, fake_openai: FakeProvider
) -> None:
    # litellm's anthropic/ prefix speaks Messages to the sidecar; an OpenAI agent answers.
    fake_openai.script(Reply(text="Sunny in Paris", usage=(12, 4)))
    answer = await litellm.acompletion(
        model="anthropic/gpt", api_base=sidecar.app_url, api_key="unused", messages=USER
    )
    assert answer.choices[0].message.content == "Sunny in Paris"  # type: ignore[union-attr]
    assert fake_openai.last_request.json["messages"][-1]["content"] == "Weather in Paris?"


# ---- the llm CLI ----------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["gpt", "claude"])
async def test_the_llm_cli(
    sidecar: Sidecar,
    fake_openai: FakeProvider,
    fake_anthropic: FakeProvider,
    tmp_path: Path,
    route: str,
) -> None:
    fake = fake_for(route, fake_openai, fake_anthropic)
    (tmp_path / "extra-openai-models.yaml").write_text(
        f"- model_id: sidecar\n  model_name: {route}\n  api_base: {sidecar.app_url}/v1\n"
    )
    fake.script(Reply(text="Sunny in Paris"))
    llm = Path(sys.executable).with_name("llm")
    process = await asyncio.create_subprocess_exec(
        str(llm),
        "-m",
        "sidecar",
        "--key",
        "unused",
        "--no-log",
        "Weather in Paris?",
        env={**os.environ, "LLM_USER_PATH": str(tmp_path)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert out.decode().strip() == "Sunny in Paris"
    assert fake.last_request.json["messages"][-1]["content"] == "Weather in Paris?"


# ---- the official SDKs: parse, logprobs, tools and thinking across formats --------------


@pytest.mark.parametrize("route", ["gpt", "claude"])
async def test_openai_parse(
    openai_client: openai.AsyncOpenAI,
    fake_openai: FakeProvider,
    fake_anthropic: FakeProvider,
    route: str,
) -> None:
    fake = fake_for(route, fake_openai, fake_anthropic)
    if route == "gpt":
        fake.script(Reply(text='{"city": "Paris"}'))
    else:
        fake.script(Reply(tool_calls=[{"name": "structured_output", "arguments": PARIS}]))
    answer = await openai_client.chat.completions.parse(
        model=route, messages=USER, response_format=City
    )
    assert answer.choices[0].message.parsed == City(city="Paris")
    if route == "claude":
        assert forced(fake) == "structured_output"
    else:
        assert fake.last_request.json["response_format"]["json_schema"]["strict"] is True


async def test_openai_logprobs_same_format_and_named_across(
    sidecar: Sidecar, openai_client: openai.AsyncOpenAI, fake_anthropic: FakeProvider
) -> None:
    same = await openai_client.chat.completions.with_raw_response.create(
        model="gpt", messages=USER, logprobs=True, top_logprobs=2
    )
    content = same.parse().choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and "".join(t.token for t in content) == "Hello from openai"
    # Claude has no logprobs: the answer comes without, and the header says so.
    across = await openai_client.chat.completions.with_raw_response.create(
        model="claude", messages=USER, logprobs=True, top_logprobs=2
    )
    assert across.parse().choices[0].logprobs is None
    assert across.headers["x-agent-ignored-fields"] == "logprobs,top_logprobs"
    assert "logprobs" not in fake_anthropic.last_request.json


async def test_anthropic_tool_use_on_an_openai_route(
    anthropic_client: anthropic.AsyncAnthropic, fake_openai: FakeProvider
) -> None:
    tools: Any = [
        {
            "name": "get_weather",
            "description": "Weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    fake_openai.script(Reply(tool_calls=[{"name": "get_weather", "arguments": PARIS}]))
    first = await anthropic_client.messages.create(
        model="gpt", max_tokens=64, messages=USER, tools=tools
    )
    use = first.content[0]
    assert use.type == "tool_use" and use.input == PARIS and first.stop_reason == "tool_use"
    # The result goes back; OpenAI gets the call and its result, paired by id.
    history: Any = [
        *USER,
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny"}],
        },
    ]
    fake_openai.script(Reply(text="It is sunny."))
    async with anthropic_client.messages.stream(
        model="gpt", max_tokens=64, messages=history, tools=tools
    ) as stream:
        final = await stream.get_final_message()
    assert final.content[0].text == "It is sunny."  # type: ignore[union-attr]
    sent = fake_openai.last_request.json["messages"]
    assert sent[1]["tool_calls"][0]["id"] == use.id
    assert sent[2] == {"role": "tool", "tool_call_id": use.id, "content": "Sunny"}


async def test_anthropic_thinking_on_an_openai_route(
    anthropic_client: anthropic.AsyncAnthropic, fake_openai: FakeProvider
) -> None:
    # Thinking is Claude's own: an OpenAI agent answers without it, the header says so,
    # and an earlier turn's signed thinking block stays out of the OpenAI history.
    history: Any = [
        *USER,
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Paris...", "signature": "c2lnbmVk"},
                {"type": "text", "text": "Sunny."},
            ],
        },
        {"role": "user", "content": "And tomorrow?"},
    ]
    raw = await anthropic_client.messages.with_raw_response.create(
        model="gpt",
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=history,
    )
    assert (await raw.parse()).content[0].type == "text"
    assert raw.headers["x-agent-ignored-fields"] == "thinking"
    sent = fake_openai.last_request.json
    assert sent["messages"][1] == {"role": "assistant", "content": "Sunny."}
    assert "thinking" not in sent


# ---- the page that lists these --------------------------------------------------------------


def test_the_compatibility_table_names_tests_that_exist() -> None:
    # Every cell of docs/sidecar.md's table names a test; a renamed or deleted test
    # would leave a cell that nothing backs.
    import re

    here = Path(__file__).parent
    page = (here.parents[1] / "docs" / "sidecar.md").read_text()
    table = page.split("## Client compatibility", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"`(\w+)::(test_\w+)(?:\[[^\]]*\])?`", table)
    assert len(named) >= 20
    for short, name in named:
        source = (here / f"test_sidecar_{short}.py").read_text()
        assert f"def {name}(" in source, f"{short}::{name} is in the table but not a test"
