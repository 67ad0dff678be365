"""What the operator adds to limits: the store each delivered document names, how many pods
share it, and the remaining room for a RoutingPolicy's status, read from a real Redis."""

from __future__ import annotations

from agent_operator.compile import has_limits
from agent_operator.limits import SharedLimits, remaining, sharing

from agent import limits
from agent.config import parse_config
from agent.limits import Quota
from agent.limits_redis import RedisStore
from agent.types import Message, Request

DOCUMENT = {
    "agents": [
        {"name": "pool.gpt", "provider": "openai", "model": "gpt-4o", "limits": {"rpm": 5}},
        {"name": "pool.claude", "provider": "anthropic", "model": "claude-sonnet"},
    ],
    "routes": [{"name": "default", "agents": ["pool.gpt", "pool.claude"], "limits": {"rpm": 10}}],
}


def test_pods_share_the_limits_of_the_policies_selecting_them() -> None:
    """What was tried: three pods under policy a (one also under b) and one under c
    alone: a pod shares with every pod any of its policies selects."""
    pods = {"p1": ["a"], "p2": ["a", "b"], "p3": ["a"], "p4": ["c"], "p5": []}

    assert sharing(pods) == {"p1": 3, "p2": 3, "p3": 3, "p4": 1, "p5": 1}


def test_a_thousand_pods_of_few_policy_sets_share_as_pod_by_pod() -> None:
    """What was tried: 1,000 pods over four policy sets (one empty), counted by set; each
    count is what comparing every pod with every other gives."""
    kinds = [["a"], ["a", "b"], ["c"], []]
    pods = {f"p{i}": kinds[i % 4] for i in range(1000)}

    expected = {pod: sum(1 for theirs in pods.values() if set(mine) & set(theirs)) or 1
                for pod, mine in pods.items()}
    assert sharing(pods) == expected
    assert sharing(pods)["p0"] == 500 and sharing(pods)["p2"] == 250


def test_the_delivered_store_is_scoped_to_the_namespace_and_hides_its_password() -> None:
    """What was tried: the operator's environment naming a Redis with a password; the
    store a pod's document gets has the namespace as scope and the share, and neither
    the settings' repr nor the redacted document shows the password."""
    shared = SharedLimits.from_env(
        {"AGENT_OPERATOR_LIMITS_REDIS_URL": "rediss://redis:6380/0",
         "AGENT_OPERATOR_LIMITS_REDIS_PASSWORD": "pw-s3cret"}
    )  # fmt: skip
    config = parse_config(DOCUMENT)
    store = shared.store("team-a", 4)

    assert has_limits(config) and not has_limits(
        parse_config({**DOCUMENT, "agents": [DOCUMENT["agents"][1]], "routes": []})
    )
    assert (store.scope, store.shares, store.redis_url) == ("team-a", 4, "rediss://redis:6380/0")
    with_store = config.model_copy(update={"limits_store": store})
    assert "pw-s3cret" not in repr(shared) and "pw-s3cret" not in str(with_store.redacted())


async def test_the_status_reads_what_every_pod_counted(redis_server) -> None:  # type: ignore[no-untyped-def]
    """What was tried: two admissions counted by a sidecar's store in namespace team-a
    (the route's and the agent's limits together); the operator reads 8 of 10 left on
    the route and 3 of 5 on the agent; another namespace reads nothing counted."""
    config = parse_config(DOCUMENT)
    store = RedisStore(redis_server.url, scope="team-a")
    route = Quota.for_route("default", config.routes[0].limits, store, 100)
    agent = Quota.for_agent("pool.gpt", config.agents[0].limits, store, 100)
    request = Request([Message("user", "hi")], max_tokens=5)
    for _ in range(2):
        gen = limits.reserve([agent, route], request, None)
        value = None
        try:
            while True:
                value = await gen.send(value).async_()
        except StopIteration as stop:
            assert isinstance(stop.value, list) and len(stop.value) == 2
    await store.aclose()
    shared = SharedLimits(redis_server.url)

    seen = await remaining(shared, "team-a", config, ["default"])

    assert seen == {
        "routes": {"default": {"rpm": {"limit": 10, "remaining": 8.0}}},
        "agents": {"pool.gpt": {"rpm": {"limit": 5, "remaining": 3.0}}},
    }
    elsewhere = await remaining(shared, "team-b", config, ["default"])
    assert elsewhere["routes"]["default"]["rpm"]["remaining"] == 10.0
    assert await remaining(SharedLimits(), "team-a", config, ["default"]) == {}


def test_a_pods_document_names_the_store_only_when_it_has_limits() -> None:
    """What was tried: a policy over a pool whose agent has an rpm, compiled for a pod
    with the operator's Redis and 3 pods sharing: the document names the store (scope,
    share, password) and the hash covers it; the same pool without limits names none."""
    from agent_operator.compile import Policy, compile_pod
    from agent_operator.resources import AgentPoolSpec, RoutingPolicySpec

    def pool(limits: dict | None) -> AgentPoolSpec:  # type: ignore[type-arg]
        agent = {"name": "gpt", "provider": "openai", "model": "gpt-4o"}
        return AgentPoolSpec.model_validate(
            {"agents": [{**agent, **({"limits": limits} if limits else {})}]}
        )

    policy = Policy("chat", RoutingPolicySpec.model_validate({"selector": {}, "pools": ["main"]}))
    store = SharedLimits("redis://redis:6379/0", password="pw-s3cret").store("team-a", 3)

    limited = compile_pod({}, [policy], {"main": pool({"rpm": 60})}, {}, "team-a", limits=store)
    plain = compile_pod({}, [policy], {"main": pool(None)}, {}, "team-a", limits=store)

    assert limited.config is not None and limited.config.limits_store is not None
    assert (limited.config.limits_store.scope, limited.config.limits_store.shares) == ("team-a", 3)
    assert limited.config.document()["limits_store"]["password"] == "pw-s3cret"
    assert limited.config.agents[0].limits is not None and limited.config.agents[0].limits.rpm == 60
    assert plain.config is not None and plain.config.limits_store is None
    other = compile_pod({}, [policy], {"main": pool({"rpm": 60})}, {}, "team-a",
                        limits=SharedLimits("redis://redis:6379/0").store("team-a", 4))  # fmt: skip
    assert (
        other.config is not None
        and other.config.metadata["hash"] != limited.config.metadata["hash"]
    )
