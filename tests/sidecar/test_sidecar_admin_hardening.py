"""The admin port under attack: short tokens, guessing, a vanished token file, pushes
that try to read the process's environment or nest without end, and header bytes of
every kind. Each answer is a 4xx that says why; nothing is applied, nothing is a 500."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from agent_sidecar import Settings, Sidecar
from agent_sidecar.admin import ADMIN, MIN_TOKEN_LENGTH, AdminToken, FailedAttempts
from conftest import SidecarFactory
from fakes import FakeProvider
from hypothesis import given, settings
from hypothesis import strategies as st
from sidecar_support import SERVER_SETTING, TOKEN, agent_spec, document

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_a_short_token_is_refused_with_a_reason_that_does_not_quote_it() -> None:
    short = AdminToken("x" * (MIN_TOKEN_LENGTH - 1))
    problem = short.problem()
    assert problem is not None and f"at least {MIN_TOKEN_LENGTH}" in problem
    assert "xxxx" not in problem
    assert short.current() is None  # never usable, even if the start-up check is skipped
    assert AdminToken("y" * MIN_TOKEN_LENGTH).problem() is None


def test_failed_attempts_refill_at_their_rate() -> None:
    attempts = FailedAttempts(rate=2.0, burst=10)
    for _ in range(10):
        assert attempts.wait("guesser") == 0
        attempts.failed("guesser")
    assert 0 < attempts.wait("guesser") <= 0.5  # the next one in half a second
    assert attempts.wait("operator") == 0  # another address is not slowed


async def test_guessing_is_limited_per_address_and_the_right_address_goes_on(
    sidecar: Sidecar, fake_openai: FakeProvider
) -> None:
    assert sidecar._admin is not None
    # No refill while the test runs, however slow the machine: exactly 10 get through.
    sidecar._admin.app[ADMIN].failures.rate = 1e-6
    guesser = httpx.AsyncClient(base_url=sidecar.admin_url)
    # The operator, from another loopback address: never slowed by the guesser.
    operator = httpx.AsyncClient(
        base_url=sidecar.admin_url,
        transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2"),
    )
    async with guesser, operator:
        answers = [
            (await guesser.get("/config", headers={"Authorization": f"Bearer guess-{i}"}))
            for i in range(30)
        ]
        codes = [a.status_code for a in answers]
        assert codes[:10] == [401] * 10 and set(codes[10:]) == {429}, codes
        assert int(answers[-1].headers["retry-after"]) >= 1
        # The guesser's right token is refused too while it is limited: no oracle.
        assert (await guesser.get("/config", headers=AUTH)).status_code == 429
        assert (await operator.get("/config", headers=AUTH)).status_code == 200
        metrics = (await operator.get("/metrics")).text
    assert 'agent_sidecar_admin_auth_failures_total{result="refused"} 10.0' in metrics
    assert 'agent_sidecar_admin_auth_failures_total{result="limited"} 21.0' in metrics


async def test_a_vanished_token_file_closes_config_instead_of_opening_it(
    sidecar_factory: SidecarFactory, two_provider_config: dict[str, object], tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    sidecar = await sidecar_factory(two_provider_config, token=None, token_file=token_file)
    async with httpx.AsyncClient(base_url=sidecar.admin_url) as client:
        assert (await client.get("/config", headers=AUTH)).status_code == 200
        token_file.unlink()
        for headers in ({}, AUTH):
            assert (await client.get("/config", headers=headers)).status_code == 403
        token_file.write_text("short")  # rotated to something unusable: still closed
        os.utime(token_file, (1, 1))
        assert (
            await client.get("/config", headers={"Authorization": "Bearer short"})
        ).status_code == 403


@pytest.mark.parametrize(
    "variable", ["AWS_SECRET_ACCESS_KEY", "AGENT_SIDECAR_TOKEN", "HOME", "AGENT_KEY_"]
)
async def test_a_push_cannot_read_any_variable_of_the_environment(
    sidecar: Sidecar, fake_openai: FakeProvider, variable: str
) -> None:
    doc = document([agent_spec(fake_openai, "gpt", api_key=None, api_key_env=variable)], version=5)
    async with httpx.AsyncClient(base_url=sidecar.admin_url) as client:
        refused = await client.put("/config", json=doc, headers=AUTH)
        allowed = await client.put(
            "/config",
            json=document(
                [agent_spec(fake_openai, "gpt", api_key=None, api_key_env="AGENT_KEY_GPT")],
                version=6,
            ),
            headers=AUTH,
        )
    assert refused.status_code == 400 and "not an allowed variable" in refused.text
    assert allowed.status_code == 200  # the documented prefix, and the standard names


@pytest.mark.parametrize("depth", [500, 5_000, 100_000])
async def test_deeply_nested_pushes_are_a_400(sidecar: Sidecar, depth: int) -> None:
    nested = {
        "JSON": '{"version": 9, "metadata": ' + "[" * depth + "]" * depth + "}",
        "YAML flow": "version: 9\nmetadata: " + "[" * depth + "]" * depth,
        "YAML block": "version: 9\nagents:\n"
        + "".join("  " * i + "- \n" for i in range(1, min(depth, 1500))),
    }
    async with httpx.AsyncClient(base_url=sidecar.admin_url, timeout=60) as client:
        for what, text in nested.items():
            refused = await client.put("/config", content=text.encode(), headers=AUTH)
            assert refused.status_code == 400, (what, depth, refused.text[:200])
        assert (await client.get("/readyz")).json()["version"] == 1  # the old one serves on


HEADER_BYTES = st.binary(min_size=1, max_size=40).filter(
    lambda b: b"\r" not in b and b"\n" not in b and b"\x00" not in b
)


@settings(max_examples=60, deadline=None)
@given(value=HEADER_BYTES, name=st.sampled_from([b"Authorization", b"Host", b"Origin", b"X-Any"]))
def test_no_header_bytes_make_a_500_on_either_port(
    running_sidecar: tuple[Sidecar, asyncio.AbstractEventLoop], value: bytes, name: bytes
) -> None:
    sidecar, loop = running_sidecar
    for port, request in (
        (sidecar.admin_port, b"GET /config HTTP/1.1\r\n"),
        (sidecar.admin_port, b"PUT /config HTTP/1.1\r\nContent-Length: 2\r\n"),
        (sidecar.app_port, b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\n"),
        (sidecar.app_port, b"GET /v1/models HTTP/1.1\r\n"),
    ):
        raw = request + name + b": " + value + b"\r\nConnection: close\r\n\r\n{}"
        status = asyncio.run_coroutine_threadsafe(_status(port, raw), loop).result(30)
        # The listing needs no credentials: a header HTTP allows leaves it a 200 (the
        # sidecar's own server answers before the bytes after `Connection: close`,
        # which aiohttp's refuses with the whole request).
        listing = port == sidecar.app_port and request.startswith(b"GET") and status == 200
        assert 400 <= status < 500 or listing, (port, request, name, value, status)


async def _status(port: int, raw: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    line = await reader.readline()
    writer.close()
    return int(line.split()[1])


@pytest.fixture(scope="module")
def running_sidecar(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Sidecar, asyncio.AbstractEventLoop]]:
    """A sidecar on a loop of its own thread (hypothesis runs examples synchronously)."""
    config = tmp_path_factory.mktemp("headers") / "router.yaml"
    config.write_text(yaml.safe_dump({"version": 1, "agents": [], "routes": []}))
    settings = Settings(config=config, port=0, admin_port=0, admin_host="127.0.0.1", token=TOKEN,
                        **SERVER_SETTING)
    sidecar = Sidecar(settings)
    sidecar.load_config()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(sidecar.start(), loop).result(30)
    try:
        yield sidecar, loop
    finally:
        asyncio.run_coroutine_threadsafe(sidecar.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
