"""Wire-format codecs, one per API dialect (sans-I/O)."""

from __future__ import annotations

from agent.catalog import PROVIDERS
from agent.errors import ConfigurationError
from agent.providers.gemini import GeminiCodec
from agent.providers.openai_responses import ResponsesCodec
from agent.wire.anthropic import AnthropicCodec
from agent.wire.base import Codec
from agent.wire.openai_chat import OpenAICodec

CODECS: dict[str, Codec] = {
    "openai": OpenAICodec(),
    "anthropic": AnthropicCodec(),
    "gemini": GeminiCodec(),
    "responses": ResponsesCodec(),  # OpenAI's Responses API, for agents with api="responses"
}

APIS = ("chat", "responses")  # what an OpenAI-format agent may call


def wire_for(provider: str, api: str = "chat") -> str:
    """The wire format an agent speaks: its provider's, or the Responses API when an
    OpenAI-format agent is told to use it (callers have checked the provider exists)."""
    wire = PROVIDERS[provider].wire
    if api == "chat":
        return wire
    if api == "responses" and wire == "openai":
        return "responses"
    raise ConfigurationError(
        f"api={api!r} is not one {provider} speaks: "
        + ("use 'chat' or 'responses'" if wire == "openai" else "only OpenAI-format agents choose")
    )


def codec_for(provider: str, api: str = "chat") -> Codec:
    """The codec for a provider name and the API it is told to use."""
    return CODECS[wire_for(provider, api)]
