"""The fakes speak the real wire formats: proven with the official SDKs and raw bytes."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import pytest_asyncio
from fakes import (
    CutStream,
    EndWithoutFinish,
    Fail,
    FakeProvider,
    Hang,
    Malformed,
    MalformedEvent,
    Recorded,
    Reply,
    Reset,
    Stall,
    StreamError,
    split_text,
)

# google-genai's aiohttp session class triggers this at import time
pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")

WEATHER_TOOL_OPENAI: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
WEATHER_TOOL_ANTHROPIC: Any = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TOOL_CALL: dict[str, Any] = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
USER: Any = [{"role": "user", "content": "What is the weather in Paris today?"}]
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "What is the weather in Paris today?"}]}]}


_clients: list[openai.AsyncOpenAI | anthropic.AsyncAnthropic] = []


@pytest_asyncio.fixture(autouse=True)
async def _close_sdk_clients() -> AsyncIterator[None]:
    """Close the async SDK clients a test made, on that test's loop."""
    yield
    while _clients:
        await _clients.pop().close()


def oai(fake: FakeProvider, **kw: Any) -> openai.AsyncOpenAI:
    c = openai.AsyncOpenAI(base_url=kw.pop("base_url", fake.base_url), api_key=kw.pop("api_key", "test-key"),
                           max_retries=kw.pop("max_retries", 0), **kw)
    _clients.append(c)
    return c


def ant(fake: FakeProvider, **kw: Any) -> anthropic.AsyncAnthropic:
    c = anthropic.AsyncAnthropic(
        base_url=fake.base_url, api_key=kw.pop("api_key", "test-key"), max_retries=kw.pop("max_retries", 0), **kw
    )
    _clients.append(c)
    return c


def fn_calls(msg: Any) -> list[tuple[str, str]]:
    """(name, arguments) of an OpenAI message's function tool calls."""
    return [(tc.function.name, tc.function.arguments) for tc in msg.tool_calls or []]


def a_text(msg: Any) -> str:
    """The text of an Anthropic message."""
    return "".join(b.text for b in msg.content if b.type == "text")


def err_body(exc: Any) -> Any:
    """The parsed error body of an SDK status error."""
    return exc.body


def sse_frames(raw: bytes, sep: bytes = b"\n\n") -> list[bytes]:
    assert raw.endswith(sep), raw[-40:]
    return raw[: -len(sep)].split(sep)


