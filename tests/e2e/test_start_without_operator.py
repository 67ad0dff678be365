"""Pods start without the operator, on a real node: the chart installed with
`injection.by=policy`, the operator scaled to 0, then a new app pod is created (the API
server injects its sidecar), becomes Ready and answers through its sidecar from the
namespace's ConfigMap (the fake providers check the keys they receive, read from the
mounted Secret files). The operator back, a changed policy reaches the pod's sidecar
through its watch (to the operator's ClusterIP from the ConfigMap, no cluster DNS)."""

from __future__ import annotations

from typing import Any

import pytest
from support.story import ANSWERS, APP, Story
from test_story import story  # noqa: F401  (the story fixture: names of its own, cleaned up)

pytestmark = [pytest.mark.controlplane, pytest.mark.timeout(900)]


def _scale(s: Story, replicas: int) -> None:
    deployment = s._deployment()["metadata"]["name"]
    s.kubectl("scale", "deployment", deployment, "-n", s.system_namespace,
              f"--replicas={replicas}")
    if replicas == 0:
        s._wait(lambda: not s._operator_pods(), "no operator pod left")
    else:
        s.wait_for_operator()


def _sidecar_log(s: Story, pod: str) -> str:
    return s.kubectl("logs", "-n", s.namespace, pod, "-c", "agent-sidecar")


# The only test of the node's session that installs the chart with injection.by=policy:
# its uninstall deletes the binding, after which this API server finds no new ConfigMap
# params (kubernetes/kubernetes#130887).
def test_a_pod_created_while_no_operator_runs_serves_then_follows_the_watch(
        story: Story) -> None:  # noqa: F811
    installed = story.install_chart(**{"injection.by": "policy", "replicaCount": "1",
                                       "podDisruptionBudget.enabled": "false"})
    kinds = {o.split("/")[0] for o in installed.objects}
    assert {"MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"} <= kinds
    assert "MutatingWebhookConfiguration" not in kinds
    story.wait_for_operator()
    story.start_fakes()  # Anthropic answers 529; both check the key they receive
    story.apply_pool_and_policy()
    cp = story._cp

    def config_map() -> dict[str, Any] | None:
        found = cp.get_json("configmaps", namespace=story.namespace)["items"]
        data = next((c["data"] for c in found if c["metadata"]["name"] == "agent-router"), None)
        return data if data and "api_key_file" in data.get("configs.json", "") else None
    data = story._wait(config_map, "the namespace's ConfigMap agent-router")
    assert data["keys"] == "llm-keys/anthropic,llm-keys/openai"

    _scale(story, 0)  # no operator replica runs from here
    story.kubectl("apply", "-n", story.namespace, "-f",
                  str(story._write("app.yaml", story.app_manifest())))
    pod = story._wait(lambda: next(iter(story._app_pods()), None), "the app's pod")
    name = pod["metadata"]["name"]
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["agent-sidecar"]
    story._wait_ready(name)
    story.pod = name
    first = story.ask()
    assert first.answer == ANSWERS["openai"]  # claude (529), then gpt, each with its key
    assert first.headers["x-agent-attempts"] == "2"
    assert "serving config version" in _sidecar_log(story, name)

    # The operator is back; the policy changes: the sidecar's watch brings it.
    _scale(story, 1)
    story.apply_policy("round_robin")
    story._wait(lambda: "from the operator serves" in _sidecar_log(story, name),
                "the changed policy through the sidecar's watch")
    after = story.ask()
    assert after.headers["x-agent-config-version"] != first.headers["x-agent-config-version"]
    assert not [line for line in _sidecar_log(story, name).splitlines()
                if "not trusted" in line or " 401" in line]
    assert APP in story.kubectl("get", "pods", "-n", story.namespace)
