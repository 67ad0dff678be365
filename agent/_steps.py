"""One implementation of every call, driven two ways.

The logic of a call (middleware, the tool loop, retries, fallback) is written once as
a generator that *yields steps* (send this HTTP request, read a chunk, run this hook,
sleep, hand this event to the caller) and receives their results. A sync driver and
an async driver perform the steps. So sync and async behave identically by
construction, and neither pays for the other (no event loop behind the sync API).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from agent import _transport
from agent.providers.base import Reply, WireRequest
from agent.transport import default_transport
from agent.types import StreamEvent

if TYPE_CHECKING:
    from agent.transport import AsyncStreamResponse, AsyncTransport

R = TypeVar("R")


@dataclass(slots=True)
class Send:
    """Send a request, return a `Reply`. `transport`: the agent's own, if it has one
    (async drivers only; see `agent.transport`)."""

    wire: WireRequest
    timeout: float
    transport: AsyncTransport | None = None


@dataclass(slots=True)
class Open:
    """Open a streaming request: returns a stream handle, or a Reply for HTTP errors."""

    wire: WireRequest
    timeout: float
    transport: AsyncTransport | None = None


@dataclass(slots=True)
class Read:
    """Read the next chunk of an open stream (b"" at its end)."""

    stream: Any


@dataclass(slots=True)
class Close:
    stream: Any


@dataclass(slots=True)
class Call:
    """Call user code (a hook, a tool, a custom router) that may be sync or async."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]


@dataclass(slots=True)
class Sleep:
    seconds: float


@dataclass(slots=True)
class Emit:
    """Hand events to the caller of a stream (those that arrived together travel as one
    step: the generators between here and the driver resume once, not once per event)."""

    events: list[StreamEvent]


Step = Send | Open | Read | Close | Call | Sleep | Emit
Steps = Generator[Step, Any, R]


# ---- sync ------------------------------------------------------------------------------


def _perform(step: Step, streams: list[Any]) -> Any:
    if isinstance(step, Read):
        return step.stream.read()
    if isinstance(step, Send):
        return _transport.send(step.wire, step.timeout)
    if isinstance(step, Open):
        opened = _transport.open_stream(step.wire, step.timeout)
        if isinstance(opened, _transport.SyncStream):
            streams.append(opened)
        return opened
    if isinstance(step, Close):
        if step.stream in streams:
            streams.remove(step.stream)
        step.stream.close()
        return None
    if isinstance(step, Call):
        result = step.fn(*step.args)
        return run_sync(result) if inspect.isawaitable(result) else result
    if isinstance(step, Sleep):
        time.sleep(step.seconds)
        return None
    raise TypeError(f"unexpected step {step!r}")


