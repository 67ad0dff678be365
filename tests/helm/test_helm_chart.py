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
from agent_operator.options import Options, parse
from helm_support import (
    CHART,
    CLUSTER_SCOPED,
    CRD_DIR,
    DEFAULT_KINDS,
    NAMESPACE_RULES_FILE,
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
    chart = {p.name: p.read_bytes() for p in sorted(CRD_DIR.glob("*.yaml"))}
    assert source, "no CRDs in crds/"
    assert sorted(chart) == sorted(source), "run hack/sync-chart-crds"
    for name, data in source.items():
        assert chart[name] == data, f"{CRD_DIR}/{name} differs: run hack/sync-chart-crds"
    assert not any(p.is_symlink() for p in CRD_DIR.iterdir())
    # Not in the chart's crds/, which Helm installs once and never upgrades.
    assert not (CHART / "crds").exists()


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


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in by_kind(objects, kind) if o["metadata"]["name"] == name]
    return found


@pytest.mark.controlplane
def test_roles_use_the_rules_files_verbatim(offline_helm: OfflineHelm) -> None:
    objects = offline_helm.render()
    role = named(objects, "ClusterRole", "ar-agent-router-operator")
    webhook = one(objects, "MutatingWebhookConfiguration")["metadata"]["name"]
    rules = RULES_FILE.read_text().replace("WEBHOOK_CONFIGURATION", webhook)
    assert role["rules"] == yaml.safe_load(rules)
    namespace_role = one(objects, "Role")
    namespace_rules = (NAMESPACE_RULES_FILE.read_text()
                       .replace("LEASE", "ar-agent-router-operator")
                       .replace("CERT_SECRET", "ar-agent-router-webhook-tls"))
    assert namespace_role["rules"] == yaml.safe_load(namespace_rules)
    assert namespace_role["metadata"]["namespace"] == "ar-system"
    text = offline_helm.template(None, "--show-only", "templates/rbac.yaml").stdout
    # verbatim: every line of the files (comments too) appears, indented, in the manifest
    for line in (rules + namespace_rules).splitlines():
        if line.strip():
            assert f"  {line}" in text, line
    sa = one(objects, "ServiceAccount")
    subject = [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                "namespace": "ar-system"}]
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == subject
    namespace_binding = one(objects, "RoleBinding")
    assert namespace_binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                            "kind": "Role", "name": "ar-agent-router-operator"}
    assert namespace_binding["subjects"] == subject


