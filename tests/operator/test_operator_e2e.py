"""The operator on the real control plane, end to end: kubectl apply of pools and
policies, sidecar injection by our webhook, a real sidecar for each pod watching the
operator with the pod's token, requests routed by the policy, status and Events."""

from __future__ import annotations

import json
import time

import openai
import pytest
from fakes import Fail, FakeProvider, Reply
from operator_support import condition, status_of, wait_for
from support.watching import create_pod, served, strategy

pytestmark = pytest.mark.controlplane


def pool(name: str, openai_fake: FakeProvider, anthropic_fake: FakeProvider) -> dict:
    return {
        "apiVersion": "agentrouter.io/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": name},
        "spec": {"agents": [
            {"name": "claude", "provider": "anthropic", "model": "claude-sonnet",
             "baseUrl": anthropic_fake.url,
             "apiKeySecretRef": {"name": "llm-keys", "key": "anthropic"}},
            {"name": "gpt", "provider": "openai", "model": "gpt-4o",
             "baseUrl": openai_fake.base_url,
             "apiKeySecretRef": {"name": "llm-keys", "key": "openai"}},
        ]},
    }


def policy(strategy: str = "fallback", **extra: object) -> dict:
    return {
        "apiVersion": "agentrouter.io/v1alpha1", "kind": "RoutingPolicy",
        "metadata": {"name": "chat"},
        "spec": {"selector": {"matchLabels": {"app": "chat"}}, "pools": ["main"],
                 "routes": ["default"],
                 "strategy": {"type": strategy, "retries": 0, "backoffSeconds": 0}, **extra},
    }


KEYS = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "llm-keys"},
        "stringData": {"anthropic": "test-key", "openai": "test-key"}}


@pytest.fixture
def fakes():
    with FakeProvider("openai").running() as gpt, FakeProvider("anthropic").running() as claude:
        yield gpt, claude


def test_apply_inject_watch_route_and_report(control_plane, operator, namespace, fakes,
                                             pods) -> None:
    cp = control_plane
    gpt, claude = fakes
    claude.set_default(Fail(529))  # the primary is overloaded: the policy falls back
    cp.apply([KEYS, pool("main", gpt, claude), policy()], namespace)

    # The webhook injects the sidecar into an opted-in pod.
    create_pod(cp, namespace, "chat-0", {"app": "chat"})
    pod = cp.get_json("pod", "chat-0", namespace=namespace)
    init = pod["spec"].get("initContainers") or []
    assert [c["name"] for c in init] == ["agent-sidecar"], json.dumps(pod["spec"])[:2000]
    sidecar_spec = init[0]
    assert sidecar_spec["restartPolicy"] == "Always"  # a native sidecar
    assert sidecar_spec["image"] == "registry.example/agent-sidecar:test"
    assert sidecar_spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:4000/v1"} in \
        pod["spec"]["containers"][0]["env"]
    # Nothing but the health port is opened to the pod network, and no Secret is mounted.
    assert [p["name"] for p in sidecar_spec["ports"]] == ["agent-health"]
    assert not [v for v in pod["spec"]["volumes"] if "secret" in v]

    # The pod "runs": a real sidecar watching the operator with the pod's token. It gets
    # its config before the pod is Ready (the startup probe, /readyz, waits for it).
    sidecar = pods.start("chat-0")
    loaded = wait_for(lambda: served(sidecar), 20, "the watched config")
    assert loaded["routes"] == ["default"]
    assert loaded["config"]["agents"][0]["api_key"] == "***"
    version = loaded["config"]["metadata"]["hash"]

    client = openai.OpenAI(base_url=sidecar.app_url + "/v1", api_key="unused")
    raw = client.chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "Hello"}])
    answer = raw.parse()
    assert answer.choices[0].message.content == "Hello from openai"
    assert raw.headers["x-agent-provider"] == "openai"
    assert int(raw.headers["x-agent-attempts"]) == 2  # claude failed, gpt answered

    status = wait_for(lambda: (s := status_of(cp, "routingpolicy", "chat", namespace))
                      .get("syncedPods") == 1 and s, 20, "policy status")
    assert status["targetPods"] == 1 and status["synced"] == "1/1"
    assert condition(status, "Ready")["status"] == "True"
    assert status["configVersion"] == version
    pool_status = status_of(cp, "agentpool", "main", namespace)
    assert pool_status["agents"] == 2 and pool_status["policies"] == 1
    table = cp.kubectl("get", "agentrouter", "-n", namespace).stdout
    assert "routingpolicy.agentrouter.io/chat" in table and "1/1" in table
    assert "agentpool.agentrouter.io/main" in table

    # Switching the strategy with kubectl changes the traffic pattern.
    claude.set_default(Reply(text="Hello from anthropic"))
    cp.apply(policy("round_robin"), namespace)
    wait_for(lambda: strategy(sidecar) == "round_robin", 20, "the round_robin config")
    providers = [client.chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "Hi"}]
    ).headers["x-agent-provider"] for _ in range(4)]
    assert sorted(providers) == ["anthropic", "anthropic", "openai", "openai"]

    # A missing secret: status says so, the sidecar keeps its last good config.
    before = served(sidecar)["version"]
    cp.kubectl("delete", "secret", "llm-keys", "-n", namespace)
    cp.apply(policy("fallback"), namespace)
    status = wait_for(lambda: condition(
        status_of(cp, "routingpolicy", "chat", namespace), "Resolved").get("reason")
        == "SecretNotFound" and status_of(cp, "routingpolicy", "chat", namespace),
        20, "SecretNotFound in status")
    assert condition(status, "Ready")["status"] == "False"
    assert "llm-keys" in condition(status, "Resolved")["message"]
    time.sleep(2.5)  # a resync passes: nothing is delivered
    assert served(sidecar)["version"] == before
    events = cp.kubectl("get", "events", "-n", namespace,
                        "--field-selector", "involvedObject.name=chat").stdout
    assert "SecretNotFound" in events
    secrets_text = json.dumps(status) + events + operator.output()
    assert "test-key" not in secrets_text  # keys appear nowhere but in the delivery

    # The secret is back: the fallback policy reaches the sidecar.
    cp.apply(KEYS, namespace)
    wait_for(lambda: strategy(sidecar) == "fallback", 20,
             "the config after the secret returned")

    # Deleting the policy removes its route from the sidecar.
    cp.kubectl("delete", "routingpolicy", "chat", "-n", namespace)
    wait_for(lambda: served(sidecar)["routes"] == [], 20, "routes removed")


