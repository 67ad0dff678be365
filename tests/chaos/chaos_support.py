"""What the chaos tests share: a real sidecar process in front of fake providers, load
that checks every answer it gets, the process's memory, and the figures each test
reports (printed in the run's summary as one table)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "sidecar"))

from sidecar_support import TOKEN, SidecarProcess, first_line  # noqa: E402, F401  # for the tests

AUTH = {"Authorization": f"Bearer {TOKEN}"}
FREE_PORTS = ("--port", "0", "--admin-port", "0", "--admin-host", "127.0.0.1")
FIGURES: list[dict[str, str]] = []  # one row per test, printed at the end of the run


def report(test: str, load: str, faults: str, bad_inputs: str, lost: str) -> None:
    """Record (and print, for `-s`) what a test put the sidecar through."""
    row = {
        "test": test,
        "load held": load,
        "faults survived": faults,
        "bad inputs tried": bad_inputs,
        "lost": lost,
    }
    FIGURES.append(row)
    print(f"\n{test}: load {load}; faults {faults}; bad inputs {bad_inputs}; lost {lost}")


def start_sidecar(
    config: dict[str, Any] | None, work: Path, *args: str, env: dict[str, str] | None = None
) -> SidecarProcess:
    """`agent-sidecar` as a real process on free loopback ports, serving `config`."""
    flags = [
        *FREE_PORTS,
        "--state-dir",
        str(work / "state"),
        *args,
    ]
    if config is not None:
        path = work / "router.json"
        path.write_text(json.dumps(config))
        flags += ["--config", str(path)]
    return SidecarProcess(flags, env={"AGENT_SIDECAR_TOKEN": TOKEN, **(env or {})}).wait_ready()


def memory_mb(pid: int, field_name: str = "VmRSS") -> float:
    """A process's resident memory now (VmRSS) or at its peak so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(field_name)


def reset_peak(pid: int) -> None:
    """Start VmHWM again from the current RSS (Linux 4.0+: write 5 to clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


# ---- load that checks every answer ---------------------------------------------------------


@dataclass
class Tally:
    """Answers by outcome; `lost` lists every answer that was not what was asked for."""

    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    streams_complete: int = 0
    lost: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> None:
        if not ok and len(self.lost) < 20:
            self.lost.append(what)
        elif not ok:
            self.lost.append("...")


def agent(fake: Any, name: str, **overrides: Any) -> dict[str, Any]:
    """An OpenAI-format agent of a config document, in front of a fake provider."""
    return {
        "name": name,
        "provider": "openai",
        "model": "gpt-4o-mini",
        "base_url": fake.base_url,
        "api_key": "test-key",
        "timeout": 10,
        **overrides,
    }


def chat(model: str = "default", stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
        **extra,
    }


async def openai_call(
    client: httpx.AsyncClient, tally: Tally, body: dict[str, Any], expect: Sequence[str]
) -> None:
    """One OpenAI-format call; the text must be one of `expect`, a stream must end with
    `[DONE]`: anything else counts as lost."""
    tally.sent += 1
    started = time.perf_counter()
    try:
        if body.get("stream"):
            async with client.stream("POST", "/v1/chat/completions", json=body) as answer:
                tally.statuses[answer.status_code] += 1
                text, done = await _read_openai_stream(answer)
                ok = answer.status_code == 200 and done and text in expect
                tally.streams_complete += ok
                tally.check(ok, f"stream {answer.status_code} {text!r} done={done}")
        else:
            answer = await client.post("/v1/chat/completions", json=body)
            tally.statuses[answer.status_code] += 1
            text = answer.json()["choices"][0]["message"]["content"] if answer.is_success else ""
            tally.check(
                answer.status_code == 200 and text in expect,
                f"plain {answer.status_code} {answer.text[:200]}",
            )
    except httpx.HTTPError as exc:
        tally.statuses[0] += 1
        tally.check(False, f"{type(exc).__name__}: {exc}")
    tally.latencies.append(time.perf_counter() - started)


async def _read_openai_stream(answer: httpx.Response) -> tuple[str, bool]:
    text, done = [], False
    async for line in answer.aiter_lines():
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            done = True
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            return "".join(text), False
        for choice in chunk["choices"]:
            text.append(choice["delta"].get("content") or "")
    return "".join(text), done


async def run_load(
    call: Callable[[], Awaitable[None]], *, seconds: float, concurrency: int
) -> None:
    """`call` from `concurrency` workers, back to back, for `seconds`."""
    stop = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < stop:
            await call()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


class FakeProcess:
    """A fake provider in a process of its own (`tests/fakes/serve.py`): a test that
    measures time or memory must not share its event loop with the upstream's work."""

    def __init__(self, kind: str = "openai", *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "fakes" / "serve.py"), "--kind", kind, *args],
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().decode().split()[2]  # READY <kind> <url>
        self.base_url = self.url + "/v1" if kind == "openai" else self.url

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# ---- how long small requests wait while something large happens ---------------------------


async def probe_while(
    url: str, work: Any, model: str = "small", baseline: float = 1.0
) -> tuple[list[tuple[float, float]], Any, float, float]:
    """Small requests every 10 ms from `baseline` seconds before `work` until just after
    it; their (start, latency), what `work` returned, and when it started and ended.
    The baseline should last about as long as the work: the slowest of many requests
    is slower than the slowest of few on a noisy machine."""
    probes: list[tuple[float, float]] = []
    done = asyncio.Event()
    baseline_answered = asyncio.Event()

    async def probe() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            while not done.is_set():
                started = time.perf_counter()
                answer = await client.post("/v1/chat/completions", json=chat(model))
                probes.append((started, time.perf_counter() - started))
                if len(probes) >= 5:
                    baseline_answered.set()
                assert answer.status_code == 200, answer.text
                await asyncio.sleep(0.01)

    task = asyncio.create_task(probe())
    await asyncio.sleep(baseline)
    # On a machine that stalled through the baseline, a few answers first (or the failure).
    answered = asyncio.create_task(baseline_answered.wait())
    await asyncio.wait({task, answered}, return_when=asyncio.FIRST_COMPLETED)
    answered.cancel()
    began = time.perf_counter()
    result = await work
    ended = time.perf_counter()
    await asyncio.sleep(0.2)
    done.set()
    await task
    return probes, result, began, ended


def delay_ms(probes: list[tuple[float, float]], began: float, ended: float) -> float:
    """How much longer the slowest small request overlapping the large one took than
    the slowest one in as long a window just before it (the machine's own hiccups,
    which a shared 2-core machine has plenty of, count on both sides)."""
    window = max(ended - began, 0.5)  # at most the baseline before `began`
    ended_before = [(start, lat) for start, lat in probes if start + lat < began]
    # On a loaded machine one probe can take the whole window: then the whole baseline.
    before = [lat for start, lat in ended_before if began - window <= start] or [
        lat for _, lat in ended_before
    ]
    during = [lat for start, lat in probes if start < ended and start + lat > began]
    return max(0.0, max(during) - max(before)) * 1000
