"""What a hostile or unlucky caller meets: disconnects cancel the upstream at once;
bad, oversized and slow bodies get 4xx in the caller's format; hung agents time out."""

from __future__ import annotations

import asyncio

import aiohttp
import httpx
from agent_sidecar import Sidecar
from conftest import SidecarFactory
from fakes import FakeProvider, Hang, Reply
from sidecar_support import agent_spec, document, first_line

CHAT = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}
ANTHROPIC = {"anthropic-version": "2023-06-01"}


async def test_a_client_leaving_mid_stream_cancels_the_upstream_at_once(
    sidecar: Sidecar, fake_openai: FakeProvider
) -> None:
    fake_openai.script(Reply(text=" ".join(["word"] * 100), chunk_delay=0.2))  # ~20 s of stream
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            sidecar.app_url + "/v1/chat/completions", json={**CHAT, "stream": True}
        )
        first = await response.content.readline()
        assert first.startswith(b"data: ")
        response.close()  # the app goes away in the middle of the stream
    # Long before the stream would have ended, the provider sees its client go away.
    assert await fake_openai.wait_disconnect(timeout=5.0) == 1
    await asyncio.sleep(0.05)
    metrics = sidecar.metrics.render().decode()
    assert 'code="499",route="gpt",stream="true"' in metrics
    assert "agent_sidecar_in_flight_requests 0.0" in metrics


async def test_a_client_leaving_a_plain_call_cancels_the_upstream(
    sidecar: Sidecar, fake_openai: FakeProvider
) -> None:
    fake_openai.script(Hang())
    async with httpx.AsyncClient(base_url=sidecar.app_url, timeout=0.3) as client:
        try:
            await client.post("/v1/chat/completions", json=CHAT)
        except httpx.ReadTimeout:
            pass  # the client gives up and closes its connection
    assert await fake_openai.wait_disconnect(timeout=2.0) == 1


async def test_oversized_bodies_are_413_in_the_callers_format(
    sidecar_factory: SidecarFactory, two_provider_config: dict[str, object]
) -> None:
    sidecar = await sidecar_factory(two_provider_config, max_body_bytes=4096)
    big = "x" * 10_000
    async with httpx.AsyncClient(base_url=sidecar.app_url) as client:
        openai_style = await client.post(
            "/v1/chat/completions",
            json={**CHAT, "messages": [{"role": "user", "content": big}]},
        )
        anthropic_style = await client.post(
            "/v1/messages",
            json={**CHAT, "max_tokens": 5, "messages": [{"role": "user", "content": big}]},
            headers=ANTHROPIC,
        )
    assert openai_style.status_code == 413
    assert "larger than 4096 bytes" in openai_style.json()["error"]["message"]
    assert anthropic_style.status_code == 413
    assert anthropic_style.json()["error"]["type"] == "request_too_large"


async def test_malformed_bodies_are_400(sidecar: Sidecar) -> None:
    bodies = [b"", b"{", b"[]", b'"text"', b"\xff\xfe", b"null", b'{"model": 5, "messages": []}']
    async with httpx.AsyncClient(base_url=sidecar.app_url) as client:
        for body in bodies:
            for path, headers in (("/v1/chat/completions", {}), ("/v1/messages", ANTHROPIC)):
                response = await client.post(path, content=body, headers=headers)
                assert response.status_code == 400, (path, body, response.text)
                error = response.json()
                assert "error" in error
                if path == "/v1/messages":
                    assert error["type"] == "error"


async def test_unknown_paths_and_methods_answer_in_json(sidecar: Sidecar) -> None:
    async with httpx.AsyncClient(base_url=sidecar.app_url) as client:
        missing = await client.get("/v1/embeddings")
        wrong = await client.get("/v1/chat/completions")
        wrong_anthropic = await client.delete("/v1/messages")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    assert wrong.status_code == 405
    assert wrong_anthropic.status_code == 405 and wrong_anthropic.json()["type"] == "error"


async def test_a_hung_agent_times_out_as_504(
    sidecar_factory: SidecarFactory, fake_openai: FakeProvider
) -> None:
    sidecar = await sidecar_factory(
        document([agent_spec(fake_openai, "gpt")], [{"name": "gpt", "agents": ["gpt"]}]),
        request_timeout=0.3,
    )
    fake_openai.script(Hang(), Hang())
    async with httpx.AsyncClient(base_url=sidecar.app_url) as client:
        plain = await client.post("/v1/chat/completions", json=CHAT)
        streamed = await client.post(
            "/v1/messages", json={**CHAT, "max_tokens": 5, "stream": True}, headers=ANTHROPIC
        )
    assert plain.status_code == 504 and "no answer within 0.3s" in plain.json()["error"]["message"]
    assert streamed.status_code == 504 and streamed.json()["error"]["type"] == "timeout_error"
    assert await fake_openai.wait_disconnect(timeout=2.0, count=2) == 2


async def test_a_body_that_never_arrives_is_408(
    sidecar_factory: SidecarFactory, two_provider_config: dict[str, object]
) -> None:
    sidecar = await sidecar_factory(two_provider_config, read_timeout=0.3)
    head = await first_line(
        sidecar.app_port,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"model":',
        timeout=3,
    )
    assert head.startswith(b"HTTP/1.1 408")


async def test_an_agent_with_no_key_is_skipped_by_fallback(
    sidecar_factory: SidecarFactory, fake_openai: FakeProvider
) -> None:
    keyless = {"name": "keyless", "provider": "anthropic", "model": "claude-haiku"}
    sidecar = await sidecar_factory(
        document(
            [keyless, agent_spec(fake_openai, "gpt")],
            [{"name": "gpt", "agents": ["keyless", "gpt"]}],
        )
    )
    async with httpx.AsyncClient(base_url=sidecar.app_url) as client:
        answered = await client.post("/v1/chat/completions", json=CHAT)
    assert answered.status_code == 200 and answered.headers["x-agent-provider"] == "openai"
