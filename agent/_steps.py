"""One implementation of every call, driven two ways.

The logic of a call (middleware, the tool loop, retries, fallback, races) is written
once as a generator that *yields steps* (send this HTTP request, read a chunk, run this
hook, sleep, hand these events to the caller, race these candidates) and receives their
results. A sync driver and an async driver perform the steps, so sync and async behave
identically by construction, and neither pays for the other: no event loop behind the
sync API, except for the one step that needs concurrency (`Race`), which the sync driver
hands, with the rest of the call, to the owner's loop thread.

A step that fails raises into the generator, which decides (retry, fall back, give up).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from agent.errors import ConfigurationError
from agent.types import Done, StreamEvent
from agent.wire.base import Reply, WireRequest

if TYPE_CHECKING:
    from agent._resources import Resources
    from agent.transport import AnyTransport

R = TypeVar("R")


@dataclass(slots=True)
class Send:
    """Send a request through `transport`; returns a `Reply`."""

    wire: WireRequest
    timeout: float
    transport: AnyTransport


@dataclass(slots=True)
class Open:
    """Open a streaming request: returns a stream to `Read`, or a Reply for HTTP errors.

    `watched`: its reads may carry a `within` (a stream timeout); the sync driver then
    performs the stream on the owner's loop, where any wait can be cut short. `within`:
    TimeoutError when the answer's headers take longer than that many seconds."""

    wire: WireRequest
    timeout: float
    transport: AnyTransport
    watched: bool = False
    within: float | None = None


@dataclass(slots=True)
class Read:
    """Read the next chunk of an open stream (b"" at its end); TimeoutError when none
    comes `within` seconds (the stream stays open: its owner closes it)."""

    stream: Any
    within: float | None = None


@dataclass(slots=True)
class Close:
    stream: Any


@dataclass(slots=True)
class Invoke:
    """Run user code (a hook, a tool, a custom router) that may be sync or async."""

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


@dataclass(slots=True)
class Commit:
    """A candidate is about to hand content to the caller: from here the call is
    committed to it. In a race this is how a streaming candidate wins (the others are
    cancelled before its first event leaves); elsewhere it is a no-op."""


@dataclass(slots=True)
class Race:
    """Run candidates concurrently. `starts` make each candidate's steps, in order of
    preference. With `hedge` seconds, the next candidate starts when none has won within
    that delay (and at once when one gives up); without, all start at once.

    A candidate wins by committing (a stream, see `Commit`) or by returning something
    other than None (None: it gave up). The others are cancelled, the winner's stream is relayed to
    the caller, and the step returns `(index of the winner, what it returned)`, or None
    when every candidate gave up or `ends` (time.monotonic) passed."""

    starts: Sequence[Callable[[], Steps[Any]]]
    hedge: float | None
    ends: float | None


@dataclass(slots=True)
class Count:
    """A limits store's call: the sync driver performs `sync`, the async driver awaits
    `async_` (so a shared store's round trip never blocks an event loop)."""

    sync: Callable[[], Any]
    async_: Callable[[], Awaitable[Any]]


@dataclass(slots=True)
class Spawn:
    """Start `make()`'s steps in the background, owned (and closed) by `owner`."""

    make: Callable[[], Steps[Any]]
    owner: Resources


Step = Send | Open | Read | Close | Invoke | Sleep | Emit | Commit | Race | Spawn | Count
Steps = Generator[Step, Any, R]


def _method(step: Send | Open, name: str) -> Callable[..., Any]:
    """The transport's method for this step, or a ConfigurationError naming what it lacks."""
    try:
        return getattr(step.transport, name)  # type: ignore[no-any-return]
    except AttributeError:
        how = "async" if name.endswith("_async") else "sync"
        raise ConfigurationError(
            f"the transport {step.transport!r} cannot serve {how} calls (it has no "
            f"{name}); give the agent or router a transport that does"
        ) from None


def _kept(opened: Any, streams: list[Any], handle: Callable[[Any], Any]) -> Any:
    """An opened stream, kept for the driver to close; an error Reply as it is."""
    if isinstance(opened, Reply):
        return opened
    stream = handle(opened)
    streams.append(stream)
    return stream


