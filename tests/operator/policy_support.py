"""The chart's injection policy on the session's control plane, for the tests that create
pods through it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from agent_operator.inject import SidecarSettings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = SidecarSettings(
    image="registry.example/agent-sidecar:9", otlp_endpoint="http://jaeger.tracing:4318",
    image_pull_secrets=("regcred",), operator_url="https://op-agent-router-webhook.ops.svc:9443")
MARK = "agent-router-test/policy"


@pytest.fixture(scope="session")
def policy(control_plane: Any) -> Iterator[str]:
    """The chart's policy, bound only in namespaces labelled `MARK=<the value yielded>`
    (other tests share the control plane). Never deleted: on Kubernetes v1.36.3, once no
    binding uses a built-in paramKind (ConfigMap), the API server stops its informer of
    params for good, and a later policy finds no ConfigMap created after that
    (kubernetes/kubernetes#130887): one binding for the whole session."""
    mark = uuid.uuid4().hex[:8]
    rendered = control_plane.helm(
        "template", "op", str(ROOT / "helm/agent-router"), "--namespace", "ops",
        "--show-only", "templates/injection-policy.yaml", "--kube-version", "1.36.3",
        "--set", "injection.by=policy", "--set", f"sidecar.image.repository={SETTINGS.image[:-2]}",
        "--set-string", "sidecar.image.tag=9", "--set", f"sidecar.otlpEndpoint={SETTINGS.otlp_endpoint}",
        "--set", "sidecar.imagePullSecrets={regcred}").stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    for doc in docs:
        doc["metadata"]["name"] += f"-{mark}"
        if doc["kind"] == "MutatingAdmissionPolicyBinding":
            doc["spec"]["policyName"] += f"-{mark}"
            doc["spec"]["matchResources"]["namespaceSelector"] = {"matchLabels": {MARK: mark}}
    control_plane.apply(docs)
    yield mark
