"""Each benchmark runs briefly, so that none of them rots between the runs by hand that
docs/benchmarks.md reports. Their numbers are printed, never asserted: timing belongs to
the benchmarks, not to the tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    print(out)
    return proc.stdout


def test_library_bench() -> None:
    out = run("bench/library_bench.py", "--calls", "20", "--races", "3")
    for line in ("| Agent.run ", "| AgentRouter.run_async capability", "p50 over 3 races",
                 "| AgentRouter.run nested route", "| AgentRouter.run fastest (sync)",
                 "| handler alone, async", "| hung primary, 1.8 s deadline, retries=2"):
        assert line in out


# Every row at 32 connections and at one, a second each, plus the memory and start-up
# runs: about 90 s alone on two CPUs, past the default limit when other tests share them.
@pytest.mark.timeout(360)
def test_sidecar_bench() -> None:
    out = run("bench/sidecar_bench.py", "--seconds", "1", "--rounds", "1")
    for target in ("direct", "thin", "bytes", "sidecar (uvloop)", "sidecar (asyncio)", "chat x-format",
                   "direct messages", "thin messages", "messages relay", "messages x-format",
                   "direct responses", "thin responses", "responses relay", "responses x-format"):
        assert f"plain  {target} " in out and f"stream {target} " in out
    assert "sidecar start-up to ready" in out and "sidecar (uvloop): RSS" in out


def test_a_killed_sidecar_bench_leaves_no_server_running() -> None:
    """What was tried: the sidecar benchmark killed (SIGKILL, as a timeout kills it) once
    its first servers run. Every server it started ends with it."""
    bench = subprocess.Popen([sys.executable, "bench/sidecar_bench.py", "--seconds", "1",
                              "--rounds", "1"], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (children := _children(bench.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert children, "the benchmark started no server"
    finally:
        bench.kill()
        bench.wait()
    deadline = time.monotonic() + 20
    while (alive := [p for p in children if Path(f"/proc/{p}").exists()]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert not alive, f"servers left running: {alive}"


def _children(pid: int) -> list[int]:
    """The servers `pid` runs (its upstream, relays and sidecars; not its short tools)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
                if b"sidecar_servers.py" in cmdline or b"agent_sidecar" in cmdline:
                    found.append(int(child))
    return found


def test_admission_bench() -> None:
    out = run("bench/admission_bench.py", "--admissions", "50")
    for line in ("| in process, sync ", "| in process, async ", "| Redis on loopback, sync ",
                 "| Redis, agent + route limits, sync ", "| Redis on loopback, async "):
        assert line in out
    # Redis counts the scripts it ran: one per admission, for an agent's and a route's
    # limits together too.
    assert out.count("|      1.00 |") == 3, out


@pytest.mark.controlplane
def test_delivery_bench() -> None:
    from support.controlplane import find_assets  # fails, never skips, without binaries

    env = {**os.environ, "AGENT_ROUTER_ASSETS": str(find_assets())}
    out = run("bench/delivery_bench.py", "--simulated", "5", "--real", "1", "--rounds", "1",
              env=env)
    assert "| sidecars | p50 apply-to-serving (s) | p99 (s) |" in out
    assert out.splitlines()[-1].startswith("|        6 |")


def test_soak() -> None:
    out = run("bench/soak.py", "--seconds", "4", "--push-every", "2", "--big-every", "2",
              "--connections", "4")
    for row in ("| calls ", "| config pushes ", "| 30 MB bodies ", "| lost ", "| RSS at the end "):
        assert row in out
