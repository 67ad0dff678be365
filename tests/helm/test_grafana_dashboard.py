"""The Grafana dashboard the chart ships (files/dashboards/agent-router.json).

Every query in it must parse as PromQL and name only metrics and labels that the code
really exports: those are read from a real ``agent-sidecar`` process's ``/metrics``
after traffic that makes every family show samples (a fallback, a stream, a stream that
fails after content, a refused admin request, a PUT /config), and from a real operator's
after it injected a pod, reconciled and delivered to a real watching sidecar; never from a
list kept by hand.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml
from fakes import CutStream, Fail, FakeProvider, Reply, StreamError
from helm_support import CHART, OfflineHelm, by_kind
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sidecar"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
from operator_support import (
    OperatorProcess,
    operator,  # noqa: F401  (the module-scoped operator fixture, with its metrics port)
    wait_for,
)
from sidecar_support import TOKEN, SidecarProcess, agent_spec, document, fast_route
from support.watching import WatchedPods, served
from test_operator_e2e import KEYS, policy, pool

DASHBOARD = CHART / "files" / "dashboards" / "agent-router.json"
# Labels Prometheus adds to every series it scrapes from a pod (PodMonitor target labels).
TARGET_LABELS = {"namespace", "pod", "container", "job", "instance", "endpoint"}
# Sample names a family of each type exposes, besides those seen (a family with no sample
# yet still counts).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}


@dataclass
class Exported:
    """What a component's /metrics serves."""

    names: set[str] = field(default_factory=set)  # every series name its families expose
    labels: dict[str, set[str]] = field(default_factory=dict)  # those with samples: labels


def load_dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every variable's query."""
    found = [
        (f"panel {p['title']!r} {t['refId']}", t["expr"])
        for p in panels(dashboard)
        for t in p.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(<selector>, <label>): the selector is PromQL, the label one of its own
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
            assert match, f"variable {variable['name']}: not a label_values() query"
            selector, label = match.groups()
            found.append((f"variable {variable['name']}", f"sum by ({label}) ({selector})"))
    return found


def grafana_variables(expr: str) -> str:
    """Grafana's variables replaced as Grafana would before sending the query."""
    expr = re.sub(r"\$__(rate_)?interval\b", "5m", expr)
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)


def selectors(node: Any) -> Iterator[tuple[str, set[str]]]:
    """(metric name, label names used with it) for every selector in a PromQL tree; the
    labels of `by (...)` / `without (...)` count for the selectors they aggregate."""
    if isinstance(node, promql_parser.VectorSelector):
        yield node.name or "", {m.name for m in node.matchers.matchers}
    elif isinstance(node, promql_parser.MatrixSelector):
        yield from selectors(node.vector_selector)
    elif isinstance(node, promql_parser.AggregateExpr):
        grouped = set(node.modifier.labels) if node.modifier else set()
        for name, labels in selectors(node.expr):
            yield name, labels | grouped
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from selectors(node.lhs)
        yield from selectors(node.rhs)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            yield from selectors(arg)
    elif isinstance(
        node, (promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.SubqueryExpr)
    ):
        yield from selectors(node.expr)
    elif not isinstance(node, (promql_parser.NumberLiteral, promql_parser.StringLiteral)):
        raise AssertionError(f"no rule for PromQL node {type(node).__name__}: add one")


def scrape(text: str) -> Exported:
    exported = Exported()
    for family in text_string_to_metric_families(text):
        exported.names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        for sample in family.samples:
            exported.names.add(sample.name)
            exported.labels.setdefault(sample.name, set()).update(sample.labels)
    return exported


# ---- what the code exports ----------------------------------------------------------------


