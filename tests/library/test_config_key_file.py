"""`api_key_file`: an agent's key read from a file (a mounted Secret key)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.config import RouterConfig, parse_config
from agent.errors import ConfigurationError, RoutingError


def _document(fake_url: str, key_file: str, **more: str) -> str:
    extra = "".join(f", {k}: {v}" for k, v in more.items())
    return f"""
agents:
  - {{name: gpt, provider: openai, model: gpt-4o, base_url: "{fake_url}",
     api_key_file: "{key_file}"{extra}}}
routes:
  - {{name: default, agents: [gpt]}}
"""


def test_the_key_in_the_file_is_what_the_provider_receives(
        fake_openai_sync, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_KEY_FILE_DIR", str(tmp_path))
    (tmp_path / "openai").mkdir()
    key = tmp_path / "openai" / "key"
    key.write_text("sk-from-a-file\n")  # as a Secret holds it, with its newline
    fake_openai_sync.api_key = "sk-from-a-file"  # the fake refuses any other key
    config = parse_config(_document(fake_openai_sync.base_url, str(key)))
    assert config.router().run("Hello").provider == "openai"
    assert fake_openai_sync.last_request.headers["authorization"] == "Bearer sk-from-a-file"
    # The document names the file, never the key: nothing to redact, nothing to leak.
    assert "sk-from-a-file" not in repr(config) + str(config.redacted())


def test_an_unreadable_key_file_fails_the_call_not_the_document(
        fake_openai_sync, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("AGENT_KEY_FILE_DIR", str(tmp_path))
    missing = tmp_path / "gone" / "key"  # a Secret that does not exist: no file mounted
    config = parse_config(_document(fake_openai_sync.base_url, str(missing)))
    with caplog.at_level(logging.WARNING, logger="agent.config"):
        router = config.router()
    assert f"its key file {missing} cannot be read" in caplog.text
    with pytest.raises(RoutingError, match="no API key for openai"):
        router.run("Hello")


@pytest.mark.parametrize("path", [
    "/var/run/secrets/kubernetes.io/serviceaccount/token",  # another directory
    "/var/run/agent-router/keys/../../secrets/token",        # out of it with ..
    "keys/openai/key",                                       # relative
])
def test_a_key_file_outside_the_key_directory_is_refused(path: str) -> None:
    with pytest.raises(ConfigurationError, match="not a file under /var/run/agent-router/keys"):
        parse_config(_document("http://127.0.0.1:1/v1", path))


def test_one_source_of_key_at_most() -> None:
    with pytest.raises(ConfigurationError, match="api_key and api_key_file are exclusive"):
        parse_config(_document("http://127.0.0.1:1/v1", "/var/run/agent-router/keys/a/b",
                               api_key="sk-x"))
    ok = RouterConfig.model_validate({"agents": [{
        "name": "a", "provider": "openai", "model": "m",
        "api_key_file": "/var/run/agent-router/keys/openai/key"}], "routes": []})
    assert ok.agents[0].api_key_file == "/var/run/agent-router/keys/openai/key"
