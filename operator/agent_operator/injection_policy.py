"""Generate the chart's MutatingAdmissionPolicy from `inject`'s description of a sidecar.

    python -m agent_operator.injection_policy helm/agent-router/templates/injection-policy.yaml

The API server injects with it, so a pod is created while no operator replica runs. Its
CEL is generated, never written by hand: the sidecar container, its volumes and the app's
environment are built by the same functions `inject.inject_mounted` uses, from settings
whose values are markers, and each marker becomes the Helm expression of its value
(image, ports, resources, ...). What depends on the pod is CEL: whether it has init
containers, volumes or a service account, which app variables it sets itself, its name
label, and the key Secrets listed in its namespace's ConfigMap (the policy's params).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent_operator.inject import (
    CONFIG_MAP,
    CONTAINER,
    INJECT_LABEL,
    KEYS_KEY,
    SidecarSettings,
    app_env,
    key_source,
    mounted_sources,
    sidecar_container,
    token_source,
    work_volumes,
)
from agent_operator.options import Options

# Markers for the chart's values, and what each becomes in the template. Numbers are
# markers too: ports appear bare (CEL ints) and inside strings (URLs, env values).
_MARKERS = {
    "@@image@@": '{{ include "agent-router.sidecarImage" . }}',
    "@@cpu@@": "{{ .Values.sidecar.resources.requests.cpu }}",
    "@@memory@@": "{{ .Values.sidecar.resources.requests.memory }}",
    "@@memory-limit@@": "{{ .Values.sidecar.resources.limits.memory }}",
    "@@operator@@": '{{ include "agent-router.webhookHost" . }}',
    "@@otlp@@": "{{ .Values.sidecar.otlpEndpoint | toJson }}",
    "@@pull-secrets@@": "{{ .Values.sidecar.imagePullSecrets | toJson }}",
    "61001": "{{ int .Values.sidecar.appPort }}",
    "61002": "{{ int .Values.sidecar.adminPort }}",
    "61003": "{{ int .Values.sidecar.healthPort }}",
    "61004": "{{ int .Values.webhook.port }}",
}
SETTINGS = SidecarSettings(
    image="@@image@@", app_port=61001, admin_port=61002, health_port=61003,
    cpu_request="@@cpu@@", memory_request="@@memory@@", memory_limit="@@memory-limit@@",
    operator_url="https://@@operator@@:61004",
)
AUDIENCE = Options.delivery_audience  # the operator's default, which the chart keeps
# The pod's own values, CEL expressions over the object under admission.
_SERVICE = "@@service@@"


@dataclass(frozen=True)
class Raw:
    """A CEL expression placed as is."""

    expression: str


class Cel(str):
    """A CEL expression: written as a YAML block, so that the Helm expressions in it need
    no escaping."""


def cel(value: Any, indent: str = "") -> str:
    """JSON as a CEL literal, one entry a line: JSON is CEL's syntax already, but a CEL
    map's values share one type, so each is `dyn`."""
    inner = indent + "  "
    if isinstance(value, Raw):
        return value.expression
    if isinstance(value, dict):
        entries = [f"{inner}{json.dumps(k)}: dyn({cel(v, inner)})" for k, v in value.items()]
        return "{\n" + ",\n".join(entries) + "\n" + indent + "}"
    if isinstance(value, list):
        if not value:
            return "[]"
        return "[\n" + ",\n".join(inner + cel(v, inner) for v in value) + "\n" + indent + "]"
    if value == _SERVICE:
        return "variables.service"
    return json.dumps(value)


def _add(path: str, value: str, first: bool = False) -> str:
    """Add to the list at `path` (first or last), creating it when the pod has none."""
    field = "object." + path.strip("/").replace("/", ".")
    at = "0" if first else "-"
    return (f'(has({field}) ? {value}.map(v, JSONPatch{{op: "add", path: "{path}/{at}", '
            f'value: v}}) : [JSONPatch{{op: "add", path: "{path}", value: {value}}}])')


def _sidecar() -> str:
    container = sidecar_container(SETTINGS, _SERVICE, mounted=True)
    otlp = Raw('(variables.otlp == "" ? [] : [{"name": "OTEL_EXPORTER_OTLP_ENDPOINT", '
               '"value": variables.otlp}])')
    container["env"] = Raw(f"{cel(container['env'])} + {otlp.expression}")
    return _add("/spec/initContainers", f"[{cel(container)}]", first=True)


def _volumes() -> str:
    identity = Raw(f"{cel(mounted_sources())} + (has(object.spec.serviceAccountName) ? "
                   f"[{cel(token_source(AUDIENCE))}] : [])")
    # One Secret source per `<secret>/<key>`: `key_source` with a CEL string for each.
    one = cel(key_source("@@secret@@/@@key@@")).replace(
        '"@@secret@@/@@key@@"', "k").replace('"@@secret@@"', 'k.split("/")[0]').replace(
        '"@@key@@"', 'k.split("/")[1]')
    volumes = [*work_volumes(),
               {"name": "agent-router-identity",
                "projected": {"defaultMode": 0o444, "sources": identity}},
               {"name": "agent-router-keys",
                "projected": {"defaultMode": 0o444,
                              "sources": Raw(f"variables.keys.map(k, {one})")}}]
    return _add("/spec/volumes", cel(volumes))