# ====================================================================== OpenAI
async def test_openai_plain(fake_openai: FakeProvider) -> None:
    fake_openai.script(Reply(text="Bonjour tout le monde", usage=(12, 5)))
    c = oai(fake_openai)
    r = await c.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.choices[0].message.content == "Bonjour tout le monde"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "stop"
    assert r.model == "gpt-4o-mini"
    assert r.usage is not None and (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (12, 5, 17)
    assert r.system_fingerprint and r.system_fingerprint.startswith("fp_")
    # default reply and computed usage (words in the messages / words in the text)
    r2 = await c.chat.completions.create(model="gpt-4o", messages=USER)
    assert r2.choices[0].message.content == "Hello from openai"
    assert r2.usage is not None and (r2.usage.prompt_tokens, r2.usage.completion_tokens) == (7, 3)
    rec = fake_openai.requests[0]
    assert (rec.method, rec.path) == ("POST", "/v1/chat/completions")
    assert rec.headers["authorization"] == "Bearer test-key"
    assert rec.headers["Authorization"] == "Bearer test-key"
    assert rec.json["messages"] == USER and rec.model == "gpt-4o-mini" and not rec.stream
    assert json.loads(rec.raw) == rec.json
    assert r2._request_id is not None and r2._request_id.startswith("req_")


async def test_openai_nonstream_bytes(fake_openai: FakeProvider) -> None:
    async with httpx.AsyncClient() as h:
        resp = await h.post(fake_openai.base_url + "/chat/completions",
                            headers={"Authorization": "Bearer test-key"},
                            json={"model": "gpt-4o-mini", "messages": USER})
    assert resp.headers["content-type"] == "application/json"
    text = resp.text
    # 2-space indented, key order of a real response, no trailing newline
    assert text.startswith('{\n  "id": "chatcmpl-')
    assert '\n  "object": "chat.completion",\n  "created": ' in text
    assert '"refusal": null,\n        "annotations": []\n      },\n      "logprobs": null,\n      "finish_reason": "stop"' in text
    assert text.endswith('"system_fingerprint": "' + resp.json()["system_fingerprint"] + '"\n}')
    assert list(resp.json()) == ["id", "object", "created", "model", "choices", "usage", "service_tier",
                                 "system_fingerprint"]


async def test_openai_stream_include_usage(fake_openai: FakeProvider) -> None:
    reply = Reply(text="The weather in Paris is sunny.", usage=(9, 7))
    fake_openai.script(reply, reply)
    c = oai(fake_openai)
    stream = await c.chat.completions.create(
        model="gpt-4o-mini", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = [ch async for ch in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "The weather in Paris is sunny."
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (9, 7)
    assert len({ch.id for ch in chunks}) == 1
    # same content as the non-stream response
    full = await c.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert full.choices[0].message.content == text
    assert full.usage == chunks[-1].usage


async def test_openai_stream_bytes(fake_openai: FakeProvider) -> None:
    fake_openai.script(Reply(text="a b c"))
    async with httpx.AsyncClient() as h:
        resp = await h.post(fake_openai.base_url + "/chat/completions",
                            headers={"Authorization": "Bearer test-key"},
                            json={"model": "gpt-4o-mini", "messages": USER, "stream": True})
    assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert resp.headers.get("transfer-encoding") == "chunked"
    frames = sse_frames(resp.content)
    assert frames[-1] == b"data: [DONE]"
    assert all(f.startswith(b'data: {"id":"chatcmpl-') for f in frames[:-1])
    first = json.loads(frames[0][6:])
    assert list(first) == ["id", "object", "created", "model", "service_tier", "system_fingerprint", "choices",
                           "obfuscation"]  # no "usage" key without include_usage
    assert first["choices"][0] == {"index": 0, "delta": {"role": "assistant", "content": "", "refusal": None},
                                   "logprobs": None, "finish_reason": None}
    assert [json.loads(f[6:])["choices"][0]["delta"].get("content") for f in frames[1:4]] == ["a", " b", " c"]
    last = json.loads(frames[-2][6:])
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "stop"


async def test_openai_tool_calls(fake_openai: FakeProvider) -> None:
    two = Reply(tool_calls=[TOOL_CALL, {"name": "get_time", "arguments": '{"tz":"Europe/Paris"}'}])
    fake_openai.script(two, two)
    c = oai(fake_openai)
    full = await c.chat.completions.create(model="gpt-4o", messages=USER, tools=[WEATHER_TOOL_OPENAI])
    msg = full.choices[0].message
    assert full.choices[0].finish_reason == "tool_calls"
    assert msg.content is None and msg.tool_calls is not None
    calls = fn_calls(msg)
    assert [name for name, _ in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0][1]) == TOOL_CALL["arguments"]
    assert calls[1][1] == '{"tz":"Europe/Paris"}'
    assert msg.tool_calls[0].id.startswith("call_") and msg.tool_calls[0].id != msg.tool_calls[1].id
    # the SDK's stream helper concatenates the argument deltas by index
    async with c.chat.completions.stream(model="gpt-4o", messages=USER, tools=[WEATHER_TOOL_OPENAI]) as s:
        deltas = [e async for e in s if e.type == "tool_calls.function.arguments.delta"]
        final = await s.get_final_completion()
    assert len(deltas) > 2
    smsg = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert fn_calls(smsg) == calls


async def test_openai_text_and_tool_call_stream(fake_openai: FakeProvider) -> None:
    fake_openai.script(Reply(text="Let me check.", tool_calls=[TOOL_CALL]))
    c = oai(fake_openai)
    async with c.chat.completions.stream(model="gpt-4o", messages=USER) as s:
        final = await s.get_final_completion()
    m = final.choices[0].message
    assert m.content == "Let me check."
    assert json.loads(fn_calls(m)[0][1]) == TOOL_CALL["arguments"]


async def test_openai_errors(fake_openai: FakeProvider) -> None:
    c = oai(fake_openai)
    fake_openai.script(Fail(429, retry_after=7))
    with pytest.raises(openai.RateLimitError) as ei:
        await c.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert ei.value.status_code == 429
    assert ei.value.code == "rate_limit_exceeded" and ei.value.type == "requests"
    assert ei.value.response.headers["retry-after"] == "7"
    assert "Rate limit reached for gpt-4o-mini" in ei.value.message
    assert ei.value.response.text.startswith('{\n    "error": {\n        "message": ')
    assert ei.value.response.text.endswith("\n    }\n}\n")

    for status, exc in [(500, openai.InternalServerError), (503, openai.InternalServerError),
                        (400, openai.BadRequestError), (404, openai.NotFoundError)]:
        fake_openai.script(Fail(status))
        with pytest.raises(exc) as e2:
            await c.chat.completions.create(model="gpt-4o-mini", messages=USER)
        assert e2.value.status_code == status

    bad = oai(fake_openai, api_key="sk-wrong-key-123")
    with pytest.raises(openai.AuthenticationError) as e3:
        await bad.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert e3.value.code == "invalid_api_key"
    assert fake_openai.pending == 0


async def test_openai_retry_after_honoured(fake_openai: FakeProvider) -> None:
    fake_openai.script(Fail(429, retry_after=0.4), Fail(503, retry_after=0.3, retry_after_ms=True))
    c = oai(fake_openai, max_retries=2)
    t0 = time.monotonic()
    r = await c.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert time.monotonic() - t0 >= 0.65
    assert r.choices[0].message.content == "Hello from openai"
    assert [q.header("x-stainless-retry-count") for q in fake_openai.requests] == ["0", "1", "2"]


async def test_openai_mid_stream_error(fake_openai: FakeProvider) -> None:
    fake_openai.script(StreamError(after=2, reply=Reply(text="one two three four")))
    c = oai(fake_openai)
    got: list[str] = []
    stream = await c.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True)
    with pytest.raises(openai.APIError) as ei:
        async for ch in stream:
            if ch.choices and ch.choices[0].delta.content:
                got.append(ch.choices[0].delta.content)
    assert got == ["one", " two"]
    assert "overloaded" in ei.value.message
    # raw: the error is a data frame with an "error" key, and no [DONE]
    fake_openai.script(StreamError(after=1, reply=Reply(text="x y"), error_type="api_error", message="boom"))
    async with httpx.AsyncClient() as h:
        raw = (await h.post(fake_openai.base_url + "/chat/completions", headers={"Authorization": "Bearer test-key"},
                            json={"model": "m", "messages": USER, "stream": True})).content
    frames = sse_frames(raw)
    assert json.loads(frames[-1][6:]) == {"error": {"message": "boom", "type": "server_error", "param": None,
                                                    "code": None}}
    assert b"[DONE]" not in raw


def test_openai_sync_client_thread_mode(fake_openai_sync: FakeProvider) -> None:
    fake_openai_sync.script(Reply(text="from a thread"))
    c = openai.OpenAI(base_url=fake_openai_sync.base_url, api_key="test-key", max_retries=0)
    r = c.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert r.choices[0].message.content == "from a thread"
    s = c.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices) == "Hello from openai"
    assert len(fake_openai_sync.requests) == 2
    # disconnect counted from a sync client closing a slow stream early
    fake_openai_sync.script(Reply(text="a b c d e f g h", chunk_delay=0.2))
    s2 = c.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True)
    next(iter(s2))
    s2.close()
    assert fake_openai_sync.wait_disconnect_sync(5) == 1


