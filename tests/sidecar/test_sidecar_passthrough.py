"""Same-format pass-through, tried with the official SDKs: when the agent that answers
speaks the caller's wire format, the fake provider receives the caller's body as it was
sent (only `model` rewritten), with the caller's provider headers, and the caller gets
the provider's answer and stream events as the provider sent them. Routes (conftest):
default (openai, then anthropic), gpt (openai only), claude (anthropic only)."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import pytest
from agent_sidecar import Sidecar
from agent_sidecar.routes import Loaded
from agent_sidecar.wire import _short_header_value, header_value
from conftest import SidecarFactory
from fakes import Fail, FakeProvider, Reply
from sidecar_support import agent_spec, document, fast_route

from agent.config import RouterConfig
from agent.wire.anthropic import AnthropicApi
from agent.wire.inbound import Api
from agent.wire.openai_chat import OpenAIApi
from agent.wire.openai_responses import ResponsesApi

USER: list[Any] = [{"role": "user", "content": "Say hello"}]
CACHED = {"type": "ephemeral"}
TOOL: Any = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    "cache_control": CACHED,
}


def sent_as(fake: FakeProvider, body: dict[str, Any]) -> None:
    """The fake received `body` unchanged but for the agent's model."""
    assert fake.last_request.json == {**body, "model": fake.model_default}


