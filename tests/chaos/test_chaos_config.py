"""A 2.9 MB config pushed to a real sidecar process (3,000 agents and routes), as JSON
and as YAML, while small requests run beside it: it is parsed, validated and built off
the event loop (a large YAML document in a process of its own: libyaml never lets go of
the interpreter lock while it builds one), so no small request may wait more than 50 ms
longer than it does without the push (the quietest of four pushes per format, as in
test_chaos_memory). Every push must apply; every figure is printed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from chaos_support import (
    AUTH,
    FakeProcess,
    SidecarProcess,
    delay_ms,
    probe_while,
    report,
    start_sidecar,
)

AGENTS = 3_000
PUSHES = 4  # per format


def big_config(base_url: str, version: int) -> dict[str, Any]:
    """About 2.9 MB: 3,000 agents with a few headers and extra fields each, and a route
    for every one."""
    agents = [
        {
            "name": f"agent-{i}",
            "provider": "openai",
            "model": "gpt-4o-mini",
            "base_url": base_url,
            "api_key": f"key-{i:040d}",
            "headers": {"x-team": "t" * 300, "x-project": "p" * 150},
            "extra": {"user": "u" * 300},
        }
        for i in range(AGENTS)
    ]
    routes = [
        {"name": f"route-{i}", "agents": [f"agent-{i}", f"agent-{(i + 1) % AGENTS}"]}
        for i in range(AGENTS)
    ]
    # "small" stays the same route in every version: the probes' route.
    routes.append({"name": "small", "agents": ["agent-0"]})
    return {"version": version, "agents": agents, "routes": routes}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeProcess]:
    fake = FakeProcess()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def sidecar(upstream: FakeProcess, tmp_path: Path) -> Iterator[SidecarProcess]:
    process = start_sidecar(big_config(upstream.base_url, 1), tmp_path)
    try:
        yield process
    finally:
        process.stop()


async def push(admin_url: str, body: bytes) -> httpx.Response:
    async with httpx.AsyncClient(base_url=admin_url, timeout=120) as admin:
        return await admin.put("/config", content=body, headers=AUTH)


async def test_a_3_mb_config_push_does_not_hold_up_requests(
    sidecar: SidecarProcess, upstream: FakeProcess
) -> None:
    figures: dict[str, list[float]] = {}
    sizes: dict[str, float] = {}
    version = 1
    for fmt, dump in (("JSON", orjson.dumps), ("YAML", lambda doc: yaml.safe_dump(doc).encode())):
        delays = figures.setdefault(fmt, [])
        for _ in range(PUSHES):
            version += 1
            body = dump(big_config(upstream.base_url, version))
            sizes[fmt] = len(body) / 2**20
            probes, answer, began, ended = await probe_while(
                sidecar.app_url, push(sidecar.admin_url, body), model="small", baseline=2.0
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["result"] == "applied", answer.text
            delays.append(delay_ms(probes, began, ended))
    text = "; ".join(
        f"{fmt} {sizes[fmt]:.1f} MB: small-request delay {', '.join(f'{d:.0f}' for d in ds)} ms"
        for fmt, ds in figures.items()
    )
    print(text)
    # The quietest push of each format (see test_chaos_memory).
    assert min(figures["JSON"]) <= 50, text
    assert min(figures["YAML"]) <= 50, text
    report(
        "3 MB config pushes",
        "small requests every 10 ms beside them",
        f"{2 * PUSHES} pushes of {AGENTS:,} agents and routes",
        "-",
        f"nothing; {text}",
    )


async def test_a_large_broken_yaml_push_says_where_not_what(
    sidecar: SidecarProcess, upstream: FakeProcess
) -> None:
    """What was tried: a 2.9 MB YAML document whose last line is broken, next to a key.
    It is refused with the line and column (found by the child process that parses large
    YAML), never the line's text; the config that served keeps serving."""
    canary = "sk-canary-" + "9" * 30
    body = yaml.safe_dump(big_config(upstream.base_url, 99)).encode()
    body += f"broken: [{canary}\n".encode()
    answer = await push(sidecar.admin_url, body)
    assert answer.status_code == 400, answer.text
    message = answer.json()["error"]
    assert "config is not valid YAML at line" in message, message
    assert canary not in answer.text
    async with httpx.AsyncClient(base_url=sidecar.admin_url, timeout=30) as admin:
        served = (await admin.get("/config", headers=AUTH)).json()
    assert served["version"] == 1
