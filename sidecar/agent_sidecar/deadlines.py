"""Time limits on requests, watched by one timer for the whole process.

`asyncio.timeout` arms a timer and cancels it for every request it guards (about 3.5 us
a request on uvloop, measured, on a path whose whole budget is a few hundred). The
sidecar's limits are long (600 s for an answer by default) and need no precision finer
than a tenth of themselves, so one periodic check serves every request in flight: a
request pays a dict insert and delete. Like `asyncio.timeout`, a limit that expires
cancels its task, and the `async with` block raises TimeoutError in its place.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class Deadlines:
    """Limits of `seconds`, each checked within a tenth of it (at most a second late)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._every = min(1.0, seconds / 10)
        self._running: dict[Limit, float] = {}  # limit -> when it expires (loop time)
        self._timer: asyncio.TimerHandle | None = None

    def limit(self) -> Limit:
        """A limit for an `async with` block, starting when the block is entered."""
        return Limit(self)

    def _watch(self, limit: Limit) -> None:
        loop = asyncio.get_running_loop()
        self._running[limit] = loop.time() + self.seconds
        if self._timer is None:
            self._timer = loop.call_later(self._every, self._check, loop)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for limit, due in list(self._running.items()):
            if due <= now:
                del self._running[limit]
                limit.expire()
        # While no request is in flight, no timer runs.
        self._timer = loop.call_later(self._every, self._check, loop) if self._running else None


class Limit:
    __slots__ = ("_cancelling", "_deadlines", "_expired", "_task")

    def __init__(self, deadlines: Deadlines) -> None:
        self._deadlines = deadlines
        self._expired = False

    async def __aenter__(self) -> Limit:
        task = asyncio.current_task()
        assert task is not None, "a limit guards the code of a task"
        self._task = task
        self._cancelling = task.cancelling()  # cancellations asked before, not ours
        self._deadlines._watch(self)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._deadlines._running.pop(self, None)
        if self._expired and self._task.uncancel() <= self._cancelling:
            if kind is asyncio.CancelledError:
                raise TimeoutError from error  # ours: the block ran out of time

    def expire(self) -> None:
        self._expired = True
        self._task.cancel()
