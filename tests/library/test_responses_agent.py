"""An OpenAI agent told to use the Responses API (`api="responses"`), against the openai
fake over real sockets: what it sends, what it reads back, plain and streamed, tools,
structured output, and how its failures reach a router."""

from __future__ import annotations

import json

import pydantic
import pytest
from fakes import CutStream, Fail, FakeProvider, Malformed, Reply, StreamError

from agent import Agent, AgentRouter, Done, Started, TextDelta, ToolCallDelta
from agent.config import AgentConfig
from agent.errors import APIConnectionError, ConfigurationError, RateLimitError, ServerError


def responses_agent(fake: FakeProvider, **options: object) -> Agent:
    return Agent(
        "openai", "gpt-4o-mini", api="responses", base_url=fake.base_url, api_key="test-key",
        **options,  # type: ignore[arg-type]
    )


async def test_plain_call_sends_instructions_and_input(fake_openai: FakeProvider) -> None:
    """A plain call: system becomes `instructions`, the prompt an input message; the
    answer's text, usage, id and finish come from the response object."""
    fake_openai.script(Reply(text="Bonjour", usage=(7, 2)))
    response = await responses_agent(fake_openai).run_async(
        "Say hello", system="Speak French.", temperature=0.3, max_tokens=40
    )
    assert response.text == "Bonjour" and response.finish_reason == "stop"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (7, 2)
    assert response.id is not None and response.id.startswith("resp_")
    sent = fake_openai.last_request
    assert sent.path == "/v1/responses"
    assert sent.headers["authorization"] == "Bearer test-key"
    assert sent.json == {
        "model": "gpt-4o-mini",
        "input": [{"role": "user", "content": "Say hello"}],
        "instructions": "Speak French.",
        "temperature": 0.3,
        "max_output_tokens": 40,
    }


async def test_stream_yields_text_then_done(fake_openai: FakeProvider) -> None:
    """A stream's text deltas arrive as TextDelta events; created / in_progress are none."""
    fake_openai.script(Reply(text="one two three", usage=(3, 3)))
    events = [e async for e in await responses_agent(fake_openai).stream_async("Count")]
    texts = [e.text for e in events if isinstance(e, TextDelta)]
    assert texts == ["one", " two", " three"]
    done = events[-1]
    assert isinstance(done, Done) and done.response.text == "one two three"
    assert done.response.usage.output_tokens == 3
    assert fake_openai.last_request.json["stream"] is True