@pytest.fixture(scope="module")
def sidecar_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    """A real sidecar's /metrics after a fallback, a stream, a stream that fails after its
    first content, one continued on the next agent, an admin request with a wrong token and
    a PUT /config: every family it has shows samples, labels and all."""
    claude = FakeProvider("anthropic", default=Reply(text="unused"))
    gpt = FakeProvider("openai", default=Reply(text="Hello there", usage=(3, 2)))
    with claude.running(), gpt.running():
        # gpt's limit is far from reached: it only gives the quota metric a sample.
        agents = [
            agent_spec(claude, "claude"),
            agent_spec(gpt, "gpt", limits={"tpm": 10**6}),
            agent_spec(gpt, "gpt-next"),
        ]
        routes = [
            fast_route("default", ["claude", "gpt"], circuit_breaker={"failures": 1}),
            fast_route("resumed", ["gpt", "gpt-next"], stream_recovery="continue"),
        ]
        config = tmp_path_factory.mktemp("sidecar") / "router.yaml"
        config.write_text(yaml.safe_dump(document(agents, routes)))
        sidecar = SidecarProcess(
            [
                "--config",
                str(config),
                "--port",
                "0",
                "--admin-port",
                "0",
                "--admin-host",
                "127.0.0.1",
            ],
            env={"AGENT_SIDECAR_TOKEN": TOKEN},
        ).wait_ready()
        try:
            claude.set_default(Fail(529))  # every request falls back to gpt
            chat = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
            with httpx.Client(base_url=sidecar.app_url, timeout=30) as app:
                assert app.post("/v1/chat/completions", json=chat).status_code == 200
                with app.stream(
                    "POST", "/v1/chat/completions", json={**chat, "stream": True}
                ) as stream:
                    assert stream.status_code == 200 and "Hello" in stream.read().decode()
                gpt.script(StreamError(after=1))
                with app.stream(
                    "POST", "/v1/chat/completions", json={**chat, "stream": True}
                ) as failing:
                    assert "error" in failing.read().decode()
                gpt.script(CutStream(after=1), Reply(text=" there"))
                resumed = {**chat, "model": "resumed", "stream": True}
                with app.stream("POST", "/v1/chat/completions", json=resumed) as continued:
                    assert "[DONE]" in continued.read().decode()
            with httpx.Client(base_url=sidecar.admin_url, timeout=30) as admin:
                wrong = {"Authorization": "Bearer " + "x" * len(TOKEN)}
                assert admin.get("/config", headers=wrong).status_code == 401
                pushed = admin.put(
                    "/config",
                    json=document(agents, routes, version=2),
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
                assert pushed.status_code == 200, pushed.text
                yield scrape(admin.get("/metrics").text)
        finally:
            sidecar.stop(20)


@pytest.fixture(scope="module")
def operator_metrics(
    control_plane: Any,
    operator: OperatorProcess,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Exported]:
    """A real operator's /metrics after its webhook injected a labelled pod and it
    reconciled the namespace, delivering a policy's config to a real sidecar watching it
    with the pod's token: every family it has shows samples (the certificate's, the
    webhook's, the leader's, the watches' too)."""
    cp = control_plane
    namespace = cp.create_namespace()
    try:
        with FakeProvider("openai").running() as gpt, \
                FakeProvider("anthropic").running() as claude, \
                WatchedPods(cp, namespace, tmp_path_factory.mktemp("pods"),
                            operator.url) as pods:
            cp.apply([KEYS, pool("main", gpt, claude), policy()], namespace)
            sidecar = pods.start("chat-0", {"app": "chat"})
            wait_for(lambda: served(sidecar), 30, "the operator's config")
            counted = (
                'agent_operator_webhook_requests_total{result="injected"} 1.0',
                'agent_operator_reconciles_total{result="ok"}',
                'agent_operator_configs_served_total{result="sent"}',
                'agent_operator_config_acks_total{result="applied"} 1.0',
                'agent_operator_sidecars{state="in_sync"} 1.0',
                "agent_operator_leader 1.0",  # alone, without a Lease: it acts
            )
            text = wait_for(
                lambda: all(c in (t := operator.metrics()) for c in counted) and t,
                30,
                "the injection, the delivery and its reconcile counted in the operator's "
                "metrics",
            )
        expiry = re.search(
            r"^agent_operator_certificate_expiry_timestamp_seconds (\S+)$", text, re.M
        )
        assert expiry and float(expiry[1]) > time.time(), "no served certificate's expiry"
        yield scrape(text)
    finally:
        cp.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


# The exporters, by metric name prefix.
EXPORTERS = {"agent_sidecar_": "sidecar_metrics", "agent_operator_": "operator_metrics"}


@pytest.fixture(scope="module")
def exported(request: pytest.FixtureRequest) -> dict[str, Exported]:
    return {prefix: request.getfixturevalue(name) for prefix, name in EXPORTERS.items()}


# ---- the dashboard ------------------------------------------------------------------------------


@pytest.mark.controlplane
def test_every_query_names_metrics_and_labels_the_code_exports(
    exported: dict[str, Exported],
) -> None:
    """Each query parses as PromQL; each metric it reads is one a real component serves, and
    each label it matches or groups by is on that metric (or one Prometheus adds)."""
    dashboard = load_dashboard()
    found = queries(dashboard)
    assert len(found) >= 20, found
    used: set[str] = set()
    for where, expr in found:
        try:
            tree = promql_parser.parse(grafana_variables(expr))
        except ValueError as exc:
            raise AssertionError(f"{where}: not PromQL ({exc}): {expr}") from None
        names = list(selectors(tree))
        assert names, f"{where} reads no metric: {expr}"
        for name, labels in names:
            prefix = next((p for p in EXPORTERS if name.startswith(p)), None)
            assert prefix, f"{where}: {name!r} belongs to no component in EXPORTERS"
            series = exported[prefix]
            assert name in series.names, (
                f"{where}: {name!r} is not exported; {sorted(series.names)}"
            )
            assert name in series.labels, f"{where}: no sample of {name!r}: exercise it above"
            unknown = labels - series.labels[name] - TARGET_LABELS - {"le"}
            assert not unknown, f"{where}: {name!r} has no label {sorted(unknown)}: {expr}"
            used.add(name)
    # The subjects the dashboard is for, each read by some panel.
    for metric in (
        "agent_sidecar_requests_total",
        "agent_sidecar_fallbacks_total",
        "agent_sidecar_attempts_total",
        "agent_sidecar_request_duration_seconds_bucket",
        "agent_sidecar_time_to_first_token_seconds_bucket",
        "agent_sidecar_circuit_state",
        "agent_sidecar_config_version",
        "agent_sidecar_config_pushes_total",
        "agent_operator_reconciles_total",
        "agent_operator_reconcile_duration_seconds_bucket",
        "agent_operator_config_acks_total",
        "agent_operator_configs_served_total",
        "agent_operator_sidecars",
        "agent_operator_webhook_requests_total",
        "agent_operator_certificate_expiry_timestamp_seconds",
        "agent_operator_leader",
    ):
        assert metric in used, f"no panel shows {metric}"


def unread_families(exported: Exported) -> list[str]:
    """The families no panel reads (``_created`` and the parts of a histogram read through
    its buckets aside)."""
    text = DASHBOARD.read_text()
    families = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in exported.names}
    return sorted(f for f in families if f not in text)


