"""codec.error(status, headers, body) on recorded provider error bodies (data/SOURCES.md)."""

from __future__ import annotations

import email.utils
import json
import time

import pytest
from codec_support import data_bytes, data_json

from agent.errors import (
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    ProviderError,
    RateLimitError,
    ServerError,
)
from agent.providers import AnthropicCodec, GeminiCodec, OpenAICodec
from agent.wire.base import retry_after

openai, anthropic, gemini = OpenAICodec(), AnthropicCodec(), GeminiCodec()
CODECS = {"openai": openai, "anthropic": anthropic, "gemini": gemini}


# ---- recorded bodies ---------------------------------------------------------------------


def test_openai_401_invalid_key() -> None:
    err = openai.error(401, {}, data_bytes("openai", "error_401_invalid_api_key.json"))
    assert isinstance(err, AuthenticationError)
    assert err.status == 401
    assert err.message.startswith("Incorrect API key provided: ")
    assert err.body["error"]["code"] == "invalid_api_key"
    assert "(HTTP 401)" in str(err)


def test_openai_429_with_retry_after_ms() -> None:
    err = openai.error(
        429,
        {"retry-after-ms": "1200", "retry-after": "2"},
        data_bytes("openai", "error_429_tokens.json"),
    )
    assert isinstance(err, RateLimitError)
    assert err.retry_after == pytest.approx(1.2)  # the finer header wins
    assert "Request too large for gpt-4o" in err.message
    assert "retry after 1.2s" in str(err)


def test_anthropic_529_overloaded() -> None:
    err = anthropic.error(529, {}, data_bytes("anthropic", "error_529_overloaded.json"))
    assert isinstance(err, OverloadedError)
    assert err.message == "The API is temporarily overloaded."
    assert err.body["request_id"] == "req_011CSHoEeqs5C35K2UUqR7Fy"


def test_anthropic_overloaded_type_wins_over_the_status() -> None:
    # The body says overloaded_error even if a proxy changed the status line.
    err = anthropic.error(500, {}, data_bytes("anthropic", "error_529_overloaded.json"))
    assert isinstance(err, OverloadedError)
    assert err.status == 500


def test_anthropic_429_with_retry_after_seconds() -> None:
    err = anthropic.error(
        429, {"retry-after": "17"}, data_bytes("anthropic", "error_429_rate_limit.json")
    )
    assert isinstance(err, RateLimitError)
    assert err.retry_after == 17.0
    assert (
        err.message
        == "This request would exceed your account's rate limit. Please try again later."
    )


def test_anthropic_401() -> None:
    err = anthropic.error(401, {}, data_bytes("anthropic", "error_401_authentication.json"))
    assert isinstance(err, AuthenticationError)
    assert err.message == "invalid x-api-key"


def test_gemini_429_resource_exhausted() -> None:
    err = gemini.error(429, {}, data_bytes("gemini", "error_429_resource_exhausted.json"))
    assert isinstance(err, RateLimitError)
    assert err.message == "You exceeded your current quota, please check your plan."


def test_gemini_429_retry_delay_from_the_body() -> None:
    err = gemini.error(429, {}, data_bytes("gemini", "error_429_resource_exhausted.json"))
    assert isinstance(err, RateLimitError)
    assert err.retry_after == pytest.approx(34.4)


def test_gemini_503_unavailable_is_overloaded() -> None:
    err = gemini.error(503, {}, data_bytes("gemini", "error_503_unavailable.json"))
    assert isinstance(err, OverloadedError)
    assert err.message.startswith("This model is currently experiencing high demand.")


def test_gemini_unavailable_status_name_wins_over_a_500() -> None:
    err = gemini.error(500, {}, data_bytes("gemini", "error_503_unavailable.json"))
    assert isinstance(err, OverloadedError)


def test_gemini_400_invalid_argument() -> None:
    err = gemini.error(400, {}, data_bytes("gemini", "error_400_invalid_argument.json"))
    assert isinstance(err, BadRequestError)
    assert err.message == "Penalty is not enabled for models/gemini-2.5-flash"


def test_gemini_invalid_api_key_is_an_authentication_error() -> None:
    err = gemini.error(400, {}, data_bytes("gemini", "error_400_api_key_invalid.json"))
    assert isinstance(err, AuthenticationError)


# ---- status mapping ----------------------------------------------------------------------