def test_unlabelled_pods_are_left_alone(control_plane, operator, namespace) -> None:
    control_plane.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"},
                         "spec": {"containers": [{"name": "app", "image": "x"}]}}, namespace)
    pod = control_plane.get_json("pod", "plain", namespace=namespace)
    assert not pod["spec"].get("initContainers")


def test_a_policy_that_selects_no_pod_still_reports_what_is_missing(control_plane, operator,
                                                                    namespace) -> None:
    """Tried: a policy naming a pool that does not exist, before any pod is selected; then
    the pool created with a key Secret that does not exist; then the Secret."""
    cp = control_plane
    cp.apply(policy(), namespace)

    def resolved() -> dict:
        return condition(status_of(cp, "routingpolicy", "chat", namespace), "Resolved")

    missing_pool = wait_for(lambda: resolved().get("reason") == "PoolNotFound" and resolved(),
                            30, "PoolNotFound with no pod selected")
    assert missing_pool["status"] == "False" and "'main'" in missing_pool["message"]
    status = status_of(cp, "routingpolicy", "chat", namespace)
    assert condition(status, "Ready")["status"] == "False" and status["synced"] == "0/0"

    cp.apply({"apiVersion": "agentrouter.io/v1alpha1", "kind": "AgentPool",
              "metadata": {"name": "main"},
              "spec": {"agents": [{"name": "gpt", "provider": "openai", "model": "gpt-4o",
                                   "apiKeySecretRef": {"name": "llm-keys", "key": "openai"}}]}},
             namespace)
    wait_for(lambda: resolved().get("reason") == "SecretNotFound", 30, "SecretNotFound")
    cp.apply(KEYS, namespace)  # a Secret change is seen on the periodic resync
    wait_for(lambda: condition(status_of(cp, "routingpolicy", "chat", namespace),
                               "Ready").get("status") == "True", 30, "Ready once resolved")

    # A policy the apiserver accepts but the engine cannot use (a regular expression that
    # does not compile) is reported on itself; its neighbour stays Ready.
    bad = policy("custom", rules=[{"prefer": ["gpt"], "reason": "code", "inputMatches": "("}])
    bad["metadata"]["name"] = "bad-regex"
    cp.apply(bad, namespace)
    invalid = wait_for(lambda: (c := condition(status_of(cp, "routingpolicy", "bad-regex",
                                                         namespace), "Resolved"))
                       .get("reason") == "Invalid" and c, 30, "Invalid on the bad policy")
    assert "not a regular expression" in invalid["message"]
    assert condition(status_of(cp, "routingpolicy", "chat", namespace),
                     "Ready")["status"] == "True"


