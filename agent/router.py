"""`AgentRouter`: many agents behind the call surface of one, and itself an agent.

Every strategy only orders the candidates, or says that they race; this module is the
one machinery around all of them: retries with backoff honoring retry-after (and the
deadline), per-agent circuit breakers with background probes, an overall deadline,
fallback, route info on the response, and `RoutingError` when nothing worked. See
`agent.health` for which errors do what.

A router is an agent (`agent.BaseAgent`): a route can fall back to another route by
listing that router among its agents; the inner router's routing is on the outer
attempt (`Attempt.route`).

Streams fall back exactly like plain calls until the first content event has been
handed to the caller. After that a failure cannot be hidden without duplicating or
losing text, so the stream ends by raising that agent's typed error, carrying the text
delivered; or, on a route with `stream_recovery="continue"`, the next agent is asked to
go on with the same answer and the caller keeps one stream (`agent._continuation`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from agent import _steps, limits, tracing
from agent._base import TOP, BaseAgent, Caller, build_request, with_middleware
from agent._continuation import Overlap, Resume
from agent._resources import Resources
from agent.catalog import Capabilities
from agent.config import CircuitBreakerConfig, RouteLimitsConfig, RouteOptions, validated
from agent.errors import (
    AgentError,
    APITimeoutError,
    CircuitOpenError,
    ConfigurationError,
    RateLimitError,
    RoutingError,
)
from agent.health import AgentHealth, CircuitBreaker, RetryPolicy
from agent.limits import (
    DEFAULT_OUTPUT_TOKENS,
    LimitsStore,
    MemoryStore,
    Quota,
    QuotaExhaustedError,
    Reservation,
)
from agent.middleware import Middleware
from agent.strategies import CustomRouter, Plan, Strategy, make_strategy
from agent.transport import AnyTransport
from agent.types import (
    Attempt,
    Request,
    Response,
    RouteInfo,
    Started,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolResult,
    Usage,
)

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from agent.config import RouterConfig

__all__ = ["PROBE_PROMPT", "AgentRouter"]

# What a background probe asks: the cheapest real call (one output token).
PROBE_PROMPT = "ping"


class AgentRouter(BaseAgent):
    """Route each call over `agents` (agents or routers) by `strategy`
    (see `agent.strategies`)."""

    provider = "router"

    def __init__(
        self,
        agents: Sequence[BaseAgent],
        strategy: str | Strategy = "fallback",
        custom_router: CustomRouter | None = None,
        *,
        retries: int = 1,
        backoff: float = 0.25,
        max_retry_after: float = 10.0,
        deadline: float | None = None,
        hedge_delay: float | None = None,
        weights: Sequence[float] | dict[str, float] | None = None,
        circuit_breaker: CircuitBreakerConfig | dict[str, Any] | None = None,
        limits: RouteLimitsConfig | dict[str, Any] | None = None,
        limits_store: LimitsStore | None = None,
        first_token_timeout: float | None = None,
        stall_timeout: float | None = None,
        stream_recovery: str = "error",
        middleware: Iterable[Middleware] | None = None,
        name: str = "router",
        transport: AnyTransport | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        """The options after `custom_router` are a route's options in a config document
        (`agent.config.RouteOptions`), validated by the same model."""
        if not agents:
            raise ConfigurationError("AgentRouter needs at least one agent")
        self.agents = list(agents)
        options = validated(
            RouteOptions,
            {
                "retries": retries,
                "backoff": backoff,
                "max_retry_after": max_retry_after,
                "deadline": deadline,
                "hedge_delay": hedge_delay,
                "circuit_breaker": circuit_breaker or CircuitBreakerConfig(),
                "limits": limits,
                "first_token_timeout": first_token_timeout,
                "stall_timeout": stall_timeout,
                "stream_recovery": stream_recovery,
            },
        )
        if isinstance(weights, dict):
            weights = [weights.get(a.name, a.weight) for a in self.agents]
        self.strategy = make_strategy(strategy, custom_router, hedge_delay, weights)
        self.retry = RetryPolicy(retries, backoff, max_retry_after=max_retry_after)
        self.deadline = deadline
        self.first_token_timeout = first_token_timeout
        self.stall_timeout = stall_timeout
        self.stream_recovery = options.stream_recovery
        self.middleware = list(middleware or ())
        self.name = self.model = name
        self.transport = transport  # None: the outer router's, the process default, or its own
        self.tracer_provider = tracer_provider  # None: OpenTelemetry's global one
        self._last_caller: tuple[Any, Any, Any, Any, Caller] | None = None  # see `_derived`
        breaker = options.circuit_breaker
        self.probe = breaker.probe
        self._resources = Resources(name)
        self._health = [
            AgentHealth(
                CircuitBreaker(breaker.failures, breaker.cooldown, background=breaker.probe)
            )
            for _ in self.agents
        ]
        names = [a.name for a in self.agents]
        self.labels = [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]
        # Limits: the route's own, and each agent's (a provider account's, counted under
        # the agent's name: routers sharing a store share an agent's counters).
        self.limits_store = limits_store or MemoryStore()
        output = options.limits.output_tokens if options.limits else DEFAULT_OUTPUT_TOKENS
        self._route_quota = Quota.for_route(name, options.limits, self.limits_store, output)
        self._quotas = [
            Quota.for_agent(a.name, a.limits, self.limits_store, output) for a in self.agents
        ]
        self.timeout = deadline or max(a.timeout for a in self.agents)

    @classmethod
    def from_config(
        cls, config: RouterConfig | dict[str, Any] | str, route: str | None = None, **options: Any
    ) -> AgentRouter:
        """The router for `route` (default: the document's default route, else its first)
        of a config document (a `RouterConfig`, its dict, or YAML text; validated here).
        `options`: what a document cannot carry (`transport=`, `middleware=`,
        `tracer_provider=`)."""
        from agent.config import RouterConfig, parse_config

        document = config if isinstance(config, RouterConfig) else parse_config(config)
        return document.router(route, **options)

    def __repr__(self) -> str:
        return f"AgentRouter(strategy={self.strategy.name!r}, agents={self.labels!r})"

    def health(self) -> dict[str, dict[str, object]]:
        """Each agent's breaker state, moving-average latency and counts, and its quota
        (remaining room per limit, as last counted; what its provider's headers said)."""
        out = {}
        for label, h, quota in zip(self.labels, self._health, self._quotas, strict=True):
            out[label] = h.snapshot()
            if snapshot := quota.snapshot():
                out[label]["quota"] = snapshot
        return out

    def quota(self) -> dict[str, Any]:
        """The route's remaining requests, tokens and budget, each agent's, and the store."""
        return {
            "route": self._route_quota.snapshot(),
            "agents": {
                label: q.snapshot() for label, q in zip(self.labels, self._quotas, strict=True)
            },
            "store": self.limits_store.describe(),
        }

    # ---- what an outer router asks (a router is an agent) ---------------------------------

    @functools.cached_property
    def capabilities(self) -> Capabilities:
        return Capabilities.any_of([a.capabilities for a in self.agents])

    def estimate_cost(self, request: Request) -> float | None:
        known = [c for a in self.agents if (c := a.estimate_cost(request)) is not None]
        return min(known, default=None)

    # ---- the routed call, as steps ------------------------------------------------------

    def steps(
        self,
        request: Request,
        caller: Caller = TOP,
    ) -> _steps.Steps[Response[Any]]:
        """The whole routed call as steps (router middleware around the routing). A
        caller's timeout (an outer router's time left) is a deadline here."""
        caller = self._derived(caller)
        if not self.middleware:
            return self._route(request, caller)
        return with_middleware(self.middleware, request, lambda r: self._route(r, caller))

    def _route(self, request: Request, caller: Caller) -> _steps.Steps[Response[Any]]:
        limit = min((s for s in (self.deadline, caller.timeout) if s), default=None)
        call = _Call(self, request, limit, caller)
        plan = self.strategy.plan(request, self.agents, self._health)
        if not isinstance(plan, Plan):  # a custom router's coroutine: the driver awaits it
            plan = yield _steps.Invoke(_settle, (plan,))
        assert isinstance(plan, Plan)
        call.plan = plan
        order = [idx for idx in plan.order if self._health[idx].breaker.allow()]
        if not order and plan.order:
            # Every circuit is open: rather than fail for the whole cooldown, try the one
            # open longest, the likeliest to have recovered (Envoy's panic threshold).
            idx = min(plan.order, key=lambda i: self._health[i].breaker.opened_at or 0.0)
            call.panic = self.labels[idx]
            order = [idx]
        for idx in plan.order:
            if idx in order:
                continue
            self._skip(idx, call)
            if self.probe and self._health[idx].breaker.claim_probe():
                probe = functools.partial(self._probe, idx, call.transport)
                yield _steps.Spawn(probe, self._resources)
        call.order = order
        if self._route_quota.limited:
            if self.strategy.races:  # candidates admitted at once: the route first, alone
                held = yield from limits.reserve(
                    [self._route_quota], request, self._priciest(order)
                )
                if isinstance(held, QuotaExhaustedError):
                    raise self._exhausted(call, held)
                call.route_hold = held[0]
            else:  # counted with the first agent admitted: one round trip for both
                call.route_pending = True
        try:
            won = yield from self._attempts(call, order)
        except GeneratorExit:
            if call.route_hold is not None:
                call.route_hold.abandon()
            raise
        except BaseException:
            if call.route_hold is not None:  # a stream failed after content: use unknown
                yield from call.route_hold.settle(None, None)
            raise
        if call.route_hold is not None:
            answer = won[1] if won is not None else None
            yield from call.route_hold.settle(
                answer.usage if answer else Usage(), answer.cost_estimate if answer else 0.0
            )
        if won is None:
            if call.resume is not None:  # content went out: the last failure, in band
                error = call.errors[-1]
                error.partial_text = call.resume.text
                self._trace(call, error=error)
                raise error
            raise self._failed(call)
        return self._answered(won[1], call, won[0])

    def _attempts(
        self, call: _Call, order: list[int]
    ) -> _steps.Steps[tuple[int, Response[Any]] | None]:
        """The candidates tried as the strategy says: the winner and its response."""
        won: tuple[int, Response[Any]] | None = None
        if self.strategy.races:
            starts = [functools.partial(self._candidate, idx, call) for idx in order]
            race = yield _steps.Race(starts, self.strategy.hedge_delay, call.ends)
            if race is not None:
                won = order[race[0]], race[1]
            elif call.ends is not None and time.monotonic() >= call.ends:
                call.timed_out_in_race()
        else:
            for idx in order:
                response = yield from self._candidate(idx, call)
                if response is not None:
                    won = idx, response
                    break
        return won

    def _caller(self, caller: Caller) -> Caller:
        """What this router hands its agents: its transport and its stream limits."""
        if self.transport is not None:
            caller = dataclasses.replace(caller, transport=self.transport)
        return caller.tighter(self.first_token_timeout, self.stall_timeout)

    def _derived(self, caller: Caller) -> Caller:
        """`_caller(caller)`, made again only when its inputs change: most calls come with
        the same caller (the top, or the router's own call), and building a frozen
        dataclass twice per call is measurable per request."""
        memo = self._last_caller
        if (
            memo is None
            or memo[0] is not caller
            or memo[1] is not self.transport
            or memo[2] is not self.first_token_timeout
            or memo[3] is not self.stall_timeout
        ):
            derived = self._caller(caller)
            memo = self._last_caller = (
                caller, self.transport, self.first_token_timeout, self.stall_timeout, derived
            )
        return memo[4]

    def _admit(
        self, idx: int, call: _Call
    ) -> _steps.Steps[Reservation | QuotaExhaustedError | None]:
        """Reserve for one try of agent `idx` (with the route's part on the call's first
        admission): its reservation (None: nothing limits it), or the error it is skipped
        for (recorded). The route without room ends the call."""
        quotas = (
            [self._quotas[idx], self._route_quota] if call.route_pending else [self._quotas[idx]]
        )
        held = yield from limits.reserve(quotas, call.request, self.agents[idx])
        if isinstance(held, QuotaExhaustedError):
            if held.quota is self._route_quota:
                raise self._exhausted(call, held)
            self._skip(idx, call, held)
            return held
        if call.route_pending:
            call.route_pending = False
            call.route_hold = next((r for r in held if r.quota is self._route_quota), None)
        return next((r for r in held if r.quota is self._quotas[idx]), None)

    def _priciest(self, order: list[int]) -> BaseAgent | None:
        """The agent whose cost a route's budget reserves: the dearest that may answer."""
        if not order:
            return None
        return max(
            (self.agents[i] for i in order),
            key=lambda a: a.price.output_per_mtok if a.price else 0.0,
        )

    def _exhausted(self, call: _Call, error: QuotaExhaustedError) -> RoutingError:
        """The route's own limit or budget is used up: nothing is tried."""
        why = f"route quota exhausted: {error.message}"
        call.errors.append(error)
        failed = RoutingError(f"{why} ({self.strategy.name})", call.errors, call.attempts)
        failed.route = RouteInfo(self.strategy.name, why, call.attempts, [])
        self._trace(call, error=failed)
        return failed

    def _candidate(self, idx: int, call: _Call) -> _steps.Steps[Response[Any] | None]:
        """One agent's tries (retried as the RetryPolicy and the deadline allow), each
        recorded. Returns its response, or None when it gave up (its error recorded);
        raises only what must end the whole call (a failure after content reached the
        caller, or an error that is not an AgentError)."""
        member, health, label = self.agents[idx], self._health[idx], self.labels[idx]
        quota = self._quotas[idx]
        request = call.request
        call.started.add(idx)
        retry = 0
        while True:
            remaining = call.remaining()
            if remaining is not None and remaining <= 0:
                return None
            seconds = member.timeout if remaining is None else min(member.timeout, remaining)
            hold = yield from self._admit(idx, call)
            if isinstance(hold, QuotaExhaustedError):  # skipped: recorded as such
                return None
            progress = _Progress(self, idx, call) if request.stream else None
            t0, t0_ns = time.perf_counter(), time.time_ns()
            try:
                asked = request if call.resume is None else request.copy(continues=call.resume.text)
                steps = member.steps(asked, call.caller(seconds))
                if progress is None:
                    response = yield from steps
                else:
                    response = yield from _watch(steps, progress)
                    if not progress.emitted and call.resume is None:  # an answer without content
                        if progress.commits:
                            yield _steps.Commit()
                        yield _steps.Emit([progress.started(None)])
            except AgentError as error:
                ms = (time.perf_counter() - t0) * 1000
                health.observe(ms, error)
                if isinstance(error, RateLimitError) and not isinstance(error, QuotaExhaustedError):
                    quota.heard(None, error.retry_after)
                if hold is not None:  # once content left, what it used is unknown: kept
                    emitted = progress is not None and progress.emitted
                    yield from hold.settle(None if emitted else Usage(), None if emitted else 0.0)
                inner = error.route if isinstance(error, RoutingError) else None
                call.attempts.append(Attempt(label, idx, "error", ms, error, retry, t0_ns, inner))
                if progress is not None and (progress.emitted or call.resume is not None):
                    # All the caller holds (a relayed stream's text never passes here:
                    # its agent counted what it relayed).
                    error.partial_text = progress.text() or error.partial_text
                if progress is not None and progress.emitted:
                    if not self._continues(idx, call, progress, error):
                        self._trace(call, error=error)
                        raise  # content already reached the caller: no silent switch
                    call.errors.append(error)
                    return None
                delay = self._retry_delay(error, retry, idx, call)
                if delay is None:
                    call.errors.append(error)
                    return None
                retry += 1
                try:
                    if delay:
                        yield _steps.Sleep(delay)
                except GeneratorExit:  # cancelled while waiting to retry: its last error
                    call.errors.append(error)
                    raise
                continue
            except GeneratorExit:  # a race went to another agent (or the caller left)
                if hold is not None:
                    hold.abandon()
                ms = (time.perf_counter() - t0) * 1000
                call.attempts.append(Attempt(label, idx, "cancelled", ms, None, retry, t0_ns))
                raise
            except BaseException:  # not the agent's failure (a hook's bug): ends the call
                if hold is not None:
                    hold.abandon()
                raise
            ms = (time.perf_counter() - t0) * 1000
            health.observe(ms, None)
            quota.heard(response.provider_limits)
            if hold is not None:
                yield from hold.settle(response.usage, response.cost_estimate)
            if call.resume is not None and progress is not None:
                call.resume.finish(response, progress.text(), call.request)
            call.attempts.append(Attempt(label, idx, "ok", ms, None, retry, t0_ns, response.route))
            return response

    def _continues(self, idx: int, call: _Call, progress: _Progress, error: AgentError) -> bool:
        """Whether a stream that failed after content goes on at the next agent
        (`stream_recovery: continue`): only plain text can be continued (never a tool
        call or a structured answer), only one agent after another (a race has no next),
        and only on a body of the engine's making (a relayed one is the caller's)."""
        request = call.request
        if (
            self.stream_recovery != "continue"
            or self.strategy.races
            or progress.tools
            or request.output_schema is not None
            or request.relay is not None
            or not progress.text()
            or call.order.index(idx) == len(call.order) - 1
            or call.deadline_passed()
        ):
            return False
        if call.resume is None:
            call.resume = Resume()
        nxt = self.labels[call.order[call.order.index(idx) + 1]]
        price = self.agents[idx].price
        call.resume.broke(progress.text(), self.labels[idx], nxt, price, request, error)
        return True

    def _retry_delay(self, error: AgentError, retry: int, idx: int, call: _Call) -> float | None:
        """Seconds to wait before retrying this agent, or None to give up on it. With a
        deadline and agents not yet tried, a retry is made only if, should it hang until
        its timeout, at least half of the time left would remain for them: a hung
        agent's retry would time out just the same, and the next agent needs its turn."""
        decision, delay = self.retry.decide(error, retry)
        if decision != "retry":
            return None
        if call.ends is None:
            return delay
        left = call.ends - time.monotonic() - delay
        if left <= 0:
            return None
        if call.untried() and self.agents[idx].timeout > left / 2:
            return None
        return delay

    def _probe(self, idx: int, transport: AnyTransport | None) -> _steps.Steps[None]:
        """The background probe of an open agent: one small real request. Its result
        closes the breaker, or opens it for another cooldown."""
        member, health = self.agents[idx], self._health[idx]
        request = build_request(PROBE_PROMPT, max_tokens=1, metadata={"agent_router.probe": True})
        t0 = time.perf_counter()
        try:
            yield from member.steps(request, Caller(transport=transport, nested=True))
        except AgentError as error:
            health.observe((time.perf_counter() - t0) * 1000, error)
        else:
            health.observe((time.perf_counter() - t0) * 1000, None)

    def _skip(self, idx: int, call: _Call, error: AgentError | None = None) -> None:
        """Record an agent not tried: its circuit is open, or (`error`) its quota is used up."""
        if error is None:
            consecutive = self._health[idx].breaker.consecutive
            error = CircuitOpenError(
                f"skipped: circuit open after {consecutive} consecutive failures"
            )
        else:
            call.exhausted.append(self.labels[idx])
        error.at(self.agents[idx].provider, self.agents[idx].model)
        call.attempts.append(Attempt(self.labels[idx], idx, "skipped", 0.0, error))
        call.errors.append(error)

    # ---- the outcome --------------------------------------------------------------------

    def _answered(self, response: Response[Any], call: _Call, idx: int) -> Response[Any]:
        response.route = self._route_info(call, self.labels[idx], call.attempts)
        self._trace(call, response=response, reason=response.route.reason)
        return response

    def _route_info(self, call: _Call, winner: str, attempts: list[Attempt]) -> RouteInfo:
        """The plan's reason, completed with how `winner` came to answer."""
        reason = call.plan.reason
        if call.panic:
            reason += f"; every circuit open: tried {call.panic}, open longest"
        if call.exhausted:
            reason += f"; skipped {', '.join(dict.fromkeys(call.exhausted))}: quota exhausted"
        failed = sum(1 for a in attempts if a.outcome in ("error", "skipped"))
        if self.strategy.races:
            reason += f"; {winner} answered first" + (f", {failed} failed" if failed else "")
        elif failed and all(a.agent == winner for a in attempts if a.outcome != "ok"):
            # Only the answering agent's own tries failed: a retry, not a fallback.
            reason += f"; {winner} answered after {failed} failed attempt(s)"
        elif failed:
            reason += f"; fell back to {winner} after {failed} failed attempt(s)"
        continued = list(call.resume.continuations) if call.resume else []
        for c in continued:
            reason += f"; {c.agent} continued the answer {c.failed} broke off at {c.offset} chars"
        return RouteInfo(
            self.strategy.name,
            reason,
            attempts,
            [self.labels[i] for i in call.plan.order],
            continued,
        )

    def _failed(self, call: _Call) -> RoutingError:
        tried = sorted({a.index for a in call.attempts if a.outcome != "skipped"})
        if call.deadline_passed():
            untried = [self.labels[i] for i in call.order if i not in tried]
            why = f"router deadline of {call.limit:g}s passed"
            if untried:
                why += f" (not tried: {', '.join(untried)})"
        else:
            why = f"all {len(tried)} agent(s) failed" if tried else "no agent was tried"
            if call.exhausted and not tried:
                why = f"no agent was tried: quota exhausted ({', '.join(call.exhausted)})"
        error = RoutingError(f"{why} ({self.strategy.name})", call.errors, call.attempts)
        error.route = RouteInfo(self.strategy.name, why, call.attempts, [])
        self._trace(call, error=error)
        return error

    def _trace(
        self,
        call: _Call,
        *,
        reason: str | None = None,
        response: Response[Any] | None = None,
        error: BaseException | None = None,
    ) -> None:
        if call.nested:  # the outer router writes this decision inside its own
            return
        tracing.record_decision(
            self.name,
            self.strategy.name,
            call.request,
            call.attempts,
            self.agents,
            call.started_ns,
            reason or call.plan.reason,
            response,
            error,
            self.tracer_provider,
            self._quota_attributes,
        )

    def _quota_attributes(self) -> dict[str, Any]:
        """Remaining room per limit, for the decision span:
        `agent_router.quota.<route or agent>.<limit>.remaining`."""
        out: dict[str, Any] = {}
        owners = [("route", self._route_quota), *zip(self.labels, self._quotas, strict=True)]
        for owner, quota in owners:
            for limit, room in quota.snapshot().items():
                if isinstance(room, dict) and "remaining" in room:
                    out[f"agent_router.quota.{owner}.{limit}.remaining"] = room["remaining"]
        return out


class _Call:
    """One routed call: its plan, deadline, and every attempt and error so far."""

    __slots__ = (
        "attempts",
        "ends",
        "errors",
        "exhausted",
        "limit",
        "nested",
        "order",
        "panic",
        "plan",
        "request",
        "resume",
        "route_hold",
        "route_pending",
        "router",
        "started",
        "started_ns",
        "streams",
        "transport",
    )

    def __init__(
        self, router: AgentRouter, request: Request, limit: float | None, caller: Caller
    ) -> None:
        self.router = router
        self.nested = caller.nested
        self.streams = caller  # the stream limits every attempt keeps
        self.request = request
        self.limit = limit
        self.started_ns = time.time_ns()
        self.ends = None if limit is None else time.monotonic() + limit
        self.transport = caller.transport
        self.plan = Plan([], "")
        self.order: list[int] = []
        self.started: set[int] = set()
        self.attempts: list[Attempt] = []
        self.errors: list[AgentError] = []
        self.exhausted: list[str] = []  # agents skipped because a limit had no room
        self.route_hold: Reservation | None = None  # the route's part, settled at the end
        self.route_pending = False  # the route's part is to be reserved with an agent's
        self.panic: str | None = None
        self.resume: Resume | None = None  # set once a stream is being continued

    def remaining(self) -> float | None:
        return None if self.ends is None else self.ends - time.monotonic()

    def caller(self, seconds: float) -> Caller:
        """What an attempt of `seconds` at most is called with."""
        streams = self.streams
        return Caller(
            seconds, self.transport, True, streams.first_token_timeout, streams.stall_timeout
        )

    def deadline_passed(self) -> bool:
        return self.ends is not None and time.monotonic() >= self.ends

    def untried(self) -> bool:
        return any(i not in self.started for i in self.order)

    def timed_out_in_race(self) -> None:
        """At a race's deadline the tries in flight were cancelled: they failed with a
        timeout, which is then their agent's error."""
        for attempt in self.attempts:
            if attempt.outcome == "cancelled":
                agent = self.router.agents[attempt.index]
                error = APITimeoutError(f"router deadline of {self.limit:g}s passed")
                error.at(agent.provider, agent.model)
                attempt.outcome, attempt.error = "error", error
                self.errors.append(error)


class _Progress:
    """One streamed attempt: whether content reached the caller (and what: its text,
    whether a tool call), and how to announce the agent when it does. Continuing an
    answer, its start is checked for a repeat of the answer so far (`Overlap`)."""

    __slots__ = ("_call", "_idx", "_router", "commits", "emitted", "overlap", "pieces", "tools")

    def __init__(self, router: AgentRouter, idx: int, call: _Call) -> None:
        # Whether its first content is announced with a `Commit` first: a race's winner
        # is decided by it, here or in a router this one answers for; elsewhere a
        # commit is a no-op, and every step costs each generator between here and the
        # driver a resumption.
        self.commits = router.strategy.races or call.nested
        self.emitted = False
        self.tools = False
        self.pieces: list[str] = [call.resume.text] if call.resume else []
        self.overlap = Overlap(call.resume.text) if call.resume else None
        self._router, self._idx, self._call = router, idx, call

    def text(self) -> str:
        """The answer's text the caller holds (a continued one's from its start)."""
        return "".join(self.pieces)

    def started(self, inner: Started | None) -> Started:
        """This router's announcement; an inner router's (`inner`) gives the agent that
        really answers."""
        self.emitted = True
        router, idx = self._router, self._idx
        agent, label = router.agents[idx], router.labels[idx]
        route = router._route_info(self._call, label, list(self._call.attempts))
        if inner is not None:
            return Started(label, inner.provider, inner.model, route)
        return Started(label, agent.provider, agent.model, route)

    def passed(self, events: list[StreamEvent]) -> list[StreamEvent]:
        """What of an attempt's events goes on to the caller (a continuation's repeat of
        the answer so far cut off), noting what it is."""
        out: list[StreamEvent] = []
        for event in events:
            if isinstance(event, TextDelta):
                text = self.overlap.feed(event.text) if self.overlap else event.text
                if not text:
                    continue
                event = TextDelta(text) if text is not event.text else event
                self.pieces.append(text)
            elif isinstance(event, ToolCallDelta | ToolResult):
                self.tools = True
            out.append(event)
        return out

    def rest(self) -> list[StreamEvent]:
        """At the end of a continuation: the text still held, in case it repeated."""
        text = self.overlap.flush() if self.overlap else ""
        if not text:
            return []
        self.pieces.append(text)
        return [TextDelta(text)]


def _watch(steps: _steps.Steps[Response[Any]], progress: _Progress) -> _steps.Steps[Response[Any]]:
    """Pass steps through, watching what the attempt streams: commit and emit `Started`
    before its first content (not when continuing a committed answer), keep track of
    what the caller received, and cut a continuation's repeat."""
    value: Any = None
    error: BaseException | None = None
    resuming = progress.overlap is not None
    while True:
        try:
            step = steps.throw(error) if error is not None else steps.send(value)
        except StopIteration as stop:
            if rest := progress.rest():
                yield _steps.Emit(rest)
            return stop.value  # type: ignore[no-any-return]
        try:
            if isinstance(step, _steps.Emit):
                events: list[StreamEvent] = list(step.events)
                head = events[0] if events else None
                inner = head if isinstance(head, Started) else None
                if inner is not None:
                    events.pop(0)
                events = progress.passed(events)
                # Committing and emitting return nothing and throw nothing in (a race's
                # losers are cancelled in between): no value to pass on.
                if not progress.emitted and not resuming:
                    if progress.commits:
                        yield _steps.Commit()
                    events.insert(0, progress.started(inner))
                if events:
                    progress.emitted = True
                    yield _steps.Emit(events)
                value, error = None, None
                continue
            value, error = (yield step), None
        except GeneratorExit:
            steps.close()
            raise
        except BaseException as exc:
            value, error = None, exc


async def _settle(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
