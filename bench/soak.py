"""Soak: a real sidecar process for minutes under a mix of load and faults, every answer
checked. The chaos suite (`tests/chaos`) does each of these for seconds; this is the
long run, with its figures in docs/benchmarks.md.

    .venv/bin/python bench/soak.py --seconds 300

Load: `--connections` clients back to back, half the calls streamed, in the OpenAI
format. Behind the route: a primary that fails `--failure-rate` of its calls (500, 429,
connection reset) and a healthy secondary. Every `--push-every` seconds a config push
flips the agents' order; every `--big-every` seconds a 30 MB body (a 1e6-element array)
is sent beside the load. A call is lost when its status is not 200, its text is not a
whole answer, or a stream does not end with `[DONE]`; the 30 MB bodies may be told to
retry (503), which they then do. Prints a table: load, faults, latency, lost, and the
sidecar's RSS after warm-up, each minute and at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "chaos")]

import httpx  # noqa: E402
from chaos_support import (  # noqa: E402
    AUTH,
    Tally,
    chat,
    memory_mb,
    openai_call,
    percentile,
    run_load,
    start_sidecar,
)
from fakes import Fail, FakeProvider, Reply, Reset  # noqa: E402

PRIMARY, SECONDARY = "Hello from primary", "Hello from secondary"


def config(primary: FakeProvider, secondary: FakeProvider, version: int) -> dict[str, Any]:
    agents = [
        {
            "name": name,
            "provider": "openai",
            "model": "gpt-4o-mini",
            "base_url": fake.base_url,
            "api_key": "test-key",
            "timeout": 30,
        }
        for fake, name in ((primary, "primary"), (secondary, "secondary"))
    ]
    order = ["primary", "secondary"] if version % 2 else ["secondary", "primary"]
    return {
        "version": version,
        "agents": agents,
        "routes": [
            {
                "name": "default",
                "agents": order,
                "retries": 0,
                "backoff": 0,
                "circuit_breaker": {"failures": 0},
            }
        ],
    }


async def soak(args: argparse.Namespace, work: Path) -> None:
    faults = [Fail(500), Fail(429, retry_after=0), Reset()]
    injected = 0

    def flaky(_: Any) -> Any:
        nonlocal injected
        if random.random() < args.failure_rate:
            injected += 1
            return random.choice(faults)
        return Reply(text=PRIMARY)

    primary = await FakeProvider("openai", record=False, default=flaky).start()
    secondary = await FakeProvider("openai", record=False, default=Reply(text=SECONDARY)).start()
    sidecar = start_sidecar(config(primary, secondary, 1), work)
    tally, pushes, big = Tally(), [0], {"sent": 0, "retried": 0, "answered": 0}
    rss: list[tuple[str, float]] = []
    try:
        async with httpx.AsyncClient(base_url=sidecar.app_url, timeout=60) as client:

            def call() -> Any:
                return openai_call(
                    client, tally, chat(stream=random.random() < 0.5), [PRIMARY, SECONDARY]
                )

            await run_load(call, seconds=min(10.0, args.seconds / 10), concurrency=args.connections)
            tally.__init__()  # the warm-up's calls are not counted
            rss.append(("after warm-up", memory_mb(sidecar.proc.pid)))
            started = time.monotonic()

            async def pusher() -> None:
                async with httpx.AsyncClient(base_url=sidecar.admin_url, timeout=60) as admin:
                    while time.monotonic() - started < args.seconds - args.push_every:
                        await asyncio.sleep(args.push_every)
                        doc = config(primary, secondary, pushes[0] + 2)
                        answer = await admin.put("/config", json=doc, headers=AUTH)
                        assert answer.json()["result"] == "applied", answer.text
                        pushes[0] += 1

            async def big_bodies() -> None:
                raw = httpx.Request(
                    "POST", "/", json=chat(x_items=[f"item-{i:023d}" for i in range(1_000_000)])
                ).content
                while time.monotonic() - started < args.seconds - args.big_every:
                    await asyncio.sleep(args.big_every)
                    big["sent"] += 1
                    answer = await client.post("/v1/chat/completions", content=raw)
                    while answer.status_code == 503:  # the budget is spent: retry, as SDKs do
                        big["retried"] += 1
                        await asyncio.sleep(float(answer.headers["retry-after"]))
                        answer = await client.post("/v1/chat/completions", content=raw)
                    big["answered"] += answer.status_code == 200

            async def sampler() -> None:
                minute = 1
                while time.monotonic() - started < args.seconds:
                    await asyncio.sleep(1)
                    if time.monotonic() - started >= 60 * minute:
                        rss.append((f"after {minute} min", memory_mb(sidecar.proc.pid)))
                        minute += 1

            await asyncio.gather(
                run_load(call, seconds=args.seconds, concurrency=args.connections),
                pusher(),
                big_bodies(),
                sampler(),
            )
            rss.append(("at the end", memory_mb(sidecar.proc.pid)))
    finally:
        sidecar.stop()
        await primary.stop()
        await secondary.stop()
    non_2xx = sum(n for code, n in tally.statuses.items() if code != 200)
    rows = [
        (
            "calls",
            f"{tally.sent} in {args.seconds:g} s at {args.connections} connections "
            f"({tally.sent / args.seconds:.0f}/s), {tally.streams_complete} streamed",
        ),
        ("primary failures injected", f"{injected} ({args.failure_rate:.0%}: 500, 429, reset)"),
        ("config pushes", f"{pushes[0]}, all applied"),
        (
            "30 MB bodies",
            f"{big['sent']} sent, {big['retried']} told to retry, {big['answered']} answered",
        ),
        (
            "latency p50 / p99",
            f"{percentile(tally.latencies, 0.5) * 1000:.0f} / "
            f"{percentile(tally.latencies, 0.99) * 1000:.0f} ms",
        ),
        ("non-2xx", str(non_2xx)),
        ("lost", f"{len(tally.lost)}" + (f": {tally.lost[:3]}" if tally.lost else "")),
        *((f"RSS {when}", f"{mb:.0f} MB") for when, mb in rss),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"| {'soak'.ljust(width)} | figure |")
    print(f"|{'-' * (width + 2)}|--------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")
    if tally.lost or big["answered"] != big["sent"]:
        sys.exit(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=300)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--failure-rate", type=float, default=0.3)
    p.add_argument("--push-every", type=float, default=15)
    p.add_argument("--big-every", type=float, default=30)
    args = p.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="soak-") as work:
        asyncio.run(soak(args, Path(work)))


if __name__ == "__main__":
    main()
