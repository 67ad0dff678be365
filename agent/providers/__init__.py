"""Wire-format codecs, one per API dialect (sans-I/O)."""

from __future__ import annotations

from agent.catalog import PROVIDERS
from agent.providers.anthropic import AnthropicCodec
from agent.providers.base import Codec
from agent.providers.gemini import GeminiCodec
from agent.providers.openai import OpenAICodec

CODECS: dict[str, Codec] = {
    "openai": OpenAICodec(),
    "anthropic": AnthropicCodec(),
    "gemini": GeminiCodec(),
}


def codec_for(provider: str) -> Codec:
    """The codec for a provider name (callers have already checked it exists)."""
    return CODECS[PROVIDERS[provider].wire]
