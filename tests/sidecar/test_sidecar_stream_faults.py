"""Streams that never lie, through the sidecar, with the official SDKs: every way an
upstream stream fails (cut, stall, in-band error event, clean end without its finish,
broken event), before and after the first content, for every way in (`WAYS`) and every
provider format behind it (the caller's own format is relayed as it came). Before the
first content the caller gets the next agent's answer, whole; after it, an error in its
own format that its SDK raises, and never a stream that ends like a complete answer."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import openai
import pytest
from agent_sidecar import Sidecar
from fakes import (
    STREAM_FAULTS,
    CutStream,
    FakeProvider,
    Reply,
    StreamError,
)
from sidecar_support import agent_spec, document, fast_route

TEXT = "one two three four"
FAULTS = STREAM_FAULTS
# The provider formats behind the route; "openai-responses" is an OpenAI agent on the
# Responses API (`api: responses`).
KINDS = ("openai", "anthropic", "gemini", "openai-responses")
BOUND = 15.0  # far below the agents' 10 s timeout plus a fallback: only the stream limits act


@dataclass
class Seen:
    """What a caller's SDK made of a stream."""

    text: str
    error: Exception | None
    finished: bool  # it saw the format's finish (finish_reason / message_stop)
    ids: set[str]  # the answer's ids (chunk ids; message_start's message id)


async def chat(sidecar: Sidecar) -> Seen:
    client = openai.AsyncOpenAI(base_url=sidecar.app_url + "/v1", api_key="unused", max_retries=0)
    text, finished, ids = "", False, set()
    try:
        stream = await client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        async for chunk in stream:
            ids.add(chunk.id)
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finished = finished or choice.finish_reason is not None
    except openai.OpenAIError as exc:
        return Seen(text, exc, finished, ids)
    finally:
        await client.close()
    return Seen(text, None, finished, ids)


