"""One Agent against each provider's fake, over real sockets: call shapes, wire details,
the environment-variable conventions and model aliases."""

from __future__ import annotations

import pytest
from fakes import FakeProvider, Reply

from agent import Agent, Done, ReasoningDelta, TextDelta
from agent.errors import ConfigurationError


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
async def test_run_async_each_provider(fake_factory, use_fake, kind: str) -> None:
    fake: FakeProvider = await fake_factory(kind)
    fake.script(Reply(text="The answer is 42.", usage=(11, 5)))
    use_fake(fake)
    model = {"openai": "gpt-4o", "anthropic": "claude-sonnet", "gemini": "gemini-flash"}[kind]
    response = await Agent(provider=kind, model=model).run_async("What is the answer?")
    assert response.text == "The answer is 42." == response.output
    assert response.provider == kind
    assert response.usage.input_tokens == 11 and response.usage.output_tokens == 5
    assert response.cost_known and response.cost_estimate > 0
    assert response.finish_reason == "stop"
    assert response.latency_ms > 0
    assert response.raw is not None


def test_run_sync_openai_wire_details(fake_openai_sync, use_fake) -> None:
    use_fake(fake_openai_sync)
    agent = Agent(provider="openai", model="gpt-4o-mini")
    response = agent.run("Hello", system="Be brief.", temperature=0.2, max_tokens=50, stop="END")
    assert response.text == "Hello from openai"
    sent = fake_openai_sync.last_request
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer test-key"
    assert sent.json["model"] == "gpt-4o-mini"
    assert sent.json["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent.json["messages"][1] == {"role": "user", "content": "Hello"}
    assert sent.json["temperature"] == 0.2
    assert sent.json["max_completion_tokens"] == 50
    assert sent.json["stop"] == ["END"]


def test_anthropic_wire_details_and_alias(fake_anthropic_sync, use_fake) -> None:
    use_fake(fake_anthropic_sync)
    response = Agent(provider="anthropic", model="claude-haiku").run("Hi", system="Terse.")
    assert response.text == "Hello from anthropic"
    sent = fake_anthropic_sync.last_request
    assert sent.path == "/v1/messages"  # ANTHROPIC_BASE_URL is the host: /v1 is ours to add
    assert sent.headers["x-api-key"] == "test-key"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert sent.json["model"] == "claude-haiku-4-5"  # the short name resolved
    assert sent.json["max_tokens"] == 4096  # required by the API: we always send it
    assert sent.json["system"] == "Terse."


def test_gemini_wire_details(fake_gemini_sync, use_fake) -> None:
    use_fake(fake_gemini_sync)
    Agent(provider="gemini", model="gemini-pro").run("Hi", max_tokens=10)
    sent = fake_gemini_sync.last_request
    assert sent.path == "/v1beta/models/gemini-2.5-pro:generateContent"
    assert sent.headers["x-goog-api-key"] == "test-key"
    assert sent.json["contents"] == [{"role": "user", "parts": [{"text": "Hi"}]}]
    assert sent.json["generationConfig"] == {"maxOutputTokens": 10}


def test_google_api_key_is_accepted_for_gemini(fake_gemini_sync, monkeypatch) -> None:
    monkeypatch.setenv("GEMINI_BASE_URL", fake_gemini_sync.url)
    monkeypatch.setenv("GOOGLE_API_KEY", "test-key")
    assert Agent(provider="gemini", model="gemini-flash").run("Hi").text == "Hello from gemini"


@pytest.mark.parametrize("kind", ["deepseek", "groq"])
async def test_openai_compatible_presets_use_their_variables(
    fake_factory, use_fake, kind: str
) -> None:
    fake = await fake_factory(kind)
    use_fake(fake, kind)
    model = {"deepseek": "deepseek-chat", "groq": "llama-3.1-70b"}[kind]
    response = await Agent(provider=kind, model=model).run_async("Hi")
    assert response.provider == kind
    sent = fake.last_request
    assert sent.path.endswith("/chat/completions")
    assert (
        sent.json["model"] == {"deepseek": "deepseek-chat", "groq": "llama-3.3-70b-versatile"}[kind]
    )
    assert "max_completion_tokens" not in sent.json  # compatible servers know max_tokens


async def test_any_openai_compatible_server_by_base_url(fake_factory) -> None:
    server = await fake_factory("openai", api_key="local")
    agent = Agent(
        provider="openai_compatible",
        model="my-local-model",
        base_url=server.base_url,
        api_key="local",
    )
    response = await agent.run_async("Hi")
    assert response.text == "Hello from openai"
    assert response.cost_known is False and response.cost_estimate == 0.0  # no price listed
    assert server.last_request.headers["authorization"] == "Bearer local"


def test_keyless_local_servers_send_no_authorization() -> None:
    agent = Agent(provider="ollama", model="llama3")  # needs no key: construction and target ok
    target = agent.target()
    assert target.api_key is None and target.base_url == "http://localhost:11434/v1"
    from agent.providers import codec_for

    wire = codec_for("ollama").build(agent.request("Hi"), target)
    assert "authorization" not in wire.headers


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
async def test_stream_async_assembles_what_run_returns(fake_factory, use_fake, kind) -> None:
    fake = await fake_factory(kind)
    use_fake(fake)
    reply = Reply(text="One two three four five.", usage=(7, 5))
    fake.script(reply, reply)
    agent = Agent(
        provider=kind,
        model={"openai": "gpt-4o", "anthropic": "claude-sonnet", "gemini": "gemini-flash"}[kind],
    )
    plain = await agent.run_async("Count")
    events = [e async for e in await agent.stream_async("Count")]
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(deltas) > 1, "the text arrives in pieces"
    assert isinstance(events[-1], Done)
    streamed = events[-1].response
    assert "".join(deltas) == streamed.text == plain.text
    assert streamed.usage == plain.usage
    assert streamed.finish_reason == plain.finish_reason
    assert streamed.cost_estimate == pytest.approx(plain.cost_estimate)
    assert streamed.time_to_first_token_ms is not None
    assert fake.requests[-1].json is not None


def test_stream_sync(fake_anthropic_sync, use_fake) -> None:
    use_fake(fake_anthropic_sync)
    fake_anthropic_sync.script(Reply(text="a b c"))
    events = list(Agent(provider="anthropic", model="claude-sonnet").stream("Hi"))
    assert "".join(e.text for e in events if e.type == "text_delta") == "a b c"
    assert events[-1].type == "done"
    assert fake_anthropic_sync.last_request.json["stream"] is True


def test_message_list_input(fake_openai_sync, use_fake) -> None:
    use_fake(fake_openai_sync)
    Agent(provider="openai", model="gpt-4o").run(
        [
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Hello Ada."},
            {"role": "user", "content": "What is my name?"},
        ]
    )
    sent = fake_openai_sync.last_request.json["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]


def test_extras_pass_through(fake_openai_sync, use_fake) -> None:
    use_fake(fake_openai_sync)
    Agent(provider="openai", model="gpt-4o").run("Hi", seed=7, top_p=0.5)
    sent = fake_openai_sync.last_request.json
    assert sent["seed"] == 7 and sent["top_p"] == 0.5


def test_construction_never_fails_or_does_io() -> None:
    # Unknown provider, no key, nothing listening: all fine until called.
    agent = Agent(provider="invalid", model="x")
    with pytest.raises(ConfigurationError, match="unknown provider 'invalid'"):
        agent.run("Hello")
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        Agent(provider="openai", model="gpt-4o").run("Hello")


def test_real_model_ids_pass_through() -> None:
    assert Agent(provider="openai", model="gpt-4o-2024-08-06").model == "gpt-4o-2024-08-06"
    assert Agent(provider="anthropic", model="claude-sonnet").model == "claude-sonnet-4-5"
    assert Agent(provider="groq", model="llama-3.1-70b").model == "llama-3.3-70b-versatile"


async def test_claude_s_thinking_is_the_response_s_reasoning_plain_and_streamed(
    fake_factory, use_fake
) -> None:
    # Tried: a Claude agent whose config turns thinking on, against the Anthropic fake
    # answering with a signed thinking block: the thinking is `response.reasoning`, never
    # its text; streamed, it comes as ReasoningDelta events before the text.
    fake = await fake_factory("anthropic")
    use_fake(fake)
    reply = Reply(text="12,231", thinking="27 * 453 = 10,800 + 1,350 + 81.")
    fake.script(reply, reply)
    agent = Agent(
        provider="anthropic",
        model="claude-sonnet",
        extra={"thinking": {"type": "enabled", "budget_tokens": 1024}},
    )
    plain = await agent.run_async("27 * 453?")
    assert plain.reasoning == "27 * 453 = 10,800 + 1,350 + 81." and plain.text == "12,231"
    events = [e async for e in await agent.stream_async("27 * 453?")]
    kinds = [e.type for e in events if e.type in ("reasoning_delta", "text_delta")]
    assert kinds.index("text_delta") > kinds.index("reasoning_delta")
    thought = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    assert thought == plain.reasoning == events[-1].response.reasoning
    assert fake.last_request.json["thinking"] == {"type": "enabled", "budget_tokens": 1024}
