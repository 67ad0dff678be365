"""`POST /v1/messages/count_tokens`: asked of the route's first Anthropic agent (with the
caller's body as it came, for that agent's model), else estimated (`tokens`). Either way
the answer is Anthropic's `{"input_tokens": N}`, and `x-agent-token-count` says which."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from agent.agent import Agent
from agent.catalog import PROVIDERS
from agent.errors import AgentError, BadRequestError, url_credentials
from agent.transport import AsyncTransport
from agent.types import Relay
from agent.wire.anthropic import AnthropicCodec
from agent.wire.base import loads
from agent.wire.inbound import CallerError, invalid
from agent_sidecar import tokens
from agent_sidecar.relay import forwarded
from agent_sidecar.routes import Route
from agent_sidecar.wire import describe_failure

CODEC = AnthropicCodec()
LARGE_TEXT = 64 * 1024  # bytes of body from which the estimate runs off the event loop


def checked(data: Any) -> str:
    """The route a count_tokens body names (else the caller's 400, saying what is wrong)."""
    if not isinstance(data, dict):
        raise invalid("the body must be a JSON object")
    model, messages = data.get("model"), data.get("messages")
    if not isinstance(model, str) or not model:
        raise invalid("model: a route name is required", "model")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages: a non-empty list is required", "messages")
    if not all(isinstance(m, dict) for m in messages):
        raise invalid("messages: each message must be an object", "messages")
    return model


async def count(
    data: dict[str, Any],
    size: int,
    route: Route,
    caller: Mapping[str, str],
    transport: AsyncTransport | None,
) -> tuple[int, dict[str, str]]:
    """Input tokens and the headers that say where the number comes from. A provider's
    refusal of the body (400, 413) is the caller's error; any other failure (no key, a
    wrong one, no connection, overloaded) leaves the estimate."""
    agent = _anthropic_agent(route)
    sender = (agent.transport or transport) if agent is not None else None
    if agent is not None and sender is not None and hasattr(sender, "send_async"):
        counted = await _ask(agent, sender, Relay("anthropic", data, forwarded(caller)))
        if counted is not None:
            return counted, {"x-agent-token-count": "provider", "x-agent-provider": agent.provider}
    if size >= LARGE_TEXT:
        return await asyncio.to_thread(tokens.estimate, data), {"x-agent-token-count": tokens.HOW}
    return tokens.estimate(data), {"x-agent-token-count": tokens.HOW}


def _anthropic_agent(route: Route) -> Agent | None:
    for agent in route.router.agents:
        if isinstance(agent, Agent) and PROVIDERS[agent.provider].wire == "anthropic":
            return agent
    return None


async def _ask(agent: Agent, transport: Any, relay: Relay) -> int | None:
    try:
        target = agent.target()
        reply = await transport.send_async(CODEC.count_tokens(relay, target), agent.timeout)
    except AgentError:
        return None  # no key, no connection: the estimate still answers
    if reply.status >= 400:
        error = CODEC.error(reply.status, reply.headers, reply.body)
        if not isinstance(error, BadRequestError):
            return None
        error.at(agent.provider, agent.model)
        error.redact(target.api_key, *target.headers.values(), *url_credentials(target.base_url))
        raise CallerError(describe_failure(error))
    try:
        answer = loads(reply.body)
        counted = answer["input_tokens"] if isinstance(answer, dict) else None
    except AgentError:
        return None
    return counted if isinstance(counted, int) and not isinstance(counted, bool) else None