@pytest.mark.controlplane
def test_no_cluster_wide_power_beyond_what_the_operator_calls(offline_helm: OfflineHelm) -> None:
    """What a platform review looks for first: nothing that escalates across the cluster."""
    role = named(offline_helm.render(), "ClusterRole", "ar-agent-router-operator")
    granted = {(group, resource, verb, tuple(rule.get("resourceNames") or ()))
               for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert not any("*" in (g, r, v) for g, r, v, _ in granted)
    # Webhook configurations: read and patch one by name, never create (the chart does).
    admission = {(r, v, n) for g, r, v, n in granted if g == "admissionregistration.k8s.io"}
    assert admission == {("mutatingwebhookconfigurations", v,
                          ("ar-agent-router-sidecar-injector.agentrouter.io",))
                         for v in ("get", "patch")}
    # Nothing that mints identities or changes permissions.
    for forbidden in ("serviceaccounts", "serviceaccounts/token", "roles", "clusterroles",
                      "rolebindings", "clusterrolebindings", "pods/exec", "nodes"):
        assert not [x for x in granted if x[1] == forbidden], forbidden
    # TokenReviews: asking who a sidecar's token belongs to (it mints nothing).
    assert {(g, v) for g, r, v, n in granted if r == "tokenreviews"} == {
        ("authentication.k8s.io", "create")}
    # Secrets: read by name only (no list, no watch), never created, changed or deleted
    # across the cluster; it patches only its own certificate's, in its namespace (the Role).
    assert {v for g, r, v, n in granted if r == "secrets"} == {"get"}
    namespaced = named(offline_helm.render(), "Role", "ar-agent-router-operator")
    writes = {(r, tuple(rule.get("resourceNames") or ()))
              for rule in namespaced["rules"] for r in rule["resources"]
              if set(rule["verbs"]) - {"get", "list", "watch"}}
    assert writes == {("leases", ("ar-agent-router-operator",)),
                      ("configmaps", ("ar-agent-router-operator",)),
                      ("secrets", ("ar-agent-router-webhook-tls",))}, writes
    # ConfigMaps: across the cluster it patches only `agent-router` (what pods the API server
    # injects start from: no key in it) and creates only that one, which RBAC cannot say
    # by name, so the chart's one admission policy refuses any other name to it.
    assert {(v, n) for g, r, v, n in granted if r == "configmaps"} == {
        ("patch", ("agent-router",)), ("create", ())}
    (guard,) = [o for o in offline_helm.render() if o["kind"] == "ValidatingAdmissionPolicy"]
    assert guard["spec"]["matchConstraints"]["resourceRules"][0]["resources"] == ["configmaps"]
    assert [v["expression"] for v in guard["spec"]["validations"]] == [
        'object.metadata.name == "agent-router"']


@pytest.mark.controlplane
def test_aggregated_roles_let_namespace_users_manage_or_read_the_two_kinds(
        offline_helm: OfflineHelm) -> None:
    objects = offline_helm.render()
    edit = named(objects, "ClusterRole", "ar-agent-router-edit")
    view = named(objects, "ClusterRole", "ar-agent-router-view")
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert "create" in edit["rules"][0]["verbs"]
    assert set(view["rules"][0]["verbs"]) == {"get", "list", "watch"}
    off = offline_helm.render({"rbac": {"aggregateToDefaultRoles": False}})
    assert [o["metadata"]["name"] for o in by_kind(off, "ClusterRole")] == \
        ["ar-agent-router-operator"]


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
    {"replicaCount": 1, "podDisruptionBudget": {"enabled": False}, "podAntiAffinity": "none"},
    {"webhook": {"certManager": {"enabled": True, "issuerRef": {
        "name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}}}},
], ids=["non-default", "no-webhook", "existing-cert", "one-replica", "cluster-issuer"])
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
    (archive,) = tmp_path.glob("agent-router-0.2.0.tgz")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        for crd in (ROOT / "crds").glob("*.yaml"):
            member = tar.extractfile(f"agent-router/files/crds/{crd.name}")
            assert member is not None and member.read() == crd.read_bytes(), crd.name
    assert "agent-router/files/operator-rules.yaml" in names
    assert "agent-router/files/operator-namespace-rules.yaml" in names
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
        assert labels["helm.sh/chart"] == "agent-router-0.2.0"
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == "ar-system", obj["kind"]

    # The CRDs are templates (so `helm upgrade` upgrades them), kept on uninstall, and the
    # same as crds/ but for their labels and that annotation.
    crds = {c["metadata"]["name"]: c for c in by_kind(objects, "CustomResourceDefinition")}
    for path in CRD_DIR.glob("*.yaml"):
        source = yaml.safe_load(path.read_text())
        rendered = crds.pop(source["metadata"]["name"])
        assert rendered["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert rendered["spec"] == source["spec"]
    assert not crds

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

    # HA: two replicas, a new one up before an old one goes, a budget for drains, spread
    # over nodes when there are several.
    assert deploy["spec"]["replicas"] == 2
    assert deploy["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}
    (soft,) = deploy["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"]
    assert soft["podAffinityTerm"] == {"topologyKey": "kubernetes.io/hostname",
                                       "labelSelector": {"matchLabels": selector}}
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
    assert env["AGENT_OPERATOR_LIVENESS"] == "http://*:8080/healthz"  # IPv4 and IPv6
    assert env["AGENT_OPERATOR_METRICS_PORT"] == "8081"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}, probe
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"healthz": 8080, "metrics": 8081, "webhook": 9443}
    assert env["AGENT_OPERATOR_LEASE"] == "ar-system/ar-agent-router-operator"
    assert container["env"][0] == {"name": "POD_NAME", "valueFrom": {
        "fieldRef": {"fieldPath": "metadata.name"}}}

    mwc = one(objects, "MutatingWebhookConfiguration")
    name = mwc["metadata"]["name"]
    assert env["AGENT_OPERATOR_WEBHOOK_NAME"] == name
    assert len(name.split(".")) >= 3
    (webhook,) = mwc["webhooks"]
    assert webhook["name"] == f"inject-sidecar.{name}"
    assert (webhook["failurePolicy"], webhook["timeoutSeconds"]) == ("Fail", 10)
    assert webhook["sideEffects"] == "None"  # it creates nothing
    assert webhook["objectSelector"] == {"matchLabels": {"agentrouter.io/inject": "true"}}
    assert webhook["namespaceSelector"] == {"matchExpressions": [{
        "key": "kubernetes.io/metadata.name", "operator": "NotIn",
        "values": ["kube-system", "ar-system"]}]}
    assert webhook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"],
                                 "resources": ["pods"], "operations": ["CREATE"],
                                 "scope": "Namespaced"}]
    assert webhook["clientConfig"] == {"service": {
        "namespace": "ar-system", "name": service["metadata"]["name"], "port": 9443,
        "path": "/inject-sidecar"}}  # the caBundle is the operator's to set
    host = f"{service['metadata']['name']}.ar-system.svc"
    assert env["AGENT_OPERATOR_WEBHOOK_HOSTS"] == f"{host},{host}.cluster.local"
    assert env["AGENT_OPERATOR_WEBHOOK_PORT"] == "9443"
    # Injected sidecars watch the operator through the same Service, reaching its
    # ClusterIP by name without cluster DNS (the variable Kubernetes sets for it).
    assert env["AGENT_SIDECAR_OPERATOR_URL"] == f"https://{host}:9443"
    assert env["AGENT_SIDECAR_OPERATOR_IP"] == "$(AR_AGENT_ROUTER_WEBHOOK_SERVICE_HOST)"
    assert service["spec"]["ports"] == [{"name": "webhook", "port": 9443,
                                         "targetPort": "webhook", "protocol": "TCP"}]
    # The operator issues the certificate into the Secret every replica serves from.
    assert "AGENT_OPERATOR_WEBHOOK_CERT_DIR" not in env
    assert env["AGENT_OPERATOR_WEBHOOK_CERT_SECRET"] == "ar-system/ar-agent-router-webhook-tls"
    assert env["AGENT_OPERATOR_WEBHOOK_CERT_VALIDITY_SECONDS"] == str(365 * 86400)
    # A renewed CA reaches the pods' mounted bundles before its certificate is served.
    assert env["AGENT_OPERATOR_WEBHOOK_CA_PROPAGATION_SECONDS"] == "300"

    assert env["AGENT_SIDECAR_IMAGE"] == "ghcr.io/agent-router/agent-sidecar:0.1.0"
    assert env["AGENT_SIDECAR_APP_PORT"] == "4000"
    assert env["AGENT_SIDECAR_ADMIN_PORT"] == "4001"
    assert env["AGENT_SIDECAR_HEALTH_PORT"] == "4002"
    assert env["AGENT_SIDECAR_CPU_REQUEST"] == "50m"
    assert env["AGENT_SIDECAR_MEMORY_REQUEST"] == "64Mi"
    assert env["AGENT_SIDECAR_MEMORY_LIMIT"] == "256Mi"
    assert env["AGENT_SIDECAR_SET_APP_ENV"] == "true"
    assert "AGENT_SIDECAR_OTLP_ENDPOINT" not in env
    assert "AGENT_SIDECAR_IMAGE_PULL_SECRETS" not in env


@pytest.mark.controlplane
def test_operator_env_matches_what_the_operator_reads(offline_helm: OfflineHelm) -> None:
    """Every AGENT_* variable the chart sets is one the operator (or the sidecar settings it
    injects) actually reads: a renamed variable fails here, not silently in a cluster."""
    sources = "".join(p.read_text() for p in (ROOT / "operator").rglob("*.py"))
    for values in (None, NON_DEFAULT):
        env = env_of(operator_container(offline_helm.render(values)))
        for name in env:
            # options.py reads AGENT_OPERATOR_<X> as e("<X>")
            short = f'e("{name.removeprefix("AGENT_OPERATOR_")}"'
            if name.startswith("AGENT_"):
                assert f'"{name}"' in sources or short in sources, \
                    f"the operator never reads {name}"


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
    assert kinds.count("PodMonitor") == 2
    assert kinds.count("ClusterRole") == 1  # no aggregated roles
    for obj in objects:
        name = obj["metadata"]["name"]
        assert name.startswith(("router", "inject.router")) or \
            obj["kind"] == "CustomResourceDefinition", name

    deploy = one(objects, "Deployment")
    assert deploy["spec"]["replicas"] == 3
    assert deploy["spec"]["strategy"]["type"] == "RollingUpdate"
    assert one(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 2
    pod = deploy["spec"]["template"]["spec"]
    (hard,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert hard["topologyKey"] == "kubernetes.io/hostname"
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
    assert ports == {"healthz": 8081, "metrics": 9091, "webhook": 10443}
    assert container["livenessProbe"]["httpGet"]["port"] == "healthz"
    env = env_of(container)
    assert env["EXTRA"] == "1"
    assert env["AGENT_OPERATOR_LEASE"] == "ar-system/router-operator"
    assert env["AGENT_OPERATOR_PEERING_LIFETIME"] == "10"
    assert env["AGENT_OPERATOR_RESYNC_SECONDS"] == "5"
    assert env["AGENT_OPERATOR_LIVENESS"] == "http://*:8081/healthz"
    assert env["AGENT_OPERATOR_METRICS_PORT"] == "9091"
    assert env["AGENT_OPERATOR_WEBHOOK_PORT"] == "10443"
    assert env["AGENT_OPERATOR_WEBHOOK_NAME"] == "inject.router.agentrouter.io"
    assert env["AGENT_SIDECAR_IMAGE_PULL_SECRETS"] == "regcred,mirror"
    (webhook,) = one(objects, "MutatingWebhookConfiguration")["webhooks"]
    assert (webhook["failurePolicy"], webhook["timeoutSeconds"]) == ("Ignore", 5)
    assert webhook["namespaceSelector"]["matchExpressions"][0]["values"] == [
        "kube-system", "ar-system", "legacy"]
    assert webhook["clientConfig"]["service"]["port"] == 10443
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
    assert serving["spec"]["dnsNames"] == ["router-webhook.ar-system.svc",
                                           "router-webhook.ar-system.svc.corp.example"]
    assert serving["spec"]["issuerRef"] == {"name": "router-ca", "kind": "Issuer",
                                            "group": "cert-manager.io"}
    assert serving["spec"]["duration"] == "720h"
    assert env["AGENT_OPERATOR_WEBHOOK_CERT_DIR"] == "/etc/agent-operator/webhook-tls"
    from agent_operator.certs import CA_KEY, CERT_KEY, KEY_KEY

    # what a cert-manager Secret holds, and what the operator reads from the directory
    assert (CA_KEY, CERT_KEY, KEY_KEY) == ("ca.crt", "tls.crt", "tls.key")
    assert "AGENT_OPERATOR_WEBHOOK_CERT_SECRET" not in env
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
    monitors = {m["metadata"]["name"]: m for m in by_kind(objects, "PodMonitor")}
    operator_monitor = monitors.pop("router-operator")
    assert operator_monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "20s"}]
    assert operator_monitor["spec"]["selector"]["matchLabels"] == \
        deploy["spec"]["selector"]["matchLabels"]
    (monitor,) = monitors.values()
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"] == {"matchLabels": {"agentrouter.io/inject": "true"}}
    assert monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "agent-health", "path": "/metrics", "interval": "15s"}]
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
    assert not kinds & {"Service", "MutatingWebhookConfiguration", "Pod", "Certificate"}
    container = operator_container(objects)
    assert "--no-webhook" in container["args"]
    assert not [k for k in env_of(container) if k.startswith("AGENT_OPERATOR_WEBHOOK")]
    assert [p["name"] for p in container["ports"]] == ["healthz", "metrics"]

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

    # one replica: no budget (it would block every drain), anti-affinity off
    objects = offline_helm.render({"replicaCount": 1, "podDisruptionBudget": {"enabled": False},
                                   "podAntiAffinity": "none"})
    assert not by_kind(objects, "PodDisruptionBudget")
    assert "affinity" not in one(objects, "Deployment")["spec"]["template"]["spec"]

    # no RBAC and an existing service account
    objects = offline_helm.render({"rbac": {"create": False},
                                   "serviceAccount": {"create": False, "name": "mine"}})
    assert not {"ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"} & {
        o["kind"] for o in objects}
    assert "ar-agent-router-operator" not in [
        o["metadata"]["name"] for o in by_kind(objects, "ClusterRole")]
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "mine"

    # CRDs managed apart (e.g. by a GitOps tool), or dropped with the release
    assert not by_kind(offline_helm.render({"crds": {"install": False}}),
                       "CustomResourceDefinition")
    unkept = by_kind(offline_helm.render({"crds": {"keep": False}}), "CustomResourceDefinition")
    assert unkept and not [c for c in unkept if c["metadata"].get("annotations")]

    # a release name containing the chart name is the full name
    objects = offline_helm.render(release="agent-router")
    assert one(objects, "Deployment")["metadata"]["name"] == "agent-router-operator"
    assert one(objects, "MutatingWebhookConfiguration")["metadata"]["name"] == \
        "agent-router-sidecar-injector.agentrouter.io"


