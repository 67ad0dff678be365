"""`AgentRouter`: many agents behind the call surface of one.

Every strategy only orders (or races) the candidates; this module is the one
machinery around all of them: retries with backoff honoring retry-after, per-agent
circuit breakers, an overall deadline, fallback, route info on the response, and
`RoutingError` when nothing worked. See `agent.health` for which errors do what.

Streams fall back exactly like plain calls until the first content event has been
handed to the caller. After that a failure cannot be hidden without duplicating or
losing text, so the stream ends by raising that agent's typed error.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from agent import _steps, tracing
from agent.agent import Agent, Prompt, with_done
from agent.errors import AgentError, APITimeoutError, CircuitOpenError, RoutingError
from agent.health import AgentHealth, CircuitBreaker, RetryPolicy
from agent.middleware import Middleware, overrides
from agent.strategies import CustomRouter, Plan, Strategy, make_strategy
from agent.types import Attempt, Done, Request, Response, RouteInfo, Started, StreamEvent

if TYPE_CHECKING:
    from agent.transport import AsyncTransport

__all__ = ["AgentRouter"]

T = TypeVar("T")
R = TypeVar("R")


class AgentRouter:
    """Route each call over `agents` by `strategy` (see `agent.strategies`)."""

    def __init__(
        self,
        agents: Sequence[Agent],
        strategy: str | Strategy = "fallback",
        custom_router: CustomRouter | None = None,
        *,
        retries: int = 1,
        backoff: float = 0.25,
        max_retry_after: float = 10.0,
        breaker_failures: int = 5,
        breaker_cooldown: float = 30.0,
        deadline: float | None = None,
        hedge_delay: float | None = None,
        weights: Sequence[float] | None = None,
        middleware: Iterable[Middleware] | None = None,
        name: str = "router",
        transport: AsyncTransport | None = None,
    ) -> None:
        if not agents:
            from agent.errors import ConfigurationError

            raise ConfigurationError("AgentRouter needs at least one agent")
        self.agents = list(agents)
        self.strategy = make_strategy(strategy, custom_router, hedge_delay, weights)
        self.retry = RetryPolicy(retries, backoff, max_retry_after=max_retry_after)
        self.deadline = deadline
        self.middleware = list(middleware or ())
        self.name = name
        # For async calls of agents that name no transport (see agent.transport).
        self.transport = transport
        self._health = [
            AgentHealth(CircuitBreaker(breaker_failures, breaker_cooldown)) for _ in self.agents
        ]
        names = [a.name for a in self.agents]
        self.labels = [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]

    def __repr__(self) -> str:
        return f"AgentRouter(strategy={self.strategy.name!r}, agents={self.labels!r})"

    def health(self) -> dict[str, dict[str, object]]:
        """Each agent's breaker state, moving-average latency and counts."""
        return {label: h.snapshot() for label, h in zip(self.labels, self._health, strict=True)}

    # ---- the sequential strategies --------------------------------------------------------

    def steps(self, request: Request) -> _steps.Steps[Response[Any]]:
        """The whole routed call as steps (router middleware around the routing)."""
        for mw in self.middleware:
            if overrides(mw, "before"):
                request = (yield _steps.Call(mw.before, (request,))) or request
        try:
            if self.strategy.races:
                response = cast(Response[Any], (yield _steps.Call(self._race, (request,))))
            else:
                response = yield from self._route(request)
        except AgentError as error:
            for mw in self.middleware:
                if overrides(mw, "on_error"):
                    yield _steps.Call(mw.on_error, (request, error))
            raise
        for mw in self.middleware:
            if overrides(mw, "after"):
                response = (yield _steps.Call(mw.after, (request, response))) or response
        return response

    def _route(self, request: Request) -> _steps.Steps[Response[Any]]:
        started_ns = time.time_ns()
        ends = time.monotonic() + self.deadline if self.deadline else None
        plan = self.strategy.plan(request, self.agents, self._health)
        if inspect.isawaitable(plan):  # a custom router's coroutine: the driver awaits it
            plan = yield _steps.Call(_settle, (plan,))
        assert isinstance(plan, Plan)
        trail = _Trail(request, plan, started_ns)
        attempts: list[Attempt] = []
        errors: list[AgentError] = []
        for idx in plan.order:
            agent, health, label = self.agents[idx], self._health[idx], self.labels[idx]
            if not health.breaker.allow():
                self._skip(idx, attempts, errors)
                continue
            retry = 0
            while True:
                remaining = None if ends is None else ends - time.monotonic()
                if remaining is not None and remaining <= 0:
                    errors.append(APITimeoutError(f"router deadline of {self.deadline}s passed"))
                    raise self._failed(errors, attempts, trail)
                timeout = agent.timeout if remaining is None else min(agent.timeout, remaining)
                progress = _Progress(self, idx, attempts, trail)
                t0, t0_ns = time.perf_counter(), time.time_ns()
                try:
                    steps = agent.steps(request, timeout)
                    response = yield from (_watch(steps, progress) if request.stream else steps)
                    if request.stream and not progress.emitted:  # an answer without content
                        yield _steps.Emit([progress.started()])
                except AgentError as error:
                    ms = (time.perf_counter() - t0) * 1000
                    health.observe(ms, error)
                    attempts.append(Attempt(label, idx, "error", ms, error, retry, t0_ns))
                    if progress.emitted:
                        self._trace(trail, attempts, error=error)
                        raise  # content already reached the caller: no silent switch
                    decision, delay = self.retry.decide(error, retry)
                    if decision == "retry" and (ends is None or time.monotonic() + delay < ends):
                        retry += 1
                        if delay:
                            yield _steps.Sleep(delay)
                        continue
                    errors.append(error)
                    break
                ms = (time.perf_counter() - t0) * 1000
                health.observe(ms, None)
                attempts.append(Attempt(label, idx, "ok", ms, None, retry, t0_ns))
                return self._answered(response, attempts, trail)
        raise self._failed(errors, attempts, trail)

    def _skip(self, idx: int, attempts: list[Attempt], errors: list[AgentError]) -> None:
        agent, health = self.agents[idx], self._health[idx]
        error = CircuitOpenError(
            f"skipped: circuit open after {health.breaker.consecutive} consecutive failures",
            provider=agent.provider,
            model=agent.model,
        )
        attempts.append(Attempt(self.labels[idx], idx, "skipped", 0.0, error))
        errors.append(error)

    def _answered(
        self, response: Response[Any], attempts: list[Attempt], trail: _Trail
    ) -> Response[Any]:
        winner = next((a.agent for a in attempts if a.outcome == "ok"), "?")
        response.route = self._route_info(trail, winner, attempts)
        self._trace(trail, attempts, response=response, reason=response.route.reason)
        return response

    def _started(self, idx: int, attempts: list[Attempt], trail: _Trail) -> Started:
        """A stream's announcement of the agent answering it (attempts: those before)."""
        agent, label = self.agents[idx], self.labels[idx]
        route = self._route_info(trail, label, list(attempts))
        return Started(label, agent.provider, agent.model, route)

    def _route_info(self, trail: _Trail, winner: str, attempts: list[Attempt]) -> RouteInfo:
        """The plan's reason, completed with how `winner` came to answer."""
        reason = trail.plan.reason
        failed = sum(1 for a in attempts if a.outcome in ("error", "skipped"))
        if self.strategy.races:
            reason += f"; {winner} answered first" + (f", {failed} failed" if failed else "")
        elif failed and all(a.agent == winner for a in attempts if a.outcome != "ok"):
            # Only the answering agent's own tries failed: a retry, not a fallback.
            reason += f"; {winner} answered after {failed} failed attempt(s)"
        elif failed:
            reason += f"; fell back to {winner} after {failed} failed attempt(s)"
        return RouteInfo(
            self.strategy.name, reason, attempts, [self.labels[i] for i in trail.plan.order]
        )

    def _failed(
        self,
        errors: list[AgentError],
        attempts: list[Attempt],
        trail: _Trail,
        why: str | None = None,
    ) -> RoutingError:
        tried = len({a.index for a in attempts})
        why = why or f"all {tried} agent(s) failed"
        error = RoutingError(f"{why} ({self.strategy.name})", errors, attempts)
        self._trace(trail, attempts, error=error)
        return error

    def _trace(
        self,
        trail: _Trail,
        attempts: list[Attempt],
        *,
        reason: str | None = None,
        response: Response[Any] | None = None,
        error: BaseException | None = None,
    ) -> None:
        tracing.record_decision(
            self.name,
            self.strategy.name,
            trail.request,
            attempts,
            self.agents,
            trail.started_ns,
            reason or trail.plan.reason,
            response,
            error,
        )

    # ---- racing (fastest, hedged) ---------------------------------------------------------

    def _racers(
        self, request: Request
    ) -> tuple[_Trail, list[int], list[Attempt], list[AgentError]]:
        trail = _Trail(request, None, time.time_ns())  # type: ignore[arg-type]
        plan = self.strategy.plan(request, self.agents, self._health)
        assert isinstance(plan, Plan)
        trail.plan = plan
        attempts: list[Attempt] = []
        errors: list[AgentError] = []
        order = []
        for idx in plan.order:
            if self._health[idx].breaker.allow():
                order.append(idx)
            else:
                self._skip(idx, attempts, errors)
        return trail, order, attempts, errors

    async def _race(self, request: Request) -> Response[Any]:
        """First success wins; the losers are cancelled, closing their connections."""
        trail, order, attempts, errors = self._racers(request)

        async def call(idx: int) -> Response[Any]:
            return await _steps.run_steps_async(self.agents[idx].steps(request), self.transport)

        racer, response = await self._first(call, trail, order, attempts, errors)
        self._ended(racer, attempts, None)
        return self._answered(response, attempts, trail)

    async def _race_stream(self, request: Request) -> AsyncIterator[StreamEvent]:
        """The first racer to produce an event wins the stream; the rest are closed."""
        request = await self._hook_before(request)
        trail, order, attempts, errors = self._racers(request)

        async def first_event(idx: int) -> _Opened:
            steps = with_done(self.agents[idx].steps(request))
            events = _steps.iterate_steps_async(steps, self.transport)
            try:
                return events, await anext(events)
            except BaseException:
                await events.aclose()  # type: ignore[attr-defined]
                raise

        async def close(opened: _Opened) -> None:
            await opened[0].aclose()  # type: ignore[attr-defined]

        try:
            racer, (events, event) = await self._first(
                first_event, trail, order, attempts, errors, close
            )
        except RoutingError as error:
            await self._hook_error(request, error)
            raise
        try:
            yield self._started(racer.idx, attempts, trail)
            while not isinstance(event, Done):
                yield event
                event = await anext(events)
            self._ended(racer, attempts, None)
            response = self._answered(event.response, attempts, trail)
            yield Done(await self._hook_after(request, response))
        except AgentError as error:  # after content: the stream ends with this agent's error
            self._ended(racer, attempts, error)
            self._trace(trail, attempts, error=error)
            await self._hook_error(request, error)
            raise
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    async def _first(
        self,
        call: Callable[[int], Awaitable[R]],
        trail: _Trail,
        order: list[int],
        attempts: list[Attempt],
        errors: list[AgentError],
        discard: Callable[[R], Awaitable[None]] | None = None,
    ) -> tuple[_Racer, R]:
        """Race `call(agent index)` over `order`: all at once, or (hedged) one more each
        `hedge_delay` and one more at once for each that fails. Each racer is retried by
        the router's RetryPolicy, like any attempt. The first success wins and the others
        are cancelled (`discard` frees what a cancelled success holds). When all failed or
        the deadline passed: RoutingError, with every attempt and every agent's error."""
        hedge = self.strategy.hedge_delay
        ends = None if self.deadline is None else time.monotonic() + self.deadline
        running: dict[asyncio.Task[R], _Racer] = {}
        next_hedge: float | None = None

        def launch() -> None:
            nonlocal next_hedge
            racer = _Racer(order.pop(0))
            running[asyncio.create_task(self._tries(racer, call, attempts, ends))] = racer
            next_hedge = None if hedge is None or not order else time.monotonic() + hedge

        timed_out = False
        try:
            while order and (hedge is None or not running):
                launch()
            while running:
                now = time.monotonic()
                if ends is not None and now >= ends:
                    timed_out = True
                    break
                if next_hedge is not None and now >= next_hedge:
                    launch()  # no answer within the hedge delay: add the next candidate
                    continue
                waits = [t - now for t in (ends, next_hedge) if t is not None]
                done, _ = await asyncio.wait(
                    running, timeout=min(waits) if waits else None, return_when=FIRST_COMPLETED
                )
                winner: tuple[_Racer, R] | None = None
                for task in done:
                    racer = running.pop(task)
                    error = task.exception()
                    if error is None and winner is None:
                        winner = racer, task.result()
                    elif error is None:  # a second success in the same instant: a loser
                        running[task] = racer
                    elif not isinstance(error, AgentError):
                        raise error
                    else:  # its tries are in `attempts` already
                        errors.append(error)
                        if order:  # a failure frees a slot at once, hedged or not
                            launch()
                if winner is not None:
                    return winner
        finally:
            await self._stop(running, attempts, errors, discard, timed_out)
        why = f"router deadline of {self.deadline}s passed" if timed_out else None
        raise self._failed(errors, attempts, trail, why)

    async def _tries(
        self,
        racer: _Racer,
        call: Callable[[int], Awaitable[R]],
        attempts: list[Attempt],
        ends: float | None,
    ) -> R:
        """One racer: its agent, retried as the RetryPolicy says while the deadline allows.
        Failed tries are recorded here; the last error is raised."""
        while True:
            racer.begin()
            try:
                return await call(racer.idx)
            except AgentError as error:
                self._ended(racer, attempts, error)
                decision, delay = self.retry.decide(error, racer.retry)
                if decision != "retry" or (ends is not None and time.monotonic() + delay >= ends):
                    raise
                racer.retry += 1
                await asyncio.sleep(delay)

    def _ended(self, racer: _Racer, attempts: list[Attempt], error: AgentError | None) -> None:
        """Record a racer's try that ended (the winner's, or a failed one)."""
        ms = racer.ms()
        self._health[racer.idx].observe(ms, error)
        outcome: Literal["ok", "error"] = "ok" if error is None else "error"
        attempts.append(
            Attempt(self.labels[racer.idx], racer.idx, outcome, ms, error, racer.retry, racer.t0_ns)
        )
        racer.last_error, racer.t0 = error, None

    async def _stop(
        self,
        running: dict[asyncio.Task[R], _Racer],
        attempts: list[Attempt],
        errors: list[AgentError],
        discard: Callable[[R], Awaitable[None]] | None,
        timed_out: bool,
    ) -> None:
        """Cancel the racers still running. Their tries in flight are recorded as
        cancelled, or (at the deadline) as failed with a timeout, which is then their
        agent's error; a racer waiting to retry keeps its last error."""
        for task in running:
            task.cancel()
        results = await asyncio.gather(*running, return_exceptions=True)
        for racer, result in zip(running.values(), results, strict=True):
            if discard is not None and not isinstance(result, BaseException):
                await discard(result)
            if racer.t0 is None:  # between two tries
                if timed_out and racer.last_error is not None:
                    errors.append(racer.last_error)
                continue
            ms, agent = racer.ms(), self.agents[racer.idx]
            label = self.labels[racer.idx]
            if not timed_out:
                attempts.append(
                    Attempt(label, racer.idx, "cancelled", ms, None, racer.retry, racer.t0_ns)
                )
                continue
            error = APITimeoutError(f"router deadline of {self.deadline}s passed")
            error.at(agent.provider, agent.model)
            attempts.append(Attempt(label, racer.idx, "error", ms, error, racer.retry, racer.t0_ns))
            errors.append(error)
        running.clear()

    async def _hook_before(self, request: Request) -> Request:
        for mw in self.middleware:
            if overrides(mw, "before"):
                request = (await _settle(mw.before(request))) or request
        return request

    async def _hook_after(self, request: Request, response: Response[Any]) -> Response[Any]:
        for mw in self.middleware:
            if overrides(mw, "after"):
                response = (await _settle(mw.after(request, response))) or response
        return response

    async def _hook_error(self, request: Request, error: AgentError) -> None:
        for mw in self.middleware:
            if overrides(mw, "on_error"):
                await _settle(mw.on_error(request, error))

    # ---- the public call surface (as Agent's) -------------------------------------------

    def request(self, prompt: Prompt, **options: Any) -> Request:
        return self.agents[0].request(prompt, **options)

    def run(self, prompt: Prompt, **options: Any) -> Response[str]:
        return _steps.run_steps(self.steps(self.request(prompt, **options)))

    async def run_async(self, prompt: Prompt, **options: Any) -> Response[str]:
        request = self.request(prompt, **options)
        return await _steps.run_steps_async(self.steps(request), self.transport)

    def stream(self, prompt: Prompt, **options: Any) -> Iterator[StreamEvent]:
        request = self.request(prompt, stream=True, **options)
        if self.strategy.races:
            return _steps.iterate_async_in_thread(lambda: self._race_stream(request))
        return _steps.iterate_steps(with_done(self.steps(request)))

    async def stream_async(self, prompt: Prompt, **options: Any) -> AsyncIterator[StreamEvent]:
        request = self.request(prompt, stream=True, **options)
        return self.stream_request(request)

    async def run_request_async(self, request: Request) -> Response[Any]:
        """Route an already normalized request (the sidecar's entry point)."""
        return await _steps.run_steps_async(self.steps(request), self.transport)

    def stream_request(self, request: Request) -> AsyncIterator[StreamEvent]:
        """Stream an already normalized request (the sidecar's entry point)."""
        if self.strategy.races:
            return self._race_stream(request)
        return _steps.iterate_steps_async(with_done(self.steps(request)), self.transport)

    def json(self, prompt: Prompt, schema: Any, **options: Any) -> Response[Any]:
        return _steps.run_steps(self.steps(self.request(prompt, schema=schema, **options)))

    async def json_async(self, prompt: Prompt, schema: Any, **options: Any) -> Response[Any]:
        request = self.request(prompt, schema=schema, **options)
        return await _steps.run_steps_async(self.steps(request), self.transport)


