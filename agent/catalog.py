"""What we know about providers and models: presets, aliases and capabilities.

A provider preset says which wire format a vendor speaks, where it lives and which
environment variables configure it, following each vendor SDK's own convention
(`OPENAI_BASE_URL` includes `/v1`; `ANTHROPIC_BASE_URL` and `GEMINI_BASE_URL` are
the host only).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Literal

Wire = Literal["openai", "anthropic", "gemini"]


@dataclass(frozen=True, slots=True)
class ProviderPreset:
    name: str
    wire: Wire
    default_base_url: str | None
    key_env: tuple[str, ...]
    base_url_env: str
    key_required: bool = True
    otel_name: str = ""  # gen_ai.provider.name
    price_id: str | None = None  # genai-prices provider id

    def api_key_from_env(self) -> str | None:
        for name in self.key_env:
            if value := os.environ.get(name):
                return value
        return None

    def base_url_from_env(self) -> str | None:
        return os.environ.get(self.base_url_env) or self.default_base_url


def _openai_compatible(
    name: str, base: str | None, key_required: bool = True, price_id: str | None = None
) -> ProviderPreset:
    env = name.upper().replace("-", "_")
    return ProviderPreset(
        name,
        "openai",
        base,
        (f"{env}_API_KEY",),
        f"{env}_BASE_URL",
        key_required,
        otel_name=name,
        price_id=price_id,
    )


PROVIDERS: dict[str, ProviderPreset] = {
    "openai": ProviderPreset(
        "openai",
        "openai",
        "https://api.openai.com/v1",
        ("OPENAI_API_KEY",),
        "OPENAI_BASE_URL",
        otel_name="openai",
        price_id="openai",
    ),
    "anthropic": ProviderPreset(
        "anthropic",
        "anthropic",
        "https://api.anthropic.com",
        ("ANTHROPIC_API_KEY",),
        "ANTHROPIC_BASE_URL",
        otel_name="anthropic",
        price_id="anthropic",
    ),
    "gemini": ProviderPreset(
        "gemini",
        "gemini",
        "https://generativelanguage.googleapis.com",
        ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
        "GEMINI_BASE_URL",
        otel_name="gcp.gemini",
        price_id="google",
    ),
    "deepseek": _openai_compatible("deepseek", "https://api.deepseek.com", price_id="deepseek"),
    "groq": _openai_compatible("groq", "https://api.groq.com/openai/v1", price_id="groq"),
    "mistral": _openai_compatible("mistral", "https://api.mistral.ai/v1", price_id="mistral"),
    "together": _openai_compatible("together", "https://api.together.xyz/v1", price_id="together"),
    "openrouter": _openai_compatible(
        "openrouter", "https://openrouter.ai/api/v1", price_id="openrouter"
    ),
    "ollama": _openai_compatible("ollama", "http://localhost:11434/v1", key_required=False),
    "vllm": _openai_compatible("vllm", "http://localhost:8000/v1", key_required=False),
    # Any other OpenAI-compatible server: give base_url (and api_key if it wants one).
    "openai_compatible": _openai_compatible("openai_compatible", None, key_required=False),
}

# The short names of the docs resolve to real ids; real ids pass through unchanged.
ALIASES: dict[str, str] = {
    "claude-sonnet": "claude-sonnet-4-5",
    "claude-haiku": "claude-haiku-4-5",
    "claude-opus": "claude-opus-4-5",
    "gemini-pro": "gemini-2.5-pro",
    "gemini-flash": "gemini-2.5-flash",
    # Groq retired llama-3.1-70b-versatile; its successor serves the same name's users.
    "llama-3.1-70b": "llama-3.3-70b-versatile",
    "llama-3.3-70b": "llama-3.3-70b-versatile",
    "deepseek-chat": "deepseek-chat",
    "deepseek-reasoner": "deepseek-reasoner",
}


def resolve_model(model: str) -> str:
    return ALIASES.get(model, model)


@dataclass(frozen=True, slots=True)
class Capabilities:
    tools: bool = True
    vision: bool = False
    structured_output: bool = True
    streaming: bool = True
    context_window: int = 128_000

    def with_overrides(self, overrides: dict[str, object] | None) -> Capabilities:
        if not overrides:
            return self
        if unknown := sorted(set(overrides) - set(CAPABILITY_NAMES)):
            from agent.errors import ConfigurationError

            raise ConfigurationError(
                f"unknown capability {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(CAPABILITY_NAMES)}"
            )
        return replace(self, **overrides)  # type: ignore[arg-type]

    @staticmethod
    def any_of(each: Sequence[Capabilities]) -> Capabilities:
        """What a router offers: whatever one of its agents offers."""
        return Capabilities(
            tools=any(c.tools for c in each),
            vision=any(c.vision for c in each),
            structured_output=any(c.structured_output for c in each),
            streaming=any(c.streaming for c in each),
            context_window=max((c.context_window for c in each), default=0),
        )

    def missing_for(
        self, *, tools: bool, images: bool, structured: bool, stream: bool, input_tokens: int
    ) -> list[str]:
        """What this model lacks to serve a request that needs the given features."""
        missing = []
        if tools and not self.tools:
            missing.append("tools")
        if images and not self.vision:
            missing.append("vision")
        if structured and not self.structured_output:
            missing.append("structured output")
        if stream and not self.streaming:
            missing.append("streaming")
        if input_tokens > self.context_window:
            missing.append(f"context window ({input_tokens} > {self.context_window} tokens)")
        return missing


# Longest matching prefix wins; models nobody listed get the conservative default.
_CAPABILITIES: list[tuple[str, Capabilities]] = [
    ("gpt-4o", Capabilities(vision=True, context_window=128_000)),
    ("gpt-4.1", Capabilities(vision=True, context_window=1_047_576)),
    ("gpt-5", Capabilities(vision=True, context_window=400_000)),
    ("o1", Capabilities(vision=True, context_window=200_000)),
    ("o3", Capabilities(vision=True, context_window=200_000)),
    ("o4", Capabilities(vision=True, context_window=200_000)),
    ("gpt-3.5", Capabilities(structured_output=False, context_window=16_385)),
    ("claude", Capabilities(vision=True, context_window=200_000)),
    ("gemini", Capabilities(vision=True, context_window=1_048_576)),
    ("deepseek-chat", Capabilities(context_window=128_000)),
    ("deepseek-reasoner", Capabilities(tools=False, context_window=128_000)),
    ("llama-3.3-70b", Capabilities(context_window=131_072)),
    ("llama-3.1-8b", Capabilities(context_window=131_072)),
]
CAPABILITY_NAMES = tuple(f.name for f in fields(Capabilities))
DEFAULT_CAPABILITIES = Capabilities(tools=False, structured_output=False, context_window=8_192)


def capabilities_for(model: str) -> Capabilities:
    best: tuple[int, Capabilities] = (0, DEFAULT_CAPABILITIES)
    for prefix, caps in _CAPABILITIES:
        if model.startswith(prefix) and len(prefix) > best[0]:
            best = (len(prefix), caps)
    return best[1]