def _drive(gen: Steps[R], streams: list[Any]) -> Iterator[StreamEvent]:
    """Perform `gen`'s steps; yield what it emits; its return value ends the iteration."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = gen.throw(error) if error is not None else gen.send(value)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        value, error = None, None
        if isinstance(step, Emit):
            yield from step.events
            continue
        try:
            value = _perform(step, streams)
        except Exception as exc:  # thrown back in: the generator decides (retry, fallback)
            error = exc


def run_steps(gen: Steps[R]) -> R:
    """Run a non-streaming step generator to completion and return its value."""
    streams: list[Any] = []
    it = _drive(gen, streams)
    try:
        while True:
            next(it)
    except StopIteration as stop:
        return cast(R, stop.value)
    finally:
        gen.close()
        for s in streams:
            s.close()


def iterate_steps(gen: Steps[Any]) -> Iterator[StreamEvent]:
    """A sync stream: the events `gen` emits. Closing the iterator closes the HTTP stream."""
    streams: list[Any] = []
    try:
        yield from _drive(gen, streams)
    finally:
        gen.close()
        for s in streams:
            s.close()


# ---- async -----------------------------------------------------------------------------


class _Opened:
    """An open async stream as step generators read it (b"" at its end), whatever the
    transport behind it."""

    __slots__ = ("_chunks", "response")

    def __init__(self, response: AsyncStreamResponse) -> None:
        self.response = response
        self._chunks = response.__aiter__()

    async def read(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            return b""

    async def close(self) -> None:
        await self.response.aclose()


async def _perform_async(step: Step, streams: list[Any], transport: AsyncTransport) -> Any:
    if isinstance(step, Read):
        return await step.stream.read()
    if isinstance(step, Send):
        return await (step.transport or transport).send(step.wire, step.timeout)
    if isinstance(step, Open):
        opened = await (step.transport or transport).open_stream(step.wire, step.timeout)
        if isinstance(opened, Reply):
            return opened
        handle = _Opened(opened)
        streams.append(handle)
        return handle
    if isinstance(step, Close):
        if step.stream in streams:
            streams.remove(step.stream)
        await step.stream.close()
        return None
    if isinstance(step, Call):
        result = step.fn(*step.args)
        return await result if inspect.isawaitable(result) else result
    if isinstance(step, Sleep):
        await asyncio.sleep(step.seconds)
        return None
    raise TypeError(f"unexpected step {step!r}")


async def iterate_steps_async(
    gen: Steps[Any], transport: AsyncTransport | None = None
) -> AsyncIterator[StreamEvent]:
    """An async stream of the events `gen` emits; closing it closes the HTTP stream.
    `transport`: for steps whose agent names none (default: the process default)."""
    transport = transport or default_transport()
    streams: list[Any] = []
    value: Any = None
    error: BaseException | None = None
    try:
        while True:
            try:
                step = gen.throw(error) if error is not None else gen.send(value)
            except StopIteration:
                return
            value, error = None, None
            if isinstance(step, Emit):
                for event in step.events:
                    yield event
                continue
            try:
                value = await _perform_async(step, streams, transport)
            except Exception as exc:
                error = exc
    finally:
        gen.close()
        for s in streams:
            # Shielded: a cancelled consumer must still close the upstream connection.
            await asyncio.shield(s.close())


async def run_steps_async(gen: Steps[R], transport: AsyncTransport | None = None) -> R:
    transport = transport or default_transport()
    streams: list[Any] = []
    value: Any = None
    error: BaseException | None = None
    try:
        while True:
            try:
                step = gen.throw(error) if error is not None else gen.send(value)
            except StopIteration as stop:
                return cast(R, stop.value)
            value, error = None, None
            try:
                value = await _perform_async(step, streams, transport)
            except Exception as exc:
                error = exc
    finally:
        gen.close()
        for s in streams:
            await asyncio.shield(s.close())


# ---- helpers ---------------------------------------------------------------------------


def run_sync(awaitable: Awaitable[R]) -> R:
    """Run a coroutine from sync code, also when this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await(awaitable))
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(_await(awaitable))
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return cast(R, box["value"])


async def _await(awaitable: Awaitable[R]) -> R:
    return await awaitable


def iterate_async_in_thread(factory: Callable[[], AsyncIterator[R]]) -> Iterator[R]:
    """Consume an async iterator from sync code through a private loop in a thread.
    Used where the logic is inherently concurrent (racing agents)."""
    import queue

    q: queue.Queue[tuple[str, Any]] = queue.Queue()
    stop = threading.Event()
    loop = asyncio.new_event_loop()

    async def pump() -> None:
        agen = factory()
        try:
            async for item in agen:
                q.put(("item", item))
                if stop.is_set():
                    break
        except BaseException as exc:
            q.put(("error", exc))
        else:
            q.put(("end", None))
        finally:
            await agen.aclose()  # type: ignore[attr-defined]

    thread = threading.Thread(target=loop.run_until_complete, args=(pump(),), daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "item":
                yield item
            elif kind == "error":
                raise item
            else:
                return
    finally:
        stop.set()
        thread.join(timeout=30)
        loop.close()
