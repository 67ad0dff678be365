"""A cap on the app port's connections: past it, the oldest idle ones are closed.

Every connection costs a little memory and a file descriptor, and a client that opens
thousands and sends nothing would otherwise hold them until the idle timeout. Closing
the oldest *idle* connection (one waiting for, or still receiving, its request's
headers) makes room without touching a request in progress; keep-alive clients simply
reconnect.
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
    closed = 0
    for handler in handlers:  # oldest first: the server keeps them in order of arrival
        if closed == count:
            break
        # aiohttp's handler waits on `_waiter` exactly while it has no complete request
        waiter = getattr(handler, "_waiter", None)
        if waiter is not None and not waiter.done():
            handler.force_close()
            closed += 1
    return closed
