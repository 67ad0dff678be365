"""Fallback that recovers, against a real sidecar process: a route whose every breaker is
open serves again as soon as an upstream is back (not after the cooldown), no user
request waits out a hung agent while its breaker is probed, and a route deadline leaves
the fallback its time when the primary hangs and retries are configured."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
from chaos_support import (
    Tally,
    agent,
    chat,
    openai_call,
    percentile,
    report,
    run_load,
    start_sidecar,
)
from fakes import Fail, Hang, Reply

PRIMARY, SECONDARY = "Hello from primary", "Hello from secondary"


def config(primary: dict[str, Any], secondary: dict[str, Any], **route: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "agents": [primary, secondary],
        "routes": [
            {"name": "default", "agents": ["primary", "secondary"], "backoff": 0, **route}
        ],
    }


async def test_every_breaker_open_recovers_when_an_upstream_is_back(
    fake_factory: Any, tmp_path: Path
) -> None:
    """What was tried: both upstreams answer 503 until every breaker of the route is open
    (cooldown 30 s), then both are healthy again. The route must serve again within a
    second or two (it tries the agent most likely to have recovered), not stay dead for
    the 30 s cooldown as it used to (a 5 s outage once cost 30 s of 503s)."""
    primary = await fake_factory("openai", record=False, default=Fail(503))
    secondary = await fake_factory("openai", record=False, default=Fail(503))
    doc = config(
        agent(primary, "primary"),
        agent(secondary, "secondary"),
        retries=0,
        circuit_breaker={"failures": 2, "cooldown": 30},
    )
    sidecar = start_sidecar(doc, tmp_path)
    try:
        async with httpx.AsyncClient(base_url=sidecar.app_url, timeout=30) as client:
            for _ in range(6):  # the outage: every agent fails until both breakers open
                answer = await client.post("/v1/chat/completions", json=chat())
                assert answer.status_code >= 500
            ready = (await client.get(f"{sidecar.admin_url}/readyz")).json()
            assert ready["down"] == ["default"], ready  # every breaker of the route open

            primary.set_default(Reply(text=PRIMARY))
            secondary.set_default(Reply(text=SECONDARY))
            back = time.monotonic()
            tally = Tally()
            first_ok: float | None = None
            while time.monotonic() - back < 3:
                await openai_call(client, tally, chat(), [PRIMARY, SECONDARY])
                if first_ok is None and not tally.lost and tally.statuses[200]:
                    first_ok = time.monotonic() - back
                tally.lost.clear()  # failures before the first success are the outage's
                await asyncio.sleep(0.05)
    finally:
        sidecar.stop()
    assert first_ok is not None and first_ok < 2, (first_ok, tally.statuses)
    failed_after = sum(n for status, n in tally.statuses.items() if status != 200)
    report(
        "every breaker open, upstreams back",
        f"{tally.sent} requests in the 3 s after the outage",
        "route fully open (30 s cooldown)",
        "-",
        f"first answer {first_ok * 1000:.0f} ms after recovery; {failed_after} failed after",
    )


async def test_no_user_request_waits_out_a_hung_agent(fake_factory: Any, tmp_path: Path) -> None:
    """What was tried: the primary fails once (its breaker opens, cooldown 0.5 s), then
    hangs for good with a 4 s attempt timeout. For 6 s, many cooldowns, 4 connections
    send requests: the breaker's half-open probe runs in the background, so no user
    request is the one that waits 4 s for the hung primary (it used to be one every
    cooldown)."""
    primary = await fake_factory("openai", record=False, default=Hang())
    primary.script(Fail(500))
    secondary = await fake_factory("openai", record=False, default=Reply(text=SECONDARY))
    doc = config(
        agent(primary, "primary", timeout=4),
        agent(secondary, "secondary"),
        retries=0,
        circuit_breaker={"failures": 1, "cooldown": 0.5},
    )
    sidecar = start_sidecar(doc, tmp_path)
    tally = Tally()
    try:
        async with httpx.AsyncClient(base_url=sidecar.app_url, timeout=30) as client:
            await openai_call(client, Tally(), chat(), [SECONDARY])  # opens the breaker
            await run_load(
                lambda: openai_call(client, tally, chat(), [SECONDARY]),
                seconds=6,
                concurrency=4,
            )
    finally:
        sidecar.stop()
    assert not tally.lost, tally.lost
    slowest = max(tally.latencies)
    assert slowest < 3, slowest  # far below the hung agent's 4 s timeout
    report(
        "hung primary, background probes",
        f"{tally.sent} requests in 6 s at 4 conns, p99 {percentile(tally.latencies, 0.99) * 1000:.0f} ms",
        "primary hung, breaker cooling down every 0.5 s",
        "-",
        f"0 of {tally.sent}; slowest {slowest * 1000:.0f} ms (hung timeout 4 s)",
    )


async def test_a_deadline_leaves_the_fallback_its_time(fake_factory: Any, tmp_path: Path) -> None:
    """What was tried: the primary hangs (attempt timeout 0.8 s), the route allows 2
    retries and has a 2 s deadline. Retrying the primary three times would spend the
    whole deadline; the route must stop retrying in time for the secondary, so every
    request is answered (it used to end in 504s naming the untried secondary)."""
    primary = await fake_factory("openai", record=False, default=Hang())
    secondary = await fake_factory("openai", record=False, default=Reply(text=SECONDARY))
    doc = config(
        agent(primary, "primary", timeout=0.8),
        agent(secondary, "secondary"),
        retries=2,
        deadline=2,
        circuit_breaker={"failures": 0},
    )
    sidecar = start_sidecar(doc, tmp_path)
    tally = Tally()
    try:
        async with httpx.AsyncClient(base_url=sidecar.app_url, timeout=30) as client:
            await run_load(
                lambda: openai_call(client, tally, chat(), [SECONDARY]), seconds=4, concurrency=4
            )
    finally:
        sidecar.stop()
    assert not tally.lost, tally.lost
    assert tally.statuses == {200: tally.sent}
    report(
        "hung primary, retries under a 2 s deadline",
        f"{tally.sent} requests in 4 s at 4 conns",
        "every primary call hung; 2 retries allowed",
        "-",
        f"0 of {tally.sent}; slowest {max(tally.latencies):.2f} s",
    )