@dataclass(slots=True)
class _Trail:
    """What a decision's trace and route info need besides its attempts."""

    request: Request
    plan: Plan
    started_ns: int


class _Progress:
    """One streamed attempt: whether content reached the caller, and how to announce
    the agent when it does."""

    __slots__ = ("_attempts", "_idx", "_router", "_trail", "emitted")

    def __init__(
        self, router: AgentRouter, idx: int, attempts: list[Attempt], trail: _Trail
    ) -> None:
        self.emitted = False
        self._router, self._idx, self._attempts, self._trail = router, idx, attempts, trail

    def started(self) -> Started:
        self.emitted = True
        return self._router._started(self._idx, self._attempts, self._trail)


class _Racer:
    """One agent in a race: its index, and its try in flight (`t0` is None between tries)."""

    __slots__ = ("idx", "last_error", "retry", "t0", "t0_ns")

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.retry = 0
        self.t0: float | None = None
        self.t0_ns = 0
        self.last_error: AgentError | None = None

    def begin(self) -> None:
        self.t0, self.t0_ns = time.perf_counter(), time.time_ns()

    def ms(self) -> float:
        return (time.perf_counter() - (self.t0 or time.perf_counter())) * 1000


# A racing stream: its events, and the first of them.
_Opened = tuple[AsyncIterator[StreamEvent], StreamEvent]


def _watch(steps: _steps.Steps[T], progress: _Progress) -> _steps.Steps[T]:
    """Pass steps through until the first content event; emit `Started` before it, and
    hand the rest of the attempt over whole (nothing is left to watch)."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.throw(error) if error is not None else steps.send(value)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        try:
            if isinstance(step, _steps.Emit):
                # Emitting returns nothing and throws nothing in: no value to pass on.
                yield _steps.Emit([progress.started(), *step.events])
                break
            value, error = (yield step), None
        except GeneratorExit:
            steps.close()
            raise
        except BaseException as exc:
            value, error = None, exc
    return (yield from steps)


async def _settle(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
