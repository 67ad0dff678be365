"""What a thousand watching sidecars cost the operator, checked on smaller numbers: the
memory each held connection takes, and when the sidecars' tokens are reviewed again;
never how fast anything is."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agent_operator.delivery import POD_NAME, POD_UID, REVIEW_SPREAD, REVIEW_TTL, Delivery
from agent_operator.metrics import Metrics
from aiohttp import web
from operator_support import OperatorProcess
from test_operator_delivery import operator_ca

CONNECTIONS = 200
# asyncio's default read buffer alone is 256 KiB per TLS connection; what the operator
# keeps per connection besides its 16 KiB one (aiohttp's request handler, the TLS state)
# is far below this.
MOST_PER_CONNECTION = 96 * 1024


def rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) * 1024 for line in status.splitlines()
                if line.startswith("VmRSS"))


def held_watch(ca: ssl.SSLContext, host: str, port: int, stack: ExitStack) -> None:
    """A TLS connection that asked once and stays open, as a sidecar's between watches."""
    raw = stack.enter_context(socket.create_connection((host, port), timeout=30))
    tls = stack.enter_context(ca.wrap_socket(raw, server_hostname=host))
    tls.sendall(f"GET /v1/config?wait=0 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    answer = tls.recv(65536)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]  # no token: nothing served


@pytest.fixture
def connections() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


@pytest.mark.controlplane
def test_held_tls_connections_cost_the_operator_little_memory_each(
        control_plane, operator: OperatorProcess, connections: ExitStack,
        tmp_path: Path) -> None:
    """200 TLS connections held open to the operator's port, each after one request:
    its resident memory grows by far less than asyncio's 256 KiB read buffer each."""
    assert operator.proc is not None
    ca = ssl.create_default_context(cafile=str(operator_ca(control_plane, tmp_path)))
    held_watch(ca, operator.host, operator.port, connections)  # warm: first-use allocations
    before = rss(operator.proc.pid)
    for _ in range(CONNECTIONS):
        held_watch(ca, operator.host, operator.port, connections)
    grown = rss(operator.proc.pid) - before
    assert grown < CONNECTIONS * MOST_PER_CONNECTION, \
        f"{grown / CONNECTIONS / 1024:.0f} KiB per held connection"


def pod_token(pod: str, expires: float) -> str:
    """A token shaped as the kubelet projects it (the review below is what vouches)."""
    claims = base64.urlsafe_b64encode(json.dumps({"exp": expires, "pod": pod}).encode())
    return f"header.{claims.decode().rstrip('=')}.signature"


async def test_tokens_reviewed_together_fall_due_over_minutes_not_at_once() -> None:
    """What was tried: 200 sidecars, each with its own pod's token, ask within the same
    moment over real HTTP; the TokenReview (the apiserver's answer, given here) accepts
    every one. Each is reviewed once, and the next reviews fall due spread over the
    second half of the review period, not all at the same second."""
    reviewed: list[str] = []

    async def review(token: str, audience: str) -> dict[str, Any]:
        pod = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["pod"]
        reviewed.append(pod)
        return {"authenticated": True, "audiences": [audience],
                "user": {"username": "system:serviceaccount:team:chat",
                         "extra": {POD_NAME: [pod], POD_UID: [f"uid-{pod}"]}}}

    async def refused(*_: Any) -> None:
        raise AssertionError("no sidecar answered anything")

    delivery = Delivery("agent-router", Metrics(), review, refused)
    app = web.Application()
    delivery.add_routes(app.router)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    expires = time.time() + 3600
    tokens = {f"chat-{i}": pod_token(f"chat-{i}", expires) for i in range(200)}
    try:
        asked = time.time()
        async with aiohttp.ClientSession() as http:
            for _ in range(2):  # the second time, every answer comes from what was reviewed
                for pod, token in tokens.items():
                    async with http.get(f"http://127.0.0.1:{port}/v1/config?wait=0",
                                        headers={"authorization": f"Bearer {token}"}) as r:
                        assert r.status == 404, (pod, r.status)  # known, nothing compiled
    finally:
        await runner.cleanup()
    assert sorted(reviewed) == sorted(tokens)
    due = sorted(until - asked for _, until in delivery._reviews.values())
    assert REVIEW_TTL * REVIEW_SPREAD - 5 <= due[0] and due[-1] <= REVIEW_TTL + 5
    # Spread, not bunched: no 10 s window holds more than a fifth of them.
    assert max(sum(1 for d in due if start <= d < start + 10) for start in due) < 40
