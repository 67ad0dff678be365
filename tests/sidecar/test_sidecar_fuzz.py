"""Fuzzing the app port over a real socket: whatever the body, never a 5xx, never a
traceback, always the caller's format.

Hypothesis generates JSON values, bodies shaped like OpenAI or Anthropic requests with
mistyped fields, and raw bytes; a real sidecar in front of the fake providers answers.
`SIDECAR_FUZZ_EXAMPLES` sets the examples per test (default 200); the run prints how
many requests were sent and how many answers were 5xx (with `-s`).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from agent_sidecar import Settings, Sidecar
from fakes import FakeProvider
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sidecar_support import SERVER_SETTING, agent_spec, document, fast_route

from agent.config import RouterConfig

EXAMPLES = int(os.environ.get("SIDECAR_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
STATUSES: Counter[int] = Counter()
REFUSALS: Counter[str] = Counter()  # the most common 4xx messages, for the printed summary

# ---- the target: a sidecar and fakes on a loop of their own ------------------------------


@pytest.fixture(scope="module")
def app_url() -> Iterator[str]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        async with FakeProvider("openai") as gpt, FakeProvider("anthropic") as claude:
            sidecar = Sidecar(Settings(port=0, admin_port=0, admin_host="127.0.0.1", **SERVER_SETTING))
            config = document(
                [agent_spec(gpt, "gpt"), agent_spec(claude, "claude")],
                [
                    fast_route("gpt", ["gpt"]),
                    fast_route("claude", ["claude"]),
                    fast_route("default", ["gpt", "claude"]),
                ],
            )
            await sidecar.store.push(RouterConfig.model_validate(config))
            await sidecar.start()
            box["url"], box["stop"] = sidecar.app_url, asyncio.Event()
            ready.set()
            await box["stop"].wait()
            await sidecar.stop()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield box["url"]
    loop.call_soon_threadsafe(box["stop"].set)
    thread.join(10)
    loop.close()
    total = sum(STATUSES.values())
    fives = sum(n for code, n in STATUSES.items() if code >= 500)
    print(f"\nsidecar fuzz: {total} requests, {fives} answered 5xx; statuses {dict(STATUSES)}")
    for message, count in REFUSALS.most_common(8):
        print(f"  {count:5d}  {message}")


@pytest.fixture(scope="module")
def client(app_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=app_url, timeout=10) as c:
        yield c


def check(client: httpx.Client, path: str, body: bytes, headers: dict[str, str]) -> None:
    response = client.post(path, content=body, headers=headers)
    STATUSES[response.status_code] += 1
    text = response.text
    assert response.status_code < 500, (path, body[:500], response.status_code, text[:500])
    assert "Traceback" not in text and "internal error" not in text
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        assert response.status_code == 200
        return
    data = response.json()  # never aiohttp's plain-text pages
    if response.status_code >= 400:
        if path == "/v1/messages":
            assert data["type"] == "error" and data["error"]["message"]
        else:
            assert data["error"]["message"]
        REFUSALS[f"{response.status_code} {data['error']['message'][:90]}"] += 1


# ---- strategies -----------------------------------------------------------------------------
# Valid requests with random content reach the engine, the codecs, the fakes and the stream
# encoders; mutated ones (one field replaced by any JSON, or dropped) test the validation.

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=16,
)
routes = st.sampled_from(["gpt", "claude", "default"])
texts = st.text(max_size=40)
ids = st.text("abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=12)
schemas = st.sampled_from(
    [
        {"type": "object", "properties": {}},
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        {
            "type": "object",
            "properties": {
                "n": {"type": "integer"},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
        },
    ]
)
arguments = st.dictionaries(ids, st.one_of(texts, st.integers(), st.booleans()), max_size=3)

openai_parts = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, texts),
    st.sampled_from(
        [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": "https://example.com/dog.png"},
        ]
    ),
)
openai_tool_calls = st.lists(
    st.builds(
        lambda i, n, a: {
            "id": i,
            "type": "function",
            "function": {"name": n, "arguments": json.dumps(a)},
        },
        ids,
        ids,
        arguments,
    ),
    min_size=1,
    max_size=2,
)
openai_messages = st.one_of(
    st.builds(lambda c: {"role": "system", "content": c}, texts),
    st.builds(lambda c: {"role": "developer", "content": c}, texts),
    st.builds(
        lambda c: {"role": "user", "content": c},
        st.one_of(texts, st.lists(openai_parts, min_size=1, max_size=3)),
    ),
    st.builds(lambda c: {"role": "assistant", "content": c}, texts),
    st.builds(
        lambda calls: {"role": "assistant", "content": None, "tool_calls": calls}, openai_tool_calls
    ),
    st.builds(lambda i, c: {"role": "tool", "tool_call_id": i, "content": c}, ids, texts),
)
openai_tools = st.lists(
    st.builds(
        lambda n, d, p: {
            "type": "function",
            "function": {"name": n, "description": d, "parameters": p},
        },
        ids,
        texts,
        schemas,
    ),
    max_size=2,
)
openai_valid = st.fixed_dictionaries(
    {
        "model": routes,
        "messages": st.lists(openai_messages, min_size=1, max_size=4).map(
            lambda ms: [*ms, {"role": "user", "content": "go on"}]
        ),
    },
    optional={
        "stream": st.booleans(),
        "stream_options": st.builds(lambda u: {"include_usage": u}, st.booleans()),
        "temperature": st.floats(0, 2),
        "max_tokens": st.integers(1, 100),
        "max_completion_tokens": st.integers(1, 100),
        "stop": st.one_of(texts, st.lists(texts, max_size=2)),
        "tools": openai_tools,
        "tool_choice": st.sampled_from(["auto", "none", "required"]),
        "response_format": st.one_of(
            st.just({"type": "text"}),
            st.just({"type": "json_object"}),
            st.builds(
                lambda n, sc: {"type": "json_schema", "json_schema": {"name": n, "schema": sc}},
                ids,
                schemas,
            ),
        ),
        "n": st.just(1),
        "metadata": st.dictionaries(ids, texts, max_size=2),
        "seed": st.integers(0, 2**31),
        "top_p": st.floats(0, 1),
        "user": texts,
    },
)

anthropic_blocks = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, texts),
    st.sampled_from(
        [
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
            },
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        ]
    ),
    st.builds(
        lambda i, n, a: {"type": "tool_use", "id": i, "name": n, "input": a}, ids, ids, arguments
    ),
    st.builds(
        lambda i, c, e: {"type": "tool_result", "tool_use_id": i, "content": c, "is_error": e},
        ids,
        st.one_of(
            texts, st.lists(st.builds(lambda t: {"type": "text", "text": t}, texts), max_size=2)
        ),
        st.booleans(),
    ),
)
anthropic_messages = st.builds(
    lambda r, c: {"role": r, "content": c},
    st.sampled_from(["user", "assistant"]),
    st.one_of(texts, st.lists(anthropic_blocks, min_size=1, max_size=3)),
)
anthropic_valid = st.fixed_dictionaries(
    {
        "model": routes,
        "messages": st.lists(anthropic_messages, min_size=1, max_size=4).map(
            lambda ms: [*ms, {"role": "user", "content": "go on"}]
        ),
        "max_tokens": st.integers(1, 100),
    },
    optional={
        "system": st.one_of(
            texts, st.lists(st.builds(lambda t: {"type": "text", "text": t}, texts), max_size=2)
        ),
        "stream": st.booleans(),
        "temperature": st.floats(0, 1),
        "stop_sequences": st.lists(texts, max_size=2),
        "tools": st.lists(
            st.builds(
                lambda n, d, sc: {"name": n, "description": d, "input_schema": sc},
                ids,
                texts,
                schemas,
            ),
            max_size=2,
        ),
        "tool_choice": st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "none"}]),
        "metadata": st.builds(lambda u: {"user_id": u}, ids),
        "top_k": st.integers(1, 50),
    },
)


def mutated(
    valid: st.SearchStrategy[dict[str, Any]], keys: list[str]
) -> st.SearchStrategy[dict[str, Any]]:
    """A valid body with one field replaced by any JSON value, or removed."""

    def mutate(body: dict[str, Any], key: str, value: Any, drop: bool) -> dict[str, Any]:
        out = dict(body)
        if drop:
            out.pop(key, None)
        else:
            out[key] = value
        return out

    return st.builds(mutate, valid, st.sampled_from(keys), json_values, st.booleans())


OPENAI_KEYS = [
    "model",
    "messages",
    "stream",
    "stream_options",
    "temperature",
    "max_tokens",
    "stop",
    "tools",
    "tool_choice",
    "response_format",
    "n",
    "metadata",
]
ANTHROPIC_KEYS = [
    "model",
    "messages",
    "max_tokens",
    "system",
    "stream",
    "temperature",
    "stop_sequences",
    "tools",
    "tool_choice",
    "metadata",
]

ANTHROPIC = {"anthropic-version": "2023-06-01", "content-type": "application/json"}
OPENAI = {"content-type": "application/json"}
CHAT = "/v1/chat/completions"


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


# ---- the fuzz ------------------------------------------------------------------------------


@FUZZ
@given(body=openai_valid)
def test_valid_openai_bodies(client: httpx.Client, body: dict[str, Any]) -> None:
    check(client, "/v1/chat/completions", encode(body), OPENAI)


@FUZZ
@given(body=mutated(openai_valid, OPENAI_KEYS))
def test_mutated_openai_bodies(client: httpx.Client, body: dict[str, Any]) -> None:
    check(client, "/v1/chat/completions", encode(body), OPENAI)


@FUZZ
@given(
    kind_body=st.one_of(
        openai_valid.map(lambda b: ("openai", b)), anthropic_valid.map(lambda b: ("anthropic", b))
    ),
    extra=st.dictionaries(st.text(max_size=20), json_values, min_size=1, max_size=3),
)
def test_unknown_fields_with_any_names(
    client: httpx.Client, kind_body: tuple[str, dict[str, Any]], extra: dict[str, Any]
) -> None:
    """Fields the engine does not model are passed on or named in a header: any name."""
    kind, body = kind_body
    path, headers = ("/v1/messages", ANTHROPIC) if kind == "anthropic" else (CHAT, OPENAI)
    check(client, path, encode({**extra, **body}), headers)


@FUZZ
@given(body=anthropic_valid)
def test_valid_anthropic_bodies(client: httpx.Client, body: dict[str, Any]) -> None:
    check(client, "/v1/messages", encode(body), ANTHROPIC)


@FUZZ
@given(body=mutated(anthropic_valid, ANTHROPIC_KEYS))
def test_mutated_anthropic_bodies(client: httpx.Client, body: dict[str, Any]) -> None:
    check(client, "/v1/messages", encode(body), ANTHROPIC)


@FUZZ
@given(body=json_values, anthropic=st.booleans())
def test_any_json(client: httpx.Client, body: Any, anthropic: bool) -> None:
    if anthropic:
        check(client, "/v1/messages", encode(body), ANTHROPIC)
    else:
        check(client, "/v1/chat/completions", encode(body), OPENAI)


@FUZZ
@given(body=st.binary(max_size=200), anthropic=st.booleans())
def test_any_bytes(client: httpx.Client, body: bytes, anthropic: bool) -> None:
    if anthropic:
        check(client, "/v1/messages", body, ANTHROPIC)
    else:
        check(client, "/v1/chat/completions", body, OPENAI)
