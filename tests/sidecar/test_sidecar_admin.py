"""The admin port over real sockets: auth, validation, version ordering, atomic swaps,
persistence across restarts, health, readiness and metrics."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import httpx
import yaml
from agent_sidecar import Settings, Sidecar
from conftest import SidecarFactory
from fakes import Fail, FakeProvider, Recorded, Reply
from sidecar_support import TOKEN, agent_spec, document, fast_route

from agent.config import RouterConfig

AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHAT = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}


async def put(sidecar: Sidecar, doc: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    body = doc if isinstance(doc, str | bytes) else json.dumps(doc)
    async with httpx.AsyncClient(base_url=sidecar.admin_url) as client:
        return await client.put(
            "/config", content=body, headers=AUTH if headers is None else headers
        )


async def get(sidecar: Sidecar, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=sidecar.admin_url) as client:
        return await client.get(path, headers=headers or {})


async def chat(sidecar: Sidecar, body: dict[str, Any] = CHAT) -> httpx.Response:
    async with httpx.AsyncClient(base_url=sidecar.app_url) as client:
        return await client.post("/v1/chat/completions", json=body)


async def test_waits_for_a_config_then_serves_the_pushed_one(
    sidecar_factory: SidecarFactory, fake_openai: FakeProvider
) -> None:
    sidecar = await sidecar_factory()
    assert (await get(sidecar, "/healthz")).status_code == 200
    waiting = await get(sidecar, "/readyz")
    assert waiting.status_code == 503 and waiting.json()["status"] == "waiting for a config"
    early = await chat(sidecar)
    assert early.status_code == 503 and "no routing config" in early.json()["error"]["message"]

    pushed = await put(sidecar, document([agent_spec(fake_openai, "gpt")], version=4))
    assert pushed.status_code == 200
    assert pushed.json() == {"result": "applied", "version": 4, "previous_version": None}
    ready = await get(sidecar, "/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "version": 4,
        "circuits": {"default": {"gpt": "closed"}},
        "down": [],
    }
    answered = await chat(sidecar)
    assert answered.status_code == 200 and answered.headers["x-agent-config-version"] == "4"


async def test_pushes_need_the_bearer_token(
    sidecar_factory: SidecarFactory, fake_openai: FakeProvider
) -> None:
    sidecar = await sidecar_factory()
    doc = document([agent_spec(fake_openai, "gpt")])
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        refused = await put(sidecar, doc, headers)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
    assert (await get(sidecar, "/config", {"Authorization": "Bearer wrong"})).status_code == 401
    assert (await get(sidecar, "/readyz")).status_code == 503  # nothing was applied
    assert (await put(sidecar, doc)).status_code == 200
    metrics = (await get(sidecar, "/metrics")).text
    assert 'agent_sidecar_config_pushes_total{result="unauthorized"} 3.0' in metrics


async def test_without_a_token_or_a_state_dir_pushes_are_refused(
    sidecar_factory: SidecarFactory, fake_openai: FakeProvider
) -> None:
    """No token given and nowhere to write one: /config is closed, not open."""
    sidecar = await sidecar_factory(token=None, state_dir=None)
    refused = await put(sidecar, document([agent_spec(fake_openai, "gpt")]), {})
    assert refused.status_code == 403 and "no usable admin token" in refused.json()["error"]
    # and the config is not readable either, even redacted
    assert (await get(sidecar, "/config")).status_code == 403


async def test_a_bad_config_is_refused_and_the_old_one_keeps_serving(
    sidecar: Sidecar, fake_openai: FakeProvider
) -> None:
    bad = document(
        [agent_spec(fake_openai, "gpt")], [{"name": "r", "agents": ["ghost"]}], version=9
    )
    refused = await put(sidecar, bad)
    assert refused.status_code == 400
    assert "route 'r' names unknown agents: ghost" in refused.json()["error"]

    typo = document([agent_spec(fake_openai, "gpt", provider="opnai")], version=9)
    refused = await put(sidecar, typo)
    assert refused.status_code == 400
    assert (
        "agents.0.provider" in refused.json()["error"]
        and "unknown provider" in refused.json()["error"]
    )

    for junk in ("", "[1, 2]", "agents: [unclosed", "\x00\x01"):
        assert (await put(sidecar, junk)).status_code == 400

    assert (await get(sidecar, "/config", AUTH)).json()["version"] == 1
    assert (await chat(sidecar)).status_code == 200


async def test_versions_only_move_forward(sidecar: Sidecar, fake_openai: FakeProvider) -> None:
    v2 = document([agent_spec(fake_openai, "gpt")], version=2)
    assert (await put(sidecar, v2)).json()["result"] == "applied"

    older = await put(sidecar, document([agent_spec(fake_openai, "gpt")], version=1))
    assert older.status_code == 409
    assert older.json()["error"] == "version 1 is older than the loaded version 2"

    again = await put(sidecar, v2)
    assert again.status_code == 200 and again.json()["result"] == "unchanged"

    changed = document([agent_spec(fake_openai, "gpt", timeout=5)], version=2)
    conflict = await put(sidecar, changed)
    assert conflict.status_code == 409 and "bump the version" in conflict.json()["error"]

    newer = await put(sidecar, document([agent_spec(fake_openai, "gpt")], version=3))
    assert newer.json() == {"result": "applied", "version": 3, "previous_version": 2}


async def test_yaml_documents_are_accepted(sidecar: Sidecar, fake_openai: FakeProvider) -> None:
    doc = document([agent_spec(fake_openai, "gpt")], version=5)
    assert (await put(sidecar, yaml.safe_dump(doc))).json()["result"] == "applied"


async def test_get_config_is_redacted(sidecar: Sidecar, fake_openai: FakeProvider) -> None:
    doc = document(
        [agent_spec(fake_openai, "gpt", api_key="sk-live-1234567890", headers={"x-org": "acme"})],
        version=2,
    )
    await put(sidecar, doc)
    shown = await get(sidecar, "/config", AUTH)
    assert shown.status_code == 200
    data = shown.json()
    assert (data["version"], data["source"], data["routes"]) == (2, "push", ["default"])
    agent = data["config"]["agents"][0]
    assert agent["api_key"] == "***" and agent["headers"] == {"x-org": "***"}
    assert "sk-live" not in shown.text and "acme" not in shown.text


async def test_in_flight_requests_finish_on_the_config_they_started_with(
    sidecar_factory: SidecarFactory, fake_openai: FakeProvider, fake_anthropic: FakeProvider
) -> None:
    arrived = asyncio.Event()

    def slow(_: Recorded) -> Reply:
        arrived.set()
        return Reply(text="old config", delay=1.0)

    fake_openai.script(slow)
    sidecar = await sidecar_factory(document([agent_spec(fake_openai, "gpt")], version=1))
    in_flight = asyncio.create_task(chat(sidecar))
    await asyncio.wait_for(arrived.wait(), 10)  # the request waits on the old config's agent
    new = document([agent_spec(fake_anthropic, "claude")], version=2)
    assert (await put(sidecar, new)).json()["result"] == "applied"
    after = await chat(sidecar)
    assert after.headers["x-agent-provider"] == "anthropic"
    before = await in_flight
    assert (
        before.status_code == 200
        and before.json()["choices"][0]["message"]["content"] == "old config"
    )
    assert before.headers["x-agent-config-version"] == "1"
    assert before.headers["x-agent-provider"] == "openai"


async def test_the_last_good_config_survives_a_restart(
    sidecar_factory: SidecarFactory, fake_openai: FakeProvider, tmp_path: Path
) -> None:
    first = await sidecar_factory()
    doc = document([agent_spec(fake_openai, "gpt", api_key="test-key")], version=7)
    assert (await put(first, doc)).json()["result"] == "applied"
    bad = document([agent_spec(fake_openai, "gpt")], [{"name": "x", "agents": []}], version=8)
    assert (await put(first, bad)).status_code == 400  # a refused push persists nothing
    await first.stop()

    state = tmp_path / "state" / "config.json"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert json.loads(state.read_text())["agents"][0]["api_key"] == "test-key"
    assert not list(state.parent.glob(".*.tmp"))

    second = await sidecar_factory()  # same state dir, nobody pushes
    ready = await get(second, "/readyz")
    assert ready.json()["status"] == "ready" and ready.json()["version"] == 7
    assert (await get(second, "/config", AUTH)).json()["source"] == "state"
    answered = await chat(second)
    assert answered.status_code == 200 and answered.headers["x-agent-provider"] == "openai"
    assert fake_openai.last_request.headers["authorization"] == "Bearer test-key"


async def test_at_start_the_newer_of_file_and_state_serves(
    tmp_path: Path, fake_openai: FakeProvider
) -> None:
    state_dir = tmp_path / "state"
    pushed = Sidecar(Settings(state_dir=state_dir))
    await pushed.store.push(
        RouterConfig.model_validate(document([agent_spec(fake_openai, "from-state")], version=5))
    )
    file = tmp_path / "router.yaml"
    for version, expected in ((4, "state"), (5, "file"), (6, "file")):
        file.write_text(
            yaml.safe_dump(document([agent_spec(fake_openai, "from-file")], version=version))
        )
        loaded = Sidecar(Settings(config=file, state_dir=state_dir)).load_config()
        assert loaded is not None and loaded.source == expected, version


async def test_the_token_file_is_reread_when_it_changes(
    sidecar_factory: SidecarFactory, fake_openai: FakeProvider, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-token-0123456789\n")
    sidecar = await sidecar_factory(token=None, token_file=token_file)
    doc = document([agent_spec(fake_openai, "gpt")])
    assert (
        await put(sidecar, doc, {"Authorization": "Bearer first-token-0123456789"})
    ).status_code == 200
    token_file.write_text("second-token-0123456789\n")
    os.utime(token_file, (1, 1))  # a distinct mtime even within the same clock tick
    assert (
        await put(sidecar, doc, {"Authorization": "Bearer first-token-0123456789"})
    ).status_code == 401
    assert (
        await put(sidecar, doc, {"Authorization": "Bearer second-token-0123456789"})
    ).status_code == 200


async def test_metrics(sidecar: Sidecar, fake_openai: FakeProvider) -> None:
    fake_openai.script(Fail(500))
    assert (await chat(sidecar)).status_code == 200  # fell back to anthropic
    stream = {**CHAT, "model": "gpt", "stream": True}
    assert (await chat(sidecar, stream)).status_code == 200
    assert (await chat(sidecar, {**CHAT, "model": "nope"})).status_code == 404

    response = await get(sidecar, "/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    expected = [
        'agent_sidecar_requests_total{api="openai",code="200",route="default",stream="false"} 1.0',
        'agent_sidecar_requests_total{api="openai",code="200",route="gpt",stream="true"} 1.0',
        'agent_sidecar_requests_total{api="openai",code="404",route="",stream="false"} 1.0',
        'agent_sidecar_attempts_total{agent="gpt",outcome="error",route="default"} 1.0',
        'agent_sidecar_attempts_total{agent="claude",outcome="ok",route="default"} 1.0',
        'agent_sidecar_fallbacks_total{route="default"} 1.0',
        'agent_sidecar_tokens_total{agent="claude",route="default",type="output"}',
        'agent_sidecar_cost_usd_total{agent="claude",route="default"}',
        'agent_sidecar_time_to_first_token_seconds_count{agent="gpt",route="gpt"} 1.0',
        'agent_sidecar_request_duration_seconds_count{api="openai",route="gpt",stream="true"} 1.0',
        'agent_sidecar_circuit_state{agent="gpt",route="default",state="closed"} 1.0',
        "agent_sidecar_config_version 1.0",
        "agent_sidecar_config_loaded 1.0",
        "agent_sidecar_in_flight_requests 0.0",
    ]
    for line in expected:
        assert line in text, line


async def test_an_open_circuit_shows_in_metrics_and_headers(
    sidecar_factory: SidecarFactory, fake_openai: FakeProvider, fake_anthropic: FakeProvider
) -> None:
    route = fast_route(
        "default", ["gpt", "claude"], circuit_breaker={"failures": 1, "cooldown": 60}
    )
    sidecar = await sidecar_factory(
        document([agent_spec(fake_openai, "gpt"), agent_spec(fake_anthropic, "claude")], [route])
    )
    fake_openai.script(Fail(500))
    await chat(sidecar)  # opens gpt's breaker
    skipped = await chat(sidecar)
    assert skipped.headers["x-agent-attempts"] == "1"  # gpt was skipped, not tried
    assert (
        "fell back to claude after 1 failed attempt(s)" in skipped.headers["x-agent-route-reason"]
    )
    text = (await get(sidecar, "/metrics")).text
    assert 'agent_sidecar_circuit_state{agent="gpt",route="default",state="open"} 1.0' in text
    assert 'agent_sidecar_attempts_total{agent="gpt",outcome="skipped",route="default"} 1.0' in text