def _advance(gen: Steps[R], value: Any, error: BaseException | None, box: list[R]) -> Step | None:
    """Resume `gen` with the last step's result (or its error): its next step, or None
    when it returned (its value then goes into `box`)."""
    try:
        return gen.throw(error) if error is not None else gen.send(value)
    except StopIteration as stop:
        box.append(stop.value)
        return None


# ---- sync ------------------------------------------------------------------------------


class _SyncStream:
    __slots__ = ("_chunks", "response")
    ended = False  # (see `_AsyncStream.ended` and `.first`)
    first = b""

    def __init__(self, response: Any) -> None:
        self.response = response
        self._chunks = iter(response)

    def read(self) -> bytes:
        return next(self._chunks, b"")

    def close(self) -> None:
        self.response.close()


def _perform(step: Step, streams: list[_SyncStream]) -> Any:
    if isinstance(step, Read):
        return step.stream.read()
    if isinstance(step, Count):
        return step.sync()
    if isinstance(step, Send):
        return _method(step, "send")(step.wire, step.timeout)
    if isinstance(step, Open):
        opened = _method(step, "open_stream")(step.wire, step.timeout)
        return _kept(opened, streams, _SyncStream)
    if isinstance(step, Close):
        if step.stream in streams:
            streams.remove(step.stream)
        step.stream.close()
        return None
    if isinstance(step, Invoke):
        result = step.fn(*step.args)
        return _run_coroutine(result) if inspect.isawaitable(result) else result
    if isinstance(step, Sleep):
        time.sleep(step.seconds)
        return None
    if isinstance(step, Spawn):
        _spawn(step)
        return None
    if isinstance(step, Commit):
        return None
    raise TypeError(f"unexpected step {step!r}")


def _drive(gen: Steps[R], owner: Resources, box: list[R]) -> Iterator[list[StreamEvent]]:
    """Perform `gen`'s steps; yield what it emits; its return value goes into `box`.
    At a `Race` the rest of the call moves to `owner`'s loop thread."""
    streams: list[_SyncStream] = []
    value: Any = None
    error: BaseException | None = None
    try:
        while (step := _advance(gen, value, error, box)) is not None:
            value, error = None, None
            if isinstance(step, Emit):
                yield step.events
            elif isinstance(step, Race) or (isinstance(step, Open) and step.watched):
                # What needs waits that can be cut short runs on the loop from here on.
                yield from _on_loop(owner, _drive_async(gen, owner, box, step))
                return
            else:
                try:
                    value = _perform(step, streams)
                except Exception as exc:  # thrown back in: the generator decides
                    error = exc
    finally:
        gen.close()
        for s in streams:
            s.close()


def _on_loop(
    owner: Resources, events: AsyncIterator[list[StreamEvent]]
) -> Iterator[list[StreamEvent]]:
    """Iterate an async iterator on `owner`'s loop thread, one batch at a time (so the
    work never runs ahead of the caller, and closing stops it at once)."""
    try:
        while True:
            batch = owner.submit(_next(events)).result()
            if batch is None:
                return
            yield batch
    finally:
        future = owner.submit(events.aclose())  # type: ignore[attr-defined]
        concurrent.futures.wait([future])


async def _next(events: AsyncIterator[list[StreamEvent]]) -> list[StreamEvent] | None:
    return await anext(events, None)


def run(gen: Steps[R], owner: Resources) -> R:
    """Run a non-streaming step generator to completion and return its value."""
    box: list[R] = []
    for _ in _drive(gen, owner, box):
        pass
    return box[0]


def iterate(gen: Steps[Any], owner: Resources) -> Iterator[StreamEvent]:
    """A sync stream: the events `gen` emits, then `Done` with what it returned.
    Closing the iterator closes the HTTP stream."""
    box: list[Any] = []
    for batch in _drive(gen, owner, box):
        yield from batch
    yield Done(box[0])


