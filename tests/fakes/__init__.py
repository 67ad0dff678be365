"""Fake LLM provider servers speaking the real wire formats byte for byte.

    from fakes import FakeProvider, Reply, Fail

    async with FakeProvider("openai") as fake:          # or "anthropic" / "gemini"
        fake.script(Reply(text="hi", usage=(12, 5)), Fail(429, retry_after=1.5))
        client = AsyncOpenAI(base_url=fake.base_url, api_key="test-key")
        ...
        assert fake.requests[0].headers["authorization"] == "Bearer test-key"

    with FakeProvider("anthropic").running() as fake:   # server on a background thread
        ...

Kinds (`fakes.KINDS`): "openai", "anthropic", "gemini", and OpenAI-compatible ones
("deepseek", "groq", "mistral", "together", "openrouter", "ollama", "vllm",
"openai_compatible": the OpenAI format under their env names and real base paths). `fake.url` is `http://127.0.0.1:PORT`; `fake.base_url` is what an
official SDK takes (OpenAI: `.../v1`); `fake.env()` gives the standard env vars.

Each request takes the next scripted behaviour (per-model queue first, then the general
queue, then the per-model default, then `fake.default`). Requests failing the provider's
own checks (auth, `anthropic-version`, required fields) get the provider's real error and do
not consume a behaviour. A behaviour can also be a callable `(Recorded) -> behaviour`.
"""

from ._common import split_text
from .behaviours import (
    STREAM_FAULTS,
    Behaviour,
    BehaviourLike,
    CutStream,
    EndWithoutFinish,
    Fail,
    Hang,
    Malformed,
    MalformedEvent,
    Reply,
    Reset,
    Stall,
    StreamError,
    StreamFault,
)
from .provider import KINDS, FakeProvider, Recorded, serving

__all__ = [
    "KINDS",
    "STREAM_FAULTS",
    "Behaviour",
    "BehaviourLike",
    "CutStream",
    "EndWithoutFinish",
    "Fail",
    "FakeProvider",
    "Hang",
    "Malformed",
    "MalformedEvent",
    "Recorded",
    "Reply",
    "Reset",
    "Stall",
    "StreamError",
    "StreamFault",
    "serving",
    "split_text",
]
