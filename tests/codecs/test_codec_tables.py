"""The per-format tables, codec by codec and without a socket: the engine's tool choice,
parallel calls, structured output, content parts and usage details as each format says
them (the sidecar's tests try the same through real servers)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from codec_support import target

from agent.providers import AnthropicCodec, GeminiCodec, OpenAICodec
from agent.types import (
    AudioPart,
    DocumentPart,
    Message,
    OutputSchema,
    Request,
    TextPart,
    ToolChoice,
    ToolSpec,
)
from agent.wire.base import Codec
from agent.wire.carry import uncarried

TOOL = ToolSpec("get_weather", "Weather", {"type": "object", "properties": {}})
CODECS: dict[str, Codec] = {
    "openai": OpenAICodec(),
    "anthropic": AnthropicCodec(),
    "gemini": GeminiCodec(),
}


def body(wire: str, **changes: Any) -> dict[str, Any]:
    request = Request([Message("user", "Hi")], tools=[TOOL]).copy(**changes)
    built = CODECS[wire].build(request, target(wire))
    return json.loads(built.body)


CHOICES = [
    # the engine's choice, then OpenAI's, Anthropic's and Gemini's words for it
    (ToolChoice("auto"), "auto", {"type": "auto"}, {"mode": "AUTO"}),
    (ToolChoice("none"), "none", {"type": "none"}, {"mode": "NONE"}),
    (ToolChoice("required"), "required", {"type": "any"}, {"mode": "ANY"}),
    (
        ToolChoice("tool", "get_weather"),
        {"type": "function", "function": {"name": "get_weather"}},
        {"type": "tool", "name": "get_weather"},
        {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
    ),
]


@pytest.mark.parametrize(("choice", "openai", "anthropic", "gemini"), CHOICES)
def test_tool_choice_in_each_format(
    choice: ToolChoice, openai: Any, anthropic: dict[str, Any], gemini: dict[str, Any]
) -> None:
    assert body("openai", tool_choice=choice)["tool_choice"] == openai
    assert body("anthropic", tool_choice=choice)["tool_choice"] == anthropic
    assert body("gemini", tool_choice=choice)["toolConfig"] == {"functionCallingConfig": gemini}


def test_no_choice_and_no_tools_send_no_choice() -> None:
    for wire in CODECS:
        sent = body(wire, tools=[], tool_choice=ToolChoice("required"), parallel_tool_calls=False)
        assert not {"tool_choice", "toolConfig", "parallel_tool_calls"} & set(sent)


def test_parallel_calls_switched_off() -> None:
    assert body("openai", parallel_tool_calls=False)["parallel_tool_calls"] is False
    assert body("anthropic", parallel_tool_calls=False)["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }
    forced = body("anthropic", parallel_tool_calls=False, tool_choice=ToolChoice("required"))
    assert forced["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    request = Request([Message("user", "Hi")], tools=[TOOL], parallel_tool_calls=False)
    assert uncarried(request, "gemini") == {"parallel_tool_calls"}
    assert uncarried(request, "openai") == uncarried(request, "anthropic") == set()


def test_any_json_object() -> None:
    schema = OutputSchema("json_object", {"type": "object"}, any_object=True)
    assert body("openai", output_schema=schema)["response_format"] == {"type": "json_object"}
    assert body("gemini", output_schema=schema)["generationConfig"] == {
        "responseMimeType": "application/json"
    }
    sent = body("anthropic", output_schema=schema)
    assert sent["tools"][-1]["input_schema"] == {"type": "object"}


def test_documents_and_audio_where_each_format_takes_them() -> None:
    parts = [
        DocumentPart(data="JVBERi0=", name="a.pdf"),
        DocumentPart(url="https://example.com/a.pdf"),
        AudioPart(data="UklGRg==", format="mp3"),
        TextPart("Read"),
    ]
    request = Request([Message("user", parts)])
    openai = json.loads(CODECS["openai"].build(request, target("openai")).body)
    assert [p["type"] for p in openai["messages"][0]["content"]] == ["file", "input_audio", "text"]
    anthropic = json.loads(CODECS["anthropic"].build(request, target("anthropic")).body)
    assert [b["type"] for b in anthropic["messages"][0]["content"]] == [
        "document",
        "document",
        "text",
    ]
    gemini = json.loads(CODECS["gemini"].build(request, target("gemini")).body)
    assert gemini["contents"][0]["parts"][2] == {
        "inlineData": {"mimeType": "audio/mp3", "data": "UklGRg=="}
    }
    assert uncarried(request, "openai") == {"document_url"}
    assert uncarried(request, "anthropic") == {"input_audio"}
    assert uncarried(request, "gemini") == set()


def test_usage_details_read_from_each_format() -> None:
    openai = (
        CODECS["openai"]
        .parse(
            orjson.dumps(
                {
                    "choices": [{"message": {"content": "x"}, "finish_reason": "stop"}],
                    "usage": {
                        "prompt_tokens": 100,
                        "completion_tokens": 20,
                        "prompt_tokens_details": {"cached_tokens": 64},
                        "completion_tokens_details": {"reasoning_tokens": 16},
                    },
                }
            )
        )
        .usage
    )
    assert (openai.cached_input_tokens, openai.reasoning_tokens) == (64, 16)
    anthropic = (
        CODECS["anthropic"]
        .parse(
            orjson.dumps(
                {
                    "type": "message",
                    "content": [{"type": "text", "text": "x"}],
                    "stop_reason": "end_turn",
                    "usage": {
                        "input_tokens": 4,
                        "cache_read_input_tokens": 64,
                        "cache_creation_input_tokens": 32,
                        "output_tokens": 20,
                    },
                }
            )
        )
        .usage
    )
    assert (anthropic.input_tokens, anthropic.cached_input_tokens) == (100, 64)
    assert anthropic.cache_write_tokens == 32
    gemini = (
        CODECS["gemini"]
        .parse(
            orjson.dumps(
                {
                    "candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "STOP"}],
                    "usageMetadata": {
                        "promptTokenCount": 100,
                        "cachedContentTokenCount": 64,
                        "candidatesTokenCount": 4,
                        "thoughtsTokenCount": 16,
                    },
                }
            )
        )
        .usage
    )
    assert (gemini.output_tokens, gemini.cached_input_tokens, gemini.reasoning_tokens) == (
        20,
        64,
        16,
    )
