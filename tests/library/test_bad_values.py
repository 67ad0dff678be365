"""Typed errors only: every bad value the docs name (docs/errors.md, "Bad values"), fed to
a real call, fails with its AgentError subclass: never a TypeError, KeyError or
JSONDecodeError from inside the library."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from agent import Agent, AgentRouter
from agent.config import parse_config
from agent.errors import (
    AgentError,
    ConfigurationError,
    InvalidRequestError,
    RoutingError,
)
from agent.testing import TestAgent
from agent.types import RouteResult

GOOD_AGENT = {"name": "a", "provider": "openai", "model": "gpt-4o"}


def config_with(**agent: Any) -> Callable[[], object]:
    return lambda: parse_config({"agents": [{**GOOD_AGENT, **agent}]})


def route_with(**route: Any) -> Callable[[], object]:
    return lambda: parse_config(
        {"agents": [GOOD_AGENT], "routes": [{"name": "r", "agents": ["a"], **route}]}
    )


def ok() -> Agent:
    return Agent("openai", "gpt-4o", api_key="k", base_url="http://127.0.0.1:9")


BAD_VALUES: list[tuple[str, Callable[[], object], type[AgentError]]] = [
    ("an unknown provider", lambda: Agent("nosuch", "m").run("x"), ConfigurationError),
    ("no API key", lambda: Agent("openai", "gpt-4o").run("x"), ConfigurationError),
    ("no base URL", lambda: Agent("openai_compatible", "m").run("x"), ConfigurationError),
    (
        "a base URL that is not HTTP",
        lambda: Agent("openai", "gpt-4o", api_key="k", base_url="ftp://h").run("x"),
        ConfigurationError,
    ),
    (
        "an unknown capability",
        lambda: Agent("openai", "gpt-4o", capabilities={"telepathy": True}).capabilities,
        ConfigurationError,
    ),
    ("an unknown capability in a config", config_with(capabilities={"telepathy": True}),
     ConfigurationError),
    ("a prompt that is not text or messages", lambda: ok().run(42), InvalidRequestError),
    ("a message that is not a dict", lambda: ok().run(["hello"]), InvalidRequestError),
    ("a message with an unknown role", lambda: ok().run([{"role": "robot", "content": "x"}]),
     InvalidRequestError),
    ("a message whose content is a number", lambda: ok().run([{"role": "user", "content": 7}]),
     InvalidRequestError),
    (
        "a stored tool call whose arguments are not JSON",
        lambda: ok().run(
            [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "{bad"}}],
                }
            ]
        ),
        InvalidRequestError,
    ),
    (
        "a stored tool call without its function",
        lambda: ok().run([{"role": "assistant", "tool_calls": [{"id": "1"}]}]),
        InvalidRequestError,
    ),
    (
        "an image part without its URL",
        lambda: ok().run([{"role": "user", "content": [{"type": "image_url"}]}]),
        InvalidRequestError,
    ),
    ("stop= that is not text", lambda: ok().run("x", stop=5), InvalidRequestError),
    ("system= that is not text", lambda: ok().run("x", system=["a"]), InvalidRequestError),
    ("a schema pydantic cannot use", lambda: ok().json("x", schema=object()), InvalidRequestError),
    ("a tool that is not a tool", lambda: ok().run("x", tools=[42]), ConfigurationError),
    ("an unknown strategy", lambda: AgentRouter([ok()], strategy="nope"), ConfigurationError),
    ("a router without agents", lambda: AgentRouter([]), ConfigurationError),
    ("custom without a custom_router", lambda: AgentRouter([ok()], strategy="custom"),
     ConfigurationError),
    ("negative retries", lambda: AgentRouter([ok()], retries=-1), ConfigurationError),
    ("a deadline of zero", lambda: AgentRouter([ok()], deadline=0), ConfigurationError),
    ("an unknown circuit breaker option",
     lambda: AgentRouter([ok()], circuit_breaker={"failure": 3}), ConfigurationError),
    (
        "a custom router returning something else",
        lambda: AgentRouter(
            [TestAgent()], strategy="custom", custom_router=lambda r, a: "first"
        ).run("x"),
        ConfigurationError,
    ),
    (
        "a custom router choosing an agent it was not given",
        lambda: AgentRouter(
            [TestAgent()], strategy="custom", custom_router=lambda r, a: RouteResult(TestAgent())
        ).run("x"),
        ConfigurationError,
    ),
    ("weights without the weighted strategy", route_with(weights={"a": 1}), ConfigurationError),
    ("hedge_delay without a race", route_with(hedge_delay=1), ConfigurationError),
    ("rules without the custom strategy",
     route_with(rules=[{"prefer": ["a"], "reason": "r"}]), ConfigurationError),
    ("the custom strategy without rules", route_with(strategy="custom"), ConfigurationError),
    ("a rule whose regular expression does not compile",
     route_with(strategy="custom", rules=[{"prefer": ["a"], "reason": "r", "input_matches": "("}]),
     ConfigurationError),
    ("a config that is not YAML", lambda: parse_config("a: [b"), ConfigurationError),
    ("an unknown route", lambda: AgentRouter.from_config(route_with()(), "nope"),  # type: ignore[arg-type]
     ConfigurationError),
    ("every agent failing", lambda: AgentRouter([Agent("nosuch", "m")]).run("x"), RoutingError),
]


@pytest.mark.parametrize(("what", "call", "expected"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_a_bad_value_is_a_typed_error(
    what: str, call: Callable[[], object], expected: type[AgentError]
) -> None:
    with pytest.raises(AgentError) as caught:
        call()
    assert type(caught.value) is expected, f"{what}: {caught.value!r}"
    assert caught.value.message, what


async def test_the_same_bad_values_from_async_code() -> None:
    with pytest.raises(InvalidRequestError):
        await ok().run_async([{"role": "robot"}])
    with pytest.raises(InvalidRequestError):
        await ok().stream_async(None)  # type: ignore[arg-type]
