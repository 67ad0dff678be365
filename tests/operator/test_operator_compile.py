"""Compiling AgentPools and RoutingPolicies into a pod's config document (no cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_operator import crdgen
from agent_operator.compile import Policy, compile_pod, selects
from agent_operator.resources import AgentPoolSpec, PodSelector, PoolAgent, RoutingPolicySpec

from agent.config import AgentConfig

ROOT = Path(__file__).resolve().parents[2]



def pool() -> AgentPoolSpec:
    return AgentPoolSpec.model_validate({"agents": [
        {"name": "claude", "provider": "anthropic", "model": "claude-sonnet",
         "apiKeySecretRef": {"name": "llm-keys", "key": "anthropic"}},
        {"name": "gpt", "provider": "openai", "model": "gpt-4o",
         "apiKeySecretRef": {"name": "llm-keys", "key": "openai"}, "timeoutSeconds": 20,
         "price": {"inputPerMTok": 1, "outputPerMTok": 2}, "capabilities": {"vision": False}},
    ]})


SECRETS = {"llm-keys": {"anthropic": "sk-ant-secret-value", "openai": "sk-openai-secret"}}


def policy(name: str = "chat", **spec: object) -> Policy:
    body = {"selector": {"matchLabels": {"app": "chat"}}, "pools": ["main"], **spec}
    return Policy(name, RoutingPolicySpec.model_validate(body))


def test_a_selected_pod_gets_routes_agents_and_keys() -> None:
    result = compile_pod({"app": "chat"}, [policy(routes=["default", "smart"])],
                         {"main": pool()}, SECRETS, namespace="team-a")
    config = result.config
    assert config is not None and not result.problems
    assert [a.name for a in config.agents] == ["main.claude", "main.gpt"]
    assert config.agents[0].api_key.get_secret_value() == "sk-ant-secret-value"
    assert config.agents[1].timeout == 20 and config.agents[1].price.input_per_mtok == 1
    assert config.agents[1].capabilities.model_dump(exclude_none=True) == {"vision": False}
    assert [r.name for r in config.routes] == ["default", "smart"]
    assert config.default_route == "default"
    assert config.metadata["source"] == "team-a/chat"
    assert len(config.metadata["hash"]) == 32
    assert "sk-ant" not in str(config.redacted())
    routers = config.build()  # the engine accepts the document as is
    assert routers["default"].labels == ["main.claude", "main.gpt"]


def test_unselected_pods_get_nothing() -> None:
    result = compile_pod({"app": "other"}, [policy()], {"main": pool()}, SECRETS)
    assert result.config is None and result.policies == []


def test_the_hash_changes_when_a_key_rotates_and_only_then() -> None:
    one = compile_pod({"app": "chat"}, [policy()], {"main": pool()}, SECRETS).hash
    again = compile_pod({"app": "chat"}, [policy()], {"main": pool()}, SECRETS).hash
    rotated = {"llm-keys": {**SECRETS["llm-keys"], "openai": "sk-new"}}
    assert one == again
    assert compile_pod({"app": "chat"}, [policy()], {"main": pool()}, rotated).hash != one


@pytest.mark.parametrize(("pools", "secrets", "reason"), [
    ({}, SECRETS, "PoolNotFound"),
    ({"main": pool()}, {}, "SecretNotFound"),
    ({"main": pool()}, {"llm-keys": {"anthropic": "x"}}, "SecretKeyNotFound"),
])
def test_missing_pieces_keep_the_last_good_config(pools, secrets, reason) -> None:
    result = compile_pod({"app": "chat"}, [policy()], pools, secrets)
    assert result.config is None
    problem = result.problems["chat"][0]
    assert problem.reason == reason
    assert "sk-" not in problem.message


def test_custom_rules_and_weights_resolve_agent_names() -> None:
    custom = policy(strategy={"type": "custom"},
                    rules=[{"prefer": ["claude"], "reason": "coding", "inputContains": ["code"]}])
    config = compile_pod({"app": "chat"}, [custom], {"main": pool()}, SECRETS).config
    assert config is not None
    assert config.routes[0].rules[0].prefer == ["main.claude"]
    weighted = policy(strategy={"type": "weighted", "weights": {"main/gpt": 3}})
    config = compile_pod({"app": "chat"}, [weighted], {"main": pool()}, SECRETS).config
    assert config is not None and config.routes[0].weights == {"main.gpt": 3}
    unknown = policy(strategy={"type": "custom"},
                     rules=[{"prefer": ["llama"], "reason": "x"}])
    result = compile_pod({"app": "chat"}, [unknown], {"main": pool()}, SECRETS)
    assert result.problems["chat"][0].reason == "UnknownAgent"


def test_two_policies_on_one_pod_merge_and_conflicts_are_reported() -> None:
    a = policy("a", routes=["default"])
    b = policy("b", routes=["default", "extra"])
    result = compile_pod({"app": "chat"}, [b, a], {"main": pool()}, SECRETS)
    assert result.config is not None
    assert [r.name for r in result.config.routes] == ["default", "extra"]
    assert result.problems["b"][0].reason == "RouteConflict"
    assert "'a'" in result.problems["b"][0].message


def test_label_selectors() -> None:
    sel = PodSelector.model_validate({"matchLabels": {"app": "chat"}, "matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["web", "api"]},
        {"key": "canary", "operator": "DoesNotExist"}]})
    assert selects(sel, {"app": "chat", "tier": "api"})
    assert not selects(sel, {"app": "chat", "tier": "db"})
    assert not selects(sel, {"app": "chat", "tier": "api", "canary": "1"})
    assert selects(PodSelector(), {"anything": "x"})


def test_committed_crds_are_generated_from_the_models() -> None:
    for name, text in crdgen.render().items():
        committed = (ROOT / "crds" / name).read_text()
        assert committed == text, f"crds/{name} is stale: run python -m agent_operator.crdgen crds/"


def test_the_resources_are_the_engines_config_models_spelled_for_kubernetes() -> None:
    """The RoutingPolicy's strategy and rules and the AgentPool's agents are derived from
    the engine's config models: the same fields under the same Python names (so compiling
    copies, never renames), each spelled by rule in Kubernetes, with the same bounds."""
    from agent_operator.resources import CircuitBreakerSpec, RuleSpec, StrategySpec

    from agent.config import CircuitBreakerConfig, RouteOptions, Rule

    assert set(StrategySpec.model_fields) == set(RouteOptions.model_fields)
    assert set(RuleSpec.model_fields) == set(Rule.model_fields)
    assert set(CircuitBreakerSpec.model_fields) == set(CircuitBreakerConfig.model_fields)
    k8s_only, engine_only = {"api_key_secret_ref"}, {"api_key", "api_key_env", "api_key_file",
                                                   "extra"}
    assert set(PoolAgent.model_fields) - k8s_only == set(AgentConfig.model_fields) - engine_only
    spelled = {f: i.alias for f, i in StrategySpec.model_fields.items()}
    assert spelled["strategy"] == "type" and spelled["deadline"] == "deadlineSeconds"
    assert spelled["max_retry_after"] == "maxRetryAfterSeconds"
    assert PoolAgent.model_fields["timeout"].alias == "timeoutSeconds"
    assert RuleSpec.model_fields["prefer"].metadata == Rule.model_fields["prefer"].metadata


def test_every_field_of_both_crds_is_described() -> None:
    """`kubectl explain` shows a description for every field a user can set."""
    import yaml

    missing = []

    def walk(schema: dict, path: str) -> None:
        for name, sub in (schema.get("properties") or {}).items():
            if "description" not in sub:
                missing.append(f"{path}.{name}")
            walk(sub, f"{path}.{name}")
        if "items" in schema:
            walk(schema["items"], path + "[]")

    for name in ("agentpools.yaml", "routingpolicies.yaml"):
        crd = yaml.safe_load((ROOT / "crds" / name).read_text())
        walk(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"],
             f"{name}:spec")
    assert not missing


def test_a_rule_whose_regex_does_not_compile_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="not a regular expression"):
        RoutingPolicySpec.model_validate({
            "selector": {}, "pools": ["main"], "strategy": {"type": "custom"},
            "rules": [{"prefer": ["a"], "reason": "r", "inputMatches": "("}]})