# ====================================================================== Anthropic
async def test_anthropic_plain(fake_anthropic: FakeProvider) -> None:
    fake_anthropic.script(Reply(text="Bonjour", usage=(11, 2)))
    c = ant(fake_anthropic)
    m = await c.messages.create(model="claude-haiku-4-5", max_tokens=100, messages=USER,
                                system="Be terse.")
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_")
    assert [b.type for b in m.content] == ["text"] and a_text(m) == "Bonjour"
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    assert (m.usage.input_tokens, m.usage.output_tokens) == (11, 2)
    assert m.model == "claude-haiku-4-5"
    rec = fake_anthropic.requests[0]
    assert rec.path == "/v1/messages"
    # anthropic-sdk-python 2.x sends the api key as `Authorization: Bearer`; older ones as x-api-key
    assert rec.header("x-api-key") == "test-key" or rec.header("authorization") == "Bearer test-key"
    assert rec.header("anthropic-version")
    assert rec.json["system"] == "Be terse."
    assert m._request_id is not None and m._request_id.startswith("req_")


async def test_anthropic_stream_helper(fake_anthropic: FakeProvider) -> None:
    reply = Reply(text="It is sunny in Paris today.", usage=(20, 8))
    fake_anthropic.script(reply, reply)
    c = ant(fake_anthropic)
    async with c.messages.stream(model="claude-haiku-4-5", max_tokens=100, messages=USER) as s:
        pieces = [t async for t in s.text_stream]
        final = await s.get_final_message()
    assert pieces == split_text("It is sunny in Paris today.", None)
    assert a_text(final) == "It is sunny in Paris today."
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (20, 8)
    full = await c.messages.create(model="claude-haiku-4-5", max_tokens=100, messages=USER)
    assert full.model_dump(exclude={"id"}) == final.model_dump(exclude={"id"})
    assert fake_anthropic.requests[0].stream and not fake_anthropic.requests[1].stream


async def test_anthropic_stream_bytes(fake_anthropic: FakeProvider) -> None:
    fake_anthropic.script(Reply(text="Hi there", chunks=2))
    async with httpx.AsyncClient() as h:
        resp = await h.post(fake_anthropic.url + "/v1/messages",
                            headers={"x-api-key": "test-key", "anthropic-version": "2023-06-01"},
                            json={"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": USER, "stream": True})
    assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
    frames = sse_frames(resp.content)
    events = [f.split(b"\n", 1)[0][7:].decode() for f in frames]
    assert events == ["message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta",
                      "content_block_stop", "message_delta", "message_stop"]
    for f in frames:
        ev, data = f.split(b"\n")
        assert ev.startswith(b"event: ") and data.startswith(b"data: ")
        assert json.loads(data[6:])["type"] == ev[7:].decode()
    assert frames[2] == b'event: ping\ndata: {"type": "ping"}'
    assert frames[0].startswith(b'event: message_start\ndata: {"type":"message_start","message":{"model":'
                                b'"claude-sonnet-4-5","id":"msg_01')
    assert frames[-1] == b'event: message_stop\ndata: {"type":"message_stop"}'


async def test_anthropic_tool_use(fake_anthropic: FakeProvider) -> None:
    reply = Reply(text="Checking.", tool_calls=[TOOL_CALL])
    fake_anthropic.script(reply, reply)
    c = ant(fake_anthropic)
    async with c.messages.stream(model="claude-haiku-4-5", max_tokens=100, messages=USER,
                                 tools=[WEATHER_TOOL_ANTHROPIC]) as s:
        json_deltas = [e async for e in s if e.type == "input_json"]
        final = await s.get_final_message()
    assert len(json_deltas) >= 2
    assert final.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["text", "tool_use"]
    tu: Any = final.content[1]
    assert tu.type == "tool_use" and tu.name == "get_weather" and tu.input == TOOL_CALL["arguments"]
    assert tu.id.startswith("toolu_")
    full = await c.messages.create(model="claude-haiku-4-5", max_tokens=100, messages=USER)
    assert full.model_dump()["content"][1]["input"] == TOOL_CALL["arguments"]
    assert full.stop_reason == "tool_use"


async def test_anthropic_errors(fake_anthropic: FakeProvider) -> None:
    c = ant(fake_anthropic)
    fake_anthropic.script(Fail(529))
    with pytest.raises(anthropic.OverloadedError) as ei:
        await c.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=USER)
    assert isinstance(ei.value, anthropic.InternalServerError) and ei.value.status_code == 529
    assert err_body(ei.value)["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    assert err_body(ei.value)["type"] == "error"

    fake_anthropic.script(Fail(429, retry_after=3))
    with pytest.raises(anthropic.RateLimitError) as e2:
        await c.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=USER)
    assert e2.value.response.headers["retry-after"] == "3"
    assert err_body(e2.value)["error"]["type"] == "rate_limit_error"

    fake_anthropic.script(Fail(500))
    with pytest.raises(anthropic.InternalServerError) as e3:
        await c.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=USER)
    assert err_body(e3.value)["error"]["type"] == "api_error"

    with pytest.raises(anthropic.AuthenticationError) as e4:
        await ant(fake_anthropic, api_key="wrong").messages.create(
            model="claude-haiku-4-5", max_tokens=10, messages=USER)
    assert e4.value.body == {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"},
                             "request_id": err_body(e4.value)["request_id"]}