def _run_coroutine(awaitable: Any) -> Any:
    """An async hook, tool or custom router called from sync code. Inside a running
    event loop (a notebook) it runs to its end on a short-lived thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_settle(awaitable))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _settle(awaitable)).result()


# ---- async -----------------------------------------------------------------------------


class _AsyncStream:
    __slots__ = ("_chunks", "closed", "ended", "first", "response")

    def __init__(self, response: Any) -> None:
        self.response = response
        self._chunks = response.__aiter__()
        # The last chunk was read, as the transport knows (a stream with an `ended`
        # property, when its framing says so): no read for the end, no Close step.
        self.ended = False
        self.closed = False
        # What had arrived with the headers, taken at once (a stream with `ready()`):
        # a short answer is often whole by then, and is read without a Read step.
        self.first = b""
        if (ready := getattr(response, "ready", None)) is not None:
            self.first = ready()
            self.ended = response.ended

    async def read(self) -> bytes:
        try:
            chunk: bytes = await self._chunks.__anext__()
        except StopAsyncIteration:
            return b""
        self.ended = getattr(self.response, "ended", False)
        return chunk

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.response.aclose()


async def _close(stream: _AsyncStream, streams: list[_AsyncStream]) -> None:
    """Close a stream and stop keeping it for the driver to close."""
    if stream in streams:
        streams.remove(stream)
    await stream.close()


async def _perform_async(step: Step, streams: list[_AsyncStream]) -> Any:
    if isinstance(step, Read):
        stream = step.stream
        if step.within is None:
            chunk = await stream.read()
        else:
            async with asyncio.timeout(step.within):
                chunk = await stream.read()
        if stream.ended:  # whole: its connection is free now, not at a Close step
            await _close(stream, streams)
        return chunk
    if isinstance(step, Count):
        return await step.async_()
    if isinstance(step, Send):
        return await _method(step, "send_async")(step.wire, step.timeout)
    if isinstance(step, Open):
        opening = _method(step, "open_stream_async")(step.wire, step.timeout)
        if step.within is None:
            opened = await opening
        else:
            async with asyncio.timeout(step.within):
                opened = await opening
        stream = _kept(opened, streams, _AsyncStream)
        if isinstance(stream, _AsyncStream) and stream.ended:  # whole (see `.first`)
            await _close(stream, streams)
        return stream
    if isinstance(step, Close):
        await _close(step.stream, streams)
        return None
    if isinstance(step, Invoke):
        result = step.fn(*step.args)
        return await result if inspect.isawaitable(result) else result
    if isinstance(step, Sleep):
        await asyncio.sleep(step.seconds)
        return None
    if isinstance(step, Spawn):
        _spawn(step)
        return None
    raise TypeError(f"unexpected step {step!r}")


async def _drive_async(
    gen: Steps[R], owner: Resources, box: list[R], step: Step | None = None, done: bool = False
) -> AsyncIterator[list[StreamEvent]]:
    """The async driver: as `_drive`, performing `step` first when given (a call that
    moved here from the sync driver); with `done`, a last batch `[Done(response)]`."""
    streams: list[_AsyncStream] = []
    value: Any = None
    error: BaseException | None = None
    try:
        while True:
            if step is None:
                step = _advance(gen, value, error, box)
                if step is None:
                    if done:
                        yield [Done(box[0])]  # type: ignore[arg-type]
                    return
                value, error = None, None
            if isinstance(step, Commit):  # an empty batch: a race takes it as a win
                step = None
                yield []
                continue
            if isinstance(step, Emit):
                # What follows an emit without waiting (more emits, the return) joins its
                # batch: the consumer is resumed once for them all (a short stream is
                # often one batch with its Done). A step that waits, a commit or an
                # error waits until the batch is taken.
                events, step, failed = step.events, None, None
                try:
                    while isinstance(step := _advance(gen, None, None, box), Emit):
                        events = [*events, *step.events]
                except BaseException as exc:  # raised after the events before it
                    failed = exc
                if step is None and failed is None and done:
                    events = [*events, Done(box[0])]  # type: ignore[arg-type]
                yield events
                if failed is not None:
                    raise failed
                if step is None:
                    return
                continue
            try:
                if isinstance(step, Race):
                    won: list[Any] = []
                    async for batch in _race(step, owner, won):
                        yield batch
                    value = won[0]
                else:
                    value = await _perform_async(step, streams)
            except Exception as exc:
                error = exc
            step = None
    finally:
        gen.close()
        for s in streams:
            # Shielded: a cancelled consumer must still close the upstream connection.
            await asyncio.shield(s.close())


async def run_async(gen: Steps[R], owner: Resources) -> R:
    """`_drive_async` for a call that emits nothing the caller reads (a plain call):
    the same steps, performed by a coroutine rather than through an async generator,
    which costs a sidecar a measurable share of each relayed request."""
    box: list[R] = []
    streams: list[_AsyncStream] = []
    value: Any = None
    error: BaseException | None = None
    try:
        while (step := _advance(gen, value, error, box)) is not None:
            value, error = None, None
            if isinstance(step, Emit | Commit):
                continue
            try:
                if isinstance(step, Race):
                    won: list[Any] = []
                    async for _ in _race(step, owner, won):
                        pass
                    value = won[0]
                else:
                    value = await _perform_async(step, streams)
            except Exception as exc:
                error = exc
    finally:
        gen.close()
        for s in streams:
            await asyncio.shield(s.close())
    return box[0]


async def iterate_async(gen: Steps[Any], owner: Resources) -> AsyncIterator[StreamEvent]:
    """An async stream of the events `gen` emits, then `Done` with what it returned
    (here, not as a last step: one resumption of every generator less); closing it
    closes the HTTP stream."""
    events = batches_async(gen, owner)
    try:
        async for batch in events:
            for event in batch:
                yield event
    finally:
        await events.aclose()  # type: ignore[attr-defined]


def batches_async(gen: Steps[Any], owner: Resources) -> AsyncIterator[list[StreamEvent]]:
    """`iterate_async` in the batches the events come in (those of one upstream chunk
    together, with whatever follows them without a wait, `Done` included; an empty one
    where a candidate commits), for a relay that writes a batch at a time: one step of
    the iterator a batch rather than an event."""
    return _drive_async(gen, owner, [], done=True)


# ---- races -----------------------------------------------------------------------------


class _Runner:
    """One candidate of a race: its driver, what it returned, and its first events."""

    __slots__ = ("box", "events", "index")

    def __init__(self, index: int, start: Callable[[], Steps[Any]], owner: Resources) -> None:
        self.index = index
        self.box: list[Any] = []
        self.events = _drive_async(start(), owner, self.box)

    def won(self, first: list[StreamEvent] | None) -> bool:
        return first is not None or (bool(self.box) and self.box[0] is not None)


async def _race(race: Race, owner: Resources, won: list[Any]) -> AsyncIterator[list[StreamEvent]]:
    starts = list(enumerate(race.starts))
    running: dict[asyncio.Task[list[StreamEvent] | None], _Runner] = {}
    next_hedge: float | None = None
    winner: tuple[_Runner, list[StreamEvent] | None] | None = None

    def launch() -> None:
        nonlocal next_hedge
        index, start = starts.pop(0)
        runner = _Runner(index, start, owner)
        running[asyncio.ensure_future(_next(runner.events))] = runner
        next_hedge = None if race.hedge is None or not starts else time.monotonic() + race.hedge

    try:
        launch()
        while race.hedge is None and starts:
            launch()
        while running and winner is None:
            now = time.monotonic()
            if race.ends is not None and now >= race.ends:
                break
            if next_hedge is not None and now >= next_hedge:
                launch()  # no answer within the hedge delay: add the next candidate
                continue
            waits = [t - now for t in (race.ends, next_hedge) if t is not None]
            done, _ = await asyncio.wait(
                running, timeout=min(waits) if waits else None, return_when=asyncio.FIRST_COMPLETED
            )
            for task in sorted(done, key=lambda t: running[t].index):
                runner = running.pop(task)
                first = task.result()  # a candidate raises only what ends the whole call
                if winner is None and runner.won(first):
                    winner = runner, first
                else:
                    await runner.events.aclose()  # type: ignore[attr-defined]
                    if starts and winner is None:  # one gave up: the next starts at once
                        launch()
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for runner in running.values():
            await runner.events.aclose()  # type: ignore[attr-defined]
    if winner is None:
        won.append(None)
        return
    runner, first = winner
    try:
        if first is not None:
            yield first
            async for batch in runner.events:
                yield batch
        won.append((runner.index, runner.box[0]))
    finally:
        await runner.events.aclose()  # type: ignore[attr-defined]


def _spawn(step: Spawn) -> None:
    owner, make = step.owner, step.make
    owner.spawn(lambda: run_async(make(), owner))


async def _settle(awaitable: Any) -> Any:
    return await awaitable