# ---- who injects: injection.by ---------------------------------------------------------------

SERVES_POLICY = ("--api-versions", "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy")
INJECTORS = {"MutatingWebhookConfiguration", "MutatingAdmissionPolicy",
             "MutatingAdmissionPolicyBinding"}


def injection(offline_helm: OfflineHelm, values: dict[str, Any] | None,
              *extra: str) -> tuple[set[str], Options]:
    """What injects the sidecar in the rendered chart, and the options the operator reads
    from the args and environment the chart gives it."""
    objects = offline_helm.render(values, *extra)
    container = operator_container(objects)
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    return {o["kind"] for o in objects} & INJECTORS, parse(container["args"], env)


@pytest.mark.controlplane
@pytest.mark.parametrize(("values", "extra", "injector"), [
    # auto: the cluster's API versions decide (helm install and upgrade ask the cluster)
    (None, ("--kube-version", "1.35.0"), "webhook"),
    # helm template knows only Helm's built-in list, which has no admission policy
    # resource: a 1.36 version alone is not enough to know the API is served
    (None, ("--kube-version", "1.36.3"), "webhook"),
    (None, ("--kube-version", "1.36.3", *SERVES_POLICY), "policy"),
    (None, SERVES_POLICY, "policy"),
    # explicit choices stand, whatever the cluster serves
    ({"injection": {"by": "webhook"}}, ("--kube-version", "1.36.3", *SERVES_POLICY), "webhook"),
    ({"injection": {"by": "policy"}}, ("--kube-version", "1.36.3"), "policy"),
    # no TLS port for the sidecars to watch: nothing injects, whatever injection.by says
    ({"webhook": {"enabled": False}}, SERVES_POLICY, ""),
    ({"webhook": {"enabled": False}, "injection": {"by": "policy"}}, SERVES_POLICY, ""),
], ids=["auto-1.35", "auto-1.36-template", "auto-1.36-served", "auto-served",
        "webhook-on-1.36", "policy-on-1.36", "no-webhook-auto", "no-webhook-policy"])
