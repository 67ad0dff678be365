"""Limits on a real control plane: the operator (given the chart's Redis) delivers each
pod's watching sidecar a document naming that Redis, the namespace and how many pods share it;
two sidecars hold one agent's limit together; the RoutingPolicy's status shows what is
left, as Redis holds it."""

from __future__ import annotations

import uuid

import httpx
import pytest
from fakes import FakeProvider
from operator_support import (
    OperatorProcess,
    install_crds,
    operator_kubeconfig,
    status_of,
    wait_for,
)
from support.controlplane import free_port
from support.watching import WatchedPods, served

pytestmark = pytest.mark.controlplane

KEYS = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "llm-keys"},
        "stringData": {"openai": "test-key"}}  # fmt: skip


def test_two_pods_share_an_agents_limit_and_the_policy_shows_what_is_left(
    control_plane, namespace, redis_server, tmp_path  # type: ignore[no-untyped-def]
) -> None:
    """What was tried: an AgentPool whose agent allows 3 requests a minute and a
    RoutingPolicy with a route limit of 100, selecting two pods, each with a real
    sidecar; the operator runs with the chart's Redis. Each sidecar's document names
    the Redis, the namespace as scope and 2 pods sharing; 6 requests over both pods get
    3 answers and 3 429s; the policy's status shows 0 of 3 left on the agent and 97 of
    100 on the route."""
    cp = control_plane
    install_crds(cp)
    webhook = f"test-{uuid.uuid4().hex[:6]}.agentrouter.io"
    operator = OperatorProcess(
        cp, operator_kubeconfig(cp, webhook), webhook, free_port(),
        env={"AGENT_OPERATOR_LIMITS_REDIS_URL": redis_server.url},
    ).start()  # fmt: skip
    with FakeProvider("openai").running() as gpt, \
            WatchedPods(cp, namespace, tmp_path, operator.url) as pods:
        try:
            pool = {"apiVersion": "agentrouter.io/v1alpha1", "kind": "AgentPool",
                    "metadata": {"name": "main"},
                    "spec": {"agents": [{"name": "gpt", "provider": "openai", "model": "gpt-4o",
                                         "baseUrl": gpt.base_url, "limits": {"rpm": 3},
                                         "apiKeySecretRef": {"name": "llm-keys", "key": "openai"}}]}}  # fmt: skip
            policy = {"apiVersion": "agentrouter.io/v1alpha1", "kind": "RoutingPolicy",
                      "metadata": {"name": "chat"},
                      "spec": {"selector": {"matchLabels": {"app": "chat"}}, "pools": ["main"],
                               "strategy": {"type": "fallback", "retries": 0,
                                            "limits": {"rpm": 100}}}}  # fmt: skip
            cp.apply([KEYS, pool, policy], namespace)
            sidecars = [pods.start(f"chat-{n}", {"app": "chat"}) for n in range(2)]

            def shared_by_both(sidecar):  # type: ignore[no-untyped-def]
                store = ((served(sidecar) or {}).get("config") or {}).get("limits_store") or {}
                return store if store.get("shares") == 2 else None

            for sidecar in sidecars:
                store = wait_for(lambda s=sidecar: shared_by_both(s), 30, "a document for 2 pods")
                assert store["scope"] == namespace and store["redis_url"] == redis_server.url

            codes = []
            for i in range(6):
                url = sidecars[i % 2].app_url + "/v1/chat/completions"
                body = {"model": "default", "messages": [{"role": "user", "content": str(i)}]}
                codes.append(httpx.post(url, json=body, timeout=30).status_code)
            assert sorted(codes) == [200, 200, 200, 429, 429, 429], codes
            assert len(gpt.requests) == 3

            def quota():  # type: ignore[no-untyped-def]
                seen = status_of(cp, "routingpolicy", "chat", namespace).get("quota") or {}
                agent = seen.get("agents", {}).get("main.gpt", {}).get("rpm", {})
                return seen if agent.get("remaining") == 0 else None

            seen = wait_for(quota, 30, "the remaining quota in the policy's status")
            assert seen["agents"]["main.gpt"]["rpm"] == {"limit": 3, "remaining": 0}
            assert seen["routes"]["default"]["rpm"] == {"limit": 100, "remaining": 97}
        finally:
            operator.stop()
            cp.kubectl("delete", "mutatingwebhookconfiguration", webhook, "--ignore-not-found",
                       check=False)  # fmt: skip