async def test_anthropic_retry_after_honoured(fake_anthropic: FakeProvider) -> None:
    fake_anthropic.script(Fail(529, retry_after=0.5))
    c = ant(fake_anthropic, max_retries=1)
    t0 = time.monotonic()
    m = await c.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=USER)
    assert time.monotonic() - t0 >= 0.45
    assert a_text(m) == "Hello from anthropic"
    assert len(fake_anthropic.requests) == 2


async def test_anthropic_error_event_mid_stream(fake_anthropic: FakeProvider) -> None:
    fake_anthropic.script(StreamError(after=2, reply=Reply(text="one two three")))
    c = ant(fake_anthropic)
    got: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as ei:
        async with c.messages.stream(model="claude-haiku-4-5", max_tokens=10, messages=USER) as s:
            async for t in s.text_stream:
                got.append(t)
    assert got == ["one", " two"]
    assert ei.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    fake_anthropic.script(StreamError(after=1))
    async with httpx.AsyncClient() as h:
        raw = (await h.post(fake_anthropic.url + "/v1/messages", headers={"x-api-key": "test-key", "anthropic-version": "x"},
                            json={"model": "m", "max_tokens": 5, "messages": USER, "stream": True})).content
    assert raw.endswith(b'\n\nevent: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
                        b'"message":"Overloaded"}}\n\n')
    # a non-stream request gets the equivalent HTTP error
    fake_anthropic.script(StreamError(after=1))
    with pytest.raises(anthropic.OverloadedError):
        await c.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=USER)


async def test_anthropic_request_validation(fake_anthropic: FakeProvider) -> None:
    fake_anthropic.script(Reply(text="kept"))
    async with httpx.AsyncClient(base_url=fake_anthropic.url) as h:
        ok = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}
        r = await h.post("/v1/messages", headers=ok, json={"model": "claude-haiku-4-5", "messages": USER})
        assert r.status_code == 400
        body = r.json()
        assert body["type"] == "error" and body["error"] == {"type": "invalid_request_error",
                                                             "message": "max_tokens: Field required"}
        assert body["request_id"].startswith("req_")
        assert r.text.startswith('{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens')
        r = await h.post("/v1/messages", headers={"x-api-key": "test-key"},
                         json={"model": "m", "max_tokens": 5, "messages": USER})
        assert r.status_code == 400
        assert r.json()["error"]["message"] == "anthropic-version: header is required"
        r = await h.post("/v1/messages", headers={"anthropic-version": "2023-06-01"},
                         json={"model": "m", "max_tokens": 5, "messages": USER})
        assert r.status_code == 401
        assert r.json()["error"] == {"type": "authentication_error", "message": "x-api-key header is required"}
        r = await h.post("/v1/messages", headers=ok, content=b"{not json")
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        r = await h.get("/v1/models", headers=ok)
        assert r.json()["data"][0]["id"] == "claude-haiku-4-5"
    # rejected requests are recorded but did not consume the scripted reply
    assert len(fake_anthropic.requests) == 5 and fake_anthropic.pending == 1
    # through the SDK: the missing-field rejection maps to BadRequestError
    with pytest.raises(anthropic.BadRequestError) as ei:
        await ant(fake_anthropic).post("/v1/messages", body={"model": "m", "messages": USER},
                                       cast_to=httpx.Response)
    assert err_body(ei.value)["error"]["message"] == "max_tokens: Field required"


# ====================================================================== Gemini (raw bytes)
# Recorded from the live gemini-2.5-flash `:streamGenerateContent?alt=sse` endpoint (CRLF framed).
REAL_GEMINI_SSE = (
    b'data: {"candidates": [{"content": {"parts": [{"text": "Four."}],"role": "model"},"index": 0}],'
    b'"usageMetadata": {"promptTokenCount": 51,"candidatesTokenCount": 2,"totalTokenCount": 53},'
    b'"modelVersion": "gemini-2.5-flash","responseId": "ag4pavQTzLrj4Q-XkKnZBA"}\r\n\r\n'
    b'data: {"candidates": [{"content": {"role": "model"},"finishReason": "STOP","index": 0}],'
    b'"usageMetadata": {"promptTokenCount": 51,"candidatesTokenCount": 2,"totalTokenCount": 53},'
    b'"modelVersion": "gemini-2.5-flash","responseId": "ag4pavQTzLrj4Q-XkKnZBA"}\r\n\r\n'
)


def _shape(raw: bytes) -> list[bytes]:
    """Frames with values blanked: what is left is framing, key order and separators."""
    out = []
    for f in sse_frames(raw, b"\r\n\r\n"):
        f = re.sub(rb'"(text|modelVersion|responseId)": "[^"]*"', rb'"\1": ""', f)
        f = re.sub(rb'"(promptTokenCount|candidatesTokenCount|totalTokenCount)": \d+', rb'"\1": 0', f)
        f = re.sub(rb',"promptTokensDetails": \[[^\]]*\]', b"", f)
        out.append(f)
    return out


async def test_gemini_stream_bytes_match_real_capture(fake_gemini: FakeProvider) -> None:
    fake_gemini.script(Reply(text="Four."))
    async with httpx.AsyncClient() as h:
        resp = await h.post(fake_gemini.url + "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
                            params={"alt": "sse"}, headers={"x-goog-api-key": "test-key"}, json=GEMINI_BODY)
    assert resp.status_code == 200 and resp.headers["content-type"] == "text/event-stream"
    assert _shape(resp.content) == _shape(REAL_GEMINI_SSE)
    frames = [json.loads(f[6:]) for f in sse_frames(resp.content, b"\r\n\r\n")]
    assert frames[-1]["candidates"][0]["finishReason"] == "STOP"
    assert frames[-1]["usageMetadata"]["candidatesTokenCount"] == 1
    assert len({f["responseId"] for f in frames}) == 1
    assert b"[DONE]" not in resp.content


