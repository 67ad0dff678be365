"""The chart without a cluster: CRD copies, `helm lint --strict`, `helm template` with
default and non-default values, and values.schema.json refusing bad values."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from helm_support import (
    CHART,
    DEFAULT_KINDS,
    NON_DEFAULT,
    ROOT,
    RULES_FILE,
    OfflineHelm,
    by_kind,
    dump,
    env_of,
    one,
    operator_container,
    values_file,
)

SELECTOR_KEYS = {"app.kubernetes.io/name", "app.kubernetes.io/instance"}
LABEL_KEYS = {"app.kubernetes.io/name", "app.kubernetes.io/instance",
              "app.kubernetes.io/version", "app.kubernetes.io/managed-by",
              "app.kubernetes.io/component", "app.kubernetes.io/part-of", "helm.sh/chart"}


@pytest.fixture(scope="module")
def offline_helm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OfflineHelm]:
    from support.controlplane import find_assets

    yield OfflineHelm(find_assets(("helm",)) / "helm", tmp_path_factory.mktemp("helm-home"))


# ---- files ---------------------------------------------------------------------------------


def test_chart_crds_are_byte_identical_copies_of_crds() -> None:
    source = {p.name: p.read_bytes() for p in sorted((ROOT / "crds").glob("*.yaml"))}
    chart = {p.name: p.read_bytes() for p in sorted((CHART / "crds").glob("*.yaml"))}
    assert source, "no CRDs in crds/"
    assert sorted(chart) == sorted(source), "run hack/sync-chart-crds"
    for name, data in source.items():
        assert chart[name] == data, f"helm/agent-router/crds/{name} differs: run hack/sync-chart-crds"
    assert not any(p.is_symlink() for p in (CHART / "crds").iterdir())


def test_sync_script_check_mode_agrees() -> None:
    proc = subprocess.run([str(ROOT / "hack" / "sync-chart-crds"), "--check"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "agent-router"
    assert re.fullmatch(r"\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?", chart["version"])
    assert chart["appVersion"] == "0.1.0"
    assert chart["type"] == "application"


def test_every_value_is_documented_and_in_the_schema() -> None:
    """Each value in values.yaml has a `# --` comment (on itself or on the block it belongs
    to, for free-form blocks such as resources) and a place in values.schema.json."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert schema.get("additionalProperties") is False

    def walk(node: dict[str, Any], sch: dict[str, Any], path: str) -> None:
        for key, value in node.items():
            props = sch.get("properties", {})
            assert key in props, f"{path}{key} is not in values.schema.json"
            if isinstance(value, dict) and value and "properties" in props[key]:
                walk(value, props[key], f"{path}{key}.")

    walk(values, schema, "")

    lines = (CHART / "values.yaml").read_text().splitlines()
    ancestors: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing blocks
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w]*):\s*(\S.*)?$", line)
        if not m:
            continue
        indent, leaf = len(m.group(1)), m.group(3) is not None
        while ancestors and ancestors[-1][0] >= indent:
            ancestors.pop()
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#") \
                and not lines[j].strip().startswith("# --"):
            j -= 1
        documented = j >= 0 and lines[j].strip().startswith("# --")
        if leaf:
            assert documented or any(d for _, d in ancestors), \
                f"values.yaml:{i + 1} `{line.strip()}` has no `# --` comment"
        else:
            ancestors.append((indent, documented))


def test_docs_values_table_covers_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    docs = (ROOT / "docs" / "helm.md").read_text()
    section = docs.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = {line.split("`")[1] for line in rows}

    def leaves(node: dict[str, Any], prefix: str = "") -> Iterator[str]:
        for key, value in node.items():
            if isinstance(value, dict) and value:
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    for path in leaves(values):
        parts = path.split(".")
        prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        assert prefixes & documented, f"{path} is missing from the table in docs/helm.md"
    assert documented <= {".".join(p.split(".")[:i]) for p in leaves(values)
                          for i in range(1, len(p.split(".")) + 1)}, "stale rows"


@pytest.mark.controlplane
def test_cluster_role_uses_the_rules_file_verbatim(offline_helm: OfflineHelm) -> None:
    objects = offline_helm.render()
    role = one(objects, "ClusterRole")
    webhook = one(objects, "MutatingWebhookConfiguration")["metadata"]["name"]
    rules = RULES_FILE.read_text().replace("WEBHOOK_CONFIGURATION", webhook)
    assert role["rules"] == yaml.safe_load(rules)
    # Patch only our own webhook configurations, none of anyone else's.
    (patch,) = [r for r in role["rules"] if r["apiGroups"] == ["admissionregistration.k8s.io"]
                and "patch" in r["verbs"]]
    assert patch["resourceNames"] == [webhook]
    text = offline_helm.template(None, "--show-only", "templates/rbac.yaml").stdout
    # verbatim: every line of the file (comments too) appears, indented, in the manifest
    for line in rules.splitlines():
        if line.strip():
            assert f"  {line}" in text, line
    binding = one(objects, "ClusterRoleBinding")
    sa = one(objects, "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": "ar-system"}]


