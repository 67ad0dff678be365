"""Pushing a compiled config to one sidecar's admin API, idempotently.

The sidecar reports what it serves (`GET /config`: version and the document's
metadata, whose `hash` the compiler stamped). Equal hash: nothing to do, which is what
makes an operator restart or a periodic resync cheap. Otherwise `PUT /config` with a
version above both the sidecar's and the wall clock (milliseconds), so a newer push
always wins and a restarted operator never goes backwards.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Literal

import aiohttp
import orjson

from agent.config import RouterConfig

Outcome = Literal["applied", "unchanged", "failed", "refused"]


@dataclass
class PushResult:
    pod: str
    outcome: Outcome
    version: int | None = None
    detail: str = ""

    @property
    def synced(self) -> bool:
        return self.outcome in ("applied", "unchanged")


async def push(session: aiohttp.ClientSession, pod: str, admin_url: str, token: str,
               config: RouterConfig, *, attempts: int = 4, timeout: float = 5.0) -> PushResult:
    """Make the sidecar at `admin_url` serve `config`; retries with backoff."""
    headers = {"authorization": f"Bearer {token}"}
    want = config.metadata.get("hash")
    detail = ""
    for attempt in range(attempts):
        if attempt:
            await asyncio.sleep(min(2.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.0))
        try:
            client_timeout = aiohttp.ClientTimeout(total=timeout)
            async with session.get(f"{admin_url}/config", headers=headers,
                                   timeout=client_timeout) as r:
                if r.status == 200:
                    current = await r.json()
                    served = (current.get("config") or {}).get("metadata") or {}
                    if want and served.get("hash") == want:
                        return PushResult(pod, "unchanged", current.get("version"))
                    have = int(current.get("version") or 0)
                elif r.status == 404:  # nothing loaded yet
                    have = 0
                else:
                    detail = f"GET /config answered {r.status}: {(await r.text())[:200]}"
                    if r.status in (401, 403):
                        return PushResult(pod, "refused", None, detail)
                    continue
            version = max(have + 1, time.time_ns() // 1_000_000)
            document = config.document()
            document["version"] = version
            async with session.put(f"{admin_url}/config", data=orjson.dumps(document),
                                   headers={**headers, "content-type": "application/json"},
                                   timeout=client_timeout) as r:
                answer = await r.text()
                if r.status == 200:
                    return PushResult(pod, "applied", version)
                detail = f"PUT /config answered {r.status}: {answer[:300]}"
                if r.status in (400, 401, 403, 413):  # retrying cannot help
                    return PushResult(pod, "refused", None, detail)
                # 409: someone pushed a newer version meanwhile; look again and retry.
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            detail = f"{type(exc).__name__}: {exc}"[:300]
    return PushResult(pod, "failed", None, detail)
