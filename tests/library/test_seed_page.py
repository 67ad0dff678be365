"""Every snippet of the public "Routing & Fallback" page, run as written.

The providers are fakes reached through the standard environment variables, exactly
as a user's real keys and URLs would be. Where the page leaves a placeholder
(`agents=[...]`, `my_tool`, `prompt`, `simple_agent`), the namespace defines it first, as
the reader would.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Iterator

import pytest
from fakes import Fail, FakeProvider

from agent import Agent


@pytest.fixture
def seeded(monkeypatch) -> Iterator[dict[str, FakeProvider]]:
    fakes = {
        kind: FakeProvider(kind) for kind in ("openai", "anthropic", "gemini", "deepseek", "groq")
    }
    with (
        fakes["openai"].running(),
        fakes["anthropic"].running(),
        fakes["gemini"].running(),
        fakes["deepseek"].running(),
        fakes["groq"].running(),
    ):
        for kind, fake in fakes.items():
            for name, value in fake.env(kind).items():
                monkeypatch.setenv(name, value)
        yield fakes


def run(snippet: str, **names: object) -> dict[str, object]:
    namespace: dict[str, object] = {"__name__": "snippet", **names}
    exec(compile(textwrap.dedent(snippet), "<seed page>", "exec"), namespace)
    return namespace


def my_tool(query: str) -> str:
    """Look something up."""
    return f"result for {query}"


BASIC = """
from agent import Agent, AgentRouter
router = AgentRouter(
agents=[
Agent(provider="anthropic", model="claude-sonnet"),
Agent(provider="openai", model="gpt-4o"),
],
strategy="fallback",
)
# Automatically falls back if first provider fails
response = router.run("Hello, world!")
print(f"Response from: {response.provider}")
"""


def test_basic_usage(seeded, capsys) -> None:
    run(BASIC)
    assert capsys.readouterr().out == "Response from: anthropic\n"
    seeded["anthropic"].script(Fail(529))
    seeded["anthropic"].script(Fail(529))
    run(BASIC)
    assert capsys.readouterr().out == "Response from: openai\n"


def test_fallback_default(seeded) -> None:
    seeded["anthropic"].set_default(Fail(500))
    seeded["openai"].set_default(Fail(401))
    ns = run("""
    from agent import Agent, AgentRouter
    router = AgentRouter(
    agents=[
    Agent(provider="anthropic", model="claude-sonnet"), # Primary
    Agent(provider="openai", model="gpt-4o"), # Backup 1
    Agent(provider="gemini", model="gemini-pro"), # Backup 2
    ],
    strategy="fallback",
    )
    # Tries anthropic first, then openai, then gemini
    response = router.run("Complex query")
    """)
    assert ns["response"].provider == "gemini"


def test_round_robin(seeded) -> None:
    ns = run("""
    from agent import Agent, AgentRouter
    router = AgentRouter(
    agents=[
    Agent(provider="openai", model="gpt-4o"),
    Agent(provider="anthropic", model="claude-sonnet"),
    ],
    strategy="round_robin",
    )
    # First request goes to openai
    r1 = router.run("Request 1")
    # Second request goes to anthropic
    r2 = router.run("Request 2")
    # Third request goes back to openai
    r3 = router.run("Request 3")
    """)
    assert [ns[k].provider for k in ("r1", "r2", "r3")] == ["openai", "anthropic", "openai"]


def test_fastest(seeded, capsys) -> None:
    run("""
    from agent import Agent, AgentRouter
    router = AgentRouter(
    agents=[
    Agent(provider="openai", model="gpt-4o"),
    Agent(provider="anthropic", model="claude-sonnet"),
    Agent(provider="gemini", model="gemini-flash"),
    ],
    strategy="fastest",
    )
    # All agents race, fastest response wins
    response = router.run("Quick question")
    print(f"Fastest: {response.provider} ({response.latency_ms}ms)")
    """)
    out = capsys.readouterr().out
    assert out.startswith("Fastest: ") and out.rstrip().endswith("ms)")


def test_cheapest(seeded) -> None:
    ns = run("""
    from agent import Agent, AgentRouter
    router = AgentRouter(
    agents=[
    Agent(provider="openai", model="gpt-4o"), # $2.50 input
    Agent(provider="openai", model="gpt-4o-mini"), # $0.15 input
    Agent(provider="anthropic", model="claude-haiku"), # $0.25 input
    ],
    strategy="cheapest",
    )
    # Routes to gpt-4o-mini first (cheapest)
    response = router.run("Simple question")
    """)
    assert ns["response"].model == "gpt-4o-mini"


def test_capability(seeded) -> None:
    ns = run(
        """
    router = AgentRouter(
    agents=[
    Agent(provider="openai", model="gpt-4o", tools=[my_tool]),
    Agent(provider="anthropic", model="claude-sonnet"),
    Agent(provider="deepseek", model="deepseek-chat"),
    ],
    strategy="capability",
    )
    # Routes to agents that support tools
    response = router.run("Use the tool", tools=[my_tool])
    """,
        Agent=Agent,
        AgentRouter=__import__("agent").AgentRouter,
        my_tool=my_tool,
    )
    assert ns["response"].provider == "openai"
    assert "capable of tools" in ns["response"].route.reason


CUSTOM = '''
from agent.types import RouteResult
def smart_router(request, agents):
    """Route based on input content."""
    text = request.input or ""
    if "code" in text.lower():
        # Prefer Claude for coding
        for agent in agents:
            if agent.provider == "anthropic":
                return RouteResult(agent=agent, reason="coding task")
    if len(text) > 5000:
        # Use Gemini for long context
        for agent in agents:
            if agent.provider == "gemini":
                return RouteResult(agent=agent, reason="long context")
    # Default to first agent
    return RouteResult(agent=agents[0], reason="default")
router = AgentRouter(
agents=AGENTS,
strategy="custom",
custom_router=smart_router,
)
code = router.run("Review this code")
long = router.run("x" * 6000)
plain = router.run("Hi")
'''


def test_custom_router(seeded) -> None:
    from agent import AgentRouter

    agents = [
        Agent(provider="openai", model="gpt-4o"),
        Agent(provider="anthropic", model="claude-sonnet"),
        Agent(provider="gemini", model="gemini-pro"),
    ]
    # The page writes `agents=[...]`: the reader's own list stands in for the dots.
    ns = run(CUSTOM, AgentRouter=AgentRouter, AGENTS=agents)
    assert (ns["code"].provider, ns["code"].route.reason) == ("anthropic", "coding task")
    assert (ns["long"].provider, ns["long"].route.reason) == ("gemini", "long context")
    assert (ns["plain"].provider, ns["plain"].route.reason) == ("openai", "default")


def test_async_support(seeded, capsys) -> None:
    from agent import AgentRouter

    router = AgentRouter([Agent(provider="openai", model="gpt-4o")])

    async def page() -> None:
        ns = {"router": router}
        exec(
            compile(
                textwrap.dedent("""
        async def snippet():
            # Async run
            response = await router.run_async("Hello")
            # Async streaming
            async for event in await router.stream_async("Write a story"):
                if event.type == "text_delta":
                    print(event.text, end="")
            return response
        """),
                "<seed page>",
                "exec",
            ),
            ns,
        )
        response = await ns["snippet"]()  # type: ignore[operator]
        assert response.text == "Hello from openai"

    asyncio.run(page())
    assert capsys.readouterr().out == "Hello from openai"


def test_streaming_with_routing(seeded, capsys) -> None:
    from agent import AgentRouter

    seeded["anthropic"].script(Fail(503))
    seeded["anthropic"].script(Fail(503))
    router = AgentRouter(
        [
            Agent(provider="anthropic", model="claude-sonnet"),
            Agent(provider="openai", model="gpt-4o"),
        ]
    )
    run(
        """
    # Fallback on connection errors
    for event in router.stream("Write a poem"):
        if event.type == "text_delta":
            print(event.text, end="")
    """,
        router=router,
    )
    assert capsys.readouterr().out == "Hello from openai"


def test_structured_output(seeded, capsys) -> None:
    from fakes import Reply

    from agent import AgentRouter

    seeded["openai"].script(Reply(text='{"sentiment": "positive", "keywords": ["great"]}'))
    router = AgentRouter([Agent(provider="openai", model="gpt-4o")])
    run(
        """
    from pydantic import BaseModel
    class Analysis(BaseModel):
        sentiment: str
        keywords: list[str]
    response = router.json(
    "Analyze: Great product!",
    schema=Analysis,
    )
    print(response.output.sentiment)
    """,
        router=router,
    )
    assert capsys.readouterr().out == "positive\n"


def test_routing_errors(seeded, capsys) -> None:
    from agent import AgentRouter

    seeded["openai"].set_default(Fail(500))
    router = AgentRouter(
        [Agent(provider="invalid", model="x"), Agent(provider="openai", model="gpt-4o")]
    )
    run(
        """
    from agent.errors import RoutingError
    try:
        response = router.run("Hello")
    except RoutingError as e:
        print(f"All agents failed: {e.message}")
        for i, error in enumerate(e.errors):
            print(f" Agent {i}: {error}")
    """,
        router=router,
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "All agents failed: all 2 agent(s) failed (fallback)"
    assert out[1].startswith(" Agent 0: invalid/x: ConfigurationError: unknown provider")
    assert out[2].startswith(" Agent 1: openai/gpt-4o: ServerError (HTTP 500)")


def test_partial_failures(seeded) -> None:
    ns = run("""
    from agent import Agent, AgentRouter
    # The router handles individual failures gracefully
    router = AgentRouter(
    agents=[
    Agent(provider="invalid", model="x"), # Will fail
    Agent(provider="openai", model="gpt-4o"), # Will succeed
    ],
    strategy="fallback",
    )
    # Still works - falls back to openai
    response = router.run("Hello")
    """)
    assert ns["response"].provider == "openai"


def test_configuration_options(seeded) -> None:
    from agent import AgentRouter

    router = AgentRouter([Agent(provider="anthropic", model="claude-sonnet")], strategy="fallback")
    ns = run(
        """
    # Run with options
    response = router.run(
    "Hello",
    temperature=0.7,
    max_tokens=500,
    system="Be helpful.",
    )
    """,
        router=router,
    )
    sent = seeded["anthropic"].last_request.json
    assert (sent["temperature"], sent["max_tokens"], sent["system"]) == (0.7, 500, "Be helpful.")
    assert ns["response"].provider == "anthropic"


def test_use_cases_construct_and_run(seeded) -> None:
    ns = run("""
    from agent import Agent, AgentRouter
    # Production setup with multiple fallbacks
    ha = AgentRouter(
    agents=[
    # Primary region
    Agent(provider="openai", model="gpt-4o", base_url="https://us-east.api.openai.com"),
    # Backup region
    Agent(provider="openai", model="gpt-4o", base_url="https://us-west.api.openai.com"),
    # Different provider
    Agent(provider="anthropic", model="claude-sonnet"),
    ],
    strategy="fallback",
    )
    # Try cheap first, expensive as backup
    cost = AgentRouter(
    agents=[
    Agent(provider="openai", model="gpt-4o-mini"), # Cheapest
    Agent(provider="anthropic", model="claude-haiku"), # Cheap
    Agent(provider="openai", model="gpt-4o"), # Expensive
    Agent(provider="anthropic", model="claude-opus"), # Most expensive
    ],
    strategy="cheapest",
    )
    # Distribute across multiple API keys
    keys = AgentRouter(
    agents=[
    Agent(provider="openai", model="gpt-4o", api_key="key1"),
    Agent(provider="openai", model="gpt-4o", api_key="key2"),
    Agent(provider="openai", model="gpt-4o", api_key="key3"),
    ],
    strategy="round_robin",
    )
    # Race for fastest response
    speed = AgentRouter(
    agents=[
    Agent(provider="groq", model="llama-3.1-70b"), # Fast
    Agent(provider="anthropic", model="claude-haiku"), # Fast
    Agent(provider="openai", model="gpt-4o-mini"), # Fast
    ],
    strategy="fastest",
    )
    """)
    assert ns["cost"].run("x").model == "gpt-4o-mini"
    assert ns["speed"].run("x").text.startswith("Hello from")
    # Each key goes to the fake as its own bearer token, in turn.
    seeded["openai"].api_key = None  # accept any key
    for _ in range(3):
        ns["keys"].run("x")
    sent = [r.headers["authorization"] for r in seeded["openai"].requests[-3:]]
    assert sent == ["Bearer key1", "Bearer key2", "Bearer key3"]


def test_monitoring_middleware(seeded, capsys) -> None:
    ns = run("""
    from agent import Agent, AgentRouter
    from agent import Middleware
    class RoutingLogger(Middleware):
        def after(self, request, response):
            print(f"Routed to: {response.provider}/{response.model}")
            print(f"Latency: {response.latency_ms}ms")
            print(f"Cost: ${response.cost_estimate:.4f}")
            return response
    # Apply to all agents
    agents = [
    Agent(provider="openai", model="gpt-4o", middleware=[RoutingLogger()]),
    Agent(provider="anthropic", model="claude-sonnet", middleware=[RoutingLogger()]),
    ]
    router = AgentRouter(agents=agents, strategy="fallback")
    """)
    ns["router"].run("Hello")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Routed to: openai/gpt-4o"
    assert out[1].startswith("Latency: ") and out[2].startswith("Cost: $0.0")


def test_best_practices(seeded) -> None:
    from agent import AgentRouter
    from agent.errors import RoutingError

    simple_agent = Agent(provider="gemini", model="gemini-flash")
    seeded["openai"].set_default(Fail(500))
    seeded["anthropic"].set_default(Fail(500))
    tools = [my_tool]
    ns = run(
        """
    router = AgentRouter(
    agents=[
    Agent(provider="openai", model="gpt-4o", tools=tools),
    Agent(provider="anthropic", model="claude-sonnet", tools=tools),
    # Include tools for all agents when using tools
    ],
    strategy="fallback",
    )
    try:
        response = router.run(prompt)
    except RoutingError:
        # Have a final fallback
        response = simple_agent.run(prompt)
    """,
        Agent=Agent,
        AgentRouter=AgentRouter,
        RoutingError=RoutingError,
        tools=tools,
        prompt="Hello",
        simple_agent=simple_agent,
    )
    assert ns["response"].provider == "gemini"
