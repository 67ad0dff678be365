"""A cap on the app port's connections: past it, the oldest idle ones are closed.

Every connection costs a little memory and a file descriptor, and a client that opens
thousands and sends nothing would otherwise hold them until the idle timeout. Closing
the oldest *idle* connection (one waiting for, or still receiving, its request's
headers) makes room without touching a request in progress. Connections that never sent
a whole request go first: a good client's keep-alive connection is closed only when
nothing else is left, since a request it sends at that moment fails (and is retried by
the SDKs). The policy is `make_room`'s, for both servers of the app port: the sidecar's
own (`agent_sidecar.http1server`) and aiohttp's (`cap_connections`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import TypeVar

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("agent_sidecar.connections")

C = TypeVar("C")


def make_room(
    connections: Collection[C],
    limit: int,
    idle: Callable[[C], bool],
    answered: Callable[[C], bool],
    close: Callable[[C], None],
) -> None:
    """Past `limit` connections (kept in order of arrival), close as many idle ones:
    first those that never sent a whole request (a flood of empty connections), then
    keep-alive ones (`answered`); the oldest first in each."""
    excess = len(connections) - limit
    if excess <= 0:
        return
    chosen = sorted((c for c in connections if idle(c)), key=answered)[:excess]  # stable
    for connection in chosen:
        close(connection)
    log.info("%d connections open: closed the %d oldest idle ones", limit, len(chosen))


def cap_connections(server: web.Server, limit: int) -> None:
    """Keep at most `limit` connections on aiohttp's `server` (see `make_room`)."""
    made = server.connection_made

    def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
        made(handler, transport)
        make_room(server.connections, limit, _idle, _answered, RequestHandler.force_close)

    server.connection_made = connection_made  # type: ignore[method-assign]


def _idle(handler: RequestHandler) -> bool:
    # aiohttp's handler waits on `_waiter` exactly while it has no complete request
    waiter = getattr(handler, "_waiter", None)
    return waiter is not None and not waiter.done()


def _answered(handler: RequestHandler) -> bool:
    return getattr(handler, "_request_count", 0) > 0
