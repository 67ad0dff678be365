"""The config document: validation with readable errors, redaction, building routers."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import RouterConfig, load_config, parse_config
from agent.errors import ConfigurationError

GOOD = """
version: 3
agents:
  - {name: primary, provider: anthropic, model: claude-sonnet, api_key: sk-ant-very-secret}
  - {name: backup, provider: openai, model: gpt-4o, api_key_env: AGENT_KEY_MY_OPENAI}
routes:
  - name: default
    agents: [primary, backup]
    strategy: fallback
    circuit_breaker: {failures: 3, cooldown: 10}
  - name: smart
    agents: [primary, backup]
    strategy: custom
    rules:
      - {prefer: [primary], reason: coding, input_contains: [code]}
default_route: default
"""


def test_a_good_document_builds_one_router_per_route(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AGENT_KEY_MY_OPENAI", "sk-from-env")
    path = tmp_path / "router.yaml"
    path.write_text(GOOD)
    config = load_config(path)
    assert config.version == 3
    routers = config.build()
    assert set(routers) == {"default", "smart"}
    assert routers["default"].strategy.name == "fallback"
    assert routers["default"].agents[1].target().api_key == "sk-from-env"
    assert routers["smart"].strategy.name == "custom"
    redacted = config.redacted()
    assert redacted["agents"][0]["api_key"] == "***"
    assert "sk-ant-very-secret" not in repr(config) and "sk-ant-very-secret" not in str(redacted)


def test_redacted_hides_header_values_too() -> None:
    config = parse_config(
        GOOD.replace(
            "api_key: sk-ant-very-secret}",
            "api_key: sk-ant-very-secret,"
            " headers: {x-api-key: gw-secret-1, Authorization: Bearer gw-secret-2}}",
        )
    )
    assert config.agents[0].headers["x-api-key"] == "gw-secret-1"
    redacted = config.redacted()
    assert redacted["agents"][0]["headers"] == {"x-api-key": "***", "Authorization": "***"}
    assert "gw-secret" not in str(redacted) and "gw-secret" not in repr(config)
    assert config.document()["agents"][0]["headers"]["x-api-key"] == "gw-secret-1"




BAD = [
    ("provider: anthropic", "provider: nosuch", "unknown provider; known: anthropic"),
    ("name: backup", "name: primary", "agent names must be unique: primary"),
    ("agents: [primary, backup]\n    strategy: fallback",
     "agents: [primary, ghost]\n    strategy: fallback", "names unknown agents: ghost"),
    ("    rules:\n      - {prefer: [primary], reason: coding, input_contains: [code]}\n", "",
     "the custom strategy needs at least one rule"),
    ("default_route: default", "default_route: nope", "default_route 'nope' is not a route"),
    ("strategy: fallback", "strategy: quickest", "routes.0.strategy"),
    ("failures: 3", "failures: -1", "greater than or equal to 0"),
]


@pytest.mark.parametrize(("old", "new", "expected"), BAD)
def test_invalid_documents_are_refused_with_a_clear_message(old, new, expected) -> None:
    assert old in GOOD
    with pytest.raises(ConfigurationError) as info:
        parse_config(GOOD.replace(old, new, 1))
    assert expected in str(info.value)
    assert "sk-ant-very-secret" not in str(info.value)  # input values are never echoed


def test_unreadable_and_malformed_sources() -> None:
    with pytest.raises(ConfigurationError, match="cannot read config"):
        load_config("/nonexistent/router.yaml")
    with pytest.raises(ConfigurationError, match="not valid YAML"):
        parse_config("agents: [unclosed")
    with pytest.raises(ConfigurationError, match="invalid config"):
        parse_config("just a string")


def test_a_document_without_routes_is_valid_and_serves_nothing() -> None:
    assert RouterConfig.model_validate({"agents": [], "routes": []}).build() == {}


def test_from_config_builds_one_agent_or_one_route(monkeypatch) -> None:
    from agent import Agent, AgentRouter

    monkeypatch.setenv("MY_OPENAI_KEY", "sk-from-env")
    agent = Agent.from_config(
        {"name": "gpt", "provider": "openai", "model": "gpt-4o", "timeout": 5,
         "capabilities": {"vision": False}}
    )
    assert (agent.name, agent.timeout, agent.capabilities.vision) == ("gpt", 5, False)
    router = AgentRouter.from_config(GOOD.replace("cooldown: 10", "cooldown: 10, probe: false"))
    assert router.name == "default" and router.labels == ["primary", "backup"]
    assert router._health[0].breaker.failures == 3 and not router._health[0].breaker.background
    with pytest.raises(ConfigurationError, match="no route 'nope'"):
        AgentRouter.from_config(GOOD, "nope")
    with pytest.raises(ConfigurationError, match="provider"):
        Agent.from_config({"name": "x", "provider": "nosuch", "model": "m"})