# ---- lint ----------------------------------------------------------------------------------


@pytest.mark.controlplane
def test_lint_strict_with_default_values(offline_helm: OfflineHelm) -> None:
    proc = offline_helm.run("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in proc.stdout, proc.stdout


@pytest.mark.controlplane
@pytest.mark.parametrize("values", [
    NON_DEFAULT,
    {"webhook": {"enabled": False}, "replicaCount": 2, "rbac": {"create": False},
     "serviceAccount": {"create": False, "name": "existing"}},
    {"replicaCount": 2, "webhook": {"existingCertSecret": "my-webhook-tls"}},
    {"webhook": {"certManager": {"enabled": True, "issuerRef": {
        "name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}}}},
], ids=["non-default", "no-webhook", "existing-cert", "cluster-issuer"])
def test_lint_strict_with_non_default_values(offline_helm: OfflineHelm,
                                              values: dict[str, Any]) -> None:
    with values_file(values) as path:
        proc = offline_helm.run("lint", "--strict", str(CHART), "--values", str(path),
                                "--namespace", "ar-system")
    assert "0 chart(s) failed" in proc.stdout, proc.stdout


@pytest.mark.controlplane
def test_package_carries_the_crds_and_the_rules(offline_helm: OfflineHelm, tmp_path) -> None:
    import tarfile

    offline_helm.run("package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("agent-router-0.1.0.tgz")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        for crd in (ROOT / "crds").glob("*.yaml"):
            member = tar.extractfile(f"agent-router/crds/{crd.name}")
            assert member is not None and member.read() == crd.read_bytes(), crd.name
    assert "agent-router/files/operator-rules.yaml" in names
    assert "agent-router/values.schema.json" in names
    assert "agent-router/templates/tests/test-webhook.yaml" in names


# ---- template: defaults --------------------------------------------------------------------


@pytest.mark.controlplane
def test_template_defaults(offline_helm: OfflineHelm) -> None:
    objects = offline_helm.render()
    assert {o["kind"] for o in objects} == DEFAULT_KINDS, dump([o["kind"] for o in objects])
    # no cert-manager, monitoring or other optional objects by default
    assert not [o for o in objects if o["apiVersion"].startswith(("cert-manager.io",
                                                                  "monitoring.coreos.com"))]
    for obj in objects:
        labels = obj["metadata"].get("labels") or {}
        assert LABEL_KEYS <= set(labels), (obj["kind"], labels)
        assert labels["app.kubernetes.io/instance"] == "ar"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "agent-router"
        assert labels["helm.sh/chart"] == "agent-router-0.1.0"
        if obj["kind"] not in {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering",
                               "MutatingWebhookConfiguration",
                               "ValidatingWebhookConfiguration"}:
            assert obj["metadata"]["namespace"] == "ar-system", obj["kind"]

    deploy = one(objects, "Deployment")
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert set(selector) == SELECTOR_KEYS
    template_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= template_labels.items()
    service = one(objects, "Service")
    assert set(service["spec"]["selector"]) == SELECTOR_KEYS
    assert service["spec"]["selector"] == selector
    # the helm test pod must never be one of the Service's endpoints
    test_pod = one(objects, "Pod")
    assert not service["spec"]["selector"].items() <= test_pod["metadata"]["labels"].items()

    assert deploy["spec"]["replicas"] == 1
    pod = deploy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = operator_container(objects)
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsUser"] == 65532 and sc["runAsNonRoot"] is True
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["image"] == "ghcr.io/agent-router/agent-operator:0.1.0"
    assert container["args"] == ["--all-namespaces"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]

    env = env_of(container)
    assert env["AGENT_OPERATOR_LIVENESS"] == "http://0.0.0.0:8080/healthz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}, probe
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"healthz": 8080, "webhook": 9443}

    peering = one(objects, "ClusterKopfPeering")
    assert peering["apiVersion"] == "kopf.dev/v1"
    assert env["AGENT_OPERATOR_PEERING"] == peering["metadata"]["name"] == "ar-agent-router"
    assert "AGENT_OPERATOR_PRIORITY" not in env  # random per replica

    mwc = one(objects, "MutatingWebhookConfiguration")
    name = mwc["metadata"]["name"]
    assert env["AGENT_OPERATOR_WEBHOOK_NAME"] == name
    assert len(name.split(".")) >= 3
    assert "webhooks" not in mwc  # the operator fills it; Helm's merge leaves it alone
    # kopf also keeps a (empty) ValidatingWebhookConfiguration of that name: Helm owns it
    vwc = one(objects, "ValidatingWebhookConfiguration")
    assert vwc["metadata"]["name"] == name and "webhooks" not in vwc
    assert env["AGENT_OPERATOR_WEBHOOK_HOST"] == f"{service['metadata']['name']}.ar-system.svc"
    assert env["AGENT_OPERATOR_WEBHOOK_PORT"] == "9443"
    assert env["AGENT_OPERATOR_WEBHOOK_SERVICE"] == f"ar-system/{service['metadata']['name']}:9443"
    assert service["spec"]["ports"] == [{"name": "webhook", "port": 9443,
                                         "targetPort": "webhook", "protocol": "TCP"}]
    assert "AGENT_OPERATOR_WEBHOOK_CERT_DIR" not in env  # the operator self-signs

    assert env["AGENT_SIDECAR_IMAGE"] == "ghcr.io/agent-router/agent-sidecar:0.1.0"
    assert env["AGENT_SIDECAR_APP_PORT"] == "4000"
    assert env["AGENT_SIDECAR_ADMIN_PORT"] == "4001"
    assert env["AGENT_SIDECAR_CPU_REQUEST"] == "50m"
    assert env["AGENT_SIDECAR_MEMORY_REQUEST"] == "64Mi"
    assert env["AGENT_SIDECAR_MEMORY_LIMIT"] == "256Mi"
    assert env["AGENT_SIDECAR_SET_APP_ENV"] == "true"
    assert "AGENT_SIDECAR_OTLP_ENDPOINT" not in env


@pytest.mark.controlplane
def test_operator_env_matches_what_the_operator_reads(offline_helm: OfflineHelm) -> None:
    """Every AGENT_* variable the chart sets is one the operator (or the sidecar settings it
    injects) actually reads: a renamed variable fails here, not silently in a cluster."""
    sources = "".join(p.read_text() for p in (ROOT / "operator").rglob("*.py"))
    for values in (None, NON_DEFAULT):
        env = env_of(operator_container(offline_helm.render(values)))
        for name in env:
            if name.startswith("AGENT_"):
                assert f'"{name}"' in sources, f"the operator never reads {name}"


@pytest.mark.controlplane
def test_test_hook_pod_renders(offline_helm: OfflineHelm) -> None:
    text = offline_helm.template(None, "--show-only", "templates/tests/test-webhook.yaml").stdout
    pod = yaml.safe_load(text)
    assert pod["kind"] == "Pod"
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    (container,) = pod["spec"]["containers"]
    assert container["args"][1:] == ["ar-agent-router-webhook.ar-system.svc", "9443"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # the check script is valid Python
    compile(container["args"][0], "helm-test", "exec")
    # without the webhook there is nothing to test
    proc = offline_helm.template({"webhook": {"enabled": False}}, "--show-only",
                                 "templates/tests/test-webhook.yaml", check=False)
    assert proc.returncode != 0 and "could not find template" in proc.stderr


# ---- template: non-default values ----------------------------------------------------------


@pytest.mark.controlplane
def test_template_non_default_values(offline_helm: OfflineHelm) -> None:
    objects = offline_helm.render(NON_DEFAULT)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds.count("Issuer") == 2 and kinds.count("Certificate") == 2
    assert "PodMonitor" in kinds
    for obj in objects:
        name = obj["metadata"]["name"]
        assert name.startswith(("router", "inject.router")), name

    deploy = one(objects, "Deployment")
    assert deploy["spec"]["replicas"] == 3
    assert deploy["spec"]["strategy"]["type"] == "RollingUpdate"
    pod = deploy["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["serviceAccountName"] == "router-sa"
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert pod["topologySpreadConstraints"][0]["maxSkew"] == 1
    meta = deploy["spec"]["template"]["metadata"]
    assert meta["labels"]["team"] == "platform"
    assert meta["annotations"]["example.com/scrape"] == "false"
    assert set(deploy["spec"]["selector"]["matchLabels"]) == SELECTOR_KEYS

    container = operator_container(objects)
    assert container["image"] == "registry.example/ar/operator@sha256:" + "ab" * 32
    assert container["imagePullPolicy"] == "Always"
    assert container["args"] == ["--all-namespaces", "--verbose"]
    assert container["resources"]["limits"]["memory"] == "1Gi"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"healthz": 8081, "webhook": 10443}
    assert container["livenessProbe"]["httpGet"]["port"] == "healthz"
    env = env_of(container)
    assert env["EXTRA"] == "1"
    assert env["AGENT_OPERATOR_PEERING"] == "router-peering"
    assert one(objects, "ClusterKopfPeering")["metadata"]["name"] == "router-peering"
    assert "AGENT_OPERATOR_PRIORITY" not in env
    assert env["AGENT_OPERATOR_PEERING_LIFETIME"] == "10"
    assert env["AGENT_OPERATOR_RESYNC_SECONDS"] == "5"
    assert env["AGENT_OPERATOR_LIVENESS"] == "http://0.0.0.0:8081/healthz"
    assert env["AGENT_OPERATOR_WEBHOOK_PORT"] == "10443"
    assert env["AGENT_OPERATOR_WEBHOOK_HOST"] == "router-webhook.ar-system.svc"
    assert env["AGENT_OPERATOR_WEBHOOK_NAME"] == "inject.router.agentrouter.io"
    assert env["AGENT_SIDECAR_IMAGE"] == "registry.example/ar/sidecar:1.2.3"
    assert (env["AGENT_SIDECAR_APP_PORT"], env["AGENT_SIDECAR_ADMIN_PORT"]) == ("5000", "5001")
    assert env["AGENT_SIDECAR_CPU_REQUEST"] == "100m"
    assert env["AGENT_SIDECAR_MEMORY_REQUEST"] == "96Mi"
    assert env["AGENT_SIDECAR_MEMORY_LIMIT"] == "384Mi"
    assert env["AGENT_SIDECAR_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
    assert env["AGENT_SIDECAR_SET_APP_ENV"] == "false"

    # cert-manager: the serving certificate's Secret is the operator's cert dir
    certs = {c["metadata"]["name"]: c for c in by_kind(objects, "Certificate")}
    serving = certs["router-webhook"]
    assert certs["router-ca"]["spec"]["isCA"] is True
    assert serving["spec"]["dnsNames"][0] == "router-webhook.ar-system.svc"
    assert serving["spec"]["issuerRef"] == {"name": "router-ca", "kind": "Issuer",
                                            "group": "cert-manager.io"}
    assert serving["spec"]["duration"] == "720h"
    assert env["AGENT_OPERATOR_WEBHOOK_CERT_DIR"] == "/etc/agent-operator/webhook-tls"
    handlers = (ROOT / "operator" / "agent_operator" / "handlers.py").read_text()
    for key in ("ca.crt", "tls.crt", "tls.key"):  # what a cert-manager Secret holds
        assert f'"{key}"' in handlers, f"the operator no longer reads {key} from the cert dir"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["webhook-tls"]["secret"]["secretName"] == serving["spec"]["secretName"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["webhook-tls"] == "/etc/agent-operator/webhook-tls"
    mwc = one(objects, "MutatingWebhookConfiguration")
    assert mwc["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": "ar-system/router-webhook",
        "example.com/owner": "platform"}
    issuers = {i["metadata"]["name"]: i["spec"] for i in by_kind(objects, "Issuer")}
    assert issuers == {"router-selfsigned": {"selfSigned": {}},
                       "router-ca": {"ca": {"secretName": "router-ca"}}}

    service = one(objects, "Service")
    assert service["spec"]["ports"][0]["port"] == 10443
    monitor = one(objects, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"] == {"matchLabels": {"agentrouter.io/inject": "true"}}
    assert monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "agent-admin", "path": "/metrics", "interval": "15s"}]
    sa = one(objects, "ServiceAccount")
    assert sa["metadata"]["annotations"] == {"example.com/role": "operator"}
    test_pod = one(objects, "Pod")
    assert test_pod["spec"]["containers"][0]["image"] == "registry.example/python:3.11-slim"
    assert test_pod["spec"]["volumes"][0]["secret"]["secretName"] == serving["spec"]["secretName"]


@pytest.mark.controlplane
def test_template_variants(offline_helm: OfflineHelm) -> None:
    # no webhook: no Service, no MutatingWebhookConfiguration, the operator runs --no-webhook
    objects = offline_helm.render({"webhook": {"enabled": False}, "replicaCount": 2})
    kinds = {o["kind"] for o in objects}
    assert not kinds & {"Service", "MutatingWebhookConfiguration",
                        "ValidatingWebhookConfiguration", "Pod", "Certificate"}
    container = operator_container(objects)
    assert "--no-webhook" in container["args"]
    assert not [k for k in env_of(container) if k.startswith("AGENT_OPERATOR_WEBHOOK")]
    assert [p["name"] for p in container["ports"]] == ["healthz"]

    # an existing Secret as the cert dir: no cert-manager objects
    objects = offline_helm.render({"replicaCount": 2,
                                   "webhook": {"existingCertSecret": "my-webhook-tls"}})
    assert not by_kind(objects, "Certificate")
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "webhook-tls", "secret": {"secretName": "my-webhook-tls",
                                              "defaultMode": 0o440}} in pod["volumes"]

    # an existing issuer: only the serving Certificate
    objects = offline_helm.render({"webhook": {"certManager": {"enabled": True, "issuerRef": {
        "name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}}}})
    assert not by_kind(objects, "Issuer")
    cert = one(objects, "Certificate")
    assert cert["spec"]["issuerRef"]["name"] == "corp-ca"

    # a fixed peering priority (single replica)
    env = env_of(operator_container(offline_helm.render({"operator": {"priority": 9}})))
    assert env["AGENT_OPERATOR_PRIORITY"] == "9"

    # no RBAC and an existing service account
    objects = offline_helm.render({"rbac": {"create": False},
                                   "serviceAccount": {"create": False, "name": "mine"}})
    assert not {"ClusterRole", "ClusterRoleBinding", "ServiceAccount"} & {
        o["kind"] for o in objects}
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "mine"

    # a release name containing the chart name is the full name
    objects = offline_helm.render(release="agent-router")
    assert one(objects, "Deployment")["metadata"]["name"] == "agent-router-operator"
    assert one(objects, "ClusterKopfPeering")["metadata"]["name"] == "agent-router"
    assert one(objects, "MutatingWebhookConfiguration")["metadata"]["name"] == \
        "agent-router-sidecar-injector.agentrouter.io"


# ---- schema and checks ---------------------------------------------------------------------


@pytest.mark.controlplane
@pytest.mark.parametrize(("values", "error"), [
    ({"replicas": 2}, "additional properties 'replicas' not allowed"),
    ({"replicaCount": "two"}, "at '/replicaCount': got string, want integer"),
    ({"replicaCount": -1}, "at '/replicaCount': minimum"),
    ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy': value must be one of"),
    ({"image": {"digest": "latest"}}, "at '/image/digest'"),
    ({"sidecar": {"resources": {"limits": {"cpu": "1"}}}},
     "at '/sidecar/resources/limits': additional properties 'cpu' not allowed"),
    ({"sidecar": {"appPort": 70000}}, "at '/sidecar/appPort': maximum"),
    ({"sidecar": {"resources": {"requests": {"memory": "lots"}}}},
     "at '/sidecar/resources/requests/memory'"),
    ({"sidecar": {"otlpEndpoint": "collector:4318"}}, "at '/sidecar/otlpEndpoint'"),
    ({"webhook": {"name": "injector.example"}}, "at '/webhook/name'"),
    ({"webhook": {"certManager": {"issuerRef": {"kind": "Issuer"}}}},
     "missing property 'name'"),
    ({"webhook": {"certManager": {"enabled": "yes"}}},
     "at '/webhook/certManager/enabled': got string, want boolean"),
    ({"monitoring": {"serviceMonitor": {"enabled": True}}},
     "additional properties 'serviceMonitor' not allowed"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_schema_rejects_bad_values(offline_helm: OfflineHelm, values: dict[str, Any],
                                   error: str) -> None:
    proc = offline_helm.template(values, check=False)
    assert proc.returncode != 0, f"accepted {values}"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert error in proc.stderr, proc.stderr


@pytest.mark.controlplane
@pytest.mark.parametrize(("values", "error"), [
    ({"replicaCount": 2}, "needs one certificate shared by all replicas"),
    ({"webhook": {"port": 8080}}, "webhook.port and operator.healthPort are both 8080"),
    ({"sidecar": {"appPort": 4001}}, "sidecar.appPort and sidecar.adminPort are both 4001"),
    ({"webhook": {"existingCertSecret": "x", "certManager": {"enabled": True}}},
     "either webhook.certManager.enabled or webhook.existingCertSecret"),
    ({"serviceAccount": {"create": False}}, "serviceAccount.name is required"),
    ({"replicaCount": 2, "operator": {"priority": 5},
      "webhook": {"certManager": {"enabled": True}}},
     "replicas of equal peering priority all pause"),
])
def test_template_refuses_inconsistent_values(offline_helm: OfflineHelm,
                                              values: dict[str, Any], error: str) -> None:
    proc = offline_helm.template(values, check=False)
    assert proc.returncode != 0, f"accepted {values}"
    assert error in proc.stderr, proc.stderr
