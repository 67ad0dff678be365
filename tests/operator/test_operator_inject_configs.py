"""What the namespace's ConfigMap holds for pods the API server injects, and how a
sidecar picks its own document from it (no I/O: the control-plane tests are in
test_operator_namespace_config.py)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from agent_operator.compile import Problem
from agent_operator.namespace_config import config_map_data
from agent_sidecar.fallback import Fallback, read_labels
from test_operator_compile import policy, pool

CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
POLICIES = [policy(), policy("beta", selector={"matchExpressions": [
    {"key": "track", "operator": "In", "values": ["beta"]}]}, routes=["beta"])]


def _data(**kw: object) -> dict[str, str]:
    args: dict[str, object] = {"ca_bundle": CA, "address": "10.0.0.9", "policies": POLICIES,
                               "pools": {"main": pool()}, "problems": {},
                               "pod_labels": [{"app": "chat", "track": "beta"}],
                               "namespace": "team-a", **kw}
    return config_map_data(**args)  # type: ignore[arg-type]


def test_documents_per_set_of_policies_with_key_files_and_no_key() -> None:
    data = _data()
    configs = orjson.loads(data["configs.json"])
    # Each policy alone, and the set that selects the pod the operator knows.
    assert sorted(configs["configs"]) == ["beta", "beta,chat", "chat"]
    agents = configs["configs"]["chat"]["agents"]
    assert [a["api_key_file"] for a in agents] == [
        "/var/run/agent-router/keys/llm-keys/anthropic",
        "/var/run/agent-router/keys/llm-keys/openai"]
    assert not any("api_key" in a for a in agents)
    assert "limits_store" not in configs["configs"]["chat"]  # its password is a secret
    assert data["keys"] == "llm-keys/anthropic,llm-keys/openai"
    assert (data["ca.crt"], data["address"]) == (CA.decode(), "10.0.0.9")


def test_a_missing_secret_keeps_the_document_and_other_problems_drop_it() -> None:
    missing = {"chat": [Problem("SecretNotFound", "Secret 'llm-keys' does not exist")]}
    assert "chat" in orjson.loads(_data(problems=missing)["configs.json"])["configs"]
    broken = {"chat": [Problem("PoolNotFound", "AgentPool 'main' does not exist")]}
    assert sorted(orjson.loads(_data(problems=broken)["configs.json"])["configs"]) == ["beta"]


@pytest.mark.parametrize(("labels", "routes"), [
    ({"app": "chat"}, ["default"]),
    ({"app": "chat", "track": "beta"}, ["beta", "default"]),  # policies in name order
    ({"app": "other", "track": "beta"}, ["beta"]),
])
def test_a_sidecar_starts_from_the_document_of_the_policies_selecting_its_pod(
        tmp_path: Path, labels: dict[str, str], routes: list[str]) -> None:
    (tmp_path / "configs.json").write_text(_data()["configs.json"])
    (tmp_path / "labels").write_text("".join(f'{k}="{v}"\n' for k, v in labels.items()))
    config = Fallback(tmp_path / "configs.json", tmp_path / "labels").config()
    assert config is not None and [r.name for r in config.routes] == routes


def test_no_document_for_the_pod_means_waiting_for_the_operator(tmp_path: Path) -> None:
    configs, labels = tmp_path / "configs.json", tmp_path / "labels"
    labels.write_text('app="nothing-selects-this"\n')
    assert Fallback(configs, labels).config() is None  # no ConfigMap mounted yet
    configs.write_text(_data()["configs.json"])
    assert Fallback(configs, labels).config() is None  # no policy selects the pod
    configs.write_text('{"policies": {"chat": {}}, "configs": {"chat": {"agents": 3}}}')
    assert Fallback(configs, labels).config() is None  # refused, with the reason logged


def test_the_downward_api_labels_file_is_read_as_the_kubelet_writes_it() -> None:
    text = 'app="chat"\nagentrouter.io/inject="true"\nnote="a \\"quoted\\" word"\n'
    assert read_labels(text) == {"app": "chat", "agentrouter.io/inject": "true",
                                 "note": 'a "quoted" word'}
