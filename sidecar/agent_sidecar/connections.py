"""A cap on the app port's connections: past it, the oldest idle ones are closed.

Every connection costs a little memory and a file descriptor, and a client that opens
thousands and sends nothing would otherwise hold them until the idle timeout. Closing
the oldest *idle* connection (one waiting for, or still receiving, its request's
headers) makes room without touching a request in progress. Connections that never sent
a whole request go first: a good client's keep-alive connection is closed only when
nothing else is left, since a request it sends at that moment fails (and is retried by
the SDKs).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("agent_sidecar.connections")


def cap_connections(server: web.Server, limit: int) -> None:
    """Keep at most `limit` connections on `server` by closing the oldest idle ones."""
    made = server.connection_made

    def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
        made(handler, transport)
        excess = len(server.connections) - limit
        if excess > 0:
            closed = _close_idle(server.connections, excess)
            log.info("%d connections open: closed the %d oldest idle ones", limit, closed)

    server.connection_made = connection_made  # type: ignore[method-assign]


def _close_idle(handlers: list[RequestHandler], count: int) -> int:
    """Close `count` idle connections: first those that never sent a whole request (a
    flood of empty connections), then keep-alive ones; the oldest first in each."""
    idle = [h for h in handlers if _idle(h)]  # the server keeps them in order of arrival
    idle.sort(key=lambda h: getattr(h, "_request_count", 0) > 0)  # stable: oldest first
    for handler in idle[:count]:
        handler.force_close()
    return min(count, len(idle))


def _idle(handler: RequestHandler) -> bool:
    # aiohttp's handler waits on `_waiter` exactly while it has no complete request
    waiter = getattr(handler, "_waiter", None)
    return waiter is not None and not waiter.done()