async def test_gemini_raw_generate_and_errors(fake_gemini: FakeProvider) -> None:
    fake_gemini.script(Reply(text="It is <b>sunny</b>", usage=(8, 4)), Fail(429, retry_after=2))
    async with httpx.AsyncClient(base_url=fake_gemini.url) as h:
        r = await h.post("/v1beta/models/gemini-2.5-pro:generateContent", params={"key": "test-key"}, json=GEMINI_BODY)
        assert r.headers["content-type"] == "application/json; charset=UTF-8"
        assert r.text.startswith('{\n  "candidates": [\n    {\n      "content": {\n        "parts": [\n')
        assert "\\u003cb\\u003e" in r.text  # Google escapes < and >
        body = r.json()
        assert body["candidates"][0]["content"] == {"parts": [{"text": "It is <b>sunny</b>"}], "role": "model"}
        assert body["candidates"][0]["finishReason"] == "STOP"
        assert body["usageMetadata"]["promptTokenCount"] == 8 and body["usageMetadata"]["totalTokenCount"] == 12
        assert body["modelVersion"] == "gemini-2.5-pro"
        r = await h.post("/v1beta/models/gemini-2.5-pro:generateContent", headers={"x-goog-api-key": "test-key"},
                         json=GEMINI_BODY)
        assert r.status_code == 429 and r.headers["retry-after"] == "2"
        err = r.json()["error"]
        assert (err["code"], err["status"]) == (429, "RESOURCE_EXHAUSTED")
        assert err["details"][0] == {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s"}
        r = await h.post("/v1beta/models/gemini-2.5-pro:generateContent", headers={"x-goog-api-key": "bad"},
                         json=GEMINI_BODY)
        assert r.status_code == 400 and r.json()["error"]["message"] == "API key not valid. Please pass a valid API key."
        r = await h.post("/v1beta/models/gemini-2.5-pro:generateContent", json=GEMINI_BODY)
        assert r.status_code == 403 and r.json()["error"]["status"] == "PERMISSION_DENIED"
    recs = fake_gemini.requests
    assert recs[0].query == {"key": "test-key"} and recs[0].model == "gemini-2.5-pro"
    assert recs[1].headers["X-Goog-Api-Key"] == "test-key"


async def test_gemini_json_array_stream_and_count_tokens(fake_gemini: FakeProvider) -> None:
    fake_gemini.script(Reply(text="a b"))
    async with httpx.AsyncClient(base_url=fake_gemini.url, headers={"x-goog-api-key": "test-key"}) as h:
        r = await h.post("/v1beta/models/gemini-2.5-flash:streamGenerateContent", json=GEMINI_BODY)
        chunks = r.json()  # without alt=sse: one streamed JSON array
        assert [c["candidates"][0].get("finishReason") for c in chunks] == [None, None, "STOP"]
        assert "".join(p["text"] for c in chunks for p in c["candidates"][0]["content"].get("parts", [])) == "a b"
        r = await h.post("/v1beta/models/gemini-2.5-flash:countTokens", json=GEMINI_BODY)
        assert r.json()["totalTokens"] == 7
        r = await h.get("/v1beta/models")
        assert r.json()["models"][0]["name"] == "models/gemini-2.5-flash"


# ====================================================================== Gemini (google-genai)
def _genai(fake: FakeProvider, version: str | None = None) -> Any:
    genai = pytest.importorskip("google.genai")
    from google.genai import types

    return genai.Client(api_key="test-key",
                        http_options=types.HttpOptions(base_url=fake.url, api_version=version))


async def test_gemini_sdk_plain_and_stream(fake_gemini: FakeProvider) -> None:
    client = _genai(fake_gemini, "v1beta")
    reply = Reply(text="Sunny and warm in Paris.", usage=(6, 5))
    fake_gemini.script(reply, reply)
    r = await client.aio.models.generate_content(model="gemini-2.5-flash", contents="Weather in Paris?",
                                                 config={"system_instruction": "Be brief."})
    assert r.text == "Sunny and warm in Paris."
    assert r.candidates[0].finish_reason.value == "STOP"
    assert (r.usage_metadata.prompt_token_count, r.usage_metadata.candidates_token_count) == (6, 5)
    assert r.model_version == "gemini-2.5-flash" and r.response_id
    pieces: list[str] = []
    last = None
    async for chunk in await client.aio.models.generate_content_stream(model="gemini-2.5-flash",
                                                                       contents="Weather in Paris?"):
        if chunk.text:
            pieces.append(chunk.text)
        last = chunk
    assert "".join(pieces) == r.text and len(pieces) == 5
    assert last is not None and last.candidates[0].finish_reason.value == "STOP"
    assert last.usage_metadata.total_token_count == 11
    assert fake_gemini.requests[0].path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert fake_gemini.requests[0].json["systemInstruction"]["parts"][0]["text"] == "Be brief."
    assert fake_gemini.requests[1].path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert fake_gemini.requests[1].query == {"alt": "sse"}
    assert fake_gemini.requests[1].headers["x-goog-api-key"] == "test-key"
    await client.aio.aclose()


def test_gemini_sdk_sync_tools_and_errors(fake_gemini_sync: FakeProvider) -> None:
    errors = pytest.importorskip("google.genai.errors")
    client = _genai(fake_gemini_sync)  # default api version (v1)
    fake_gemini_sync.script(Reply(tool_calls=[TOOL_CALL]))
    r = client.models.generate_content(model="gemini-2.5-flash", contents="Weather?")
    assert r.function_calls[0].name == "get_weather" and r.function_calls[0].args == TOOL_CALL["arguments"]
    fake_gemini_sync.script(Fail(429, retry_after=1))
    with pytest.raises(errors.ClientError) as ei:
        client.models.generate_content(model="gemini-2.5-flash", contents="Weather?")
    assert ei.value.code == 429 and ei.value.status == "RESOURCE_EXHAUSTED"
    fake_gemini_sync.script(Fail(503))
    with pytest.raises(errors.ServerError) as e2:
        client.models.generate_content(model="gemini-2.5-flash", contents="Weather?")
    assert e2.value.code == 503 and e2.value.status == "UNAVAILABLE"
    # mid-stream error frame raises in the SDK
    fake_gemini_sync.script(StreamError(after=1, reply=Reply(text="a b c")))
    got: list[str] = []
    with pytest.raises(errors.ServerError) as e3:
        for chunk in client.models.generate_content_stream(model="gemini-2.5-flash", contents="Weather?"):
            got.append(chunk.text)
    assert got == ["a"] and e3.value.code == 503
    assert fake_gemini_sync.requests[0].path == "/v1/models/gemini-2.5-flash:generateContent"
    client.close()


# ====================================================================== failure behaviours (raw)
async def test_reset_closes_without_response(fake_openai: FakeProvider) -> None:
    fake_openai.script(Reset())
    async with httpx.AsyncClient() as h:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)):
            await h.post(fake_openai.base_url + "/chat/completions", headers={"Authorization": "Bearer test-key"},
                         json={"model": "m", "messages": USER})
    fake_openai.script(Reset())
    with pytest.raises(openai.APIConnectionError):
        await oai(fake_openai).chat.completions.create(model="m", messages=USER)
    assert fake_openai.disconnects == 0  # our own reset is not a client disconnect


