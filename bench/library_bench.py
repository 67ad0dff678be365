"""What the library adds to a call, side by side with a bare httpx call to the same server.

    .venv/bin/python bench/library_bench.py [--calls 2000]

A fake OpenAI-format provider runs in its own process at zero delay (so the server does
not share our GIL). Each variant makes the same calls, one at a time over a kept-alive
connection; the table shows per-call latency and what the library adds over bare httpx
(the difference of medians). Then the router's cost over a bare Agent call, per strategy,
and for `fastest` how soon after the winner answered the losers' connections were closed,
as seen by the losing servers.

Targets: Agent < 100 µs added per non-streaming call; router < 50 µs added over Agent;
fastest's losers closed within 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from agent import Agent, AgentRouter, Middleware  # noqa: E402

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello"}]}


def start_fake() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fakes" / "serve.py"), "--kind", "openai",
         "--port", "0", "--usage", "5,5"],
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert line[:2] == ["READY", "openai"], line
    return proc, line[2]


def measure(fn: Callable[[], object], calls: int) -> list[float]:
    for _ in range(min(200, calls)):  # warm the pools and caches
        fn()
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e6)
    return out


async def measure_async(fn: Callable[[], Awaitable[object]], calls: int) -> list[float]:
    for _ in range(min(200, calls)):
        await fn()
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - t) * 1e6)
    return out


def row(name: str, samples: list[float], base: list[float] | None) -> str:
    p50 = statistics.median(samples)
    p99 = statistics.quantiles(samples, n=100)[98]
    added = "" if base is None else f"{p50 - statistics.median(base):+9.1f}"
    return f"| {name:34} | {len(samples):6} | {p50:9.1f} | {p99:9.1f} | {added:>10} |"


HEADER = ("| variant                            |  calls | p50 (µs)  | p99 (µs)  | added (µs) |\n"
          "|------------------------------------|--------|-----------|-----------|------------|")


def library_table(url: str, calls: int) -> list[str]:
    base_url = url + "/v1"
    os.environ.update({"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "bench"})
    agent = Agent(provider="openai", model="gpt-4o")
    headers = {"authorization": "Bearer bench", "content-type": "application/json"}
    payload = json.dumps(BODY).encode()
    lines = [HEADER]

    with httpx.Client() as client:
        def bare() -> object:
            r = client.post(base_url + "/chat/completions", content=payload, headers=headers)
            return r.json()["choices"][0]["message"]["content"]

        def bare_stream() -> object:
            body = dict(BODY, stream=True, stream_options={"include_usage": True})
            with client.stream("POST", base_url + "/chat/completions", json=body,
                               headers=headers) as r:
                return [json.loads(line[6:]) for line in r.iter_lines()
                        if line.startswith("data: {")]

        base = measure(bare, calls)
        lines.append(row("bare httpx, sync", base, None))
        lines.append(row("Agent.run", measure(lambda: agent.run("Hello"), calls), base))
        base_s = measure(bare_stream, calls)
        lines.append(row("bare httpx stream, sync", base_s, None))
        lines.append(row("Agent.stream", measure(lambda: list(agent.stream("Hello")), calls),
                         base_s))

    async def async_rows() -> None:
        async with httpx.AsyncClient() as client:
            async def bare_async() -> object:
                r = await client.post(base_url + "/chat/completions", content=payload,
                                      headers=headers)
                return r.json()["choices"][0]["message"]["content"]

            async def bare_async_stream() -> object:
                body = dict(BODY, stream=True, stream_options={"include_usage": True})
                async with client.stream("POST", base_url + "/chat/completions", json=body,
                                         headers=headers) as r:
                    return [json.loads(line[6:]) async for line in r.aiter_lines()
                            if line.startswith("data: {")]

            async def agent_stream() -> object:
                return [e async for e in await agent.stream_async("Hello")]

            base_a = await measure_async(bare_async, calls)
            lines.append(row("bare httpx, async", base_a, None))
            lines.append(row("Agent.run_async",
                             await measure_async(lambda: agent.run_async("Hello"), calls), base_a))
            base_as = await measure_async(bare_async_stream, calls)
            lines.append(row("bare httpx stream, async", base_as, None))
            lines.append(row("Agent.stream_async", await measure_async(agent_stream, calls),
                             base_as))

    asyncio.run(async_rows())
    return lines


def routers(agent: Agent, other: Agent) -> list[tuple[str, AgentRouter]]:
    """The routers measured against a bare agent: each strategy, and a route inside a
    route (the inner router is the outer one's first agent)."""
    made = [(s, AgentRouter([agent, other], strategy=s))
            for s in ("fallback", "round_robin", "cheapest", "capability")]
    made.append(("nested route", AgentRouter([AgentRouter([agent, other]), other])))
    return made


def router_table(calls: int) -> list[str]:
    lines = [HEADER]
    agent = Agent(provider="openai", model="gpt-4o")
    other = Agent(provider="openai", model="gpt-4o-mini")
    base = measure(lambda: agent.run("Hello"), calls)
    lines.append(row("Agent.run (baseline)", base, None))
    for name, router in routers(agent, other):
        lines.append(row(f"AgentRouter.run {name}",
                         measure(lambda r=router: r.run("Hello"), calls), base))
    with AgentRouter([agent, other], strategy="fastest") as race:
        lines.append(row("AgentRouter.run fastest (sync)",
                         measure(lambda: race.run("Hello"), calls), base))

    async def async_rows() -> None:
        base_a = await measure_async(lambda: agent.run_async("Hello"), calls)
        lines.append(row("Agent.run_async (baseline)", base_a, None))
        await router_rows_async(lines, agent, other, base_a, calls)

    asyncio.run(async_rows())
    return lines


async def router_rows_async(lines: list[str], agent: Agent, other: Agent, base: list[float],
                            calls: int) -> None:
    for name, router in routers(agent, other):
        lines.append(row(f"AgentRouter.run_async {name}",
                         await measure_async(lambda r=router: r.run_async("Hello"), calls), base))


def engine_table(calls: int) -> list[str]:
    """The engine's own work per call, with no network at all: agents on a MockTransport
    whose handler hands back a ready reply, against calling that handler directly."""
    from agent.testing import MockTransport
    from agent.transport import Reply

    reply = Reply(200, {"content-type": "application/json"}, json.dumps({
        "id": "c", "model": "gpt-4o", "usage": {"prompt_tokens": 5, "completion_tokens": 5},
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "Hello"}}],
    }).encode())

    def handler(request: object) -> Reply:
        return reply

    mock = MockTransport(handler)
    mock.requests = _Forgetful()
    agent = Agent(provider="openai", model="gpt-4o", transport=mock)
    other = Agent(provider="openai", model="gpt-4o-mini", transport=mock)
    lines = [HEADER]
    base = measure(lambda: handler(None), calls)
    lines.append(row("handler alone", base, None))
    lines.append(row("Agent.run", measure(lambda: agent.run("Hello"), calls), base))
    for name, router in routers(agent, other):
        lines.append(row(f"AgentRouter.run {name}",
                         measure(lambda r=router: r.run("Hello"), calls), base))

    async def async_rows() -> None:
        async def handler_async() -> Reply:
            return reply

        base_a = await measure_async(handler_async, calls)
        lines.append(row("handler alone, async", base_a, None))
        lines.append(row("Agent.run_async",
                         await measure_async(lambda: agent.run_async("Hello"), calls), base_a))
        await router_rows_async(lines, agent, other, base_a, calls)

    asyncio.run(async_rows())
    return lines


