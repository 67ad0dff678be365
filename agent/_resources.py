"""What an agent or a router owns while it is open, made when first needed and closed
by `close()` / `aclose()`:

* its connection pools (an `HttpxTransport`), when no transport was given to it;
* an event loop in a thread, for what must run concurrently even when the caller is
  synchronous: races (`fastest`, `hedged`) and background health probes. Async callers
  never start it: their work runs on their own loop;
* the background tasks (probes) it started, cancelled when it closes.

Nothing here starts at construction: an agent that is never called owns nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from agent._transport import HttpxTransport


R = TypeVar("R")


class Resources:
    __slots__ = ("_lock", "_loop", "_pool", "_tasks", "_thread", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._pool: HttpxTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock = threading.Lock()

    def pool(self) -> HttpxTransport:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    from agent._transport import HttpxTransport  # httpx: only when used

                    self._pool = HttpxTransport()
        return self._pool

    @property
    def loop_running(self) -> bool:
        return self._thread is not None

    def _own_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name=f"agent-router:{self.name}", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def submit(self, coro: Coroutine[Any, Any, R]) -> concurrent.futures.Future[R]:
        """Run `coro` on this owner's loop thread (started now if need be)."""
        return asyncio.run_coroutine_threadsafe(coro, self._own_loop())

    def spawn(self, make: Callable[[], Awaitable[Any]]) -> None:
        """Start background work: on the caller's event loop when there is one (so it
        uses that loop's connections), else on this owner's loop thread. It is
        cancelled when this owner closes."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            self._track(loop.create_task(_settle(make())))
        else:
            self.submit(self._start(make))

    async def _start(self, make: Callable[[], Awaitable[Any]]) -> None:
        self._track(asyncio.create_task(_settle(make())))

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cancel_here(self) -> None:
        """Cancel the background tasks of the running loop and wait for them to end
        (a cancelled probe closes its connection)."""
        here = asyncio.get_running_loop()
        mine = [t for t in list(self._tasks) if t.get_loop() is here]
        for task in mine:
            task.cancel()
        await asyncio.gather(*mine, return_exceptions=True)

    async def _shutdown(self) -> None:
        await self._cancel_here()
        if self._pool is not None:  # its async clients on this loop close here
            await self._pool.aclose()

    def close(self) -> None:
        """Cancel background work, stop the loop thread and close the pools."""
        for task in list(self._tasks):  # on callers' loops: cancelled there
            if task.get_loop() is not self._loop:
                task.get_loop().call_soon_threadsafe(task.cancel)
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None:
            self.submit(self._shutdown()).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
            self._loop = self._thread = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    async def aclose(self) -> None:
        """`close()` from async code: the running loop's tasks and pool first."""
        await self._cancel_here()
        if self._pool is not None:
            await self._pool.aclose()
        if self._thread is not None:
            await asyncio.to_thread(self.close)
        else:
            self.close()


async def _settle(awaitable: Awaitable[R]) -> R:
    return await awaitable
