"""A replica that stops lets its watching sidecars go at once, so that they watch a
replica that stays instead of waiting out their long-poll on one that is leaving."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import aiohttp
from agent_operator.delivery import POD_NAME, POD_UID, Delivery
from agent_operator.metrics import Metrics
from aiohttp import web

from agent.config import RouterConfig

DOC = {
    "version": 1,
    "agents": [{"name": "gpt", "provider": "openai", "model": "gpt-4o-mini",
                "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-x"}],
    "routes": [{"name": "default", "agents": ["gpt"]}],
    "metadata": {"hash": "v1"},
}


def token(pod: str) -> str:
    claims = base64.urlsafe_b64encode(json.dumps({"exp": time.time() + 3600}).encode())
    return f"header.{claims.decode().rstrip('=')}.{pod}"


async def review(token: str, audience: str) -> dict[str, Any]:
    """The apiserver's TokenReview answer for the pod the token names."""
    pod = token.rsplit(".", 1)[1]
    return {"authenticated": True, "audiences": [audience],
            "user": {"username": "system:serviceaccount:team:chat",
                     "extra": {POD_NAME: [pod], POD_UID: [f"uid-{pod}"]}}}


async def refused(*_: Any) -> None:
    raise AssertionError("no sidecar refused anything")


async def serving() -> tuple[Delivery, web.AppRunner, str]:
    """A replica's config watches, on a real port, with a config compiled for chat-1."""
    delivery = Delivery("agent-router", Metrics(), review, refused)
    delivery.publish("team", "chat-1", "uid-chat-1", RouterConfig.model_validate(DOC), ["p"])
    app = web.Application()
    delivery.add_routes(app.router)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return delivery, runner, f"http://127.0.0.1:{runner.addresses[0][1]}/v1/config"


async def test_a_stopping_replica_answers_its_open_watches_at_once_and_sends_new_ones_away(
) -> None:
    """What was tried: a sidecar holds a 30 s watch on a replica that has nothing new for
    it; the replica stops. The watch answers "unchanged" at once (not after 30 s), on a
    connection that closes; a watch that arrives after is refused with a 503, so the
    sidecar's retry goes to another replica through the Service."""
    delivery, runner, url = await serving()
    auth = {"authorization": f"Bearer {token('chat-1')}"}
    try:
        async with aiohttp.ClientSession() as http:
            watch = asyncio.ensure_future(
                http.get(url, params={"version": "v1", "wait": "30"}, headers=auth))
            await asyncio.sleep(0.3)  # the watch is waiting on the replica
            assert not watch.done()
            started = time.monotonic()
            delivery.close()
            answer = await asyncio.wait_for(watch, 5)
            assert answer.status == 304 and time.monotonic() - started < 5
            assert answer.headers.get("connection", "").lower() == "close"
            answer.release()
            async with http.get(url, params={"version": "v1", "wait": "30"},
                                headers=auth) as again:
                assert again.status == 503
                assert "stopping" in (await again.json())["error"]
    finally:
        await runner.cleanup()


async def test_a_replica_that_is_not_stopping_holds_the_watch() -> None:
    """The same watch without the stop: it is held until a change (here, one published
    0.3 s later), which it gets, rather than answered early."""
    delivery, runner, url = await serving()
    auth = {"authorization": f"Bearer {token('chat-1')}"}
    changed = {**DOC, "metadata": {"hash": "v2"}}
    try:
        async with aiohttp.ClientSession() as http:
            watch = asyncio.ensure_future(
                http.get(url, params={"version": "v1", "wait": "30"}, headers=auth))
            await asyncio.sleep(0.3)
            assert not watch.done()
            delivery.publish("team", "chat-1", "uid-chat-1",
                             RouterConfig.model_validate(changed), ["p"])
            answer = await asyncio.wait_for(watch, 5)
            assert answer.status == 200 and answer.headers["x-config-version"] == "v2"
            answer.release()
    finally:
        await runner.cleanup()
