"""The Responses API's client libraries, unchanged, through a real sidecar to the fakes:
the openai SDK (sync), the OpenAI Agents SDK with its default model, pydantic-ai's
`openai:` model, LangChain's `ChatOpenAI(use_responses_api=True)` and `litellm.responses`.
Each test asserts what the upstream fake received. Routes: resp (an OpenAI agent on the
Responses API: relayed), claude (translated to Anthropic's format)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pydantic
import pytest
import pytest_asyncio
from agent_sidecar import Sidecar
from conftest import SidecarFactory
from fakes import FakeProvider, Reply
from sidecar_support import agent_spec, document, fast_route

WEATHER_CALL = {"id": "call_w1", "name": "get_weather", "arguments": {"city": "Oslo"}}


class City(pydantic.BaseModel):
    name: str
    population: int


CITY_JSON = '{"name": "Oslo", "population": 700000}'


@pytest_asyncio.fixture
async def sidecar(
    sidecar_factory: SidecarFactory, fake_openai: FakeProvider, fake_anthropic: FakeProvider
) -> Sidecar:
    agents = [agent_spec(fake_openai, "resp", api="responses"), agent_spec(fake_anthropic, "claude")]
    return await sidecar_factory(document(agents, [fast_route("resp", ["resp"]), fast_route("claude", ["claude"])]))


@pytest.fixture
def base_url(sidecar: Sidecar) -> str:
    return sidecar.app_url + "/v1"


def weather_tool_result(fake: FakeProvider) -> Any:
    """The function_call_output item (or Claude's tool_result) the client sent back."""
    sent = fake.last_request.json
    if "input" in sent:
        return next(i for i in sent["input"] if i.get("type") == "function_call_output")
    return sent["messages"][-1]["content"][0]


# ---- openai, sync ----------------------------------------------------------------------------


async def test_openai_sync_create_stream_and_parse(
    base_url: str, fake_openai: FakeProvider, fake_anthropic: FakeProvider
) -> None:
    """The sync client's create, stream and parse, relayed and translated (in a worker
    thread, while the sidecar serves on this test's loop)."""

    def run() -> dict[str, Any]:
        with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0) as client:
            plain = client.responses.create(model="resp", input="Hi").output_text
            with client.responses.stream(model="claude", input="Hi") as stream:
                streamed = stream.get_final_response().output_text
            parsed = client.responses.parse(model="claude", input="A city", text_format=City)
            return {"plain": plain, "streamed": streamed, "parsed": parsed.output_parsed}

    fake_anthropic.script(Reply(text="streamed text"), Reply(text=CITY_JSON))
    result = await asyncio.to_thread(run)
    assert result == {"plain": "Hello from openai", "streamed": "streamed text", "parsed": City(name="Oslo", population=700000)}
    assert fake_openai.last_request.path == "/v1/responses"
    assert fake_anthropic.requests[0].json["stream"] is True
    schema = fake_anthropic.last_request.json["tools"][0]["input_schema"]  # Claude's forced tool
    assert schema["title"] == "City" and schema["required"] == ["name", "population"]


# ---- the OpenAI Agents SDK -------------------------------------------------------------------


@pytest_asyncio.fixture
async def agents_client(base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0) as client:
        yield client


@pytest.mark.parametrize("route", ["resp", "claude"])
async def test_openai_agents_sdk_default_model_runs_a_tool(
    agents_client: openai.AsyncOpenAI, fake_openai: FakeProvider, fake_anthropic: FakeProvider, route: str
) -> None:
    """The Agents SDK's default model (the Responses API) runs a tool and answers, on a
    relayed route and on a route translated for Claude."""
    from agents import Agent, RunConfig, Runner, function_tool
    from agents.models.openai_provider import OpenAIProvider

    @function_tool
    def get_weather(city: str) -> str:
        """Weather in a city."""
        return f"rain in {city}"

    fake = fake_openai if route == "resp" else fake_anthropic
    fake.script(Reply(tool_calls=[WEATHER_CALL]), Reply(text="It rains in Oslo."))
    agent = Agent(name="Weather", instructions="Answer briefly.", model=route, tools=[get_weather])
    config = RunConfig(model_provider=OpenAIProvider(openai_client=agents_client), tracing_disabled=True)
    result = await Runner.run(agent, "Weather in Oslo?", run_config=config)
    assert result.final_output == "It rains in Oslo."
    first, second = fake.requests[-2:]
    if route == "resp":
        assert first.path == second.path == "/v1/responses"
        assert first.json["instructions"] == "Answer briefly."
        assert first.json["tools"][0]["name"] == "get_weather"
        assert weather_tool_result(fake) == {"call_id": "call_w1", "output": "rain in Oslo", "type": "function_call_output"}
    else:
        assert first.json["system"] == "Answer briefly."
        assert first.json["tools"][0]["name"] == "get_weather"
        result_block = weather_tool_result(fake)
        assert result_block["tool_use_id"] == "call_w1" and "rain in Oslo" in json.dumps(result_block)