async def test_hang_until_client_gives_up(fake_anthropic: FakeProvider) -> None:
    fake_anthropic.script(Hang())
    t0 = time.monotonic()
    with pytest.raises(anthropic.APITimeoutError):
        await ant(fake_anthropic, timeout=0.3).messages.create(model="m", max_tokens=5, messages=USER)
    assert time.monotonic() - t0 < 3
    assert await fake_anthropic.wait_disconnect(2) == 1
    # stopping the fake ends a hanging request without counting it
    fake_anthropic.script(Hang())
    async with httpx.AsyncClient() as h:
        task = asyncio.create_task(h.post(fake_anthropic.url + "/v1/messages", headers={
            "x-api-key": "test-key", "anthropic-version": "v"}, json={"model": "m", "max_tokens": 5, "messages": USER}))
        await asyncio.sleep(0.2)
        await fake_anthropic.stop()
        with pytest.raises(httpx.HTTPError):
            await task
    assert fake_anthropic.disconnects == 1


async def test_malformed(fake_openai: FakeProvider) -> None:
    fake_openai.script(Malformed(), Malformed(body=b"<html>bad gateway</html>", status=502, content_type="text/html"))
    async with httpx.AsyncClient() as h:
        r = await h.post(fake_openai.base_url + "/chat/completions", headers={"Authorization": "Bearer test-key"},
                         json={"model": "m", "messages": USER})
        assert r.status_code == 200 and r.content == b'{"choices": ['
        with pytest.raises(json.JSONDecodeError):
            r.json()
    with pytest.raises(openai.InternalServerError):
        await oai(fake_openai).chat.completions.create(model="m", messages=USER)


@pytest.mark.parametrize(
    ("kind", "path", "body", "headers", "sep", "n_before"),
    [
        ("openai", "/v1/chat/completions", {"model": "m", "messages": USER, "stream": True},
         {"Authorization": "Bearer test-key"}, b"\n\n", 1),
        ("anthropic", "/v1/messages", {"model": "m", "max_tokens": 5, "messages": USER, "stream": True},
         {"x-api-key": "test-key", "anthropic-version": "v"}, b"\n\n", 3),
        ("gemini", "/v1beta/models/g:streamGenerateContent?alt=sse", GEMINI_BODY, {"x-goog-api-key": "test-key"},
         b"\r\n\r\n", 0),
    ],
)
async def test_cut_stream(fake_factory: Any, kind: str, path: str, body: dict[str, Any],
                          headers: dict[str, str], sep: bytes, n_before: int) -> None:
    fake: FakeProvider = await fake_factory(kind, api_key=None)
    fake.script(CutStream(after=2, reply=Reply(text="one two three four")))
    received = b""
    async with httpx.AsyncClient() as h:
        async with h.stream("POST", fake.url + path, headers=headers, json=body) as resp:
            assert resp.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):
                async for part in resp.aiter_bytes():
                    received += part
    frames = received.split(sep)
    assert frames[-1] == b""  # cut on a frame boundary...
    assert len(frames) - 1 == n_before + 2  # ...after the preamble and exactly 2 content chunks
    assert b"[DONE]" not in received and b"message_stop" not in received and b"finishReason" not in received
    assert b"three" not in received and b" two" in received
    assert fake.disconnects == 0


async def test_cut_stream_with_sdks(fake_openai: FakeProvider, fake_anthropic: FakeProvider) -> None:
    fake_openai.script(CutStream(after=1))
    stream = await oai(fake_openai).chat.completions.create(model="m", messages=USER, stream=True)
    with pytest.raises(openai.APIConnectionError):
        async for _ in stream:
            pass
    fake_anthropic.script(CutStream(after=1))
    got: list[str] = []
    with pytest.raises(Exception) as ei:
        async with ant(fake_anthropic).messages.stream(model="m", max_tokens=5, messages=USER) as s:
            async for t in s.text_stream:
                got.append(t)
    # the anthropic SDK lets the transport error through mid-stream (openai's wraps it)
    assert isinstance(ei.value, anthropic.APIConnectionError) or type(ei.value).__name__ == "RemoteProtocolError"
    assert got == ["one"]
    # non-stream request: half a body, then the connection drops
    fake_openai.script(CutStream())
    with pytest.raises(openai.APIConnectionError):
        await oai(fake_openai).chat.completions.create(model="m", messages=USER)


