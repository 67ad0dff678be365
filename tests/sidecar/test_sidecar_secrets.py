"""Canary secrets through every error path: an upstream that echoes back everything it
was sent (key, header values, URL credentials) and the admin token, answered plain and
streamed, before and after content, in both formats; then the spans, the metrics,
GET /config and every validation message. No canary may come out anywhere."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml
from agent_sidecar import Sidecar
from conftest import SidecarFactory
from fakes import Fail, FakeProvider, StreamError
from sidecar_support import TOKEN, agent_spec, document
from test_sidecar_tracing import spans  # noqa: F401  # the fixture

from agent.errors import register_secret

KEY = "sk-canary-key-1111aaaa"
HEADER = "hdr-canary-2222bbbb"
USER, PASSWORD = "user-canary-3333", "pass-canary-3333cccc"
CANARIES = (KEY, HEADER, USER, PASSWORD, TOKEN)
ANTHROPIC = {"anthropic-version": "2023-06-01"}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def echo(fake: FakeProvider) -> str:
    """What a careless upstream says: everything it was given, in one message."""
    url = fake.base_url.replace("://", f"://{USER}:{PASSWORD}@")
    return f"denied: key={KEY} x-gateway={HEADER} url={url} admin={TOKEN}"


def leaked(text: str) -> list[str]:
    return [c for c in CANARIES if c in text]


@pytest_asyncio.fixture
async def keyed(fake_factory: Any) -> tuple[FakeProvider, FakeProvider]:
    """An OpenAI and an Anthropic fake that expect the canary key."""
    return await fake_factory("openai", api_key=KEY), await fake_factory("anthropic", api_key=KEY)


@pytest.fixture
def canary_config(keyed: tuple[FakeProvider, FakeProvider]) -> dict[str, Any]:
    agents = [
        agent_spec(fake, name, api_key=KEY, headers={"x-gateway": HEADER})
        for fake, name in zip(keyed, ("gpt", "claude"), strict=True)
    ]
    return document(
        agents, [{"name": "default", "agents": ["gpt", "claude"], "retries": 0, "backoff": 0}]
    )


@pytest.fixture
def admin_token_is_a_secret() -> Iterator[None]:
    register_secret(TOKEN)  # as the sidecar's AdminToken does when it reads the token
    yield


async def test_no_canary_in_any_error_answer(
    sidecar_factory: SidecarFactory,
    canary_config: dict[str, Any],
    keyed: tuple[FakeProvider, FakeProvider],
    spans: Any,  # noqa: F811
    admin_token_is_a_secret: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sidecar = await sidecar_factory(canary_config, tracing=True)
    fake_openai, fake_anthropic = keyed
    tried: list[str] = []
    async with httpx.AsyncClient(base_url=sidecar.app_url, timeout=30) as client:
        for stream in (False, True):
            for path, headers, body in (
                ("/v1/chat/completions", {}, {}),
                ("/v1/messages", ANTHROPIC, {"max_tokens": 16}),
            ):
                payload = {
                    "model": "default",
                    "messages": [{"role": "user", "content": "hi"}],
                    "stream": stream,
                    **body,
                }
                for fake in keyed:
                    fake.reset()  # nothing left over from the step before
                # 1. every agent fails before content: an HTTP error listing each agent
                fake_openai.script(Fail(401, message=echo(fake_openai)))
                fake_anthropic.script(Fail(500, message=echo(fake_anthropic)))
                failed = await client.post(path, json=payload, headers=headers)
                assert failed.status_code >= 400
                assert not leaked(failed.text), (path, stream, failed.text)
                tried.append(f"{path} stream={stream} before content")
                if not stream:
                    continue
                # 2. the answering agent fails after content: an error frame in band
                for fake in keyed:
                    fake.script(StreamError(after=2, message=echo(fake)))
                cut = await client.post(path, json=payload, headers=headers)
                assert cut.status_code == 200 and "error" in cut.text, cut.text
                assert not leaked(cut.text), (path, cut.text)
                tried.append(f"{path} stream={stream} after content")
    assert len(tried) == 6
    for span in spans.get_finished_spans():
        described = f"{span.name} {span.status.description} {dict(span.attributes or {})}"
        assert not leaked(described), described
    assert not leaked(sidecar.metrics.render().decode())
    assert not leaked(caplog.text)


async def test_get_config_shows_no_key_header_value_or_url_password(
    sidecar_factory: SidecarFactory,
    canary_config: dict[str, Any],
    keyed: tuple[FakeProvider, FakeProvider],
) -> None:
    canary_config["agents"][0]["base_url"] = keyed[0].base_url.replace(
        "://", f"://{USER}:{PASSWORD}@"
    )
    sidecar = await sidecar_factory(canary_config)
    async with httpx.AsyncClient(base_url=sidecar.admin_url) as client:
        shown = await client.get("/config", headers=AUTH)
    assert shown.status_code == 200
    assert not leaked(shown.text.replace(TOKEN, "")), shown.text
    assert shown.json()["config"]["agents"][0]["base_url"].startswith("http://***@127.0.0.1")


async def test_no_validation_message_quotes_a_line_of_the_document(
    sidecar: Sidecar, canary_config: dict[str, Any]
) -> None:
    """Each broken document holds the canary key on the line at fault."""
    good = yaml.safe_dump(canary_config)
    broken_documents = {
        "YAML syntax error on the key's line": good.replace(
            f"api_key: {KEY}", f"api_key: {KEY}: [unclosed"
        ),
        "an unclosed quote before the key": good.replace(f"api_key: {KEY}", f'api_key: "{KEY}'),
        "the key where the provider goes": good.replace("provider: openai", f"provider: {KEY}"),
        "the key as a route's strategy": good.replace(
            "retries: 0", f"retries: 0\n  strategy: {KEY}"
        ),
        "an unknown field named by the key": good.replace("version: 1", f"version: 1\n{KEY}: 1"),
        "a key-like api_key_env": good.replace(f"api_key: {KEY}", f"api_key_env: {KEY}"),
        "JSON cut inside the key": f'{{"version": 2, "agents": [{{"api_key": "{KEY}',
    }
    async with httpx.AsyncClient(base_url=sidecar.admin_url) as client:
        for what, text in broken_documents.items():
            refused = await client.put("/config", content=text.encode(), headers=AUTH)
            assert refused.status_code == 400, (what, refused.text)
            assert not leaked(refused.text), (what, refused.text)