class _Forgetful(list):  # type: ignore[type-arg]
    """A MockTransport's request log that keeps nothing (a benchmark makes thousands)."""

    def append(self, item: object) -> None:
        pass


class _WinTime(Middleware):
    """Notes when the winner's answer was complete (before the losers are cancelled)."""

    def __init__(self) -> None:
        self.at = 0.0

    def after(self, request, response):  # type: ignore[no-untyped-def]
        self.at = time.perf_counter()
        return response


def fastest_table(rounds: int) -> list[str]:
    from fakes import FakeProvider, Hang, Reply

    closes: list[float] = []
    with FakeProvider("openai").running() as winner_fake, \
            FakeProvider("openai").running() as loser_fake:
        loser_fake.set_default(Hang())
        winner_fake.set_default(Reply(text="win", delay=0.002))
        marker = _WinTime()
        router = AgentRouter([
            Agent(provider="openai", model="gpt-4o", base_url=winner_fake.base_url,
                  api_key="test-key", middleware=[marker], name="winner"),
            Agent(provider="openai", model="gpt-4o", base_url=loser_fake.base_url,
                  api_key="test-key", name="loser"),
        ], strategy="fastest")

        async def go() -> None:
            for i in range(rounds):
                seen: list[float] = []
                waiter = threading.Thread(target=lambda n=i + 1, seen=seen: (
                    loser_fake.wait_disconnect_sync(5, count=n),
                    seen.append(time.perf_counter())))
                waiter.start()
                await router.run_async("Hello")
                await asyncio.to_thread(waiter.join)
                closes.append((seen[0] - marker.at) * 1000)

        asyncio.run(go())
    return [
        "| fastest: loser closed after the winner answered |        ms |",
        "|-------------------------------------------------|-----------|",
        f"| {'p50 over ' + str(rounds) + ' races':47} | {statistics.median(closes):9.2f} |",
        f"| {'max':47} | {max(closes):9.2f} |",
    ]


