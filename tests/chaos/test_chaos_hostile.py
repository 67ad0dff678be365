"""Hostile and careless clients against a real sidecar process, while a steady load of
good requests runs beside them: that load must lose nothing, every bad input must get a
4xx (or a closed connection), and the log must hold no traceback and no ERROR."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from pathlib import Path
from typing import Any

import httpx
import orjson
from chaos_support import Tally, chat, first_line, openai_call, report, run_load, start_sidecar
from fakes import FakeProvider, Reply

TEXT = "Hello from openai"
APP_PATHS = ("/v1/chat/completions", "/v1/messages")


def one_route(fake: FakeProvider) -> dict[str, Any]:
    return {
        "version": 1,
        "agents": [
            {
                "name": "gpt",
                "provider": "openai",
                "model": "gpt-4o-mini",
                "base_url": fake.base_url,
                "api_key": "test-key",
            }
        ],
        "routes": [{"name": "default", "agents": ["gpt"]}],
    }


def status_of(first_line: bytes) -> int:
    parts = first_line.split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def bad_bodies() -> dict[str, bytes]:
    deep = 2_000
    return {
        "tool_use, a 19-digit number, 2,000 levels": (
            b'{"model":"default","max_tokens":5,"messages":[{"role":"user","content":'
            b'[{"type":"tool_use","id":"t","name":"n","input":{"n":1234567890123456789,'
            b'"x":' + b"[" * deep + b"]" * deep + b"}}]}]}"
        ),
        "nesting of 100,000 levels": b'{"model":"default","x":'
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}",
        "invalid UTF-8 in a string": b'{"model":"default","messages":[{"role":"user","content":"\xff\xfe"}]}',
        "random bytes": os.urandom(4096),
        "a lone surrogate escape": b'{"model":"default","messages":[{"role":"user","content":"\\ud800"}]}',
        "a number of 100,000 digits": b'{"model":"default","temperature":' + b"9" * 100_000 + b"}",
        "a 2 MB body cut in the middle": orjson.dumps(chat(x=["y" * 100] * 20_000))[:1_000_000],
        "a 2 MB body with a stray backslash": orjson.dumps(chat(x=["y" * 100] * 20_000))[:-2]
        + b"\\]}",
        "JSON that is not an object": b"[" + b"1," * 500_000 + b"1]",
    }


async def test_hostile_clients_beside_a_steady_load(fake_factory: Any, tmp_path: Path) -> None:
    fake = await fake_factory("openai", record=False)
    fake.set_default(Reply(text=TEXT, chunk_delay=0.01))
    sidecar = start_sidecar(
        one_route(fake),
        tmp_path,
        "--idle-timeout",
        "2",
        "--max-connections",
        "300",
        "--log-level",
        "debug",
    )
    port = int(sidecar.app_url.rsplit(":", 1)[1])
    tried: dict[str, int] = {}
    tally = Tally()

    async def attacks() -> None:
        # Bodies nobody should send: each a 4xx, in whatever format the path speaks.
        for what, body in bad_bodies().items():
            for path in APP_PATHS:
                async with httpx.AsyncClient(base_url=sidecar.app_url, timeout=30) as client:
                    answer = await client.post(
                        path, content=body, headers={"anthropic-version": "2023-06-01"}
                    )
                assert 400 <= answer.status_code < 500, (what, path, answer.status_code)
                tried[what] = tried.get(what, 0) + 1
        # Headers nobody should send.
        huge = b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 200_000
        many = b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n" + b"".join(
            f"X-H{i}: {i}\r\n".encode() for i in range(5_000)
        )
        broken = [
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64),  # TLS hello
            b"GET / HTTP/9.9\r\n\r\n",
            b"\xff\xfe\xfd\r\n\r\n",
            b"GET /v1/models HTTP/1.1\r\nHost: \xff\xfe\r\nAuthorization: \xc3\x28\r\n\r\n",
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nZZZ\r\n",
        ]
        for data in (huge + b"\r\n\r\n", many + b"\r\n", *broken):
            status = status_of(await first_line(port, data))
            assert status == 0 or 400 <= status < 500, (data[:60], status)
        tried["huge, many and broken headers"] = 2 + len(broken)
        # Browsers: an Origin, or a rebinding Host.
        async with httpx.AsyncClient(base_url=sidecar.app_url) as client:
            for headers in (
                {"Origin": "https://evil.example", "Content-Type": "text/plain"},
                {"Host": "evil.example"},
            ):
                answer = await client.post("/v1/chat/completions", json=chat(), headers=headers)
                assert answer.status_code == 403
        tried["Origin and foreign Host"] = 2
        # 500 streams abandoned after their first line.
        async with httpx.AsyncClient(base_url=sidecar.app_url, timeout=30) as client:

            async def abandon() -> None:
                async with client.stream(
                    "POST", "/v1/chat/completions", json=chat(stream=True)
                ) as answer:
                    async for _ in answer.aiter_lines():
                        break

            for _ in range(10):
                await asyncio.gather(*(abandon() for _ in range(50)))
        tried["streams abandoned mid-way"] = 500

    async def idle_and_slow() -> None:
        # 600 idle connections (twice the cap) and 50 slowloris ones.
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(600)]
        slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(50)]
        for _, writer in slow:
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n")
        for _ in range(40):  # a header line every 0.1 s for 4 s, twice the idle timeout
            await asyncio.sleep(0.1)
            for _, writer in slow:
                with contextlib.suppress(ConnectionError):
                    writer.write(b"X-Slow: 1\r\n")
        closed = 0
        for reader, writer in idle + slow:
            try:
                closed += await asyncio.wait_for(reader.read(), timeout=10) == b""
            except ConnectionError:  # reset: closed while we still wrote
                closed += 1
            writer.close()
        assert closed == 650, closed  # every one closed by the sidecar: the cap or the timeout
        tried["idle connections (cap 300)"] = 600
        tried["slowloris connections"] = 50

    try:
        async with httpx.AsyncClient(base_url=sidecar.app_url, timeout=30) as client:
            await asyncio.gather(
                run_load(
                    lambda: openai_call(client, tally, chat(stream=random.random() < 0.5), [TEXT]),
                    seconds=12,
                    concurrency=4,
                ),
                attacks(),
                idle_and_slow(),
            )
            after = await client.post("/v1/chat/completions", json=chat())
            metrics = (await client.get(sidecar.admin_url + "/metrics")).text
    finally:
        sidecar.terminate()
        sidecar.wait()
        stderr = sidecar.stderr()
        sidecar.kill()
    assert not tally.lost and tally.statuses == {200: tally.sent}, tally.lost
    assert after.status_code == 200
    assert "agent_sidecar_in_flight_requests 0.0" in metrics
    assert "Traceback" not in stderr and " ERROR " not in stderr, stderr[-3000:]
    bad = sum(tried.values())
    report(
        "hostile clients",
        f"{tally.sent} good requests at 4 conns beside them",
        "600 idle + 50 slowloris conns, 500 abandoned streams",
        f"{bad} ({len(tried)} kinds: deep nesting, invalid bytes, huge headers, ...)",
        f"0 of {tally.sent}; no traceback, no ERROR line",
    )