async def test_openai_agents_sdk_streamed(agents_client: openai.AsyncOpenAI, fake_anthropic: FakeProvider) -> None:
    """Runner.run_streamed on a translated route: the text arrives as deltas."""
    from agents import Agent, RunConfig, Runner
    from agents.models.openai_provider import OpenAIProvider

    fake_anthropic.script(Reply(text="one two three"))
    config = RunConfig(model_provider=OpenAIProvider(openai_client=agents_client), tracing_disabled=True)
    run = Runner.run_streamed(Agent(name="Counter", model="claude"), "Count", run_config=config)
    deltas = [
        e.data.delta
        async for e in run.stream_events()
        if e.type == "raw_response_event" and e.data.type == "response.output_text.delta"
    ]
    assert "".join(deltas) == "one two three" == run.final_output
    assert fake_anthropic.last_request.json["stream"] is True


# ---- pydantic-ai ------------------------------------------------------------------------------


@pytest.fixture
def openai_env(base_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "unused")


@pytest.mark.parametrize("route", ["resp", "claude"])
async def test_pydantic_ai_openai_model_structured_and_streamed(
    openai_env: None, fake_openai: FakeProvider, fake_anthropic: FakeProvider, route: str
) -> None:
    """pydantic-ai's `openai:` model (the Responses API) gets structured output and a
    streamed answer, relayed and translated."""
    from pydantic_ai import Agent

    fake = fake_openai if route == "resp" else fake_anthropic
    fake.script(Reply(tool_calls=[{"id": "call_f", "name": "final_result", "arguments": json.loads(CITY_JSON)}]))
    structured = Agent(f"openai:{route}", output_type=City)
    result = await structured.run("A city")
    assert result.output == City(name="Oslo", population=700000)
    assert any(t["name"] == "final_result" for t in fake.last_request.json["tools"])
    fake.script(Reply(text="streamed reply"))
    async with Agent(f"openai:{route}").run_stream("Hi") as stream:
        text = await stream.get_output()
    assert text == "streamed reply"
    assert fake.last_request.json["stream"] is True


# ---- LangChain ---------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["resp", "claude"])
async def test_langchain_use_responses_api(
    base_url: str, fake_openai: FakeProvider, fake_anthropic: FakeProvider, route: str
) -> None:
    """ChatOpenAI(use_responses_api=True): invoke, stream, bind_tools and
    with_structured_output, relayed and translated."""
    from langchain_openai import ChatOpenAI

    fake = fake_openai if route == "resp" else fake_anthropic
    chat = ChatOpenAI(model=route, base_url=base_url, api_key=pydantic.SecretStr("unused"), use_responses_api=True, max_retries=0)
    fake.script(Reply(text="plain"), Reply(text="streamed text"), Reply(tool_calls=[WEATHER_CALL]), Reply(text=CITY_JSON))
    assert (await chat.ainvoke("Hi")).text == "plain"
    assert "".join([c.text async for c in chat.astream("Hi")]) == "streamed text"

    def get_weather(city: str) -> str:
        """Weather in a city."""
        return city

    message = await chat.bind_tools([get_weather]).ainvoke("Weather in Oslo?")
    assert message.tool_calls[0]["name"] == "get_weather" and message.tool_calls[0]["args"] == {"city": "Oslo"}
    assert fake.last_request.json["tools"][0]["name"] == "get_weather"
    city = await chat.with_structured_output(City).ainvoke("A city")
    assert city == City(name="Oslo", population=700000)
    sent = fake.last_request.json
    if route == "resp":
        assert sent["text"]["format"]["name"] == "City"
    else:
        assert "City" in json.dumps(sent)  # the schema reached Claude in its own form


# ---- litellm -------------------------------------------------------------------------------------


@pytest.fixture
def litellm_offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """litellm reads its bundled model list rather than fetching one."""
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    monkeypatch.setitem(os.environ, "LITELLM_TELEMETRY", "False")
    yield


# litellm's own usage object warns when it serializes itself; nothing of ours
@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")
@pytest.mark.parametrize("route", ["resp", "claude"])
async def test_litellm_responses(
    litellm_offline: None, base_url: str, fake_openai: FakeProvider, fake_anthropic: FakeProvider, route: str
) -> None:
    """`litellm.aresponses` with the openai/ prefix, plain and streamed."""
    import litellm

    fake = fake_openai if route == "resp" else fake_anthropic
    fake.script(Reply(text="from litellm", usage=(4, 2)), Reply(text="streamed litellm"))
    options: dict[str, Any] = {"model": f"openai/{route}", "api_base": base_url, "api_key": "unused"}
    answer = await litellm.aresponses(input="Hi", instructions="Be brief", **options)
    assert answer.output[0].content[0].text == "from litellm"
    assert answer.usage.input_tokens == 4
    sent = fake.requests[-1].json
    assert (sent.get("instructions") or sent.get("system")) == "Be brief"
    stream = await litellm.aresponses(input="Hi", stream=True, **options)
    deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "streamed litellm"
