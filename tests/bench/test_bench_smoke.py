"""Each benchmark runs briefly, so that none of them rots between the runs by hand that
docs/benchmarks.md reports. Their numbers are printed, never asserted: timing belongs to
the benchmarks, not to the tests."""

from __future__ import annotations

import os
import subprocess
import sys
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
    for target in ("direct", "thin", "sidecar (uvloop)", "sidecar (asyncio)", "chat x-format",
                   "direct messages", "thin messages", "messages relay", "messages x-format",
                   "direct responses", "thin responses", "responses relay", "responses x-format"):
        assert f"plain  {target} " in out and f"stream {target} " in out
    assert "sidecar start-up to ready" in out and "sidecar (uvloop): RSS" in out


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
