"""Load with faults behind it, against a real sidecar process: failing upstreams, an
upstream killed and restarted, hung upstreams under a deadline, config pushes, SIGTERM.
Every answer is checked (status, whole text, a stream's end): nothing may be lost."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import httpx
from chaos_support import (
    AUTH,
    Tally,
    agent,
    chat,
    memory_mb,
    openai_call,
    percentile,
    report,
    run_load,
    start_sidecar,
)
from fakes import Fail, FakeProvider, Hang, Reply, Reset

PRIMARY, SECONDARY = "Hello from primary", "Hello from secondary"


def config(
    primary: FakeProvider, secondary: FakeProvider, version: int = 1, **route: Any
) -> dict[str, Any]:
    return {
        "version": version,
        "agents": [agent(primary, "primary"), agent(secondary, "secondary")],
        "routes": [
            {
                "name": "default",
                "agents": ["primary", "secondary"],
                "retries": 0,
                "backoff": 0,
                **route,
            }
        ],
    }


async def fakes(fake_factory: Any) -> tuple[FakeProvider, FakeProvider]:
    primary = await fake_factory("openai", record=False, default=Reply(text=PRIMARY))
    secondary = await fake_factory("openai", record=False, default=Reply(text=SECONDARY))
    return primary, secondary


async def test_soak_with_a_failing_primary(fake_factory: Any, tmp_path: Path) -> None:
    """20 s at 16 connections, half streamed; the primary fails 30% of its calls (500,
    429, connection reset, cut before content): every request is answered in full."""
    primary, secondary = await fakes(fake_factory)
    faults = [Fail(500), Fail(429, retry_after=0), Reset()]
    injected = {"count": 0}

    def flaky(_: Any) -> Any:
        if random.random() < 0.3:
            injected["count"] += 1
            return random.choice(faults)
        return Reply(text=PRIMARY)

    primary.set_default(flaky)
    sidecar = start_sidecar(config(primary, secondary, circuit_breaker={"failures": 0}), tmp_path)
    tally = Tally()
    try:
        async with httpx.AsyncClient(base_url=sidecar.app_url, timeout=30) as client:
            warm = Tally()
            await run_load(
                lambda: openai_call(client, warm, chat(), [PRIMARY, SECONDARY]),
                seconds=3,
                concurrency=16,
            )
            rss_warm = memory_mb(sidecar.proc.pid)
            await run_load(
                lambda: openai_call(
                    client, tally, chat(stream=random.random() < 0.5), [PRIMARY, SECONDARY]
                ),
                seconds=20,
                concurrency=16,
            )
            rss_end = memory_mb(sidecar.proc.pid)
    finally:
        sidecar.terminate()
        assert sidecar.wait() == 0
        stderr = sidecar.stderr()
        sidecar.kill()
    assert not warm.lost and not tally.lost, tally.lost
    assert tally.statuses == {200: tally.sent}
    assert "Traceback" not in stderr and " ERROR " not in stderr, stderr[-2000:]
    assert rss_end - rss_warm < 25, (rss_warm, rss_end)  # flat after warm-up
    report(
        "soak, failing primary",
        f"{tally.sent} requests in 20 s at 16 conns ({tally.streams_complete} streamed), "
        f"p99 {percentile(tally.latencies, 0.99) * 1000:.0f} ms",
        f"{injected['count']} primary failures (500/429/reset)",
        "-",
        f"0 of {tally.sent}; RSS {rss_warm:.0f} -> {rss_end:.0f} MB",
    )


async def test_an_upstream_killed_and_restarted(fake_factory: Any, tmp_path: Path) -> None:
    """The primary's server is stopped mid-load, then started again on the same port:
    its requests fall back meanwhile, and it serves again once it is back."""
    primary, secondary = await fakes(fake_factory)
    port = primary.port
    sidecar = start_sidecar(
        config(primary, secondary, circuit_breaker={"failures": 3, "cooldown": 1}), tmp_path
    )
    tally = Tally()

    async def call() -> None:
        await openai_call(client, tally, chat(stream=random.random() < 0.5), [PRIMARY, SECONDARY])

    try:
        async with httpx.AsyncClient(base_url=sidecar.app_url, timeout=30) as client:
            load = asyncio.create_task(run_load(call, seconds=9, concurrency=8))
            await asyncio.sleep(2)
            await primary.stop()  # killed: connections refused from now on
            await asyncio.sleep(3)
            revived = FakeProvider("openai", record=False, default=Reply(text=PRIMARY), port=port)
            await revived.start()
            await load
            # Back: after the breaker's cooldown (1 s) the primary answers again.
            texts: list[str] = []
            for _ in range(100):  # up to 10 s, however loaded the machine
                answer = await client.post("/v1/chat/completions", json=chat())
                texts.append(answer.json()["choices"][0]["message"]["content"])
                if texts[-1] == PRIMARY:
                    break
                await asyncio.sleep(0.1)
            await revived.stop()
    finally:
        sidecar.stop()
    assert not tally.lost, tally.lost
    assert tally.statuses == {200: tally.sent}
    assert texts[-1] == PRIMARY, texts
    report(
        "upstream killed and restarted",
        f"{tally.sent} requests in 9 s at 8 conns",
        "primary down 3 s, then back",
        "-",
        f"0 of {tally.sent}; primary answering again {len(texts)} call(s) after it came back",
    )


async def test_hung_upstreams_under_a_route_deadline(fake_factory: Any, tmp_path: Path) -> None:
    """The primary hangs on every call; with a 0.5 s attempt timeout and a 5 s route
    deadline, every request is answered by the secondary, and none waits past it."""
    primary, secondary = await fakes(fake_factory)
    primary.set_default(Hang())
    doc = config(primary, secondary, deadline=5)
    doc["agents"][0]["timeout"] = 0.5
    sidecar = start_sidecar(doc, tmp_path)
    tally = Tally()
    try:
        async with httpx.AsyncClient(base_url=sidecar.app_url, timeout=30) as client:
            await run_load(
                lambda: openai_call(client, tally, chat(stream=random.random() < 0.5), [SECONDARY]),
                seconds=6,
                concurrency=8,
            )
    finally:
        sidecar.stop()
    assert not tally.lost, tally.lost
    assert max(tally.latencies) < 5, max(tally.latencies)
    report(
        "hung primary, 5 s deadline",
        f"{tally.sent} requests in 6 s at 8 conns",
        "every primary call hung",
        "-",
        f"0 of {tally.sent}; slowest {max(tally.latencies):.2f} s",
    )


async def test_config_pushes_under_load(fake_factory: Any, tmp_path: Path) -> None:
    """20 pushes (the route's agent order flipping each time) while 8 connections
    send requests: no request fails, every push applies, versions only move forward."""
    primary, secondary = await fakes(fake_factory)
    sidecar = start_sidecar(config(primary, secondary), tmp_path)
    tally = Tally()
    outcomes: list[str] = []

    async def pushes() -> None:
        async with httpx.AsyncClient(base_url=sidecar.admin_url, timeout=30) as admin:
            for version in range(2, 22):
                doc = config(primary, secondary, version=version)
                if version % 2:
                    doc["routes"][0]["agents"].reverse()
                pushed = await admin.put("/config", json=doc, headers=AUTH)
                outcomes.append(pushed.json()["result"])
                await asyncio.sleep(0.2)

    try:
        async with httpx.AsyncClient(base_url=sidecar.app_url, timeout=30) as client:
            await asyncio.gather(
                run_load(
                    lambda: openai_call(
                        client, tally, chat(stream=random.random() < 0.5), [PRIMARY, SECONDARY]
                    ),
                    seconds=6,
                    concurrency=8,
                ),
                pushes(),
            )
            ready = (await client.get(sidecar.admin_url + "/readyz")).json()
    finally:
        sidecar.stop()
    assert outcomes == ["applied"] * 20
    assert ready["version"] == 21
    assert not tally.lost and tally.statuses == {200: tally.sent}, tally.lost
    report(
        "config pushes under load",
        f"{tally.sent} requests in 6 s at 8 conns",
        "20 pushes (applied, persisted, swapped)",
        "-",
        f"0 of {tally.sent}",
    )


async def test_sigterm_drains_streams_in_flight(fake_factory: Any, tmp_path: Path) -> None:
    """SIGTERM with 20 streams of about 2 s in flight and a 10 s drain: all 20 finish
    whole; a 21st that would outlast the drain ends with an error event, not silence."""
    primary, secondary = await fakes(fake_factory)
    words = " ".join(["word"] * 20)
    primary.set_default(Reply(text=words, chunk_delay=0.1))
    slow = await fake_factory(
        "openai", record=False, default=Reply(text=" ".join(["slow"] * 600), chunk_delay=0.05)
    )
    doc = config(primary, secondary)
    doc["agents"].append(agent(slow, "slow"))
    doc["routes"].append({"name": "slow", "agents": ["slow"]})
    sidecar = start_sidecar(doc, tmp_path, "--drain-timeout", "10")
    tally = Tally()
    try:
        async with httpx.AsyncClient(base_url=sidecar.app_url, timeout=60) as client:

            async def long_stream() -> str:
                async with client.stream(
                    "POST", "/v1/chat/completions", json=chat("slow", stream=True)
                ) as answer:
                    return "".join([line async for line in answer.aiter_lines()])

            cut = asyncio.create_task(long_stream())
            streams = [
                asyncio.create_task(openai_call(client, tally, chat(stream=True), [words]))
                for _ in range(20)
            ]
            # SIGTERM once all 21 are in flight (however slow the machine is to start them).
            for _ in range(300):
                metrics = (await client.get(sidecar.admin_url + "/metrics")).text
                if "agent_sidecar_in_flight_requests 21.0" in metrics:
                    break
                await asyncio.sleep(0.05)
            sidecar.terminate()
            await asyncio.gather(*streams)
            cut_text = await cut
        code = await asyncio.to_thread(sidecar.wait, 30)
    finally:
        stderr = sidecar.stderr()
        sidecar.kill()
    assert code == 0
    assert tally.streams_complete == 20 and not tally.lost, tally.lost
    assert "the sidecar is shutting down" in cut_text and "[DONE]" not in cut_text
    assert "cutting a stream of route slow" in stderr
    report(
        "SIGTERM drain",
        "20 streams of ~2 s in flight",
        "SIGTERM, 10 s drain",
        "1 stream longer than the drain",
        "0 of 20; the longer one ended with an error event and a log line",
    )