async def test_client_cancel_mid_stream_counts_disconnect(fake_openai: FakeProvider) -> None:
    fake_openai.script(Reply(text="one two three four five six seven", chunk_delay=0.2))
    async with httpx.AsyncClient() as h:
        async with h.stream("POST", fake_openai.base_url + "/chat/completions", headers={"Authorization": "Bearer test-key"},
                            json={"model": "m", "messages": USER, "stream": True}) as resp:
            async for _ in resp.aiter_bytes():
                break  # first chunk arrived: give up
    assert await fake_openai.wait_disconnect(3) == 1
    await asyncio.sleep(0.3)
    assert fake_openai.disconnects == 1
    # a slow non-stream reply abandoned by a client timeout is a disconnect too
    fake_openai.script(Reply(text="late", delay=2))
    with pytest.raises(openai.APITimeoutError):
        await oai(fake_openai, timeout=0.3).chat.completions.create(model="m", messages=USER)
    assert await fake_openai.wait_disconnect(3, count=2) == 2
    # a completed stream is not
    await oai(fake_openai).chat.completions.create(model="m", messages=USER)
    assert fake_openai.disconnects == 2


# ====================================================================== scripting API
async def test_scripting(fake_factory: Any) -> None:
    fake: FakeProvider = await fake_factory("openai", api_key=None)
    fake.script_for("gpt-4o", Reply(text="for 4o"))
    fake.script(Reply(text="first"), lambda rec: Reply(text=f"echo {rec.json['messages'][0]['content']}"))
    fake.set_default(Fail(500), model="broken-model")
    c = oai(fake, api_key="anything")

    async def ask(model: str) -> str | None:
        r = await c.chat.completions.create(model=model, messages=USER)
        return r.choices[0].message.content

    assert await ask("gpt-4o-mini") == "first"
    assert await ask("gpt-4o") == "for 4o"
    assert await ask("gpt-4o-mini") == "echo What is the weather in Paris today?"
    assert await ask("gpt-4o") == "Hello from openai"
    with pytest.raises(openai.InternalServerError):
        await ask("broken-model")
    fake.default = Reply(text="new default", model="gpt-4o-2024-08-06")
    r = await c.chat.completions.create(model="gpt-4o", messages=USER)
    assert (r.choices[0].message.content, r.model) == ("new default", "gpt-4o-2024-08-06")
    assert isinstance(fake.last_request, Recorded) and fake.last_request.model == "gpt-4o"
    fake.reset()
    assert fake.requests == [] and fake.pending == 0 and fake.disconnects == 0
    assert await ask("broken-model") == "new default"  # per-model default cleared
    models = await c.models.list()
    assert [m.id for m in models.data] == ["gpt-4o-mini"]
    with pytest.raises(TypeError):
        fake.script("not a behaviour")  # type: ignore[arg-type]


async def test_env_and_kinds(fake_factory: Any) -> None:
    o: FakeProvider = await fake_factory("openai")
    assert o.base_url == o.url + "/v1" and o.url.startswith("http://127.0.0.1:")
    assert o.env() == {"OPENAI_BASE_URL": o.url + "/v1", "OPENAI_API_KEY": "test-key"}
    assert o.env("deepseek") == {"DEEPSEEK_BASE_URL": o.url, "DEEPSEEK_API_KEY": "test-key"}
    assert o.env("groq") == {"GROQ_BASE_URL": o.url + "/openai/v1", "GROQ_API_KEY": "test-key"}
    assert o.env("openrouter") == {"OPENROUTER_BASE_URL": o.url + "/api/v1", "OPENROUTER_API_KEY": "test-key"}
    with pytest.raises(ValueError):
        o.env("anthropic")
    with pytest.raises(ValueError):
        FakeProvider("anthropc")
    a: FakeProvider = await fake_factory("anthropic")
    assert a.base_url == a.url and a.env() == {"ANTHROPIC_BASE_URL": a.url, "ANTHROPIC_API_KEY": "test-key"}
    g: FakeProvider = await fake_factory("gemini")
    assert g.env() == {"GEMINI_BASE_URL": g.url, "GEMINI_API_KEY": "test-key"}
    # an openai fake serves deepseek/groq-style base URLs too
    for base in (o.env("deepseek")["DEEPSEEK_BASE_URL"], o.env("groq")["GROQ_BASE_URL"],
                 o.env("openrouter")["OPENROUTER_BASE_URL"]):
        r = await oai(o, base_url=base).chat.completions.create(model="deepseek-chat", messages=USER)
        assert r.choices[0].message.content == "Hello from openai"
    groq: FakeProvider = await fake_factory("groq")
    assert groq.base_url.endswith("/openai/v1") and groq.env() == {"GROQ_BASE_URL": groq.base_url,
                                                                   "GROQ_API_KEY": "test-key"}


async def test_unknown_path(fake_openai: FakeProvider) -> None:
    async with httpx.AsyncClient() as h:
        r = await h.post(fake_openai.url + "/v1/completions-nope", headers={"Authorization": "Bearer test-key"})
    assert r.status_code == 404 and r.json()["error"]["message"] == "Invalid URL (POST /v1/completions-nope)"


