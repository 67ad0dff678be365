"""Take an awaitable's result at once when it does not need to wait.

A stream relay writes to the client once per batch of events that arrived together
(one upstream chunk often carries several) instead of once per event: it asks for the
next event with `now()`, keeps collecting while events come without waiting, and
writes what it has just before it would wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def now(coro: Coroutine[Any, Any, T]) -> tuple[T | None, Rest[T] | None]:
    """Run `coro` until it would wait: `(result, None)` if it finished, else
    `(None, rest)` where `await rest` finishes it (on the same task, like `await coro`)."""
    try:
        waiting = coro.send(None)
    except StopIteration as stop:
        return stop.value, None
    return None, Rest(coro, waiting)


class Rest(Generic[T]):
    """The remainder of a coroutine suspended on `waiting` (what it yielded to the task)."""

    __slots__ = ("_coro", "_waiting")

    def __init__(self, coro: Coroutine[Any, Any, T], waiting: Any) -> None:
        self._coro = coro
        self._waiting = waiting

    def __await__(self) -> Generator[Any, Any, T]:
        return self._drive(None)

    def abandon(self) -> Awaitable[T]:
        """Cancel the remainder and let it unwind, for a caller that leaves before
        awaiting it. Closing it would not do: an async generator it was stepping stays
        "running" and can never be closed (its upstream connection with it)."""
        return _Awaiting(self._drive(asyncio.CancelledError()))

    def _drive(self, error: BaseException | None) -> Generator[Any, Any, T]:
        coro, waiting = self._coro, self._waiting
        if error is not None:
            try:
                waiting = coro.throw(error)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
        while True:
            try:
                value = yield waiting  # the task waits on it exactly as for `await coro`
            except BaseException as exc:  # cancellation (or anything) thrown in by the task
                try:
                    waiting = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
            else:
                try:
                    waiting = coro.send(value)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]


class _Awaiting(Generic[T]):
    __slots__ = ("_steps",)

    def __init__(self, steps: Generator[Any, Any, T]) -> None:
        self._steps = steps

    def __await__(self) -> Generator[Any, Any, T]:
        return self._steps