async def test_cache_control_beta_headers_and_unknown_fields_reach_claude_untouched(
    anthropic_client: anthropic.AsyncAnthropic, fake_anthropic: FakeProvider
) -> None:
    # cache_control on the system prompt, a message block and a tool; a field no version
    # of the sidecar knows; and a beta header: all must reach the provider as sent.
    system = [{"type": "text", "text": "You are terse.", "cache_control": CACHED}]
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Say hello", "cache_control": CACHED}],
        }
    ]
    raw = await anthropic_client.messages.with_raw_response.create(
        model="claude",
        max_tokens=64,
        system=system,  # type: ignore[arg-type]
        messages=messages,  # type: ignore[arg-type]
        tools=[TOOL],
        extra_body={"future_option": {"depth": 3}},
        extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
    )
    assert (await raw.parse()).content[0].text == "Hello from anthropic"  # type: ignore[union-attr]
    sent_as(
        fake_anthropic,
        {
            "model": "claude",
            "max_tokens": 64,
            "system": system,
            "messages": messages,
            "tools": [TOOL],
            "future_option": {"depth": 3},
        },
    )
    upstream = fake_anthropic.last_request.headers
    assert upstream["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert upstream["x-api-key"] == "test-key"  # the agent's key, never the app's
    assert "x-agent-ignored-fields" not in raw.headers


async def test_thinking_blocks_round_trip_plain_and_streamed(
    anthropic_client: anthropic.AsyncAnthropic, fake_anthropic: FakeProvider
) -> None:
    thinking = {"type": "enabled", "budget_tokens": 1024}
    fake_anthropic.script(Reply(text="Hi.", thinking="The user greets me."))
    first = await anthropic_client.messages.create(
        model="claude",
        max_tokens=2048,
        thinking=thinking,
        messages=USER,  # type: ignore[arg-type]
    )
    block = first.content[0]
    assert block.type == "thinking" and block.thinking == "The user greets me."
    assert block.signature  # what Claude needs back next turn, unchanged

    # The next turn sends the signed thinking block back; the provider gets it as it was.
    history = [*USER, {"role": "assistant", "content": [b.model_dump() for b in first.content]}]
    fake_anthropic.script(Reply(text="Still here.", thinking="Again."))
    again = [*history, {"role": "user", "content": "And now?"}]
    async with anthropic_client.messages.stream(
        model="claude",
        max_tokens=2048,
        thinking=thinking,
        messages=again,  # type: ignore[arg-type]
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert fake_anthropic.last_request.json["messages"][1]["content"][0] == block.model_dump()
    assert "thinking" in kinds
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].signature == block.signature  # type: ignore[union-attr]
    assert final.content[1].text == "Still here."  # type: ignore[union-attr]


async def test_logprobs_and_several_choices_on_an_openai_route(
    openai_client: openai.AsyncOpenAI, fake_openai: FakeProvider
) -> None:
    answer = await openai_client.chat.completions.create(
        model="gpt", messages=USER, n=2, logprobs=True, top_logprobs=1, seed=5
    )
    assert [c.index for c in answer.choices] == [0, 1]
    tokens = answer.choices[1].logprobs.content  # type: ignore[union-attr]
    assert "".join(t.token for t in tokens or ()) == "Hello from openai"
    assert answer.system_fingerprint  # the provider's own answer, not one re-encoded
    sent_as(
        fake_openai,
        {"model": "gpt", "messages": USER, "n": 2, "logprobs": True, "top_logprobs": 1, "seed": 5},
    )

    stream = await openai_client.chat.completions.create(
        model="gpt", messages=USER, logprobs=True, stream=True
    )
    pieces = [
        lp.token
        async for chunk in stream
        for lp in ((chunk.choices[0].logprobs.content or []) if chunk.choices[0].logprobs else [])
    ]
    assert "".join(pieces) == "Hello from openai"


async def test_a_stream_reaches_the_caller_as_the_provider_sent_it(
    sidecar: Sidecar, fake_openai: FakeProvider
) -> None:
    # Only the provider writes `obfuscation` and `system_fingerprint` into its chunks:
    # re-encoded events would not carry them.
    body = {"model": "gpt", "messages": USER, "stream": True}
    async with httpx.AsyncClient(base_url=sidecar.app_url) as client:
        answer = await client.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200
    frames = answer.content.split(b"\n\n")
    assert b'"obfuscation"' in frames[0] and b'"system_fingerprint"' in frames[0]
    assert answer.content.endswith(b"data: [DONE]\n\n")
    assert answer.headers["x-agent-provider"] == "openai"


async def test_a_fallback_across_formats_names_what_it_dropped(
    sidecar: Sidecar, fake_openai: FakeProvider, fake_anthropic: FakeProvider
) -> None:
    # The OpenAI agent gets the body as sent and fails; the Anthropic agent answers from
    # the engine's request, without the fields its format cannot carry, and says so.
    fake_openai.script(Fail(500), Fail(500))
    body = {"model": "default", "messages": USER, "seed": 7, "logit_bias": {"50256": -100}}
    async with httpx.AsyncClient(base_url=sidecar.app_url) as client:
        plain = await client.post("/v1/chat/completions", json=body)
        streamed = await client.post("/v1/chat/completions", json={**body, "stream": True})
    assert fake_openai.requests[0].json == {**body, "model": fake_openai.model_default}
    sent = fake_anthropic.last_request.json
    assert "seed" not in sent and "logit_bias" not in sent
    for answer in (plain, streamed):
        assert answer.status_code == 200
        assert answer.headers["x-agent-provider"] == "anthropic"
        assert answer.headers["x-agent-ignored-fields"] == "logit_bias,seed"
    assert plain.json()["choices"][0]["message"]["content"] == "Hello from anthropic"
    assert b"Hello" in streamed.content and streamed.content.endswith(b"data: [DONE]\n\n")


async def test_a_same_format_fallback_after_a_failure_relays_the_second_answer(
    anthropic_client: anthropic.AsyncAnthropic,
    fake_openai: FakeProvider,
    fake_anthropic: FakeProvider,
) -> None:
    # An Anthropic caller on the default route: the OpenAI agent (translated) fails, the
    # Claude agent answers with the caller's own body, so nothing is named as dropped.
    fake_openai.script(Fail(500))
    raw = await anthropic_client.messages.with_raw_response.create(
        model="default", max_tokens=32, messages=USER, extra_body={"top_k": 5}
    )
    assert raw.headers["x-agent-provider"] == "anthropic"
    assert "x-agent-ignored-fields" not in raw.headers
    assert fake_anthropic.last_request.json["top_k"] == 5
    assert "top_k" not in fake_openai.last_request.json


def test_routes_that_only_relay_leave_the_conversation_unread(
    fake_openai: FakeProvider, fake_anthropic: FakeProvider
) -> None:
    # A route whose agents all send the caller's body on as it came needs no conversation
    # built from it; any agent of another format, a strategy that reads the input, or
    # continuing broken streams (which rebuilds the conversation) needs it.
    gpt, claude = agent_spec(fake_openai, "gpt"), agent_spec(fake_anthropic, "claude")
    responses = agent_spec(fake_openai, "resp", api="responses")
    config = document(
        [gpt, claude, responses],
        [
            fast_route("gpt", ["gpt"]),
            fast_route("claude", ["claude"], strategy="round_robin"),
            fast_route("resp", ["resp"]),
            fast_route("mixed", ["gpt", "claude"]),
            fast_route("two-apis", ["gpt", "resp"]),
            fast_route("continued", ["gpt"], stream_recovery="continue"),
            fast_route("ruled", ["gpt"], strategy="custom", rules=[RULE]),
            fast_route("capable", ["gpt"], strategy="capability"),
        ],
    )
    routes = Loaded.build(RouterConfig.model_validate(config), "push").routes
    unread = {name: route.unread for name, route in routes.items()}
    assert unread == {
        "gpt": "openai",
        "claude": "anthropic",
        "resp": "responses",
        "mixed": None,
        "two-apis": None,
        "continued": None,
        "ruled": None,
        "capable": None,
    }


RULE = {"prefer": ["gpt"], "reason": "greeting", "input_contains": ["hello"]}
SYSTEM = "You are terse."
LONG = "word " * 400  # 2,000 characters: about 500 tokens


@pytest.mark.parametrize(
    ("api", "body"),
    [
        (
            OpenAIApi(),
            {
                "model": "gpt",
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": [{"type": "text", "text": LONG}]},
                    {"role": "assistant", "content": "Fine."},
                    {"role": "tool", "tool_call_id": "c1", "content": "18 C"},
                ],
            },
        ),
        (
            AnthropicApi(),
            {
                "model": "claude",
                "max_tokens": 64,
                "system": [{"type": "text", "text": SYSTEM}],
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": LONG}]},
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
                    },
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": "t1", "content": LONG},
                            {
                                "type": "tool_result",
                                "tool_use_id": "t1",
                                "content": [{"type": "text", "text": LONG}],
                            },
                        ],
                    },
                ],
            },
        ),
        (
            ResponsesApi(),
            {
                "model": "resp",
                "instructions": SYSTEM,
                "input": [
                    {"role": "user", "content": [{"type": "input_text", "text": LONG}]},
                    {"type": "function_call_output", "call_id": "c1", "output": "18 C"},
                ],
            },
        ),
    ],
    ids=["chat", "messages", "responses"],
)
def test_an_unread_conversation_still_counts_for_the_token_estimate(
    api: Api, body: dict[str, Any]
) -> None:
    read = api.parse(body).request
    unread = api.parse(body, history=False).request
    assert unread.messages == [] and read.messages
    # The same estimate, give or take the separators the read conversation adds.
    assert abs(unread.approx_input_tokens() - read.approx_input_tokens()) <= 2
    assert unread.approx_input_tokens() > 500 * (3 if api.name == "anthropic" else 1)