_APP_ENV = (
    'lists.range(size(object.spec.containers)).map(i, has(object.spec.containers[i].env) '
    '? variables.appEnv.filter(e, !object.spec.containers[i].env.exists(x, x.name == e.name))'
    '.map(e, JSONPatch{op: "add", path: "/spec/containers/" + string(i) + "/env/-", '
    'value: e}) : [JSONPatch{op: "add", path: "/spec/containers/" + string(i) + "/env", '
    'value: variables.appEnv}]).flatten()'
)
_PULL_SECRETS = (
    'variables.pullSecrets.filter(n, !has(object.spec.imagePullSecrets) || '
    '!object.spec.imagePullSecrets.exists(p, p.name == n)).map(n, {"name": n})'
)


def policy() -> dict[str, Any]:
    """The policy, with markers (`render` turns them into Helm expressions)."""
    keys = (f'"{KEYS_KEY}" in params.data && params.data["{KEYS_KEY}"] != "" '
            f'? params.data["{KEYS_KEY}"].split(",") : []')
    service = ('has(object.metadata.labels) ? (("app.kubernetes.io/name" in '
               'object.metadata.labels) ? object.metadata.labels["app.kubernetes.io/name"] '
               ': (("app" in object.metadata.labels) ? object.metadata.labels["app"] '
               ': "agent-sidecar")) : "agent-sidecar"')
    return {
        "failurePolicy": "Fail",
        # Once: nothing added here is what another mutation would want to see again.
        "reinvocationPolicy": "Never",
        "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
        "matchConstraints": {
            "resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                               "operations": ["CREATE"], "resources": ["pods"]}],
            "objectSelector": {"matchLabels": {INJECT_LABEL: "true"}},
        },
        "matchConditions": [{
            "name": "not-injected-yet",
            "expression": f'!has(object.spec.initContainers) || '
                          f'!object.spec.initContainers.exists(c, c.name == "{CONTAINER}")',
        }],
        "variables": [
            {"name": "service", "expression": service},
            {"name": "keys", "expression": f"has(params.data) ? ({keys}) : []"},
            {"name": "otlp", "expression": "@@otlp@@"},
            {"name": "pullSecrets", "expression": "@@pull-secrets@@"},
            {"name": "appEnv", "expression": cel(app_env(SETTINGS))},
        ],
        "mutations": [
            {"patchType": "JSONPatch", "jsonPatch": {"expression": _sidecar()}},
            {"patchType": "JSONPatch", "jsonPatch": {"expression": _volumes()}},
            {"patchType": "JSONPatch", "jsonPatch": {"expression": (
                f"size({_PULL_SECRETS}) == 0 ? [] : "
                + _add("/spec/imagePullSecrets", _PULL_SECRETS))}},
            {"patchType": "JSONPatch", "jsonPatch": {"expression": _APP_ENV}},
        ],
    }


HEADER = """\
{{- /* Generated by `python -m agent_operator.injection_policy` from inject.py: do not edit. */ -}}
{{- if eq (include "agent-router.injectionBy" .) "policy" }}
# The API server injects the sidecar into pods labelled agentrouter.io/inject=true, with
# no call to the operator: such a pod is created while no operator replica runs. Its
# params are the ConfigMap `%(config_map)s` of the pod's own namespace, which the operator
# keeps: a namespace without it refuses opted-in pods (parameterNotFoundAction: Deny)
# until the operator has written it, as a pod there would have no CA to trust and no
# config to start from.
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicy
metadata:
  name: {{ include "agent-router.fullname" . }}-inject
  labels:
    {{- include "agent-router.labels" (list . "injection") | nindent 4 }}
spec:
"""
FOOTER = """\
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicyBinding
metadata:
  name: {{ include "agent-router.fullname" . }}-inject
  labels:
    {{- include "agent-router.labels" (list . "injection") | nindent 4 }}
spec:
  policyName: {{ include "agent-router.fullname" . }}-inject
  paramRef:
    name: %(config_map)s
    parameterNotFoundAction: Deny
  matchResources:
    # Never kube-system or the operator's own namespace.
    namespaceSelector:
      matchExpressions:
        - key: kubernetes.io/metadata.name
          operator: NotIn
          values:
            {{- toYaml (concat (list "kube-system" .Release.Namespace) .Values.webhook.excludeNamespaces | uniq) | nindent 12 }}
{{- end }}
"""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    Cel, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|"))


def _expressions(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: Cel(v) if k == "expression" else _expressions(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expressions(v) for v in value]
    return value


def render() -> str:
    body = yaml.dump(_expressions(policy()), Dumper=_Dumper, sort_keys=False, width=100)
    text = "\n".join("  " + line for line in body.splitlines())  # under `spec:`
    for marker, helm in _MARKERS.items():
        text = text.replace(marker, helm)
    names = {"config_map": CONFIG_MAP}
    return HEADER % names + text + "\n" + FOOTER % names


def main(argv: list[str]) -> None:
    Path(argv[0]).write_text(render())


if __name__ == "__main__":
    main(sys.argv[1:])
