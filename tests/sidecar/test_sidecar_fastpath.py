"""What the sidecar's hot path must keep while it is made cheaper. The local-only check
wraps each handler of the app port (not an aiohttp middleware, which costs per request):
a route registered without it would serve web pages, so every route is tried here.
What same-format pass-through must not change (unknown fields untouched, only `model`
rewritten, provider headers forwarded, a fallback across formats naming what it drops)
is tried with the official SDKs in test_sidecar_passthrough.py."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
from agent_sidecar import Sidecar
from agent_sidecar.app import create_app
from fakes import FakeProvider

CHAT = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}


def _concrete(path: str) -> str:
    """A path that a route's pattern matches: each `{name}` or `{name:regex}` filled in."""
    return re.sub(r"\{[^}]*\}", "x", path)


async def test_every_route_of_the_app_port_refuses_a_web_page(
    sidecar: Sidecar, fake_openai: FakeProvider
) -> None:
    # The routes as aiohttp registers them; either server (`--server`) serves this table.
    app = create_app(sidecar.store, sidecar.metrics, sidecar.settings)
    routes = [
        (route.method, _concrete(route.resource.canonical))
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    ]
    assert len(routes) >= 9  # every endpoint of the module docstring, and the catch-all
    async with httpx.AsyncClient(base_url=sidecar.app_url) as client:
        for method, path in routes:
            # A browser's cross-site request (it sends Origin), then a DNS-rebinding one
            # (a page's own name as Host): both refused before any handler runs.
            for headers in ({"Origin": "https://evil.example"}, {"Host": "evil.example"}):
                answer = await client.request(
                    "POST" if method == "*" else method, path, json=CHAT, headers=headers
                )
                assert answer.status_code == 403, (method, path, headers, answer.text)
        # The same routes from a local program still work (one of them, end to end).
        answer = await client.post("/v1/chat/completions", json=CHAT)
        assert answer.status_code == 200, answer.text
    assert len(fake_openai.requests) == 1  # the refused requests never reached a provider


def test_the_sidecar_starts_without_the_engines_own_http_client() -> None:
    """What was tried: importing what the sidecar's process imports to serve, in a fresh
    interpreter. httpx and httpcore (the engine's own transport, about 3 MB of a
    process) are not loaded: the sidecar calls providers with its own client and loads
    httpx only for `--transport httpx`."""
    probe = (
        "import sys, agent_sidecar.__main__, agent_sidecar.server, agent_sidecar.app;"
        "print(sorted(m for m in ('httpx', 'httpcore') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
