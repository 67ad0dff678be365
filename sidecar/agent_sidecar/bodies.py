"""Request bodies with bounded memory.

A body becomes Python objects several times its size (a 30 MB array of short strings is
about 80 MB of objects), so the sidecar decides what it can afford before it reads:

* a `Content-Length` over the limit is refused before a byte of the body is read;
* large bodies (over `LARGE`) draw on a budget of bytes in flight; when the budget is
  spent the caller gets a 503 with `retry-after` in its own format (its SDK retries),
  instead of the process growing until it is killed;
* the bytes are read once, into one buffer (no second copy), and dropped as soon as
  they are parsed; large ones are parsed in a worker thread, off the event loop.

Small bodies never touch the budget: a flood of large ones cannot refuse them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from agent.errors import InvalidResponseError
from agent.providers.base import loads_exact
from agent_sidecar.wire import Api, Call, CallerError, Failure, invalid

LARGE = 1024 * 1024  # bytes: from here a body is charged to the budget and parsed off-loop


class BodyBudget:
    """Bytes of large request bodies held at once (read, parsed or being answered)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> bool:
        if self.used + size > self.limit and self.used > 0:
            return False  # a body alone larger than the budget still passes when idle
        self.used += size
        return True

    def give_back(self, size: int) -> None:
        self.used -= size


@dataclass(slots=True)
class Body:
    """A body read whole; `charged` bytes of the budget are held until `release()`."""

    raw: bytearray
    charged: int
    budget: BodyBudget

    def release(self) -> None:
        self.budget.give_back(self.charged)
        self.charged = 0


def too_large(limit: int) -> CallerError:
    return CallerError(Failure("too_large", f"the body is larger than {limit} bytes"))


def _busy() -> CallerError:
    return CallerError(
        Failure(
            "overloaded",
            "the sidecar holds as many large request bodies as its memory budget allows: "
            "retry shortly",
            retry_after=1,
        )
    )


async def read_body(request: web.Request, limit: int, budget: BodyBudget, timeout: float) -> Body:
    """The whole body, within `limit` bytes and `timeout` seconds, charged to `budget`
    when large. Raises CallerError (413, 408, 503) with nothing charged."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise too_large(limit)
    body = Body(bytearray(), 0, budget)
    if declared is not None and declared >= LARGE:
        if not budget.take(declared):
            raise _busy()
        body.charged = declared
    try:
        async with asyncio.timeout(None if request.content.is_eof() else timeout):
            await _fill(request, body, limit)
    except TimeoutError:
        body.release()
        raise CallerError(Failure("request_timeout", "the body did not arrive in time")) from None
    except BaseException:
        body.release()
        raise
    return body


async def _fill(request: web.Request, body: Body, limit: int) -> None:
    raw, content = body.raw, request.content
    while chunk := await content.readany():
        if len(raw) + len(chunk) > limit:
            raise too_large(limit)
        raw += chunk
        grown = len(raw) - body.charged
        # A body without a length (chunked) is charged as it grows past LARGE.
        if len(raw) >= LARGE and grown > 0:
            if not body.budget.take(grown):
                raise _busy()
            body.charged += grown


def decode(raw: bytes | bytearray) -> Any:
    """A body's JSON. orjson refuses nesting deeper than 1,024 levels; the exact parser
    (Anthropic tool inputs keep integers beyond 64 bits) recurses, so its depth is caught."""
    try:
        if b'"tool_use"' in raw:
            return loads_exact(raw, "body")
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"the body is not valid JSON: {exc}") from None
    except (InvalidResponseError, RecursionError):
        raise invalid("the body is not valid JSON, or nests too deeply") from None


def parse(api: Api, body: Body) -> Call:
    """The call in a body, its bytes dropped as soon as they are decoded (this frame
    holds the only reference, so a 30 MB buffer is not kept beside its objects)."""
    raw, body.raw = body.raw, bytearray()
    if not raw:
        raise invalid("the body is empty: send a JSON object")
    data = decode(raw)
    del raw
    try:
        return api.parse(data)
    except RecursionError:
        raise invalid("the body nests too deeply") from None


async def parse_off_loop(api: Api, body: Body) -> Call:
    """`parse`, in a worker thread when the body is large."""
    if len(body.raw) < LARGE:
        return parse(api, body)
    return await asyncio.to_thread(parse, api, body)