def recovery_table() -> list[str]:
    """The three failures that motivated background probes, the every-circuit-open rule
    and deadline-aware retries, replayed against fake providers (sync calls, one every
    20 ms): what a caller sees."""
    from fakes import Fail, FakeProvider, Hang, Reply

    def agent(fake: FakeProvider, name: str, timeout: float = 60) -> Agent:
        return Agent(provider="openai", model="gpt-4o", base_url=fake.base_url,
                     api_key="test-key", name=name, timeout=timeout)

    def drive(router: AgentRouter, seconds: float) -> list[tuple[float, float, bool]]:
        """(when, latency, ok) of each call, for `seconds`."""
        out, start = [], time.monotonic()
        while (now := time.monotonic()) - start < seconds:
            try:
                router.run("Hello")
                ok = True
            except Exception:
                ok = False
            out.append((now - start, time.monotonic() - now, ok))
            time.sleep(0.02)
        return out

    lines = ["| scenario                                          | result                           |",
             "|---------------------------------------------------|----------------------------------|"]
    with FakeProvider("openai").running() as a, FakeProvider("openai").running() as b:
        # 1. Both agents down for 1 s (30 s cooldowns): errors after they are back?
        back = time.monotonic() + 1.0
        for fake in (a, b):
            fake.set_default(lambda rec, back=back: Fail(500) if time.monotonic() < back
                             else Reply(text="ok"))
        with AgentRouter([agent(a, "a"), agent(b, "b")], retries=0,
                         circuit_breaker={"failures": 2, "cooldown": 30}) as router:
            calls = drive(router, 2.0)
        failed_after = sum(1 for t, _, ok in calls if not ok and t > 1.05)
        first_ok = min((t for t, _, ok in calls if ok), default=float("nan")) - 1.0
        lines.append(f"| {'1 s outage of every agent, 30 s cooldown':49} | "
                     f"{f'ok {first_ok:.2f} s after; {failed_after} errors after':32} |")
        # 2. A primary that fails, then hangs (2 s timeout), probed every 0.3 s.
        a.reset()
        b.reset()
        a.script(Fail(500), Fail(500))
        a.set_default(Hang())
        with AgentRouter([agent(a, "a", timeout=2), agent(b, "b")], retries=0,
                         circuit_breaker={"failures": 2, "cooldown": 0.3}) as router:
            calls = drive(router, 2.0)
            probes = len(a.requests) - 2
        slowest = max(latency for _, latency, _ in calls[2:])
        lines.append(f"| {'hung primary, probes every 0.3 s (2 s timeout)':49} | "
                     f"{f'slowest call {slowest * 1000:.0f} ms; {probes} probe(s)':32} |")
        # 3. A hung primary (1 s timeout), 1.8 s deadline, retries=2, healthy secondary.
        a.reset()
        a.set_default(Hang())
        with AgentRouter([agent(a, "a", timeout=1), agent(b, "b")], retries=2,
                         deadline=1.8, circuit_breaker={"failures": 0}) as router:
            results = [router.run("Hello").route.path == ["b"] for _ in range(3)]  # type: ignore[union-attr]
        lines.append(f"| {'hung primary, 1.8 s deadline, retries=2':49} | "
                     f"{f'{sum(results)}/3 answered by the secondary':32} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--races", type=int, default=50)
    args = parser.parse_args()
    proc, url = start_fake()
    try:
        print(f"Python {sys.version.split()[0]}, {os.cpu_count()} cores; fake at {url}\n")
        print("Library overhead per call (one connection, sequential calls)")
        print("\n".join(library_table(url, args.calls)))
        print("\nRouter overhead over a bare Agent call")
        print("\n".join(router_table(args.calls)))
        print("\nThe engine alone (MockTransport: no network), over the handler it calls")
        print("\n".join(engine_table(args.calls)))
        print()
        print("\n".join(fastest_table(args.races)))
        print("\nRecovery (what a caller sees)")
        print("\n".join(recovery_table()))
    finally:
        proc.terminate()
        proc.wait(5)


if __name__ == "__main__":
    main()
