"""One sidecar process, limits in memory: the caller's own format for a 429 when every
agent is used up, and the remaining quota on /metrics."""

from __future__ import annotations

import asyncio

import anthropic
import httpx
import pytest
import yaml
from fakes import FakeProvider
from sidecar_support import TOKEN, SidecarProcess, agent_spec

PORTS = ["--port", "0", "--admin-port", "0", "--admin-host", "127.0.0.1"]


async def test_an_exhausted_route_is_a_429_in_anthropics_format_with_retry_after(
    fake_anthropic: FakeProvider,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    """What was tried: an agent allowed 1 request a minute behind a lone sidecar (no
    Redis: counted in memory), called twice with the official Anthropic SDK. The second
    call reaches no provider and raises the SDK's RateLimitError, whose response has a
    retry-after within the minute; /metrics shows no room left for the agent. A newer
    config pushed with the same limits does not reset what was counted."""
    config = {
        "version": 1,
        "agents": [agent_spec(fake_anthropic, "claude", limits={"rpm": 1})],
        "routes": [{"name": "default", "agents": ["claude"], "retries": 0}],
    }
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = SidecarProcess([*PORTS, "--config", str(path)], env={"AGENT_SIDECAR_TOKEN": TOKEN})
    try:
        await asyncio.to_thread(proc.wait_ready, 60)
        client = anthropic.AsyncAnthropic(base_url=proc.app_url, api_key="unused", max_retries=0)
        ask = {
            "model": "default",
            "max_tokens": 50,
            "messages": [{"role": "user", "content": "hi"}],
        }
        await client.messages.create(**ask)  # type: ignore[call-overload]

        with pytest.raises(anthropic.RateLimitError) as caught:
            await client.messages.create(**ask)  # type: ignore[call-overload]

        assert 1 <= int(caught.value.response.headers["retry-after"]) <= 120
        assert caught.value.body["type"] == "error"  # type: ignore[index]
        assert len(fake_anthropic.requests) == 1
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(proc.admin_url + "/metrics")).text
            line = 'agent_sidecar_quota_remaining{agent="claude",limit="rpm",route="default"} 0.0'
            assert line in metrics
            pushed = await http.put(
                proc.admin_url + "/config",
                json={**config, "version": 2},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert pushed.status_code == 200, pushed.text
        with pytest.raises(anthropic.RateLimitError):
            await client.messages.create(**ask)  # type: ignore[call-overload]
        assert len(fake_anthropic.requests) == 1
    finally:
        proc.kill()