async def test_a_relayed_conversation_counts_against_the_route_token_limit(
    sidecar_factory: SidecarFactory, fake_openai: FakeProvider
) -> None:
    # The route relays its callers' bodies unread: its token limit must still see how
    # long the conversation is. About 500 tokens do not fit in 300 a minute; a short
    # question does.
    config = document(
        [agent_spec(fake_openai, "gpt")], [fast_route("gpt", ["gpt"], limits={"tpm": 300})]
    )
    sidecar = await sidecar_factory(config)
    assert sidecar.store.loaded is not None
    assert sidecar.store.loaded.routes["gpt"].unread == "openai"
    async with httpx.AsyncClient(base_url=sidecar.app_url) as http:
        long = {"model": "gpt", "max_tokens": 10, "messages": [{"role": "user", "content": LONG}]}
        refused = await http.post("/v1/chat/completions", json=long)
        assert refused.status_code == 429, refused.text
        short = {**long, "messages": [{"role": "user", "content": "Say hello"}]}
        answered = await http.post("/v1/chat/completions", json=short)
        assert answered.status_code == 200, answered.text
    assert fake_openai.last_request.json["messages"] == short["messages"]


def test_long_header_values_are_cleaned_and_not_kept() -> None:
    # Tried: the names of a caller's unknown fields, 200 KB of them, as an answer header.
    # The value is bounded and safe; unlike a model's name it is not cached, so bodies
    # of the body limit's size are not kept after their answer.
    kept = _short_header_value.cache_info().currsize
    value = header_value("field_" * 40_000 + "\r\nX-Injected: 1")
    assert len(value) == 512 and "\r" not in value and "\n" not in value
    assert _short_header_value.cache_info().currsize == kept
