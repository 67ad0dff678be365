"""`messages.count_tokens` of the official anthropic SDK through the sidecar: asked of
the route's Anthropic agent (the fake counts words and records the body it got), else
estimated with tiktoken's cl100k_base, and the answer says which."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import pytest
from agent_sidecar import Sidecar
from conftest import SidecarFactory
from fakes import FakeProvider
from sidecar_support import agent_spec, document, fast_route

MESSAGES: list[Any] = [{"role": "user", "content": "Hello, world! How are you?"}]


async def test_a_route_with_claude_asks_the_provider(
    anthropic_client: anthropic.AsyncAnthropic, fake_anthropic: FakeProvider
) -> None:
    # The body as sent (cache_control and a beta header included), for the agent's model.
    system: Any = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
    raw = await anthropic_client.messages.with_raw_response.count_tokens(
        model="claude",
        system=system,
        messages=MESSAGES,
        extra_headers={"anthropic-beta": "token-counting-2024-11-01"},
    )
    counted = await raw.parse()
    assert counted.input_tokens == 7  # the fake counts words: 5 in the message, 2 in system
    assert raw.headers["x-agent-token-count"] == "provider"
    sent = fake_anthropic.last_request
    assert sent.path == "/v1/messages/count_tokens"
    assert sent.json == {
        "model": fake_anthropic.model_default,
        "system": system,
        "messages": MESSAGES,
    }
    assert sent.headers["anthropic-beta"] == "token-counting-2024-11-01"
    assert sent.headers["x-api-key"] == "test-key"


async def test_a_route_without_claude_gets_a_marked_estimate(
    anthropic_client: anthropic.AsyncAnthropic, fake_openai: FakeProvider
) -> None:
    raw = await anthropic_client.messages.with_raw_response.count_tokens(
        model="gpt", messages=MESSAGES
    )
    # cl100k_base: "Hello, world! How are you?" is 8 tokens; 4 for the message, 3 the request.
    assert (await raw.parse()).input_tokens == 8 + 4 + 3
    assert raw.headers["x-agent-token-count"] == "estimate (tiktoken cl100k_base)"
    assert fake_openai.requests == []  # nothing went upstream

    # Tools, tool calls and results and images count too.
    tool: Any = {
        "name": "get_weather",
        "description": "Weather",
        "input_schema": {"type": "object"},
    }
    image: Any = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    more = await anthropic_client.messages.count_tokens(
        model="gpt",
        tools=[tool],
        messages=[
            *MESSAGES,
            {"role": "assistant", "content": "Fine."},
            {"role": "user", "content": [image]},
        ],
    )
    assert more.input_tokens > 8 + 4 + 3 + 1600


async def test_an_anthropic_agent_that_fails_leaves_the_estimate(
    sidecar_factory: SidecarFactory, fake_anthropic: FakeProvider
) -> None:
    # A wrong key: the provider's 401 is the sidecar's business, not the caller's.
    config = document(
        [agent_spec(fake_anthropic, "claude", api_key="sk-wrong")],
        [fast_route("claude", ["claude"])],
    )
    sidecar = await sidecar_factory(config)
    async with anthropic.AsyncAnthropic(
        base_url=sidecar.app_url, api_key="x", max_retries=0
    ) as client:
        raw = await client.messages.with_raw_response.count_tokens(
            model="claude", messages=MESSAGES
        )
    assert raw.headers["x-agent-token-count"].startswith("estimate")
    assert (await raw.parse()).input_tokens == 15
    assert fake_anthropic.last_request.path == "/v1/messages/count_tokens"


async def test_bad_count_tokens_bodies_are_anthropic_errors(
    sidecar: Sidecar, anthropic_client: anthropic.AsyncAnthropic
) -> None:
    with pytest.raises(anthropic.NotFoundError):
        await anthropic_client.messages.count_tokens(model="nope", messages=MESSAGES)
    async with httpx.AsyncClient(base_url=sidecar.app_url) as client:
        for body in (b"[1]", b"{", b'{"model": "gpt"}', b'{"model": "gpt", "messages": [1]}'):
            answer = await client.post("/v1/messages/count_tokens", content=body)
            assert answer.status_code == 400, body
            assert answer.json()["type"] == "error", body
        wrong = await client.get("/v1/messages/count_tokens")
        assert wrong.status_code == 405
