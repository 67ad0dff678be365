"""TCP forwarding across a network namespace's boundary, for the test node
(tests/support/node.py): this machine's loopback to addresses inside the namespace (the
API server, pods, Services), and the node's address to this machine's loopback (Jaeger,
the fake providers), from one thread of the test process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import threading
from pathlib import Path

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


class Relay:
    """TCP forwarding across the namespace boundary, on a thread of its own.

    A socket belongs to the network namespace its creating thread was in; this thread
    steps into the node's namespace only to create a socket there, then steps back.
    """

    def __init__(self, netns: Path) -> None:
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        self._node = os.open(netns, os.O_RDONLY)
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="node-relay",
                                        daemon=True)
        self._thread.start()

    def _socket(self, inside: bool) -> socket.socket:
        if not inside:
            sock = socket.socket()
        else:
            _setns(self._node)
            try:
                sock = socket.socket()
            finally:
                _setns(self._home)
        sock.setblocking(False)
        return sock

    def forward(self, listen: tuple[bool, str, int], target: tuple[bool, str, int]) -> int:
        """Listen at ``(inside, host, port)`` (port 0: any) and connect each client to
        ``target``; returns the listening port."""
        done = asyncio.run_coroutine_threadsafe(self._forward(listen, target), self._loop)
        return done.result(10)

    async def _forward(self, listen: tuple[bool, str, int],
                       target: tuple[bool, str, int]) -> int:
        inside, host, port = listen
        lsock = self._socket(inside)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((host, port))

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # asyncio's streams let go of this task when the client disconnects: hold it
            # until the other direction is done too.
            task = asyncio.current_task()
            assert task is not None
            self._tasks.add(task)
            sock = self._socket(target[0])
            writers = [writer]
            try:
                await self._loop.sock_connect(sock, target[1:])
                their_reader, their_writer = await asyncio.open_connection(sock=sock)
                writers.append(their_writer)
                self._writers.update(writers)
                await asyncio.gather(_pipe(reader, their_writer), _pipe(their_reader, writer))
            except OSError:
                sock.close()
            finally:
                for w in writers:
                    w.close()
                    self._writers.discard(w)
                self._tasks.discard(task)

        server = await asyncio.start_server(relay, sock=lsock, backlog=128)
        self._servers.append(server)
        return int(lsock.getsockname()[1])

    def close(self) -> None:
        """Stop listening and close every connection (their tasks then end)."""

        async def shut() -> None:
            for server in self._servers:
                server.close()
            for writer in list(self._writers):
                writer.close()
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=5)

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        for fd in (self._home, self._node):
            os.close(fd)
