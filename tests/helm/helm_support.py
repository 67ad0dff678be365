"""Shared helpers for the chart tests: the pinned helm without a cluster, rendering, and
the values the tests use."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "agent-router"
RULES_FILE = CHART / "files" / "operator-rules.yaml"
NAMESPACE_RULES_FILE = CHART / "files" / "operator-namespace-rules.yaml"

# Every object the chart renders with its defaults (kind, name) for release "ar", where
# `helm template` cannot see a cluster that serves admission policies (auto: the webhook).
DEFAULT_KINDS = {
    "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service",
    "Deployment", "PodDisruptionBudget", "MutatingWebhookConfiguration", "Pod", "Lease",
    "ConfigMap", "Secret", "CustomResourceDefinition",
    "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",  # the ConfigMap guard
}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration",
                  "CustomResourceDefinition", "ValidatingAdmissionPolicy",
                  "ValidatingAdmissionPolicyBinding", "MutatingAdmissionPolicy",
                  "MutatingAdmissionPolicyBinding"}
CRD_DIR = CHART / "files" / "crds"  # copies of crds/, rendered by templates/crds.yaml

# Values that change nearly everything (and pass the schema).
NON_DEFAULT: dict[str, Any] = {
    "fullnameOverride": "router",
    "replicaCount": 3,
    "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
    "podDisruptionBudget": {"enabled": True, "minAvailable": 2},
    "podAntiAffinity": "hard",
    "clusterDomain": "corp.example",
    "image": {"repository": "registry.example/ar/operator", "digest": "sha256:" + "ab" * 32,
              "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "operator": {"peeringLifetimeSeconds": 10, "resyncSeconds": 5,
                 "healthPort": 8081, "metricsPort": 9091, "verbose": True,
                 "extraEnv": [{"name": "EXTRA", "value": "1"}]},
    "serviceAccount": {"create": True, "name": "router-sa",
                       "annotations": {"example.com/role": "operator"}},
    "rbac": {"create": True, "aggregateToDefaultRoles": False},
    "injection": {"by": "webhook"},  # auto picks the policy on a 1.36 cluster
    "webhook": {"name": "inject.router.agentrouter.io", "port": 10443, "timeoutSeconds": 5,
                "failurePolicy": "Ignore", "excludeNamespaces": ["legacy"],
                "annotations": {"example.com/owner": "platform"},
                "certManager": {"enabled": True, "duration": "720h", "renewBefore": "240h"}},
    "sidecar": {"image": {"repository": "registry.example/ar/sidecar", "tag": "1.2.3"},
                "appPort": 5000, "adminPort": 5001,
                "resources": {"requests": {"cpu": "100m", "memory": "96Mi"},
                              "limits": {"memory": "384Mi"}},
                "otlpEndpoint": "http://otel-collector.observability:4318",
                "setAppEnv": False, "imagePullSecrets": ["regcred", "mirror"]},
    "resources": {"requests": {"cpu": "100m", "memory": "192Mi"}, "limits": {"memory": "1Gi"}},
    "podAnnotations": {"example.com/scrape": "false"},
    "podLabels": {"team": "platform"},
    "priorityClassName": "system-cluster-critical",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops",
                     "effect": "NoSchedule"}],
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                   "whenUnsatisfiable": "ScheduleAnyway",
                                   "labelSelector": {"matchLabels": {
                                       "app.kubernetes.io/name": "agent-router"}}}],
    "monitoring": {"podMonitor": {"enabled": True, "labels": {"release": "prometheus"},
                                  "interval": "15s"},
                   "operatorPodMonitor": {"enabled": True, "labels": {"release": "prometheus"},
                                          "interval": "20s"}},
    "tests": {"image": "registry.example/python:3.11-slim"},
}


class OfflineHelm:
    """The pinned helm for commands that need no cluster (lint, template), with private
    homes so nothing reads or writes ~/.config/helm or ~/.kube."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.env = dict(os.environ)
        for var, sub in (("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"),
                         ("HELM_DATA_HOME", "data")):
            self.env[var] = str(home / sub)
        self.env["KUBECONFIG"] = str(home / "no-kubeconfig")  # template/lint never need one

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(self.binary), *args], capture_output=True, text=True,
                              env=self.env, timeout=60, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def template(self, values: dict[str, Any] | None = None, *extra: str,
                 release: str = "ar", namespace: str = "ar-system",
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        args = ["template", release, str(CHART), "--namespace", namespace, *extra]
        with values_file(values) as path:
            if path is not None:
                args += ["--values", str(path)]
            return self.run(*args, check=check)

    def render(self, values: dict[str, Any] | None = None, *extra: str,
               release: str = "ar", namespace: str = "ar-system") -> list[dict[str, Any]]:
        """The rendered objects (templates/tests included, as `helm template` prints them)."""
        out = self.template(values, *extra, release=release, namespace=namespace).stdout
        return [d for d in yaml.safe_load_all(out) if d]


class values_file:  # used like a function: `with values_file(v) as path`
    """A temporary values file for `values` (None: no file)."""

    def __init__(self, values: dict[str, Any] | None) -> None:
        self.values = values
        self.path: Path | None = None

    def __enter__(self) -> Path | None:
        if self.values is None:
            return None
        fd, name = tempfile.mkstemp(prefix="values-", suffix=".yaml")
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(self.values, f, sort_keys=False)
        self.path = Path(name)
        return self.path

    def __exit__(self, *exc: object) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deploy = one(objects, "Deployment")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    return dict(container)


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", json.dumps(e.get("valueFrom")))
            for e in container.get("env") or []}


def dump(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False)[:4000]
