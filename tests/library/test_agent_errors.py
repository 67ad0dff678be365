"""Every way a provider fails becomes one typed error; nothing foreign escapes; keys
never show up in reprs, messages or logs."""

from __future__ import annotations

import logging

import httpx
import pytest
from fakes import CutStream, Fail, Hang, Malformed, Reply, Reset, StreamError

from agent import Agent, Middleware
from agent.errors import (
    AgentError,
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    InvalidResponseError,
    NotFoundError,
    OverloadedError,
    RateLimitError,
    ServerError,
)

MODELS = {"openai": "gpt-4o", "anthropic": "claude-sonnet", "gemini": "gemini-flash"}

CASES = [
    (Fail(401), AuthenticationError),
    (Fail(404), NotFoundError),
    (Fail(429, retry_after=1.5), RateLimitError),
    (Fail(500), ServerError),
    (Fail(503), OverloadedError),
    (Reset(), APIConnectionError),
    (Malformed(), InvalidResponseError),
]


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
@pytest.mark.parametrize(("behaviour", "expected"), CASES, ids=lambda c: type(c).__name__)
async def test_failures_map_to_typed_errors(
    fake_factory, use_fake, kind, behaviour, expected
) -> None:
    fake = await fake_factory(kind)
    use_fake(fake)
    fake.script(behaviour)
    with pytest.raises(expected) as info:
        await Agent(provider=kind, model=MODELS[kind]).run_async("Hi")
    err = info.value
    assert err.provider == kind and err.model
    assert not isinstance(err.__cause__, httpx.HTTPError) or isinstance(err, AgentError)
    if isinstance(behaviour, Fail):
        assert err.status == behaviour.status
        assert err.message and "Traceback" not in err.message
    if expected is RateLimitError:
        assert err.retry_after == pytest.approx(1.5, abs=1)


async def test_anthropic_529_is_overloaded(fake_anthropic, use_fake) -> None:
    use_fake(fake_anthropic)
    fake_anthropic.script(Fail(529))
    with pytest.raises(OverloadedError) as info:
        await Agent(provider="anthropic", model="claude-haiku").run_async("Hi")
    assert info.value.status == 529


async def test_a_hang_becomes_a_timeout(fake_openai, use_fake) -> None:
    use_fake(fake_openai)
    fake_openai.script(Hang())
    with pytest.raises(APITimeoutError):
        await Agent(provider="openai", model="gpt-4o", timeout=0.3).run_async("Hi")


def test_connection_refused_is_a_connection_error() -> None:
    agent = Agent(provider="openai", model="gpt-4o", api_key="k", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(APIConnectionError) as info:
        agent.run("Hi")
    assert not isinstance(info.value, httpx.HTTPError)


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
@pytest.mark.parametrize(
    "behaviour",
    [
        CutStream(after=2, reply=Reply(text="a b c d e f")),
        StreamError(after=2, reply=Reply(text="a b c d e f")),
    ],
    ids=["cut", "error-event"],
)
async def test_broken_streams_raise_typed_errors(fake_factory, use_fake, kind, behaviour) -> None:
    fake = await fake_factory(kind)
    use_fake(fake)
    fake.script(behaviour)
    seen = []
    with pytest.raises(AgentError) as info:
        async for event in await Agent(provider=kind, model=MODELS[kind]).stream_async("Hi"):
            seen.append(event)
    assert seen, "content before the break reached the caller"
    assert isinstance(info.value, APIConnectionError | ServerError)


SECRET = "sk-live-THIS-MUST-NEVER-LEAK-1234567890"


def test_keys_never_leak(fake_openai_sync, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    fake_openai_sync.script(Fail(401, message=f"Incorrect API key provided: {SECRET}"))
    errors: list[AgentError] = []

    class Keep(Middleware):
        def on_error(self, request, error):
            errors.append(error)

    agent = Agent(
        provider="openai",
        model="gpt-4o",
        api_key=SECRET,
        base_url=fake_openai_sync.base_url,
        middleware=[Keep()],
    )
    fake_openai_sync.api_key = SECRET
    assert SECRET not in repr(agent) and SECRET not in str(vars(agent).get("name"))
    assert SECRET not in repr(agent.target())
    with pytest.raises(AuthenticationError) as info:
        agent.run("Hi")
    err = info.value
    for text in (str(err), repr(err), err.message, str(err.body), caplog.text, str(errors)):
        assert SECRET not in text
        assert "THIS-MUST-NEVER" not in text
