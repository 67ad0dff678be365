"""Routing decisions as OpenTelemetry spans: recorded by whichever provider is installed,
and nothing at all while none is."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fakes import Fail
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from agent import Agent, AgentRouter, tracing

Install = Callable[[], InMemorySpanExporter]


@pytest.fixture
def install() -> Iterator[Install]:
    """`install()` makes a fresh SDK provider the global one; the process's own provider
    is put back afterwards (the API allows one per process, so reset it the way
    OpenTelemetry's own test helpers do)."""
    saved = (trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE)
    providers: list[TracerProvider] = []

    def fresh() -> InMemorySpanExporter:
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace._TRACER_PROVIDER_SET_ONCE = Once()
        trace._TRACER_PROVIDER = None
        trace.set_tracer_provider(provider)
        providers.append(provider)
        return exporter

    try:
        yield fresh
    finally:
        for provider in providers:
            provider.shutdown()
        trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = saved
        tracing._tracer = None


def router_for(fake_a, fake_b) -> AgentRouter:  # type: ignore[no-untyped-def]
    return AgentRouter(
        [
            Agent("openai", "gpt-4o", base_url=fake_a.base_url, api_key="test-key", name="a"),
            Agent("openai", "gpt-4o", base_url=fake_b.base_url, api_key="test-key", name="b"),
        ],
        retries=0,
        name="chat",
    )


async def test_a_decision_is_a_span_with_a_child_per_attempt(fake_factory, install) -> None:
    a, b = await fake_factory("openai"), await fake_factory("openai")
    a.script(Fail(500))
    exporter = install()
    await router_for(a, b).run_async("x")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    decision = spans["route chat"]
    assert decision.attributes["agent_router.fallbacks"] == 1
    children = [s for s in exporter.get_finished_spans() if s.parent is not None]
    assert len(children) == 2
    assert {c.parent.span_id for c in children} == {decision.context.span_id}


async def test_a_provider_installed_later_gets_the_spans(fake_factory, install) -> None:
    a, b = await fake_factory("openai"), await fake_factory("openai")
    router = router_for(a, b)
    first = install()
    await router.run_async("x")
    second = install()  # the cached tracer belongs to the first provider: not used again
    await router.run_async("x")
    assert len(first.get_finished_spans()) == 2
    assert len(second.get_finished_spans()) == 2


async def test_nothing_is_recorded_once_the_provider_is_gone(fake_factory, install) -> None:
    a, b = await fake_factory("openai"), await fake_factory("openai")
    router = router_for(a, b)
    exporter = install()
    await router.run_async("x")
    trace._TRACER_PROVIDER = None  # back to the API's default, as a process without one
    assert not tracing.enabled()
    await router.run_async("x")
    assert len(exporter.get_finished_spans()) == 2, "only the first call's spans"


def own_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def test_a_routers_own_tracer_provider_gets_its_spans(fake_factory) -> None:
    """What was tried: a router given `tracer_provider=` while no global provider is
    installed: its decisions go to that provider, nothing global is needed or touched."""
    a = await fake_factory("openai")
    provider, exporter = own_provider()
    router = AgentRouter(
        [Agent("openai", "gpt-4o", base_url=a.base_url, api_key="test-key", name="a")],
        name="mine",
        tracer_provider=provider,
    )
    await router.run_async("x")
    assert not tracing.enabled()  # no global provider
    assert [s.name for s in exporter.get_finished_spans()] == ["chat gpt-4o", "route mine"]
    provider.shutdown()


async def test_a_nested_route_is_one_trace(fake_factory) -> None:
    """What was tried: an outer route falling back to an inner route, which falls back
    too. One trace: the outer decision, its failed attempt, then the inner decision as
    the outer's second attempt with the inner attempts inside it."""
    a, b, c = [await fake_factory("openai") for _ in range(3)]
    a.script(Fail(500))
    b.script(Fail(500))
    provider, exporter = own_provider()

    def agent(fake, name):  # type: ignore[no-untyped-def]
        return Agent("openai", "gpt-4o", base_url=fake.base_url, api_key="test-key", name=name)

    inner = AgentRouter([agent(b, "b"), agent(c, "c")], retries=0, name="inner",
                        tracer_provider=provider)
    outer = AgentRouter([agent(a, "a"), inner], retries=0, name="outer", tracer_provider=provider)
    await outer.run_async("x")

    spans = exporter.get_finished_spans()
    assert len({s.context.trace_id for s in spans}) == 1
    by_name = {s.name: s for s in spans}
    outer_span, inner_span = by_name["route outer"], by_name["route inner"]
    assert inner_span.parent.span_id == outer_span.context.span_id
    inner_children = [s for s in spans if s.parent and s.parent.span_id == inner_span.context.span_id]
    assert [s.attributes["agent_router.agent"] for s in inner_children] == ["b", "c"]
    assert inner_children[1].attributes["gen_ai.usage.output_tokens"] > 0
    provider.shutdown()


async def test_a_stream_failing_after_content_is_traced_as_failed(fake_factory) -> None:
    """What was tried: a streamed answer cut by an in-stream error after its first words
    (no fallback is possible then). The decision must still be written, as failed."""
    from fakes import Reply, StreamError

    from agent.errors import OverloadedError

    a = await fake_factory("openai")
    a.script(StreamError(after=2, reply=Reply(text="one two three"), error_type="overloaded_error"))
    provider, exporter = own_provider()
    router = AgentRouter(
        [Agent("openai", "gpt-4o", base_url=a.base_url, api_key="test-key", name="a")],
        name="cut",
        tracer_provider=provider,
    )
    with pytest.raises(OverloadedError):
        [e async for e in await router.stream_async("x")]
    decision = next(s for s in exporter.get_finished_spans() if s.name == "route cut")
    assert decision.attributes["agent_router.outcome"] == "error"
    assert decision.attributes["error.type"] == "OverloadedError"
    provider.shutdown()
