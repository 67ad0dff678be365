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
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from agent import _steps, tracing
from agent.agent import Agent, Prompt, with_done
from agent.errors import AgentError, APITimeoutError, CircuitOpenError, RoutingError
from agent.health import AgentHealth, CircuitBreaker, RetryPolicy
from agent.middleware import Middleware, overrides
from agent.strategies import CustomRouter, Plan, Strategy, make_strategy
from agent.types import Attempt, Done, Request, Response, RouteInfo, StreamEvent

__all__ = ["AgentRouter"]

T = TypeVar("T")


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
        plan: Plan = yield _steps.Call(self.strategy.plan, (request, self.agents, self._health))
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
                progress = _Progress()
                t0, t0_ns = time.perf_counter(), time.time_ns()
                try:
                    steps = agent.steps(request, timeout)
                    response = yield from (_watch(steps, progress) if request.stream else steps)
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
        reason = trail.plan.reason
        winner = next((a.agent for a in attempts if a.outcome == "ok"), "?")
        failed = sum(1 for a in attempts if a.outcome in ("error", "skipped"))
        if self.strategy.races:
            reason += f"; {winner} answered first" + (f", {failed} failed" if failed else "")
        elif failed:
            reason += f"; fell back to {winner} after {failed} failed attempt(s)"
        response.route = RouteInfo(
            self.strategy.name, reason, attempts, [self.labels[i] for i in trail.plan.order]
        )
        self._trace(trail, attempts, response=response, reason=reason)
        return response

    def _failed(
        self, errors: list[AgentError], attempts: list[Attempt], trail: _Trail
    ) -> RoutingError:
        tried = len({a.index for a in attempts})
        error = RoutingError(
            f"all {tried} agent(s) failed ({self.strategy.name})", errors, attempts
        )
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
        running: dict[asyncio.Task[Any], tuple[int, float, int]] = {}

        def launch() -> None:
            idx = order.pop(0)
            agent = self.agents[idx]
            task = asyncio.create_task(_steps.run_steps_async(agent.steps(request)))
            running[task] = (idx, time.perf_counter(), time.time_ns())

        async with _deadline(self.deadline):
            try:
                while order and (self.strategy.hedge_delay is None or not running):
                    launch()
                while running:
                    wait = self.strategy.hedge_delay if order else None
                    done, _ = await asyncio.wait(
                        running, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                    )
                    if not done:  # hedge: nobody answered in time, add the next candidate
                        launch()
                        continue
                    for task in done:
                        idx, t0, t0_ns = running.pop(task)
                        ms = (time.perf_counter() - t0) * 1000
                        error = task.exception()
                        if error is None:
                            self._health[idx].observe(ms, None)
                            attempts.append(
                                Attempt(self.labels[idx], idx, "ok", ms, None, 0, t0_ns)
                            )
                            await self._cancel(running, attempts)
                            return self._answered(task.result(), attempts, trail)
                        if not isinstance(error, AgentError):
                            raise error
                        self._health[idx].observe(ms, error)
                        attempts.append(
                            Attempt(self.labels[idx], idx, "error", ms, error, 0, t0_ns)
                        )
                        errors.append(error)
                        if order:  # a failure frees a slot at once, hedged or not
                            launch()
            finally:
                await self._cancel(running, attempts)
        raise self._failed(errors, attempts, trail)

    async def _cancel(
        self, running: dict[asyncio.Task[Any], tuple[int, float, int]], attempts: list[Attempt]
    ) -> None:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        for idx, t0, t0_ns in running.values():
            ms = (time.perf_counter() - t0) * 1000
            attempts.append(Attempt(self.labels[idx], idx, "cancelled", ms, None, 0, t0_ns))
        running.clear()

    async def _race_stream(self, request: Request) -> AsyncIterator[StreamEvent]:
        """The first racer to produce an event wins the stream; the rest are closed."""
        request = await self._hook_before(request)
        trail, order, attempts, errors = self._racers(request)
        racers: dict[asyncio.Task[Any], tuple[int, float, int, AsyncIterator[StreamEvent]]] = {}

        def launch() -> None:
            idx = order.pop(0)
            events = _steps.iterate_steps_async(with_done(self.agents[idx].steps(request)))
            task = asyncio.ensure_future(events.__anext__())
            racers[task] = (idx, time.perf_counter(), time.time_ns(), events)

        async def drop_losers() -> None:
            for task, (idx, t0, t0_ns, events) in list(racers.items()):
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await events.aclose()  # type: ignore[attr-defined]
                ms = (time.perf_counter() - t0) * 1000
                attempts.append(Attempt(self.labels[idx], idx, "cancelled", ms, None, 0, t0_ns))
            racers.clear()

        winner: tuple[int, float, int, AsyncIterator[StreamEvent]] | None = None
        first: StreamEvent | None = None
        try:
            while order and (self.strategy.hedge_delay is None or not racers):
                launch()
            while racers and winner is None:
                wait = self.strategy.hedge_delay if order else None
                done, _ = await asyncio.wait(
                    racers, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    launch()
                    continue
                for task in done:
                    idx, t0, t0_ns, events = racers.pop(task)
                    error = task.exception()
                    if error is None and winner is None:
                        winner, first = (idx, t0, t0_ns, events), task.result()
                        continue
                    if error is None:  # a second racer finished in the same instant
                        racers[task] = (idx, t0, t0_ns, events)
                        continue
                    ms = (time.perf_counter() - t0) * 1000
                    if not isinstance(error, AgentError):
                        raise error
                    self._health[idx].observe(ms, error)
                    attempts.append(Attempt(self.labels[idx], idx, "error", ms, error, 0, t0_ns))
                    errors.append(error)
                    if order:
                        launch()
            await drop_losers()
            if winner is None or first is None:
                error = self._failed(errors, attempts, trail)
                await self._hook_error(request, error)
                raise error
            idx, t0, t0_ns, events = winner
            try:
                event: StreamEvent = first
                while True:
                    if isinstance(event, Done):
                        ms = (time.perf_counter() - t0) * 1000
                        self._health[idx].observe(ms, None)
                        attempts.append(Attempt(self.labels[idx], idx, "ok", ms, None, 0, t0_ns))
                        response = self._answered(event.response, attempts, trail)
                        yield Done(await self._hook_after(request, response))
                        return
                    yield event
                    event = await events.__anext__()
            except AgentError as error:
                ms = (time.perf_counter() - t0) * 1000
                self._health[idx].observe(ms, error)
                attempts.append(Attempt(self.labels[idx], idx, "error", ms, error, 0, t0_ns))
                self._trace(trail, attempts, error=error)
                await self._hook_error(request, error)
                raise
            finally:
                await events.aclose()  # type: ignore[attr-defined]
        finally:
            await drop_losers()

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
        return await _steps.run_steps_async(self.steps(self.request(prompt, **options)))

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
        return await _steps.run_steps_async(self.steps(request))

    def stream_request(self, request: Request) -> AsyncIterator[StreamEvent]:
        """Stream an already normalized request (the sidecar's entry point)."""
        if self.strategy.races:
            return self._race_stream(request)
        return _steps.iterate_steps_async(with_done(self.steps(request)))

    def json(self, prompt: Prompt, schema: Any, **options: Any) -> Response[Any]:
        return _steps.run_steps(self.steps(self.request(prompt, schema=schema, **options)))

    async def json_async(self, prompt: Prompt, schema: Any, **options: Any) -> Response[Any]:
        request = self.request(prompt, schema=schema, **options)
        return await _steps.run_steps_async(self.steps(request))


@dataclass(slots=True)
class _Trail:
    """What a decision's trace and route info need besides its attempts."""

    request: Request
    plan: Plan
    started_ns: int


class _Progress:
    __slots__ = ("emitted",)

    def __init__(self) -> None:
        self.emitted = False


def _watch(steps: _steps.Steps[T], progress: _Progress) -> _steps.Steps[T]:
    """Pass steps through, noting when content has been handed to the caller."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.throw(error) if error is not None else steps.send(value)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        if isinstance(step, _steps.Emit):
            progress.emitted = True
        try:
            value, error = (yield step), None
        except GeneratorExit:
            steps.close()
            raise
        except BaseException as exc:
            value, error = None, exc


async def _settle(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class _deadline:
    """asyncio.timeout that maps to our error and accepts None."""

    def __init__(self, seconds: float | None) -> None:
        self._cm = asyncio.timeout(seconds)
        self.seconds = seconds

    async def __aenter__(self) -> None:
        await self._cm.__aenter__()

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self._cm.__aexit__(*exc)
        except TimeoutError as err:
            raise RoutingError(
                f"router deadline of {self.seconds}s passed",
                [APITimeoutError(f"router deadline of {self.seconds}s passed")],
            ) from err