INVALID = [
    ("duplicate agent names", "AgentPool",
     {"agents": [{"name": "a", "provider": "openai", "model": "gpt-4o"},
                 {"name": "a", "provider": "openai", "model": "gpt-4o-mini"}]},
     "agent names must be unique within the pool"),
    ("no agents", "AgentPool", {"agents": []}, "should have at least 1 items"),
    ("bad agent name", "AgentPool",
     {"agents": [{"name": "Not_OK", "provider": "openai", "model": "gpt-4o"}]},
     "spec.agents[0].name"),
    ("unknown provider", "AgentPool",
     {"agents": [{"name": "a", "provider": "openia", "model": "gpt-4o"}]},
     'spec.agents[0].provider: Unsupported value: "openia"'),
    ("negative timeout", "AgentPool",
     {"agents": [{"name": "a", "provider": "openai", "model": "m", "timeoutSeconds": 0}]},
     "spec.agents[0].timeoutSeconds"),
    ("custom without rules", "RoutingPolicy",
     {"selector": {}, "pools": ["p"], "strategy": {"type": "custom"}},
     "the custom strategy needs at least one rule"),
    ("rules without custom", "RoutingPolicy",
     {"selector": {}, "pools": ["p"], "rules": [{"prefer": ["a"], "reason": "r"}]},
     "rules apply only to the custom strategy"),
    ("weights without weighted", "RoutingPolicy",
     {"selector": {}, "pools": ["p"], "strategy": {"type": "fallback", "weights": {"a": 1}}},
     "weights apply only to the weighted strategy"),
    ("hedge delay without hedging", "RoutingPolicy",
     {"selector": {}, "pools": ["p"], "strategy": {"type": "cheapest", "hedgeDelaySeconds": 1}},
     "hedgeDelaySeconds applies only to the hedged and fastest strategies"),
    ("unknown strategy", "RoutingPolicy",
     {"selector": {}, "pools": ["p"], "strategy": {"type": "quickest"}},
     'Unsupported value: "quickest"'),
    ("no pools", "RoutingPolicy", {"selector": {}, "pools": []}, "should have at least 1 items"),
    ("duplicate routes", "RoutingPolicy",
     {"selector": {}, "pools": ["p"], "routes": ["a", "a"]}, "Duplicate value"),
    ("missing selector", "RoutingPolicy", {"pools": ["p"]}, "spec.selector: Required value"),
]


@pytest.mark.parametrize(("what", "kind", "spec", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_resources_are_rejected_with_clear_messages(control_plane, operator, namespace,
                                                           what, kind, spec, message) -> None:
    result = control_plane.apply(
        {"apiVersion": "agentrouter.io/v1alpha1", "kind": kind, "metadata": {"name": "bad"},
         "spec": spec}, namespace, check=False)
    assert result.returncode != 0, f"{what} was accepted"
    assert message in result.stderr, result.stderr


def test_no_failed_request_while_the_policy_changes(control_plane, operator, namespace,
                                                   fakes, pods) -> None:
    """Requests keep flowing while kubectl switches the strategy: the sidecar swaps its
    config atomically, so not one request fails."""
    import threading

    cp = control_plane
    gpt, claude = fakes
    cp.apply([KEYS, pool("main", gpt, claude), policy("fallback")], namespace)
    sidecar = pods.start("chat-0", {"app": "chat"})
    wait_for(lambda: served(sidecar), 20, "the first config")
    client = openai.OpenAI(base_url=sidecar.app_url + "/v1", api_key="unused", max_retries=0)
    failures: list[str] = []
    answered: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model="default", messages=[{"role": "user", "content": "Hi"}])
                answered.append(raw.headers["x-agent-provider"])
            except Exception as exc:  # any failure at all is what this test forbids
                failures.append(repr(exc))

    workers = [threading.Thread(target=traffic) for _ in range(2)]
    for w in workers:
        w.start()
    for kind in ("round_robin", "cheapest", "fallback", "round_robin"):
        cp.apply(policy(kind), namespace)
        wait_for(lambda k=kind: strategy(sidecar) == k, 20, f"the {kind} config")
    stop.set()
    for w in workers:
        w.join()
    assert failures == []
    assert len(answered) > 20 and "anthropic" in answered and "openai" in answered


def test_restarts_resync_without_duplicate_work(control_plane, operator, namespace,
                                               fakes, pods) -> None:
    """A restarted operator delivers nothing a sidecar already serves (the sidecar resumes
    its watch from its version); a sidecar that lost its state gets its config again."""
    import shutil

    cp = control_plane
    gpt, claude = fakes
    cp.apply([KEYS, pool("main", gpt, claude), policy()], namespace)
    sidecar = pods.start("chat-0", {"app": "chat"})
    version = wait_for(lambda: served(sidecar), 20, "the first config")["version"]

    operator.stop()
    operator.start()
    time.sleep(5)  # resume handlers, two resyncs and the sidecar's new watch have run
    assert served(sidecar)["version"] == version, "nothing was delivered again"
    wait_for(lambda: condition(status_of(cp, "routingpolicy", "chat", namespace),
                               "Ready").get("status") == "True", 30, "Ready after the restart")

    # The sidecar restarts with its state gone (a new pod, an emptyDir lost).
    state = pods.state_dir(sidecar)
    sidecar.stop(20)
    shutil.rmtree(state, ignore_errors=True)
    sidecar = pods.start("chat-0", state_dir=state)
    again = wait_for(lambda: served(sidecar), 20, "the config watched again")
    assert again["version"] > version
