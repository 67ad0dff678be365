"""Request bodies with bounded memory.

A body becomes Python objects several times its size (a 30 MB array of short strings is
about 80 MB of objects), so the sidecar decides what it can afford before it reads:

* a `Content-Length` over the limit is refused before a byte of the body is read;
* large bodies (over `LARGE`) draw on a budget of bytes in flight; when the budget is
  spent the caller gets a 503 with `retry-after` in its own format (its SDK retries),
  instead of the process growing until it is killed;
* the bytes are read once, into one buffer (no second copy), and dropped as soon as
  they are parsed; large ones are parsed in a worker thread, off the event loop, member
  by member: members the caller's format does not read (a 1e6-element array in an extra
  field) are passed on as their bytes, never built (see `members`).

Small bodies never touch the budget: a flood of large ones cannot refuse them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from agent.errors import InvalidResponseError
from agent.wire.base import loads_exact
from agent.wire.inbound import Api, Call, CallerError, Failure, invalid
from agent_sidecar import exchange
from agent_sidecar.members import NotJSON, members

LARGE = 1024 * 1024  # bytes: from here a body is charged to the budget and parsed off-loop
PASS_ON = 64 * 1024  # bytes: a member of a large body the format does not read, kept unparsed


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


async def read_body(request: web.Request | exchange.Request, limit: int, budget: BodyBudget, timeout: float) -> Body:
    """The whole body, within `limit` bytes and `timeout` seconds, charged to `budget`
    when large. Raises CallerError (413, 408, 503) with nothing charged."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise too_large(limit)
    content = request.content
    if content.is_eof() and declared is not None and declared < LARGE:
        # The whole small body came with the head (most do): take it as it is, with no
        # timer to arm and no loop to run; aiohttp has checked it against the length.
        return Body(bytearray(content.read_nowait()), 0, budget)
    body = Body(bytearray(), 0, budget)
    if declared is not None and declared >= LARGE:
        if not budget.take(declared):
            raise _busy()
        body.charged = declared
    try:
        async with asyncio.timeout(None if content.is_eof() else timeout):
            await _fill(request, body, limit)
    except TimeoutError:
        body.release()
        raise CallerError(Failure("request_timeout", "the body did not arrive in time")) from None
    except BaseException:
        body.release()
        raise
    return body


async def _fill(request: web.Request | exchange.Request, body: Body, limit: int) -> None:
    # One buffer of the declared size, filled in place: growing it chunk by chunk
    # would copy it each time it is reallocated (twice its size for a moment).
    content, declared = request.content, request.content_length
    raw = body.raw = bytearray(declared or 0)
    size = 0
    while chunk := await content.readany():
        end = size + len(chunk)
        if end > limit:
            raise too_large(limit)
        raw[size:end] = chunk  # within the declared size: in place; past it: grows
        size = end
        # A body without a length (chunked) is charged as it grows past LARGE.
        if size >= LARGE and (grown := size - body.charged) > 0:
            if not body.budget.take(grown):
                raise _busy()
            body.charged += grown
    del raw[size:]  # a body shorter than declared (aiohttp refuses longer ones)


def decode(raw: bytes | bytearray, start: int = 0, end: int | None = None) -> Any:
    """The JSON in `raw[start:end]`. orjson refuses nesting deeper than 1,024 levels; the
    exact parser (Anthropic tool inputs keep integers beyond 64 bits) recurses, so its
    depth is caught."""
    end = len(raw) if end is None else end
    try:
        with memoryview(raw) as view:  # slices of a view copy nothing
            if raw.find(b'"tool_use"', start, end) >= 0:
                return loads_exact(bytes(view[start:end]), "body")
            return orjson.loads(view[start:end])
    except orjson.JSONDecodeError as exc:
        raise invalid(f"the body is not valid JSON: {exc}") from None
    except (InvalidResponseError, RecursionError):
        raise invalid("the body is not valid JSON, or nests too deeply") from None


def decode_members(raw: bytearray, fields: frozenset[str]) -> dict[str, Any]:
    """A large body's object, member by member: the `fields` the caller's format reads
    are parsed, any other large array, object or string is kept as its bytes."""
    try:
        found = members(raw)
    except NotJSON as exc:
        raise invalid(f"the body is not valid JSON: {exc}") from None
    data: dict[str, Any] = {}
    with memoryview(raw) as view:  # one copy of a member passed on (a bytearray slice is one more)
        for key_text, start, end in found:
            key = decode(key_text)
            if key not in fields and end - start >= PASS_ON and raw[start] in b'[{"':
                data[key] = orjson.Fragment(bytes(view[start:end]))
            else:
                data[key] = decode(raw, start, end)
    return data


def parse(api: Api, body: Body, unread: Callable[[Any], bool] | None = None) -> Call:
    """The call in a body, its bytes dropped as soon as they are decoded (this frame
    holds the only reference, so a 30 MB buffer is not kept beside its objects).
    `unread(data)`: whether the body's conversation can go unread (see `Api.parse`)."""
    raw, body.raw = body.raw, bytearray()
    if not raw:
        raise invalid("the body is empty: send a JSON object")
    data = decode(raw) if len(raw) < LARGE else decode_members(raw, api.fields)
    del raw
    try:
        return api.parse(data, unread is None or not unread(data))
    except RecursionError:
        raise invalid("the body nests too deeply") from None


async def parse_off_loop(
    api: Api, body: Body, unread: Callable[[Any], bool] | None = None
) -> Call:
    """`parse`, in a worker thread when the body is large: the scanner of `members`
    gives the GIL back every few milliseconds, so the event loop keeps serving."""
    if len(body.raw) < LARGE:
        return parse(api, body, unread)
    return await asyncio.to_thread(parse, api, body, unread)