@pytest.mark.parametrize("wire", sorted(CODECS))
@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (413, BadRequestError),
        (422, BadRequestError),
        (429, RateLimitError),
        (500, ServerError),
        (502, ServerError),
        (503, OverloadedError),
        (529, OverloadedError),
        (418, BadRequestError),
    ],
)
def test_status_mapping_with_a_non_json_body(wire: str, status: int, cls: type) -> None:
    err = CODECS[wire].error(status, {}, b"<html><body>upstream says no</body></html>")
    assert type(err) is cls
    assert err.status == status
    assert err.message == "<html><body>upstream says no</body></html>"
    assert err.body is None


@pytest.mark.parametrize("wire", sorted(CODECS))
def test_empty_body(wire: str) -> None:
    err = CODECS[wire].error(502, {}, b"")
    assert isinstance(err, ServerError)
    assert err.message == "(empty body)"


@pytest.mark.parametrize("wire", sorted(CODECS))
def test_long_non_json_body_is_truncated(wire: str) -> None:
    err = CODECS[wire].error(500, {}, b"x" * 5000)
    assert len(err.message) == 300


@pytest.mark.parametrize(
    ("wire", "body"),
    [
        ("openai", b'{"error": "upstream timeout"}'),
        ("openai", b'{"error": null}'),
        ("gemini", b'{"error": null}'),
        pytest.param("gemini", b'{"error": "upstream timeout"}'),
        pytest.param("anthropic", b'{"error": "upstream timeout"}'),
        pytest.param("anthropic", b'{"error": null}'),
    ],
)
def test_error_field_that_is_not_an_object(wire: str, body: bytes) -> None:
    err = CODECS[wire].error(502, {}, body)
    assert isinstance(err, ServerError)
    assert err.status == 502


# ---- retry-after -------------------------------------------------------------------------


def test_retry_after_seconds_ms_and_precedence() -> None:
    assert retry_after({}) is None
    assert retry_after({"retry-after": "30"}) == 30.0
    assert retry_after({"retry-after": "0.5"}) == 0.5
    assert retry_after({"retry-after": "-3"}) == 0.0
    assert retry_after({"retry-after-ms": "250"}) == 0.25
    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after({"retry-after-ms": "soon", "retry-after": "9"}) == 9.0


def test_retry_after_http_date() -> None:
    future = email.utils.formatdate(time.time() + 120, usegmt=True)
    assert retry_after({"retry-after": future}) == pytest.approx(120, abs=3)
    past = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert retry_after({"retry-after": past}) == 0.0


def test_retry_after_reaches_the_error_through_a_case_insensitive_mapping() -> None:
    import httpx

    headers = httpx.Headers({"Retry-After": "4"})
    err = openai.error(429, headers, data_bytes("openai", "error_429_tokens.json"))
    assert isinstance(err, RateLimitError) and err.retry_after == 4.0


def test_unparseable_retry_after_is_ignored() -> None:
    err = openai.error(429, {"retry-after": "soon"}, data_bytes("openai", "error_429_tokens.json"))
    assert isinstance(err, RateLimitError) and err.retry_after is None


# ---- secrets -----------------------------------------------------------------------------

OPENAI_KEY = "sk-proj-Zx81AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
GOOGLE_KEY = "AIzaSyDUMMYKEY01234567890123456789012"


@pytest.mark.parametrize("wire", sorted(CODECS))
def test_an_echoed_openai_key_never_reaches_the_error(wire: str) -> None:
    # The recorded 401 body (OpenAI masks the key) with an unmasked key, as some
    # OpenAI-compatible servers and proxies echo it back.
    body = data_json("openai", "error_401_invalid_api_key.json")
    body["error"]["message"] = body["error"]["message"].replace(
        "sk-VKMIs***************************************wjh3", OPENAI_KEY
    )
    err = CODECS[wire].error(401, {}, json.dumps(body).encode())
    assert isinstance(err, AuthenticationError)
    for shown in (str(err), repr(err), err.message, json.dumps(err.body)):
        assert OPENAI_KEY not in shown
        assert "sk-proj-Zx81" not in shown
    assert "You can find your API key" in str(err)


def test_an_echoed_google_key_and_bearer_token_never_reach_the_error() -> None:
    body = data_json("gemini", "error_400_invalid_argument.json")
    body["error"]["message"] = f"bad key {GOOGLE_KEY} with Authorization: Bearer abc.def-ghi_jkl"
    err = gemini.error(400, {}, json.dumps(body).encode())
    for shown in (str(err), err.message, json.dumps(err.body)):
        assert GOOGLE_KEY not in shown
        assert "abc.def-ghi_jkl" not in shown


def test_a_key_in_a_non_json_body_is_scrubbed_too() -> None:
    err = anthropic.error(401, {}, f"invalid key {OPENAI_KEY}\n".encode())
    assert OPENAI_KEY not in str(err)
    assert isinstance(err, ProviderError)
