"""Which codec an agent speaks: its provider's wire format, or the Responses API when an
OpenAI-format agent is told to use it. The codecs themselves live in `agent.wire`."""

from __future__ import annotations

from agent.catalog import PROVIDERS
from agent.errors import ConfigurationError
from agent.wire.anthropic import AnthropicCodec
from agent.wire.base import Codec
from agent.wire.gemini import GeminiCodec
from agent.wire.openai_chat import OpenAICodec
from agent.wire.openai_responses import ResponsesCodec

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
