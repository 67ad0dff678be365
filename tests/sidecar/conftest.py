"""Sidecar fixtures: real sidecars on real sockets, in this process, in front of fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import pytest_asyncio
from agent_sidecar import Settings, Sidecar
from fakes import FakeProvider
from sidecar_support import SERVER_SETTING, TOKEN, agent_spec, document, fast_route

from agent.config import RouterConfig

SidecarFactory = Callable[..., Awaitable[Sidecar]]


@pytest_asyncio.fixture
async def sidecar_factory(tmp_path: Path) -> AsyncIterator[SidecarFactory]:
    """`await make(config_document, **settings)`: a started sidecar (stopped at teardown)."""
    started: list[Sidecar] = []

    async def make(
        config: dict[str, Any] | Path | None = None, *, tracing: bool = False, **settings: Any
    ) -> Sidecar:
        """A dict is loaded as a PUT /config would; a Path is served as --config."""
        options: dict[str, Any] = {
            "port": 0,
            "admin_port": 0,
            "admin_host": "127.0.0.1",
            "token": TOKEN,
            "state_dir": tmp_path / "state",
            "drain_timeout": 5.0,
            **SERVER_SETTING,
        }
        if isinstance(config, Path):
            options["config"] = config
        options.update(settings)
        sidecar = Sidecar(Settings(**options), tracing=tracing)
        sidecar.load_config()
        if isinstance(config, dict):
            outcome = await sidecar.store.push(RouterConfig.model_validate(config))
            assert outcome.result == "applied", outcome
        await sidecar.start()
        started.append(sidecar)
        return sidecar

    try:
        yield make
    finally:
        for sidecar in reversed(started):
            await sidecar.stop()


@pytest.fixture
def two_provider_config(fake_openai: FakeProvider, fake_anthropic: FakeProvider) -> dict[str, Any]:
    """Routes: default (openai, then anthropic), gpt (openai only), claude (anthropic only)."""
    return document(
        [agent_spec(fake_openai, "gpt"), agent_spec(fake_anthropic, "claude")],
        [
            fast_route("default", ["gpt", "claude"]),
            fast_route("gpt", ["gpt"]),
            fast_route("claude", ["claude"]),
        ],
    )


@pytest_asyncio.fixture
async def sidecar(sidecar_factory: SidecarFactory, two_provider_config: dict[str, Any]) -> Sidecar:
    return await sidecar_factory(two_provider_config)


@pytest_asyncio.fixture
async def openai_client(sidecar: Sidecar) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=sidecar.app_url + "/v1", api_key="unused", max_retries=0)
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture
async def anthropic_client(sidecar: Sidecar) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=sidecar.app_url, api_key="unused", max_retries=0)
    try:
        yield client
    finally:
        await client.close()
