"""The library alone, offline (the whole Kubernetes story is examples/story.py).

Three fake providers (OpenAI, Anthropic and Gemini wire formats, byte for byte) listen
on 127.0.0.1; the standard environment variables point the library at them, exactly as
real keys and URLs would. Then the docs' routing strategies run against them, one step
at a time, with what happened printed after each.

    hack/demo library
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fakes import Fail, FakeProvider, Reply
from pydantic import BaseModel

from agent import Agent, AgentRouter, Response
from agent.errors import RoutingError


def title(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m")


def show(response: Response[object]) -> None:
    route = response.route
    print(f"   answer : {response.text!r}")
    print(f"   from   : {response.provider}/{response.model} in {response.latency_ms:.1f} ms, "
          f"{response.usage.input_tokens}+{response.usage.output_tokens} tokens, "
          f"${response.cost_estimate:.6f}")
    if route:
        print(f"   route  : {route.strategy}: {route.reason}")
        for attempt in route.attempts:
            print(f"            - {attempt}")


class Analysis(BaseModel):
    sentiment: str
    keywords: list[str]


def main() -> None:
    openai = FakeProvider("openai", default=Reply(text="Hello from the OpenAI fake."))
    anthropic = FakeProvider("anthropic", default=Reply(text="Hello from the Anthropic fake."))
    gemini = FakeProvider("gemini", default=Reply(text="Hello from the Gemini fake."))
    with openai.running(), anthropic.running(), gemini.running():
        for fake in (openai, anthropic, gemini):
            os.environ.update(fake.env())
            print(f"fake {fake.kind:9} listening at {fake.url}")

        title("fallback: Anthropic is overloaded (529), the router falls back to OpenAI")
        anthropic.script(Fail(529), Fail(529))
        router = AgentRouter(
            agents=[Agent(provider="anthropic", model="claude-sonnet"),
                    Agent(provider="openai", model="gpt-4o")],
            strategy="fallback",
        )
        show(router.run("Hello, world!"))

        title("round robin: openai, anthropic, openai")
        rr = AgentRouter(agents=[Agent(provider="openai", model="gpt-4o"),
                                 Agent(provider="anthropic", model="claude-sonnet")],
                         strategy="round_robin")
        for i in (1, 2, 3):
            print(f"   request {i} -> {rr.run(f'Request {i}').provider}")

        title("fastest: all three race; Gemini answers in 10 ms, the others take 300 ms")
        openai.script(Reply(text="slow OpenAI", delay=0.3))
        anthropic.script(Reply(text="slow Anthropic", delay=0.3))
        gemini.script(Reply(text="quick Gemini", delay=0.01))
        fastest = AgentRouter(agents=[Agent(provider="openai", model="gpt-4o"),
                                      Agent(provider="anthropic", model="claude-sonnet"),
                                      Agent(provider="gemini", model="gemini-flash")],
                              strategy="fastest")
        show(fastest.run("Quick question"))
        print(f"   losers disconnected: openai={openai.wait_disconnect_sync(2)}, "
              f"anthropic={anthropic.wait_disconnect_sync(2)}")

        title("cheapest: gpt-4o-mini is tried first (price data from genai-prices)")
        cheapest = AgentRouter(agents=[Agent(provider="openai", model="gpt-4o"),
                                       Agent(provider="openai", model="gpt-4o-mini"),
                                       Agent(provider="anthropic", model="claude-haiku")],
                               strategy="cheapest")
        show(cheapest.run("Simple question"))

        title("streaming with fallback: the first agent fails before any token")
        anthropic.script(Fail(500), Fail(500))
        openai.script(Reply(text="Roses are red, packets are queued.", chunk_delay=0.03))
        print("   ", end="")
        for event in router.stream("Write a poem"):
            if event.type == "text_delta":
                print(event.text, end="", flush=True)
            elif event.type == "done":
                print(f"\n   (time to first token {event.response.time_to_first_token_ms} ms, "
                      f"{event.response.route.reason})")

        title("structured output, validated with pydantic")
        anthropic.script(Reply(tool_calls=[{"name": "structured_output", "arguments": {
            "sentiment": "positive", "keywords": ["great", "product"]}}]))
        result = router.json("Analyze: Great product!", schema=Analysis)
        print(f"   output : {result.output!r}")

        title("async: the same router from asyncio")

        async def run_async() -> None:
            response = await rr.run_async("Hello")
            print(f"   async run -> {response.provider}: {response.text!r}")

        asyncio.run(run_async())

        title("every agent fails: one RoutingError lists each agent's error")
        anthropic.script(Fail(401))
        openai.script(Fail(429, retry_after=60))
        broken = AgentRouter(agents=[Agent(provider="invalid", model="x"),
                                     Agent(provider="anthropic", model="claude-sonnet"),
                                     Agent(provider="openai", model="gpt-4o")])
        try:
            broken.run("Hello")
        except RoutingError as e:
            print(f"   All agents failed: {e.message}")
            for i, error in enumerate(e.errors):
                print(f"    Agent {i}: {error}")

        title("router health: breaker state and latency per agent")
        for name, state in router.health().items():
            print(f"   {name:28} {state}")
    print("\nDone. Next: hack/test runs every check; README.md says what else is here.")


if __name__ == "__main__":
    main()
