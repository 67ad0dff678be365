"""Cross-format translation, mapping by mapping: a caller speaks one format, an agent of
another answers, and the fake provider records what it received. Each test names the
mapping it tries. Routes: gpt (OpenAI), claude (Anthropic), gemini (Gemini), and
default (OpenAI, then Anthropic).

The tables these tests check live one per format, beside the format's codec
(`agent/wire/{openai_chat,anthropic,gemini}.py`); what a format cannot carry is in
`agent/wire/carry.py`."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import pytest
import pytest_asyncio
from agent_sidecar import Sidecar
from conftest import SidecarFactory
from fakes import Fail, FakeProvider, Reply
from sidecar_support import agent_spec, document, fast_route

USER: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
OPENAI_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather in a city", "parameters": SCHEMA},
}
ANTHROPIC_TOOL = {"name": "get_weather", "description": "Weather in a city", "input_schema": SCHEMA}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
PDF = "JVBERi0xLjQKJcfsj6IKMSAwIG9iago8PC9UeXBlL0NhdGFsb2c+PgplbmRvYmoKdHJhaWxlcgo8PC9Sb290IDEgMCBSPj4KJSVFT0YK"


@pytest_asyncio.fixture
async def sidecar(
    sidecar_factory: SidecarFactory,
    fake_openai: FakeProvider,
    fake_anthropic: FakeProvider,
    fake_gemini: FakeProvider,
) -> Sidecar:
    return await sidecar_factory(
        document(
            [
                agent_spec(fake_openai, "gpt"),
                agent_spec(fake_anthropic, "claude"),
                agent_spec(fake_gemini, "gemini"),
            ],
            [
                fast_route("gpt", ["gpt"]),
                fast_route("claude", ["claude"]),
                fast_route("gemini", ["gemini"]),
                fast_route("default", ["gpt", "claude"]),
            ],
        )
    )


@pytest_asyncio.fixture
async def http(sidecar: Sidecar) -> Any:
    async with httpx.AsyncClient(base_url=sidecar.app_url, timeout=30) as client:
        yield client


async def chat(http: httpx.AsyncClient, route: str, **body: Any) -> httpx.Response:
    """An OpenAI-format call; the answer must be a 200."""
    answer = await http.post("/v1/chat/completions", json={"model": route, **body})
    assert answer.status_code == 200, answer.text
    return answer


async def messages(http: httpx.AsyncClient, route: str, **body: Any) -> httpx.Response:
    """An Anthropic-format call; the answer must be a 200."""
    body = {"model": route, "max_tokens": 64, **body}
    answer = await http.post("/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"})
    assert answer.status_code == 200, answer.text
    return answer


def answered_with(body: dict[str, Any]) -> Fail:
    """A provider answer given whole: a 200 with exactly `body` (what the scripted
    replies never send: cache and reasoning counts, a provider's own id)."""
    return Fail(200, body=body)


# ---- tool_choice and parallel tool calls --------------------------------------------------

OPENAI_CHOICES: list[tuple[Any, dict[str, Any], dict[str, Any]]] = [
    # OpenAI's tool_choice, what Anthropic gets, what Gemini gets
    ("auto", {"type": "auto"}, {"mode": "AUTO"}),
    ("none", {"type": "none"}, {"mode": "NONE"}),
    ("required", {"type": "any"}, {"mode": "ANY"}),
    (
        {"type": "function", "function": {"name": "get_weather"}},
        {"type": "tool", "name": "get_weather"},
        {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
    ),
]


@pytest.mark.parametrize(("choice", "claude", "gemini"), OPENAI_CHOICES)
async def test_openai_tool_choice_reaches_claude_and_gemini(
    http: httpx.AsyncClient,
    fake_anthropic: FakeProvider,
    fake_gemini: FakeProvider,
    choice: Any,
    claude: dict[str, Any],
    gemini: dict[str, Any],
) -> None:
    for route in ("claude", "gemini"):
        answer = await chat(http, route, messages=USER, tools=[OPENAI_TOOL], tool_choice=choice)
        assert "x-agent-ignored-fields" not in answer.headers
    sent = fake_anthropic.last_request.json
    assert sent["tool_choice"] == claude
    assert [t["name"] for t in sent["tools"]] == ["get_weather"]  # offered, even with "none"
    sent = fake_gemini.last_request.json
    assert sent["toolConfig"] == {"functionCallingConfig": gemini}


ANTHROPIC_CHOICES: list[tuple[dict[str, Any], Any, dict[str, Any]]] = [
    # Anthropic's tool_choice, what OpenAI gets, what Gemini gets
    ({"type": "auto"}, "auto", {"mode": "AUTO"}),
    ({"type": "none"}, "none", {"mode": "NONE"}),
    ({"type": "any"}, "required", {"mode": "ANY"}),
    (
        {"type": "tool", "name": "get_weather"},
        {"type": "function", "function": {"name": "get_weather"}},
        {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
    ),
]


@pytest.mark.parametrize(("choice", "gpt", "gemini"), ANTHROPIC_CHOICES)
async def test_anthropic_tool_choice_reaches_openai_and_gemini(
    http: httpx.AsyncClient,
    fake_openai: FakeProvider,
    fake_gemini: FakeProvider,
    choice: dict[str, Any],
    gpt: Any,
    gemini: dict[str, Any],
) -> None:
    for route in ("gpt", "gemini"):
        answer = await messages(
            http, route, messages=USER, tools=[ANTHROPIC_TOOL], tool_choice=choice
        )
        assert "x-agent-ignored-fields" not in answer.headers
    sent = fake_openai.last_request.json
    assert sent["tool_choice"] == gpt and "parallel_tool_calls" not in sent
    assert fake_gemini.last_request.json["toolConfig"] == {"functionCallingConfig": gemini}


async def test_parallel_tool_calls_both_ways_and_named_where_gemini_cannot(
    http: httpx.AsyncClient,
    fake_openai: FakeProvider,
    fake_anthropic: FakeProvider,
    fake_gemini: FakeProvider,
) -> None:
    # OpenAI's parallel_tool_calls=false is Anthropic's disable_parallel_tool_use.
    await chat(http, "claude", messages=USER, tools=[OPENAI_TOOL], parallel_tool_calls=False)
    assert fake_anthropic.last_request.json["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }
    # ... and back, beside a forced tool.
    forced = {"type": "any", "disable_parallel_tool_use": True}
    await messages(http, "gpt", messages=USER, tools=[ANTHROPIC_TOOL], tool_choice=forced)
    sent = fake_openai.last_request.json
    assert (sent["tool_choice"], sent["parallel_tool_calls"]) == ("required", False)
    # Gemini has no such switch: the caller is told, and the rest still goes.
    answer = await chat(
        http, "gemini", messages=USER, tools=[OPENAI_TOOL], parallel_tool_calls=False
    )
    assert answer.headers["x-agent-ignored-fields"] == "parallel_tool_calls"
    assert "functionDeclarations" in fake_gemini.last_request.json["tools"][0]


# ---- structured output --------------------------------------------------------------------


async def test_openai_json_schema_and_json_object_reach_gemini(
    http: httpx.AsyncClient, fake_gemini: FakeProvider
) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}}
    await chat(http, "gemini", messages=USER, response_format=fmt)
    config = fake_gemini.last_request.json["generationConfig"]
    assert config == {"responseMimeType": "application/json", "responseJsonSchema": SCHEMA}
    answer = await chat(http, "gemini", messages=USER, response_format={"type": "json_object"})
    assert fake_gemini.last_request.json["generationConfig"] == {
        "responseMimeType": "application/json"
    }
    assert "x-agent-ignored-fields" not in answer.headers


async def test_openai_json_object_reaches_claude_as_a_forced_object_tool(
    http: httpx.AsyncClient, fake_anthropic: FakeProvider
) -> None:
    fake_anthropic.script(
        Reply(tool_calls=[{"name": "structured_output", "arguments": {"city": "Paris"}}])
    )
    answer = await chat(http, "claude", messages=USER, response_format={"type": "json_object"})
    sent = fake_anthropic.last_request.json
    assert sent["tool_choice"] == {"type": "tool", "name": "structured_output"}
    assert sent["tools"][0]["input_schema"] == {"type": "object"}
    body = answer.json()
    assert body["choices"][0]["message"]["content"] == '{"city":"Paris"}'
    assert body["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    "field",
    [
        {"output_format": {"type": "json_schema", "schema": SCHEMA}},
        {"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}},
    ],
    ids=["output_format", "output_config"],
)
async def test_anthropic_structured_output_reaches_openai_and_gemini(
    http: httpx.AsyncClient,
    fake_openai: FakeProvider,
    fake_gemini: FakeProvider,
    field: dict[str, Any],
) -> None:
    fake_openai.script(Reply(text='{"city": "Paris"}'))
    answer = await messages(http, "gpt", messages=USER, **field)
    assert fake_openai.last_request.json["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": SCHEMA, "strict": True},
    }
    assert answer.json()["content"] == [{"type": "text", "text": '{"city": "Paris"}'}]
    assert "x-agent-ignored-fields" not in answer.headers
    await messages(http, "gemini", messages=USER, **field)
    assert fake_gemini.last_request.json["generationConfig"]["responseJsonSchema"] == SCHEMA


async def test_output_config_keeps_its_other_members_for_claude_and_names_them_elsewhere(
    http: httpx.AsyncClient, fake_openai: FakeProvider
) -> None:
    config = {"effort": "low", "format": {"type": "json_schema", "schema": SCHEMA}}
    answer = await messages(http, "gpt", messages=USER, output_config=config)
    assert answer.headers["x-agent-ignored-fields"] == "output_config"
    assert fake_openai.last_request.json["response_format"]["type"] == "json_schema"


# ---- content parts ------------------------------------------------------------------------


async def test_images_by_url_and_inline_both_ways(
    http: httpx.AsyncClient,
    fake_openai: FakeProvider,
    fake_anthropic: FakeProvider,
    fake_gemini: FakeProvider,
) -> None:
    url = "https://example.com/cat.jpg"
    parts = [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    await chat(http, "claude", messages=[{"role": "user", "content": parts}])
    assert fake_anthropic.last_request.json["messages"][0]["content"] == [
        {"type": "text", "text": "Compare"},
        {"type": "image", "source": {"type": "url", "url": url}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
    ]
    await chat(http, "gemini", messages=[{"role": "user", "content": parts}])
    assert fake_gemini.last_request.json["contents"][0]["parts"] == [
        {"text": "Compare"},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": url}},  # the URL's type
        {"inlineData": {"mimeType": "image/png", "data": PNG}},
    ]
    blocks = [
        {"type": "image", "source": {"type": "url", "url": url}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
    ]
    await messages(http, "gpt", messages=[{"role": "user", "content": blocks}])
    assert fake_openai.last_request.json["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]


async def test_documents_both_ways_and_what_a_format_cannot_take_is_named(
    http: httpx.AsyncClient,
    fake_openai: FakeProvider,
    fake_anthropic: FakeProvider,
    fake_gemini: FakeProvider,
) -> None:
    # Anthropic document blocks (inline PDF, plain text, by URL) to OpenAI and Gemini.
    blocks = [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
            "title": "report.pdf",
        },
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Hi"}},
        {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}},
        {"type": "text", "text": "Summarize"},
    ]
    answer = await messages(http, "gpt", messages=[{"role": "user", "content": blocks}])
    assert fake_openai.last_request.json["messages"][0]["content"] == [
        {
            "type": "file",
            "file": {"file_data": f"data:application/pdf;base64,{PDF}", "filename": "report.pdf"},
        },
        {"type": "text", "text": "Hi"},
        {"type": "text", "text": "Summarize"},
    ]
    # Chat Completions takes no file by URL: named, not sent, no 400.
    assert answer.headers["x-agent-ignored-fields"] == "document_url"
    answer = await messages(http, "gemini", messages=[{"role": "user", "content": blocks}])
    assert fake_gemini.last_request.json["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "application/pdf", "data": PDF}},
        {"text": "Hi"},
        {"fileData": {"mimeType": "application/pdf", "fileUri": "https://example.com/a.pdf"}},
        {"text": "Summarize"},
    ]
    assert "x-agent-ignored-fields" not in answer.headers

    # OpenAI file parts to Claude: document blocks (a text file as its text: Claude
    # takes inline documents as PDF only).
    file = {"file_data": f"data:application/pdf;base64,{PDF}", "filename": "report.pdf"}
    notes = {"file_data": "data:text/plain;base64,SGVsbG8=", "filename": "notes.txt"}
    parts = [{"type": "file", "file": file}, {"type": "file", "file": notes}]
    await chat(http, "claude", messages=[{"role": "user", "content": parts}])
    assert fake_anthropic.last_request.json["messages"][0]["content"] == [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
            "title": "report.pdf",
        },
        {
            "type": "document",
            "source": {"type": "text", "media_type": "text/plain", "data": "Hello"},
            "title": "notes.txt",
        },
    ]


async def test_stored_files_pass_on_their_own_format_and_are_named_elsewhere(
    http: httpx.AsyncClient, fake_openai: FakeProvider, fake_anthropic: FakeProvider
) -> None:
    # A file_id names a file stored at OpenAI: the OpenAI route relays it (no 400), the
    # Claude route leaves it out and says so.
    parts = [{"type": "file", "file": {"file_id": "file-abc"}}, {"type": "text", "text": "Read"}]
    user = [{"role": "user", "content": parts}]
    answer = await chat(http, "gpt", messages=user)
    assert fake_openai.last_request.json["messages"] == user
    assert "x-agent-ignored-fields" not in answer.headers
    answer = await chat(http, "claude", messages=user)
    assert fake_anthropic.last_request.json["messages"][0]["content"] == [
        {"type": "text", "text": "Read"}
    ]
    assert answer.headers["x-agent-ignored-fields"] == "file_id"


async def test_audio_reaches_gemini_and_is_named_for_claude(
    http: httpx.AsyncClient, fake_anthropic: FakeProvider, fake_gemini: FakeProvider
) -> None:
    parts = [
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "text", "text": "Transcribe"},
    ]
    answer = await chat(http, "gemini", messages=[{"role": "user", "content": parts}])
    assert fake_gemini.last_request.json["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
        {"text": "Transcribe"},
    ]
    assert "x-agent-ignored-fields" not in answer.headers
    answer = await chat(http, "claude", messages=[{"role": "user", "content": parts}])
    assert fake_anthropic.last_request.json["messages"][0]["content"] == [
        {"type": "text", "text": "Transcribe"}
    ]
    assert answer.headers["x-agent-ignored-fields"] == "input_audio"


async def test_server_tool_blocks_relay_to_claude_and_are_named_for_openai(
    http: httpx.AsyncClient, fake_openai: FakeProvider, fake_anthropic: FakeProvider
) -> None:
    # Claude's own web search: a server tool and its blocks in the history.
    tools = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 1}]
    history = [
        *USER,
        {
            "role": "assistant",
            "content": [
                {
                    "type": "server_tool_use",
                    "id": "srvtoolu_1",
                    "name": "web_search",
                    "input": {"query": "Paris weather"},
                },
                {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
                {"type": "text", "text": "Sunny."},
            ],
        },
        {"role": "user", "content": "Thanks"},
    ]
    answer = await messages(http, "claude", messages=history, tools=tools)
    assert fake_anthropic.last_request.json["messages"] == history
    assert "x-agent-ignored-fields" not in answer.headers
    answer = await messages(http, "gpt", messages=history, tools=tools)
    sent = fake_openai.last_request.json
    assert sent["messages"][1] == {"role": "assistant", "content": "Sunny."}
    assert "tools" not in sent
    assert answer.headers["x-agent-ignored-fields"] == (
        "server_tool_use,tools.web_search_20250305,web_search_tool_result"
    )


async def test_the_function_role_becomes_a_tool_call_and_its_result(
    http: httpx.AsyncClient, fake_anthropic: FakeProvider
) -> None:
    history = [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {"role": "function", "name": "get_weather", "content": "Sunny"},
    ]
    await chat(http, "claude", messages=history, tools=[OPENAI_TOOL])
    call, result = fake_anthropic.last_request.json["messages"][1:]
    assert call["content"] == [
        {
            "type": "tool_use",
            "id": call["content"][0]["id"],
            "name": "get_weather",
            "input": {"city": "Paris"},
        }
    ]
    assert result["content"] == [
        {"type": "tool_result", "tool_use_id": call["content"][0]["id"], "content": "Sunny"}
    ]


async def test_the_older_functions_and_function_call_fields_reach_claude(
    http: httpx.AsyncClient, fake_anthropic: FakeProvider
) -> None:
    function = OPENAI_TOOL["function"]
    await chat(
        http, "claude", messages=USER, functions=[function], function_call={"name": "get_weather"}
    )
    sent = fake_anthropic.last_request.json
    assert [t["name"] for t in sent["tools"]] == ["get_weather"]
    assert sent["tool_choice"] == {"type": "tool", "name": "get_weather"}


async def test_what_only_openai_has_is_relayed_to_it_and_named_elsewhere(
    http: httpx.AsyncClient, fake_openai: FakeProvider, fake_anthropic: FakeProvider
) -> None:
    # A kind of part and a kind of tool newer than the sidecar (or OpenAI's own): no 400,
    # the OpenAI route gets them as sent, the Claude route without them, named.
    parts = [{"type": "input_video", "video": {"url": "v.mp4"}}, {"type": "text", "text": "Hi"}]
    custom = {"type": "custom", "custom": {"name": "grep"}}
    body = {"messages": [{"role": "user", "content": parts}], "tools": [custom, OPENAI_TOOL]}
    answer = await chat(http, "gpt", **body)
    assert fake_openai.last_request.json["messages"][0]["content"] == parts
    assert fake_openai.last_request.json["tools"] == [custom, OPENAI_TOOL]
    answer = await chat(http, "claude", **body)
    sent = fake_anthropic.last_request.json
    assert sent["messages"][0]["content"] == [{"type": "text", "text": "Hi"}]
    assert [t["name"] for t in sent["tools"]] == ["get_weather"]
    assert answer.headers["x-agent-ignored-fields"] == "input_video,tools.custom"


async def test_an_earlier_refusal_is_the_assistant_s_words_to_another_model(
    http: httpx.AsyncClient, fake_anthropic: FakeProvider
) -> None:
    history = [
        *USER,
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot."}]},
        {"role": "user", "content": "Please?"},
    ]
    await chat(http, "claude", messages=history)
    assert fake_anthropic.last_request.json["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "I cannot."}],
    }


async def test_system_prompts_in_list_form_both_ways(
    http: httpx.AsyncClient,
    fake_openai: FakeProvider,
    fake_anthropic: FakeProvider,
    fake_gemini: FakeProvider,
) -> None:
    system = [{"type": "text", "text": "Be terse."}, {"type": "text", "text": "Use French."}]
    await chat(http, "claude", messages=[{"role": "system", "content": system}, *USER])
    assert fake_anthropic.last_request.json["system"] == "Be terse.Use French."
    cached = [{**b, "cache_control": {"type": "ephemeral"}} for b in system]
    await messages(http, "gpt", system=cached, messages=USER)
    assert fake_openai.last_request.json["messages"][0] == {
        "role": "system",
        "content": "Be terse.\n\nUse French.",
    }
    await messages(http, "gemini", system=cached, messages=USER)
    assert fake_gemini.last_request.json["systemInstruction"] == {
        "parts": [{"text": "Be terse.\n\nUse French."}]
    }


async def test_stop_sequences_both_ways(
    http: httpx.AsyncClient,
    fake_openai: FakeProvider,
    fake_anthropic: FakeProvider,
    fake_gemini: FakeProvider,
) -> None:
    await chat(http, "claude", messages=USER, stop="END")
    assert fake_anthropic.last_request.json["stop_sequences"] == ["END"]
    await chat(http, "gemini", messages=USER, stop=["END", "STOP"])
    assert fake_gemini.last_request.json["generationConfig"]["stopSequences"] == ["END", "STOP"]
    await messages(http, "gpt", messages=USER, stop_sequences=["END"])
    assert fake_openai.last_request.json["stop"] == ["END"]


async def test_more_than_four_stop_sequences_reach_openai_as_its_first_four(
    sidecar: Sidecar, fake_openai: FakeProvider
) -> None:
    """Tried: Anthropic's SDK with six stop_sequences on an OpenAI route. OpenAI refuses
    more than four (a 400): it gets the first four, and the caller is told the rest was
    left out."""
    client = anthropic.AsyncAnthropic(base_url=sidecar.app_url, api_key="unused", max_retries=0)
    stops = ["ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX"]
    raw = await client.messages.with_raw_response.create(
        model="gpt", max_tokens=64, messages=USER, stop_sequences=stops
    )
    assert (await raw.parse()).content[0].type == "text"
    assert fake_openai.last_request.json["stop"] == stops[:4]
    assert raw.headers["x-agent-ignored-fields"] == "stop[4:]"


# ---- answers: usage, finish reasons, ids --------------------------------------------------


async def test_cache_counts_from_claude_reach_an_openai_caller(
    http: httpx.AsyncClient, fake_anthropic: FakeProvider
) -> None:
    fake_anthropic.script(
        answered_with(
            {
                "id": "msg_upstream",
                "type": "message",
                "role": "assistant",
                "model": "claude-haiku-4-5",
                "content": [{"type": "text", "text": "Sunny."}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 10,
                    "cache_creation_input_tokens": 100,
                    "cache_read_input_tokens": 1000,
                    "output_tokens": 5,
                },
            }
        )
    )
    answer = await chat(http, "claude", messages=USER)
    # claude-haiku-4-5: $1 a million input tokens, $0.10 read from the cache, $1.25
    # written to it, $5 output: 10 + 100 + 125 + 25 millionths of a dollar.
    assert answer.headers["x-agent-cost-usd"] == "0.00026"
    body = answer.json()
    assert body["usage"] == {
        "prompt_tokens": 1110,  # OpenAI counts cached input in the prompt
        "completion_tokens": 5,
        "total_tokens": 1115,
        "prompt_tokens_details": {"cached_tokens": 1000},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    assert body["id"].startswith("chatcmpl-")  # the sidecar's own id, not Claude's


async def test_cached_and_reasoning_counts_from_openai_and_gemini_reach_an_anthropic_caller(
    http: httpx.AsyncClient, fake_openai: FakeProvider, fake_gemini: FakeProvider
) -> None:
    fake_openai.script(
        answered_with(
            {
                "id": "chatcmpl-upstream",
                "object": "chat.completion",
                "created": 1,
                "model": "gpt-4o-mini",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Sunny."},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": 1200,
                    "completion_tokens": 50,
                    "total_tokens": 1250,
                    "prompt_tokens_details": {"cached_tokens": 1024},
                    "completion_tokens_details": {"reasoning_tokens": 40},
                },
            }
        )
    )
    body = (await messages(http, "gpt", messages=USER)).json()
    assert body["usage"] == {
        "input_tokens": 176,  # Anthropic counts cache reads apart
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 1024,
        "output_tokens": 50,
    }
    assert body["id"].startswith("msg_") and body["id"] != "chatcmpl-upstream"

    fake_gemini.script(
        answered_with(
            {
                "candidates": [
                    {
                        "content": {"role": "model", "parts": [{"text": "Sunny."}]},
                        "finishReason": "STOP",
                    }
                ],
                "usageMetadata": {
                    "promptTokenCount": 300,
                    "cachedContentTokenCount": 200,
                    "candidatesTokenCount": 10,
                    "thoughtsTokenCount": 30,
                },
                "modelVersion": "gemini-2.5-flash",
                "responseId": "gemini-upstream",
            }
        )
    )
    usage = (await chat(http, "gemini", messages=USER)).json()["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 200}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 30}
    assert usage["completion_tokens"] == 40  # thoughts are output too


FINISHES = [
    # the provider, its finish reason, what an OpenAI / an Anthropic caller sees
    ("claude", "max_tokens", "length", None),
    ("claude", "refusal", "content_filter", None),
    ("gemini", "MAX_TOKENS", "length", "max_tokens"),
    ("gemini", "SAFETY", "content_filter", "refusal"),
    ("gpt", "length", None, "max_tokens"),
    ("gpt", "content_filter", None, "refusal"),
]


@pytest.mark.parametrize(("route", "reason", "as_openai", "as_anthropic"), FINISHES)
async def test_finish_reasons_in_the_caller_s_words(
    http: httpx.AsyncClient,
    fake_openai: FakeProvider,
    fake_anthropic: FakeProvider,
    fake_gemini: FakeProvider,
    route: str,
    reason: str,
    as_openai: str | None,
    as_anthropic: str | None,
) -> None:
    fake = {"gpt": fake_openai, "claude": fake_anthropic, "gemini": fake_gemini}[route]
    if as_openai is not None:
        fake.script(Reply(text="Partial", finish_reason=reason))
        body = (await chat(http, route, messages=USER)).json()
        assert body["choices"][0]["finish_reason"] == as_openai
    if as_anthropic is not None:
        fake.script(Reply(text="Partial", finish_reason=reason))
        body = (await messages(http, route, messages=USER)).json()
        assert body["stop_reason"] == as_anthropic


async def test_tool_calls_finish_as_tool_calls_across_formats(
    http: httpx.AsyncClient, fake_anthropic: FakeProvider, fake_openai: FakeProvider
) -> None:
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    fake_anthropic.script(Reply(tool_calls=[call]))
    body = (await chat(http, "claude", messages=USER, tools=[OPENAI_TOOL])).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["arguments"] == '{"city":"Paris"}'
    fake_openai.script(Reply(tool_calls=[call]))
    body = (await messages(http, "gpt", messages=USER, tools=[ANTHROPIC_TOOL])).json()
    assert body["stop_reason"] == "tool_use"
    assert body["content"][0]["input"] == {"city": "Paris"}


async def test_a_translated_stream_has_usage_in_message_start_and_the_count_at_the_end(
    sidecar: Sidecar, fake_openai: FakeProvider
) -> None:
    # Anthropic streams put the input count in message_start; a translated stream knows
    # the provider's count only at its end: an estimate first, the count in message_delta.
    fake_openai.script(Reply(text="Sunny in Paris", usage=(321, 4)))
    client = anthropic.AsyncAnthropic(base_url=sidecar.app_url, api_key="unused", max_retries=0)
    async with client, client.messages.stream(model="gpt", max_tokens=64, messages=USER) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_message()
    start = next(e for e in events if e.type == "message_start")
    assert start.message.usage.input_tokens > 0  # the sidecar's estimate
    assert start.message.id.startswith("msg_")
    assert (final.usage.input_tokens, final.usage.output_tokens) == (321, 4)
    assert final.content[0].text == "Sunny in Paris"  # type: ignore[union-attr]


async def test_an_openai_stream_from_claude_reports_cached_input_in_its_usage_chunk(
    sidecar: Sidecar, fake_anthropic: FakeProvider
) -> None:
    fake_anthropic.script(Reply(text="Sunny", usage=(40, 2)))
    client = openai.AsyncOpenAI(base_url=sidecar.app_url + "/v1", api_key="unused")
    async with client:
        stream = await client.chat.completions.create(
            model="claude", messages=USER, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (40, 2)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert all(c.id.startswith("chatcmpl-") for c in chunks)


# ---- usage of a relayed OpenAI stream -----------------------------------------------------


@pytest.mark.parametrize("asked", [False, True], ids=["caller-did-not-ask", "caller-asked"])
async def test_a_relayed_openai_stream_counts_its_usage_whether_or_not_the_caller_asked(
    sidecar: Sidecar, http: httpx.AsyncClient, fake_openai: FakeProvider, asked: bool
) -> None:
    # Upstream is always asked for usage (the route's tokens and cost need it); a caller
    # who did not ask gets the stream without the usage chunk, as OpenAI would send it.
    fake_openai.script(Reply(text="Sunny in Paris", usage=(321, 4)))
    body: dict[str, Any] = {"model": "gpt", "messages": USER, "stream": True}
    if asked:
        body["stream_options"] = {"include_usage": True}
    answer = await http.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200
    sent = fake_openai.last_request.json
    assert sent["stream_options"] == {"include_usage": True}
    assert (b'"choices":[]' in answer.content) is asked
    assert (b'"prompt_tokens":321' in answer.content) is asked
    assert answer.content.endswith(b"data: [DONE]\n\n")
    async with httpx.AsyncClient(base_url=sidecar.admin_url) as admin:
        metrics = (await admin.get("/metrics")).text
    assert 'agent_sidecar_tokens_total{agent="gpt",route="gpt",type="input"} 321.0' in metrics
    assert 'agent_sidecar_tokens_total{agent="gpt",route="gpt",type="output"} 4.0' in metrics


# ---- reasoning to a chat completions caller -----------------------------------------------


async def test_claude_s_thinking_reaches_a_chat_completions_caller_as_reasoning_content(
    sidecar: Sidecar, fake_anthropic: FakeProvider
) -> None:
    """Tried: the openai SDK on chat completions, answered by Claude with a thinking block
    (chat completions has no place for it in OpenAI's own answers). It comes back as
    `reasoning_content` beside the content, where DeepSeek, vLLM and LiteLLM put it,
    plain and streamed, never dropped; the answer's text is unchanged."""
    fake_anthropic.script(Reply(text="12,231", thinking="27 * 453: 10,800 + 1,350 + 81."))
    client = openai.AsyncOpenAI(base_url=sidecar.app_url + "/v1", api_key="unused")
    async with client:
        answer = await client.chat.completions.create(model="claude", messages=USER)
        message = answer.choices[0].message
        assert message.content == "12,231"
        assert message.model_extra == {"reasoning_content": "27 * 453: 10,800 + 1,350 + 81."}

        fake_anthropic.script(Reply(text="12,231", thinking="Multiply, then add."))
        stream = await client.chat.completions.create(model="claude", messages=USER, stream=True)
        thought, text = [], []
        async for chunk in stream:
            for choice in chunk.choices:
                thought.append((choice.delta.model_extra or {}).get("reasoning_content") or "")
                text.append(choice.delta.content or "")
    assert "".join(thought) == "Multiply, then add."
    assert "".join(text) == "12,231"


async def test_reasoning_content_from_a_compatible_server_reaches_an_anthropic_caller(
    sidecar: Sidecar, fake_openai: FakeProvider
) -> None:
    """Tried: an OpenAI-compatible server that answers with `reasoning_content` (as
    DeepSeek does), asked by the anthropic SDK. The reasoning is read as the engine's and
    comes back as a thinking block before the text, unsigned."""
    fake_openai.script(
        Fail(
            200,
            body={
                "id": "chatcmpl-upstream",
                "object": "chat.completion",
                "created": 1,
                "model": "deepseek-reasoner",
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": "12,231",
                            "reasoning_content": "Multiply, then add.",
                        },
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 9, "completion_tokens": 40, "total_tokens": 49},
            },
        )
    )
    async with anthropic.AsyncAnthropic(base_url=sidecar.app_url, api_key="unused", max_retries=0) as claude:
        answer = await claude.messages.create(model="gpt", max_tokens=64, messages=USER)
    thinking, text = answer.content
    assert thinking.type == "thinking" and thinking.thinking == "Multiply, then add."
    assert text.type == "text" and text.text == "12,231"