async def test_tools_round_trip_as_function_call_items(fake_openai: FakeProvider) -> None:
    """The agent runs its tool and sends the call and its output back as input items."""

    def get_weather(city: str) -> str:
        """Weather for a city."""
        return f"sunny in {city}"

    fake_openai.script(
        Reply(tool_calls=[{"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}]),
        Reply(text="It is sunny."),
    )
    response = await responses_agent(fake_openai, tools=[get_weather]).run_async("Weather?")
    assert response.text == "It is sunny."
    first, second = fake_openai.requests
    tool = first.json["tools"][0]
    assert tool["type"] == "function" and tool["name"] == "get_weather"
    assert tool["parameters"]["properties"] == {"city": {"type": "string"}}
    assert second.json["input"][1:] == [
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny in Paris"},
    ]


async def test_streamed_tool_call_pieces(fake_openai: FakeProvider) -> None:
    """A function call streams as ToolCallDelta pieces: id and name first, then arguments."""
    fake_openai.script(Reply(tool_calls=[{"id": "call_9", "name": "lookup", "arguments": {"q": "long query"}}]))
    events = [e async for e in await responses_agent(fake_openai).stream_async("Find it")]
    pieces = [e for e in events if isinstance(e, ToolCallDelta)]
    assert pieces[0].id == "call_9" and pieces[0].name == "lookup"
    assert json.loads("".join(p.arguments for p in pieces)) == {"q": "long query"}
    done = events[-1]
    assert isinstance(done, Done) and done.response.finish_reason == "tool_calls"
    assert done.response.tool_calls[0].arguments == {"q": "long query"}


async def test_structured_output_as_text_format(fake_openai: FakeProvider) -> None:
    """json() asks with `text.format` (strict when the schema allows) and validates."""

    class City(pydantic.BaseModel):
        name: str
        population: int

    fake_openai.script(Reply(text='{"name": "Paris", "population": 2100000}'))
    response = await responses_agent(fake_openai).json_async("A city", City)
    assert response.output == City(name="Paris", population=2100000)
    fmt = fake_openai.last_request.json["text"]["format"]
    assert fmt["type"] == "json_schema" and fmt["name"] == "City" and fmt["strict"] is True
    assert fmt["schema"]["additionalProperties"] is False


async def test_length_finish_and_http_errors(fake_openai: FakeProvider) -> None:
    """An incomplete response is a "length" finish; HTTP errors are the typed errors."""
    fake_openai.script(Reply(text="cut", finish_reason="length"), Fail(429, retry_after=3))
    agent = responses_agent(fake_openai)
    assert (await agent.run_async("x")).finish_reason == "length"
    with pytest.raises(RateLimitError) as info:
        await agent.run_async("x")
    assert info.value.retry_after == 3


async def test_in_stream_error_and_cut_stream_raise(fake_openai: FakeProvider) -> None:
    """An `error` event after content is the typed error; a stream that ends without
    `response.completed` is a connection error."""
    agent = responses_agent(fake_openai)
    fake_openai.script(StreamError(after=1, reply=Reply(text="a b c"), error_type="server_error"))
    with pytest.raises(ServerError):
        async for _ in await agent.stream_async("x"):
            pass
    fake_openai.script(CutStream(after=1, reply=Reply(text="a b c")))
    with pytest.raises(APIConnectionError):
        async for _ in await agent.stream_async("x"):
            pass
    delta = {"type": "response.output_text.delta", "sequence_number": 0, "item_id": "msg_1",
             "output_index": 0, "content_index": 0, "delta": "half"}
    clean_end = b"event: response.output_text.delta\ndata: " + json.dumps(delta).encode() + b"\n\n"
    fake_openai.script(Malformed(body=clean_end, content_type="text/event-stream"))
    with pytest.raises(APIConnectionError, match=r"response\.completed"):
        async for _ in await agent.stream_async("x"):
            pass


async def test_failure_before_content_falls_back_unseen(fake_openai: FakeProvider, fake_anthropic: FakeProvider) -> None:
    """`response.created` and `in_progress` are not content: an error right after them
    lets the router fall back, and the caller's stream starts at the second agent."""
    fake_openai.script(StreamError(after=0, reply=Reply(text="never shown")))
    fake_anthropic.script(Reply(text="from claude"))
    router = AgentRouter(
        [
            responses_agent(fake_openai),
            Agent("anthropic", "claude-haiku", base_url=fake_anthropic.base_url, api_key="test-key"),
        ],
        retries=0,
    )
    events = [e async for e in await router.stream_async("x")]
    assert isinstance(events[0], Started) and events[0].provider == "anthropic"
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "from claude"
    assert fake_openai.last_request.path == "/v1/responses"


def test_sync_call_and_config_option(fake_openai_sync: FakeProvider) -> None:
    """`api: responses` in a config document builds the same agent (sync call here); any
    provider outside OpenAI's format refuses the option, in the document and at call time."""
    agent = AgentConfig.model_validate(
        {"name": "r", "provider": "openai", "model": "gpt-4o-mini", "api": "responses",
         "base_url": fake_openai_sync.base_url, "api_key": "test-key"}
    ).build()
    assert agent.wire == "responses"
    assert agent.run("hi").text == "Hello from openai"
    assert fake_openai_sync.last_request.path == "/v1/responses"
    with pytest.raises(pydantic.ValidationError, match="Responses API"):
        AgentConfig.model_validate({"name": "c", "provider": "anthropic", "model": "claude-haiku", "api": "responses"})
    with pytest.raises(ConfigurationError, match="only OpenAI-format agents"):
        Agent("anthropic", "claude-haiku", api="responses", api_key="k").run("hi")


async def test_documents_images_and_a_forced_tool_in_the_responses_shape(
    fake_openai: FakeProvider,
) -> None:
    """What was tried: a message with text, an image, an inline PDF, a document by URL and
    a plain-text document, and a named tool choice without parallel calls: each part
    goes as the Responses API's input part, the choice flat, as OpenAI documents them."""
    from agent.types import DocumentPart, ImagePart, Message, TextPart, ToolChoice, ToolSpec
    from agent.types import Request as EngineRequest

    fake_openai.script(Reply(text="ok"))
    parts = [
        TextPart("Read these"),
        ImagePart(url="https://example.invalid/cat.png"),
        DocumentPart(data="JVBERi0=", name="a.pdf"),
        DocumentPart(url="https://example.invalid/b.pdf"),
        DocumentPart(text="plain notes"),
    ]
    request = EngineRequest(
        messages=[Message("user", parts)],
        tools=[ToolSpec("lookup", "Looks up", {"type": "object", "properties": {}})],
        tool_choice=ToolChoice("tool", "lookup"),
        parallel_tool_calls=False,
    )
    await responses_agent(fake_openai).run_request_async(request)
    sent = fake_openai.last_request.json
    assert sent["input"][0]["content"] == [
        {"type": "input_text", "text": "Read these"},
        {"type": "input_image", "image_url": "https://example.invalid/cat.png"},
        {"type": "input_file", "file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"},
        {"type": "input_file", "file_url": "https://example.invalid/b.pdf"},
        {"type": "input_text", "text": "plain notes"},
    ]
    assert sent["tool_choice"] == {"type": "function", "name": "lookup"}
    assert sent["parallel_tool_calls"] is False