def test_serve_script() -> None:
    script = Path(__file__).resolve().parent.parent / "fakes" / "serve.py"
    proc = subprocess.Popen([sys.executable, str(script), "--kind", "anthropic", "--port", "0", "--text", "pong"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[:2] == ["READY", "anthropic"] and line[2].startswith("http://127.0.0.1:")
        c = anthropic.Anthropic(base_url=line[2], api_key="whatever", max_retries=0)
        m = c.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=USER)
        assert a_text(m) == "pong"
        with c.messages.stream(model="claude-haiku-4-5", max_tokens=5, messages=USER) as s:
            assert s.get_final_text() == "pong"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


# ---- stream faults: each placed before or after the first content -----------------------

_STREAMS = {
    "openai": ("/v1/chat/completions", {"model": "m", "messages": USER, "stream": True},
               {"Authorization": "Bearer test-key"}, b"\n\n"),
    "anthropic": ("/v1/messages", {"model": "m", "max_tokens": 5, "messages": USER, "stream": True},
                  {"x-api-key": "test-key", "anthropic-version": "v"}, b"\n\n"),
    "gemini": ("/v1beta/models/g:streamGenerateContent?alt=sse", GEMINI_BODY,
               {"x-goog-api-key": "test-key"}, b"\r\n\r\n"),
}
_FINISH_MARKS = (b"[DONE]", b"finish_reason\":\"", b"message_stop", b"message_delta", b"finishReason")


async def _raw_stream(fake: FakeProvider, kind: str) -> bytes:
    path, body, headers, _ = _STREAMS[kind]
    async with httpx.AsyncClient() as h:
        return (await h.post(fake.url + path, headers=headers, json=body)).content


@pytest.mark.parametrize("kind", list(_STREAMS))
@pytest.mark.parametrize("after", [0, 2])
async def test_end_without_finish(fake_factory: Any, kind: str, after: int) -> None:
    # A clean HTTP end (no transport error) with `after` content chunks and no finish.
    fake: FakeProvider = await fake_factory(kind, api_key=None)
    fake.script(EndWithoutFinish(after=after, reply=Reply(text="one two three four")))
    raw = await _raw_stream(fake, kind)
    assert not any(mark in raw for mark in _FINISH_MARKS)
    assert (b" two" in raw) == (after == 2) and b"three" not in raw
    assert not raw or raw.endswith(_STREAMS[kind][3])  # whole frames (gemini has none before content)


@pytest.mark.parametrize("kind", list(_STREAMS))
@pytest.mark.parametrize("after", [0, 1])
async def test_malformed_event(fake_factory: Any, kind: str, after: int) -> None:
    # The event after `after` content chunks is framed whole but its JSON is cut in half.
    fake: FakeProvider = await fake_factory(kind, api_key=None)
    fake.script(MalformedEvent(after=after, reply=Reply(text="one two three")))
    raw = await _raw_stream(fake, kind)
    sep = _STREAMS[kind][3]
    frames = [f for f in raw.split(sep) if f]
    datas = [line[6:] for f in frames for line in f.splitlines() if line.startswith(b"data: ")]
    for good in datas[:-1]:
        json.loads(good)
    with pytest.raises(ValueError):
        json.loads(datas[-1])
    assert (b"one" in b"".join(datas[:-1])) == (after == 1)


@pytest.mark.parametrize("kind", list(_STREAMS))
@pytest.mark.parametrize("after", [0, 1])
async def test_stall_keeps_the_connection_silent(fake_factory: Any, kind: str, after: int) -> None:
    # The fake sends `after` content chunks, then nothing: the client's read times out,
    # and its close is what the fake sees.
    fake: FakeProvider = await fake_factory(kind, api_key=None)
    fake.script(Stall(after=after, reply=Reply(text="one two three")))
    path, body, headers, _ = _STREAMS[kind]
    received = b""
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=0.3)) as h:
        async with h.stream("POST", fake.url + path, headers=headers, json=body) as resp:
            with pytest.raises(httpx.ReadTimeout):
                async for part in resp.aiter_bytes():
                    received += part
    assert (b"one" in received) == (after == 1) and b"two" not in received
    assert await fake.wait_disconnect(5) == 1


async def test_stream_faults_through_sdks(fake_openai: FakeProvider, fake_anthropic: FakeProvider) -> None:
    # What an SDK makes of each fault after one content chunk: the end without a finish
    # looks complete to both SDKs (why the sidecar must never produce it); a broken event
    # is a JSON error; a stall is a read timeout.
    fake_openai.script(EndWithoutFinish(after=1))
    stream = await oai(fake_openai).chat.completions.create(model="m", messages=USER, stream=True)
    chunks = [c async for c in stream]
    assert [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content] == ["one"]
    assert all(c.choices[0].finish_reason is None for c in chunks if c.choices)
    fake_anthropic.script(EndWithoutFinish(after=1))
    async with ant(fake_anthropic).messages.stream(model="m", max_tokens=5, messages=USER) as s:
        assert [t async for t in s.text_stream] == ["one"]
    fake_openai.script(MalformedEvent(after=1))
    stream = await oai(fake_openai).chat.completions.create(model="m", messages=USER, stream=True)
    with pytest.raises(json.JSONDecodeError):
        async for _ in stream:
            pass
    fake_anthropic.script(Stall(after=1))
    with pytest.raises(Exception) as ei:
        client = ant(fake_anthropic, timeout=0.5)
        async with client.messages.stream(model="m", max_tokens=5, messages=USER) as s:
            async for _ in s.text_stream:
                pass
    # mid-stream the anthropic SDK lets its transport's error through
    assert isinstance(ei.value, anthropic.APITimeoutError) or type(ei.value).__name__ == "ReadTimeout"
