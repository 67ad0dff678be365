"""`agent-sidecar` as a real process: start-up from a file or from nothing, SIGTERM
draining streams in flight, persistence across a restart, a bad file refused."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import yaml
from fakes import FakeProvider, Reply
from sidecar_support import TOKEN, SidecarProcess, agent_spec, document

PORTS = ["--port", "0", "--admin-port", "0", "--admin-host", "127.0.0.1"]
CHAT = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def processes() -> list[SidecarProcess]:
    started: list[SidecarProcess] = []
    yield started  # type: ignore[misc]
    for process in started:
        process.kill()


async def start(processes: list[SidecarProcess], args: list[str], **env: str) -> SidecarProcess:
    process = SidecarProcess([*PORTS, *args], env=env)
    processes.append(process)
    return await asyncio.to_thread(process.wait_ready)


async def test_sigterm_drains_a_stream_in_flight_then_exits(
    tmp_path: Path, fake_openai: FakeProvider, processes: list[SidecarProcess]
) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump(document([agent_spec(fake_openai, "gpt")])))
    sidecar = await start(processes, ["--config", str(config)])
    fake_openai.script(Reply(text=" ".join(f"w{i}" for i in range(30)), chunk_delay=0.1))

    async with httpx.AsyncClient(base_url=sidecar.app_url, timeout=10) as client:
        async with client.stream(
            "POST", "/v1/chat/completions", json={**CHAT, "stream": True}
        ) as response:
            lines = response.aiter_lines()
            assert (await anext(lines)).startswith("data: ")
            sidecar.terminate()  # mid-stream
            async with httpx.AsyncClient(base_url=sidecar.admin_url) as admin:
                for _ in range(200):  # until the signal is handled
                    draining = await admin.get("/readyz")
                    if draining.status_code == 503:
                        break
                    await asyncio.sleep(0.01)
            assert draining.json()["status"] == "draining"
            with pytest.raises(httpx.ConnectError):  # no new connections while draining
                await httpx.AsyncClient().post(sidecar.app_url + "/v1/chat/completions", json=CHAT)
            rest = [line async for line in lines]
    assert rest[-2:] == ["data: [DONE]", ""] or rest[-1] == "data: [DONE]"
    text = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in rest
        if line.startswith("data: {")
    )
    assert text.endswith("w29")
    assert await asyncio.to_thread(sidecar.wait) == 0
    assert "draining" in sidecar.stderr()


async def test_no_file_waits_for_a_push_and_a_restart_serves_it(
    tmp_path: Path, fake_openai: FakeProvider, processes: list[SidecarProcess]
) -> None:
    state = str(tmp_path / "state")
    env = {"AGENT_SIDECAR_TOKEN": TOKEN}
    first = await start(processes, ["--state-dir", state], **env)
    async with httpx.AsyncClient(base_url=first.admin_url) as admin:
        assert (await admin.get("/readyz")).status_code == 503
        doc = document([agent_spec(fake_openai, "gpt")], version=3)
        pushed = await admin.put("/config", json=doc, headers={"Authorization": f"Bearer {TOKEN}"})
        assert pushed.status_code == 200
    first.terminate()
    assert await asyncio.to_thread(first.wait) == 0
    assert TOKEN not in first.stderr()

    second = await start(processes, ["--state-dir", state], **env)
    async with httpx.AsyncClient() as client:
        ready = await client.get(second.admin_url + "/readyz")
        assert ready.json()["status"] == "ready" and ready.json()["version"] == 3
        answered = await client.post(second.app_url + "/v1/chat/completions", json=CHAT)
    assert answered.status_code == 200


async def test_a_bad_config_file_stops_the_start(
    tmp_path: Path, processes: list[SidecarProcess]
) -> None:
    config = tmp_path / "router.yaml"
    config.write_text("routes:\n  - {name: default, agents: [ghost]}\n")
    process = SidecarProcess([*PORTS, "--config", str(config)])
    processes.append(process)
    assert await asyncio.to_thread(process.wait, 15) == 2
    assert "route 'default' names unknown agents: ghost" in process.stderr()


async def test_the_app_port_is_loopback_by_default(
    tmp_path: Path, processes: list[SidecarProcess]
) -> None:
    process = SidecarProcess(["--port", "0", "--admin-port", "0"])
    processes.append(process)
    await asyncio.to_thread(process.wait_ready)
    assert process.app_url.startswith("http://127.0.0.1:")
    assert process.admin_url.startswith("http://127.0.0.1:")  # bound on 0.0.0.0


async def test_without_a_token_it_makes_one_only_its_user_can_read(
    tmp_path: Path, fake_openai: FakeProvider, processes: list[SidecarProcess]
) -> None:
    """No --token-file, no AGENT_SIDECAR_TOKEN (an injected pod): the sidecar makes a
    token, writes it to <state dir>/admin-token with mode 0600, logs the path and never
    the value. Tried: no token, a wrong one, the file's; then a restart, which makes a new
    one and refuses the old."""
    state = tmp_path / "state"
    first = await start(processes, ["--state-dir", str(state)])
    made = state / "admin-token"
    assert made.stat().st_mode & 0o777 == 0o600
    token = made.read_text().strip()
    assert len(token) >= 32
    assert str(made) in first.stderr() and token not in first.stderr()
    doc = document([agent_spec(fake_openai, "gpt")], version=3)
    async with httpx.AsyncClient(base_url=first.admin_url) as admin:
        for refused in ({}, {"Authorization": "Bearer not-the-made-token"}):
            assert (await admin.put("/config", json=doc, headers=refused)).status_code == 401
        put = await admin.put("/config", json=doc, headers={"Authorization": f"Bearer {token}"})
        assert put.status_code == 200 and put.json()["result"] == "applied"
    first.terminate()
    assert await asyncio.to_thread(first.wait) == 0
    assert token not in first.stderr()

    second = await start(processes, ["--state-dir", str(state)])
    again = made.read_text().strip()
    assert again != token
    async with httpx.AsyncClient(base_url=second.admin_url) as admin:
        assert (await admin.get("/readyz")).json()["version"] == 3  # the state survived
        old = await admin.get("/config", headers={"Authorization": f"Bearer {token}"})
        assert old.status_code == 401
        new = await admin.get("/config", headers={"Authorization": f"Bearer {again}"})
        assert new.status_code == 200 and new.json()["version"] == 3


@pytest.mark.parametrize("host", ["", "0.0.0.0", "::", "10.1.2.3", "example.com"])
async def test_the_admin_port_listens_on_loopback_only(
    host: str, processes: list[SidecarProcess]
) -> None:
    """Any admin address off loopback (every address included) stops the start with a
    reason, through the flag and through the environment (where empty is unset)."""
    ways = [(["--admin-host", host], {})]
    if host:
        ways.append(([], {"AGENT_SIDECAR_ADMIN_HOST": host}))
    for args, env in ways:
        process = SidecarProcess(["--port", "0", "--admin-port", "0", *args],
                                 env={"AGENT_SIDECAR_TOKEN": TOKEN, **env})
        processes.append(process)
        assert await asyncio.to_thread(process.wait, 30) == 2, (host, env, process.stderr())
        assert "loopback" in process.stderr()
