"""Limits shared by sidecar processes on a real redis-server (loopback): a burst over 8
sidecars admits no more than the limit, a budget holds under concurrent streams, a
dead Redis leaves each sidecar its fair share (never unlimited, never hanging) and a
restarted one is used again."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from fakes import FakeProvider, Reply
from sidecar_support import SidecarProcess, agent_spec

from agent import Agent, AgentRouter
from agent.errors import RoutingError
from agent.limits_redis import RedisStore

PORTS = ["--port", "0", "--admin-port", "0", "--admin-host", "127.0.0.1"]


def chat(text: str) -> dict:  # type: ignore[type-arg]
    return {"model": "default", "messages": [{"role": "user", "content": text}]}


async def sidecars(count: int, config: dict, tmp_path) -> list[SidecarProcess]:  # type: ignore[no-untyped-def,type-arg]
    import yaml

    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(config))
    procs = [SidecarProcess([*PORTS, "--config", str(path)]) for _ in range(count)]
    await asyncio.gather(*(asyncio.to_thread(p.wait_ready, 60) for p in procs))
    return procs


def document(  # type: ignore[type-arg]
    fake: FakeProvider, redis_url: str, shares: int, rpm: int, backup: bool, timeout: float = 5.0
) -> dict:
    agents = [agent_spec(fake, "a", limits={"rpm": rpm})]
    if backup:
        agents.append(agent_spec(fake, "b", model="backup-model"))
    return {
        "version": 1,
        "agents": agents,
        "routes": [{"name": "default", "agents": [a["name"] for a in agents], "retries": 0}],
        # A loaded machine may take longer than the default to answer: what is measured
        # here is the shared count, not a fallback to shares.
        "limits_store": {"redis_url": redis_url, "shares": shares, "timeout": timeout},
    }


async def test_eight_sidecars_share_one_limit_of_120_a_minute(
    fake_openai: FakeProvider,
    redis_server,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    """What was tried: 8 sidecar processes, one agent limited to 120 requests a minute
    in Redis, a burst of 1,000 requests spread over them. Between 114 and 120 reach the
    provider; every other one is a 429 in OpenAI's format with a retry-after of when the
    window has room again."""
    procs = await sidecars(8, document(fake_openai, redis_server.url, 8, 120, False), tmp_path)
    try:
        limit = asyncio.Semaphore(48)

        async def one(client: httpx.AsyncClient, i: int) -> httpx.Response:
            async with limit:
                url = procs[i % 8].app_url + "/v1/chat/completions"
                return await client.post(url, json=chat(f"n{i}"))

        async with httpx.AsyncClient(timeout=60) as client:
            answers = await asyncio.gather(*(one(client, i) for i in range(1000)))
        # A sidecar that lost Redis counts its share alone meanwhile: say so if that happened.
        unreachable = [line for p in procs for line in p.stderr().splitlines()
                       if "limits store unreachable" in line]
    finally:
        for p in procs:
            p.kill()

    ok = [r for r in answers if r.status_code == 200]
    limited = [r for r in answers if r.status_code == 429]
    assert len(ok) + len(limited) == 1000, {r.status_code for r in answers}
    assert 114 <= len(ok) <= 120, unreachable
    assert len(fake_openai.requests) == len(ok)
    # The earliest refill: the requests counted this minute slide out of the window
    # within it (at most 60.5 s away, 61 rounded up), never later, never "now".
    waits = {int(r.headers["retry-after"]) for r in limited}
    assert waits and all(1 <= w <= 61 for w in waits), waits
    error = limited[0].json()["error"]
    assert error["type"] == "rate_limit_error"
    assert "quota exhausted (a)" in error["message"] and "rpm limit of 120" in error["message"]


async def test_a_dead_redis_leaves_each_sidecar_its_share_and_a_restarted_one_is_used(
    fake_openai: FakeProvider,
    redis_server,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    """What was tried: 2 sidecars sharing a limit of 40 a minute (a fair share of 20
    each), with an unlimited backup agent; 5 requests each counted in Redis, then Redis
    is killed while they run: 50 more requests to each sidecar
    all answer promptly, no more than 20 per sidecar reach the limited agent, the rest
    fall back. Redis comes back empty: after the retry interval the limited agent
    answers again and its counters are in Redis."""
    # The default timeout: the one a dead Redis costs.
    procs = await sidecars(2, document(fake_openai, redis_server.url, 2, 40, True, 0.5), tmp_path)
    try:
        async with httpx.AsyncClient(timeout=30) as client:

            async def send(proc: SidecarProcess, tag: str, n: int) -> None:
                for i in range(n):
                    r = await client.post(
                        proc.app_url + "/v1/chat/completions", json=chat(f"{tag} {i}")
                    )
                    assert r.status_code == 200, r.text

            def reached_a(tag: str) -> int:
                return sum(
                    1
                    for r in fake_openai.requests
                    if r.model != "backup-model" and tag in r.raw.decode()
                )

            await asyncio.gather(*(send(p, f"before{n}", 5) for n, p in enumerate(procs)))
            assert reached_a("before") == 10  # counted in Redis: 10 of the 40
            assert redis_server.client().keys("agent-router:*")

            redis_server.kill()
            started = time.monotonic()
            await asyncio.gather(*(send(p, f"side{n}", 50) for n, p in enumerate(procs)))
            took = time.monotonic() - started
            by_a = [reached_a("side0"), reached_a("side1")]
            assert all(1 <= n <= 20 for n in by_a), by_a
            assert took < 60  # nothing waited on the dead store (100 requests, loaded machine)

            redis_server.start()
            await asyncio.sleep(1.5)  # the store is retried after a second
            await send(procs[0], "back", 1)
            assert reached_a("back") == 1
            assert redis_server.client().keys("agent-router:*")
    finally:
        for p in procs:
            p.kill()


async def test_a_budget_holds_under_concurrent_streams_on_redis(
    fake_openai: FakeProvider, redis_server
) -> None:  # type: ignore[no-untyped-def]
    """What was tried: a route with a $1.00 hourly budget in Redis; three waves of 40
    concurrent streams, each reserving its max_tokens (1,000 output tokens at $100 per
    million: $0.10) and using exactly that. At most 10 are admitted in all; the spend
    never passes $1.00, and Redis holds what was really spent."""
    fake_openai.set_default(Reply(text="streamed words", usage=(0, 1000), delay=0.1))
    store = RedisStore(redis_server.url, timeout=5.0)  # the budget, not a fallback, is tested
    router = AgentRouter(
        [
            Agent(
                "openai",
                "gpt-4o",
                base_url=fake_openai.base_url,
                api_key="test-key",
                name="a",
                price=(0.0, 100.0),
            )
        ],
        retries=0,
        limits={"budget": {"hourly": 1.0}},
        limits_store=store,
        name="budgeted",
    )

    async def stream() -> float | None:
        try:
            events = [e async for e in await router.stream_async("", max_tokens=1000)]
        except RoutingError:
            return None
        return events[-1].response.cost_estimate  # type: ignore[attr-defined,no-any-return]

    spent = 0.0
    admitted = 0
    for _ in range(3):
        costs = await asyncio.gather(*(stream() for _ in range(40)))
        spent += sum(c for c in costs if c is not None)
        admitted += sum(1 for c in costs if c is not None)
        assert spent <= 1.0 + 1e-9

    assert admitted == pytest.approx(10, abs=1)
    keys = redis_server.client().keys("agent-router:*route:budgeted:usd_per_hour*")
    assert len(keys) == 1
    assert float(redis_server.client().get(keys[0])) == pytest.approx(spent, abs=1e-6)
    await store.aclose()


async def test_scopes_count_apart_and_the_remaining_room_is_read_without_counting(
    redis_server,  # type: ignore[no-untyped-def]
) -> None:
    """What was tried: two stores on one Redis scoped to two namespaces, each admitting
    for an agent of the same name with an rpm of 3: each sees only its own count, and
    reading the remaining room (as the operator's status does) counts nothing."""
    from agent import limits
    from agent.config import AgentLimitsConfig
    from agent.limits import Quota
    from agent.types import Message, Request

    request = Request([Message("user", "hi")], max_tokens=5)
    team_a = RedisStore(redis_server.url, scope="team-a")
    team_b = RedisStore(redis_server.url, scope="team-b")
    qa = Quota.for_agent("pool.gpt", AgentLimitsConfig(rpm=3), team_a, 100)
    qb = Quota.for_agent("pool.gpt", AgentLimitsConfig(rpm=3), team_b, 100)

    for _ in range(3):
        assert isinstance(await drive_async(limits.reserve([qa], request, None)), list)
    assert isinstance(await drive_async(limits.reserve([qb], request, None)), list)

    assert await team_a.remaining_async(qa) == {"rpm": {"limit": 3, "remaining": 0.0}}
    assert await team_b.remaining_async(qb) == {"rpm": {"limit": 3, "remaining": 2.0}}
    assert await team_b.remaining_async(qb) == {"rpm": {"limit": 3, "remaining": 2.0}}
    await team_a.aclose()
    await team_b.aclose()


async def drive_async(gen):  # type: ignore[no-untyped-def]
    value = None
    try:
        while True:
            value = await gen.send(value).async_()
    except StopIteration as stop:
        return stop.value
