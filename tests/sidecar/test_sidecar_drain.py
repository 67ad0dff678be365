"""Draining and readiness: a stream still running at the drain timeout ends with an
error the SDK raises and a log line; /readyz names the routes whose breakers are open."""

from __future__ import annotations

import asyncio
import logging

import anthropic
import httpx
import openai
import pytest
from conftest import SidecarFactory
from fakes import Fail, FakeProvider, Reply
from sidecar_support import agent_spec, document, fast_route

CHAT = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}


async def test_a_stream_cut_at_the_drain_timeout_ends_with_an_error_frame(
    sidecar_factory: SidecarFactory,
    two_provider_config: dict[str, object],
    fake_openai: FakeProvider,
    fake_anthropic: FakeProvider,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sidecar = await sidecar_factory(two_provider_config, drain_timeout=0.5)
    long_reply = Reply(text=" ".join(["word"] * 200), chunk_delay=0.1)  # 20 s of stream
    fake_openai.script(long_reply)
    fake_anthropic.script(long_reply)
    oa = openai.AsyncOpenAI(base_url=sidecar.app_url + "/v1", api_key="unused", max_retries=0)
    an = anthropic.AsyncAnthropic(base_url=sidecar.app_url, api_key="unused", max_retries=0)
    received: dict[str, list[str]] = {"openai": [], "anthropic": []}
    both_streaming = asyncio.Event()

    def got(api: str, text: str) -> None:
        received[api].append(text)
        if received["openai"] and received["anthropic"]:
            both_streaming.set()

    async def read_openai() -> BaseException | None:
        try:
            async for chunk in await oa.chat.completions.create(**CHAT, stream=True):
                got("openai", chunk.choices[0].delta.content or "")
        except openai.APIError as exc:
            return exc
        return None

    async def read_anthropic() -> BaseException | None:
        try:
            async with an.messages.stream(
                model="claude", max_tokens=500, messages=CHAT["messages"]
            ) as stream:
                async for text in stream.text_stream:
                    got("anthropic", text)
        except anthropic.APIError as exc:
            return exc
        return None

    readers = [asyncio.create_task(read_openai()), asyncio.create_task(read_anthropic())]
    await asyncio.wait_for(both_streaming.wait(), timeout=30)
    caplog.set_level(logging.WARNING, logger="agent_sidecar.app")
    await sidecar.stop()  # SIGTERM's drain: 0.5 s, then the streams are cut
    errors = await asyncio.gather(*readers)
    await oa.close()
    await an.close()
    assert all(isinstance(e, openai.APIError | anthropic.APIError) for e in errors), errors
    assert all("shutting down" in str(e) for e in errors), errors
    assert caplog.text.count("cutting a stream of route") == 2
    # What the apps received before the cut is what the providers sent: nothing lost.
    for words in received.values():
        assert "".join(words).split() == ["word"] * len("".join(words).split())


async def test_readyz_names_the_routes_whose_breakers_are_all_open(
    sidecar_factory: SidecarFactory, fake_openai: FakeProvider, fake_anthropic: FakeProvider
) -> None:
    breaker = {"failures": 1, "cooldown": 60}
    sidecar = await sidecar_factory(
        document(
            [agent_spec(fake_openai, "gpt"), agent_spec(fake_anthropic, "claude")],
            [
                fast_route("gpt", ["gpt"], circuit_breaker=breaker),
                fast_route("both", ["gpt", "claude"], circuit_breaker=breaker),
            ],
        )
    )
    fake_openai.script(Fail(500), Fail(500))
    async with httpx.AsyncClient(base_url=sidecar.app_url) as client:
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 502
        both = await client.post("/v1/chat/completions", json={**CHAT, "model": "both"})
        assert both.status_code == 200
    async with httpx.AsyncClient(base_url=sidecar.admin_url) as admin:
        ready = await admin.get("/readyz")
    assert ready.status_code == 200  # still ready: apps get answers in their format
    assert ready.json()["circuits"] == {
        "gpt": {"gpt": "open"},
        "both": {"gpt": "open", "claude": "closed"},
    }
    assert ready.json()["down"] == ["gpt"]
