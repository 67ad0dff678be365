"""What a limit costs per request: one admission and its settlement, in process and on
Redis over loopback, and the round trips each takes.

    .venv/bin/python bench/admission_bench.py [--admissions 5000]

In process: an agent limited by rpm and tpm, reserved and settled through the same
steps the router takes (no network, so this is the engine's own cost). With Redis: a
`redis-server` on a free loopback port (Debian's package), the same limits, sync and
async clients; Redis's own `INFO commandstats` counts the script calls, so the round
trips per admission are measured, not assumed.

Targets: under 50 µs per admission in process; one round trip per admission on Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import redis

from agent import _steps, limits
from agent.config import AgentLimitsConfig, RouteLimitsConfig
from agent.limits import LimitsStore, MemoryStore, Quota
from agent.limits_redis import RedisStore
from agent.types import Message, Request, Usage

REQUEST = Request([Message("user", "Hello, how are you today?")], max_tokens=100)
LIMITS = AgentLimitsConfig(rpm=10**9, tpm=10**12)
ROUTE = RouteLimitsConfig(rpm=10**9, tpm=10**12)


def drive(gen: _steps.Steps[object]) -> object:
    """The sync driver's work for these steps (only `Count` steps occur)."""
    value = None
    try:
        while True:
            step = gen.send(value)
            assert isinstance(step, _steps.Count)
            value = step.sync()
    except StopIteration as stop:
        return stop.value


async def drive_async(gen: _steps.Steps[object]) -> object:
    value = None
    try:
        while True:
            step = gen.send(value)
            assert isinstance(step, _steps.Count)
            value = await step.async_()
    except StopIteration as stop:
        return stop.value


def one(*quotas: Quota) -> None:
    held = drive(limits.reserve(quotas, REQUEST, None))
    assert isinstance(held, list) and len(held) == len(quotas)
    for hold in held:
        drive(hold.settle(Usage(7, 20), None))


async def one_async(quota: Quota) -> None:
    held = await drive_async(limits.reserve([quota], REQUEST, None))
    assert isinstance(held, list)
    await drive_async(held[0].settle(Usage(7, 20), None))


def measure(fn: Callable[[], object], count: int) -> list[float]:
    for _ in range(min(200, count)):
        fn()
    out = []
    for _ in range(count):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e6)
    return out


async def measure_async(quota: Quota, count: int) -> list[float]:
    for _ in range(min(200, count)):
        await one_async(quota)
    out = []
    for _ in range(count):
        t = time.perf_counter()
        await one_async(quota)
        out.append((time.perf_counter() - t) * 1e6)
    return out


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is missing (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", directory],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return proc, port
        except redis.ConnectionError:
            time.sleep(0.05)
    sys.exit("redis-server did not start")


def script_calls(port: int) -> int:
    stats = redis.Redis(port=port).info("commandstats")
    return sum(
        int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")
    )


def row(name: str, samples: list[float], trips: str) -> str:
    p50 = statistics.median(samples)
    p99 = statistics.quantiles(samples, n=100)[98]
    return f"| {name:<38} | {p50:8.1f} | {p99:8.1f} | {trips:>9} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admissions", type=int, default=5000)
    args = parser.parse_args()
    n = args.admissions
    print("| admission + settlement (rpm + tpm)        | p50 (µs) | p99 (µs) | trips/adm |")
    print("| --- | ---: | ---: | ---: |")
    memory: LimitsStore = MemoryStore()
    quota = Quota.for_agent("bench", LIMITS, memory, 500)
    print(row("in process, sync", measure(lambda: one(quota), n), "0"))
    print(row("in process, async", asyncio.run(measure_async(quota, n)), "0"))
    concurrent = Quota("agent:bench-c", quota.windows, memory, concurrent=10**6)
    print(row("in process, + concurrency lease", measure(lambda: one(concurrent), n), "0"))

    with tempfile.TemporaryDirectory() as directory:
        proc, port = start_redis(directory)
        try:
            store = RedisStore(f"redis://127.0.0.1:{port}/0", timeout=2.0)
            shared = Quota.for_agent("bench", LIMITS, store, 500)
            one(shared)  # loads the scripts (a first EVALSHA fails over to EVAL): not counted
            before = script_calls(port)
            samples = measure(lambda: one(shared), n)
            calls = script_calls(port) - before
            total = n + min(200, n)  # the warm-up counts too
            # each request: one admission script + one settlement script
            print(row("Redis on loopback, sync", samples, f"{calls / total / 2:.2f}"))

            route = Quota.for_route("bench", ROUTE, store, 500)
            before = script_calls(port)
            samples = measure(lambda: one(shared, route), n)
            calls = script_calls(port) - before
            # one admission script for both; then each settles (the route's at the call's end)
            print(
                row(
                    "Redis, agent + route limits, sync",
                    samples,
                    f"{(calls - 2 * total) / total:.2f}",
                )
            )

            async def run_async() -> list[float]:
                await one_async(shared)  # this loop's client loads the scripts: not counted
                out = await measure_async(shared, n)
                await store.aclose()
                return out

            before = script_calls(port)
            samples = asyncio.run(run_async())
            calls = script_calls(port) - before - 2
            print(row("Redis on loopback, async", samples, f"{calls / total / 2:.2f}"))
        finally:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