def test_every_metric_the_sidecar_exports_is_on_the_dashboard(
    sidecar_metrics: Exported,
) -> None:
    """A metric added to the sidecar without a panel shows up here."""
    missing = unread_families(sidecar_metrics)
    assert not missing, f"no panel reads {missing}"


@pytest.mark.controlplane
def test_every_metric_the_operator_exports_is_on_the_dashboard(
    operator_metrics: Exported,
) -> None:
    """A metric added to the operator without a panel shows up here."""
    missing = unread_families(operator_metrics)
    assert not missing, f"no panel reads {missing}"


def test_panels_and_variables_fit_together() -> None:
    """Unique ids, no two panels on the same grid cells, every panel reads the data source
    picked in the dashboard, and every $variable a query uses is defined."""
    dashboard = load_dashboard()
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables >= {"datasource", "namespace", "pod", "route"}
    seen_ids: set[int] = set()
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard):
        assert panel["id"] not in seen_ids, f"duplicate panel id {panel['id']}"
        seen_ids.add(panel["id"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"] and panel.get("description"), panel["title"]
    for where, expr in queries(dashboard):
        for name in re.findall(r"\$\{?(\w+)\}?", expr):
            assert name.startswith("__") or name in variables, f"{where}: ${name} undefined"


# ---- in the chart ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def offline_helm(tmp_path_factory: pytest.TempPathFactory) -> OfflineHelm:
    from support.controlplane import find_assets

    return OfflineHelm(find_assets(("helm",)) / "helm", tmp_path_factory.mktemp("helm-home"))


def dashboards(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chart's ConfigMaps but the operator's own (its replicas' summaries)."""
    return [o for o in by_kind(objects, "ConfigMap")
            if o["metadata"]["labels"]["app.kubernetes.io/component"] != "operator"]


@pytest.mark.controlplane
def test_the_chart_ships_it_for_grafanas_sidecar_when_asked(offline_helm: OfflineHelm) -> None:
    """Off by default; on, a ConfigMap with Grafana's sidecar label whose data is the file
    byte for byte, in the namespace asked for."""
    assert not dashboards(offline_helm.render())
    values = {
        "monitoring": {
            "grafanaDashboard": {
                "enabled": True,
                "namespace": "grafana",
                "annotations": {"grafana_folder": "LLM"},
            }
        }
    }
    (config_map,) = dashboards(offline_helm.render(values))
    meta = config_map["metadata"]
    assert meta["name"] == "ar-agent-router-dashboards"
    assert meta["namespace"] == "grafana"
    assert meta["labels"]["grafana_dashboard"] == "1"
    assert meta["labels"]["app.kubernetes.io/component"] == "monitoring"
    assert meta["annotations"] == {"grafana_folder": "LLM"}
    assert config_map["data"] == {"agent-router.json": DASHBOARD.read_text()}

    # A Grafana whose sidecar looks for another label (null drops the default one).
    custom = {
        "monitoring": {
            "grafanaDashboard": {
                "enabled": True,
                "labels": {"grafana_dashboard": None, "dashboards": "agent-router"},
            }
        }
    }
    (custom_map,) = dashboards(offline_helm.render(custom))
    labels = custom_map["metadata"]["labels"]
    assert labels["dashboards"] == "agent-router" and "grafana_dashboard" not in labels


@pytest.mark.controlplane
def test_the_schema_refuses_a_misspelt_dashboard_value(offline_helm: OfflineHelm) -> None:
    """A typo in the new key is refused by values.schema.json, not silently ignored."""
    proc = offline_helm.template(
        {"monitoring": {"grafanaDashboard": {"enable": True}}}, check=False
    )
    assert proc.returncode != 0
    assert "enable" in proc.stderr and "additional properties" in proc.stderr.lower()