async def messages(sidecar: Sidecar) -> Seen:
    client = anthropic.AsyncAnthropic(base_url=sidecar.app_url, api_key="unused", max_retries=0)
    text, finished, ids = "", False, set()
    try:
        async with client.messages.stream(
            model="default", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            async for event in stream:
                if event.type == "message_start":
                    ids.add(event.message.id)
                if event.type == "text":
                    text += event.text
                finished = finished or event.type == "message_stop"
    except anthropic.AnthropicError as exc:
        return Seen(text, exc, finished, ids)
    finally:
        await client.close()
    return Seen(text, None, finished, ids)


class _FailedEvent(Exception):
    """An `error` or `response.failed` event the SDK handed over as an event."""


async def responses(sidecar: Sidecar) -> Seen:
    client = openai.AsyncOpenAI(base_url=sidecar.app_url + "/v1", api_key="unused", max_retries=0)
    text, finished, ids = "", False, set()
    try:
        stream = await client.responses.create(model="default", input="hi", stream=True)
        async for event in stream:
            if event.type in ("response.created", "response.completed"):
                ids.add(event.response.id)
            if event.type == "response.output_text.delta":
                text += event.delta
            if event.type in ("error", "response.failed"):
                raise _FailedEvent(event.model_dump_json())
            finished = finished or event.type == "response.completed"
    except (openai.OpenAIError, _FailedEvent) as exc:
        return Seen(text, exc, finished, ids)
    finally:
        await client.close()
    return Seen(text, None, finished, ids)


# Every way into the sidecar: its SDK's view of one streamed call to the route "default".
WAYS: dict[str, Callable[[Sidecar], Awaitable[Seen]]] = {
    "chat": chat,
    "messages": messages,
    "responses": responses,
}


async def two_agents(
    fake_factory: Any, sidecar_factory: Any, kind: str, **route: Any
) -> tuple[FakeProvider, FakeProvider, Sidecar]:
    api = {"api": "responses"} if kind == "openai-responses" else {}
    fake_kind = "openai" if api else kind
    a, b = await fake_factory(fake_kind), await fake_factory(fake_kind)
    limits = {"first_token_timeout": 2, "stall_timeout": 1, **route}
    doc = document(
        [agent_spec(a, "a", **api), agent_spec(b, "b", **api)],
        [fast_route("default", ["a", "b"], **limits)],
    )
    return a, b, await sidecar_factory(doc)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("way", list(WAYS))
@pytest.mark.parametrize("recovery", ["error", "continue"])
async def test_a_fault_before_the_first_content_falls_back_unseen(
    fake_factory: Any, sidecar_factory: Any, way: str, kind: str, fault: str, recovery: str
) -> None:
    """What was tried: agent a's stream fails before any content; agent b answers. The
    caller's SDK reads b's whole answer, finished, and nothing of a's."""
    a, b, sidecar = await two_agents(
        fake_factory, sidecar_factory, kind, stream_recovery=recovery
    )
    a.script(FAULTS[fault](after=0, reply=Reply(text="from a")))
    b.script(Reply(text=TEXT))
    t0 = time.monotonic()
    seen = await WAYS[way](sidecar)
    assert time.monotonic() - t0 < BOUND
    assert (seen.text, seen.error, seen.finished) == (TEXT, None, True)
    assert len(a.requests) == 1 and len(b.requests) == 1
    if fault == "stall":
        assert await a.wait_disconnect(5) == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("way", list(WAYS))
async def test_a_fault_after_the_first_content_is_an_error_in_band(
    fake_factory: Any, sidecar_factory: Any, way: str, kind: str, fault: str
) -> None:
    """What was tried: agent a sends one word, then fails. The caller's SDK raises an
    error after exactly that word (never a finish), and agent b is not asked."""
    a, b, sidecar = await two_agents(fake_factory, sidecar_factory, kind)
    a.script(FAULTS[fault](after=1, reply=Reply(text=TEXT)))
    t0 = time.monotonic()
    seen = await WAYS[way](sidecar)
    assert time.monotonic() - t0 < BOUND
    assert seen.text == "one"
    assert seen.error is not None and not seen.finished
    assert "api_key" not in str(seen.error) and "test-key" not in str(seen.error)
    assert b.requests == []
    if fault == "stall":
        assert "stall_timeout" in str(seen.error)
        assert await a.wait_disconnect(5) == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("way", list(WAYS))
async def test_recovery_continues_in_one_stream(
    fake_factory: Any, sidecar_factory: Any, way: str, kind: str, fault: str
) -> None:
    """What was tried: on a route with `stream_recovery: continue`, agent a sends "one
    two" and fails; b continues, repeating the last word first. The caller's SDK reads
    one stream (one id), every word once, and a proper finish; the metric counts it."""
    a, b, sidecar = await two_agents(
        fake_factory, sidecar_factory, kind, stream_recovery="continue"
    )
    a.script(FAULTS[fault](after=2, reply=Reply(text=TEXT)))
    b.script(Reply(text=" two three four"))
    t0 = time.monotonic()
    seen = await WAYS[way](sidecar)
    assert time.monotonic() - t0 < BOUND
    assert (seen.text, seen.error, seen.finished) == (TEXT, None, True)
    assert len(seen.ids) == 1
    assert len(b.requests) == 1
    metrics = sidecar.metrics.render().decode()
    assert 'agent_sidecar_stream_continuations_total{agent="b",failed="a",route="default"} 1.0' in metrics
    if fault == "stall":
        assert await a.wait_disconnect(5) == 1


@pytest.mark.parametrize("way", list(WAYS))
async def test_recovery_never_continues_a_tool_call(
    fake_factory: Any, sidecar_factory: Any, way: str
) -> None:
    """What was tried: a stream that breaks off inside a tool call, on a route that
    continues streams: the caller gets the error in band, b is never asked."""
    a, b, sidecar = await two_agents(
        fake_factory, sidecar_factory, "openai", stream_recovery="continue"
    )
    call = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
    a.script(CutStream(after=2, reply=Reply(text="Let me look.", tool_calls=[call], chunks=1)))
    seen = await WAYS[way](sidecar)
    assert seen.error is not None and not seen.finished
    assert b.requests == []


@pytest.mark.parametrize(("kind", "path", "headers"), [
    ("openai", "/v1/chat/completions", {}),
    ("anthropic", "/v1/messages", {"anthropic-version": "2023-06-01"}),
])
async def test_a_providers_error_frame_is_never_relayed_raw(
    fake_factory: Any, sidecar_factory: Any, kind: str, path: str, headers: dict[str, str]
) -> None:
    """What was tried: a caller whose format the agent speaks (its stream relayed byte
    for byte) and an in-band error from the provider after one word. The provider's
    error frame is not passed on: the stream ends with the sidecar's own error, in the
    caller's format, naming the agent that failed."""
    a, _, sidecar = await two_agents(fake_factory, sidecar_factory, kind)
    a.script(StreamError(after=1, reply=Reply(text=TEXT), error_type="api_error", message="boom"))
    body = {"model": "default", "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient() as client:
        raw = (await client.post(sidecar.app_url + path, json=body, headers=headers)).content
    assert b'"one"' in raw or b'"text":"one"' in raw
    last = raw.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    data = json.loads(last.split(b"data: ", 1)[1])
    assert [e["agent"] for e in data["error"]["errors"]] == [f"{kind}/{a.model_default}"]
    assert b"[DONE]" not in raw and b"message_stop" not in raw
