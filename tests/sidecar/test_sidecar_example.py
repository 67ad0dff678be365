"""examples/sidecar.yaml, served as the README says, with keys and base URLs from the
standard environment variables (pointed at the fakes)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import openai
from conftest import SidecarFactory
from fakes import Fail, FakeProvider

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sidecar.yaml"


async def test_the_example_config_routes_with_keys_from_the_environment(
    sidecar_factory: SidecarFactory,
    fake_openai: FakeProvider,
    fake_anthropic: FakeProvider,
    fake_gemini: FakeProvider,
    use_fake: Callable[..., Any],
) -> None:
    for fake in (fake_openai, fake_anthropic, fake_gemini):
        use_fake(fake)
    sidecar = await sidecar_factory(config=EXAMPLE)
    assert sidecar.store.loaded is not None and sidecar.store.loaded.source == "file"

    fake_anthropic.script(Fail(529), Fail(529))  # the default route's first choice is down
    async with openai.AsyncOpenAI(base_url=sidecar.app_url + "/v1", api_key="x") as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="default", messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.headers["x-agent-provider"] == "openai"
        assert fake_openai.last_request.headers["authorization"] == f"Bearer {fake_openai.api_key}"
        models = [m.id async for m in client.models.list()]
    assert models == ["default", "fast", "cheap"]

    async with anthropic.AsyncAnthropic(base_url=sidecar.app_url, api_key="x") as client:
        message = await client.messages.create(
            model="some-model-the-app-was-written-for",  # not a route: default_route
            max_tokens=20,
            messages=[{"role": "user", "content": "hi"}],
        )
    assert message.content[0].text == "Hello from anthropic"  # type: ignore[union-attr]