def test_who_injects_reaches_the_operator(offline_helm: OfflineHelm,
                                          values: dict[str, Any] | None, extra: tuple[str, ...],
                                          injector: str) -> None:
    """What was tried: `helm template` with each choice of injection.by against the API
    versions a cluster serves: the chart renders one injector, and the operator, reading
    the args and environment the chart gives it, keeps the namespace ConfigMaps only for
    the policy and the webhook configuration's caBundle only for the webhook."""
    kinds, options = injection(offline_helm, values, *extra)
    expected = {"webhook": {"MutatingWebhookConfiguration"},
                "policy": {"MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"},
                "": set()}[injector]
    assert kinds == expected
    assert options.webhook is bool(injector)  # the TLS port the sidecars watch
    assert options.namespace_configs is (injector == "policy")
    assert options.webhook_configuration == (
        "ar-agent-router-sidecar-injector.agentrouter.io" if injector == "webhook" else None)
    if injector:
        assert options.sidecar.operator_url == "https://ar-agent-router-webhook.ar-system.svc:9443"


@pytest.mark.controlplane
@pytest.mark.parametrize("kube", ["1.35.0", "1.36.3"])
def test_lint_strict_on_either_side_of_1_36(offline_helm: OfflineHelm, kube: str) -> None:
    proc = offline_helm.run("lint", "--strict", str(CHART), "--kube-version", kube)
    assert "0 chart(s) failed" in proc.stdout, proc.stdout


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
    ({"webhook": {"failurePolicy": "Retry"}}, "at '/webhook/failurePolicy'"),
    ({"webhook": {"timeoutSeconds": 31}}, "at '/webhook/timeoutSeconds': maximum"),
    ({"webhook": {"excludeNamespaces": ["Kube_System"]}}, "at '/webhook/excludeNamespaces/0'"),
    ({"podAntiAffinity": "always"}, "at '/podAntiAffinity'"),
    ({"clusterDomain": "cluster.local."}, "at '/clusterDomain'"),
    ({"sidecar": {"imagePullSecrets": [{"name": "regcred"}]}},
     "at '/sidecar/imagePullSecrets/0': got object, want string"),
    ({"operator": {"priority": 5}}, "additional properties 'priority' not allowed"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_schema_rejects_bad_values(offline_helm: OfflineHelm, values: dict[str, Any],
                                   error: str) -> None:
    proc = offline_helm.template(values, check=False)
    assert proc.returncode != 0, f"accepted {values}"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert error in proc.stderr, proc.stderr


@pytest.mark.controlplane
@pytest.mark.parametrize(("values", "error"), [
    ({"replicaCount": 1}, "podDisruptionBudget.minAvailable=1 with replicaCount=1"),
    ({"webhook": {"port": 8080}}, "operator.healthPort, operator.metricsPort and webhook.port "
     "must differ (got [8080 8081 8080])"),
    ({"operator": {"metricsPort": 8080}}, "must differ (got [8080 8080 9443])"),
    ({"sidecar": {"appPort": 4001}}, "sidecar.appPort, sidecar.adminPort and "
     "sidecar.healthPort must differ (got [4001 4001 4002])"),
    ({"webhook": {"existingCertSecret": "x", "certManager": {"enabled": True}}},
     "either webhook.certManager.enabled or webhook.existingCertSecret"),
    ({"serviceAccount": {"create": False}}, "serviceAccount.name is required"),
])
def test_template_refuses_inconsistent_values(offline_helm: OfflineHelm,
                                              values: dict[str, Any], error: str) -> None:
    proc = offline_helm.template(values, check=False)
    assert proc.returncode != 0, f"accepted {values}"
    assert error in proc.stderr, proc.stderr
