"""Generate the CRDs from the pydantic models in `resources.py`.

    python -m agent_operator.crdgen crds/      # writes agentpools.yaml, routingpolicies.yaml

Pydantic emits JSON Schema; Kubernetes wants a structural OpenAPI v3 schema: refs
inlined, `nullable` instead of `anyOf [.., null]`, boolean exclusive bounds, no
`additionalProperties: false` (the apiserver prunes unknown fields instead). What a
schema cannot say goes in CEL rules (`x-kubernetes-validations`), listed here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from agent.config import STRATEGY_RULES, StrategyRule
from agent_operator.resources import (
    GROUP,
    VERSION,
    AgentPoolSpec,
    RoutingPolicySpec,
    StrategySpec,
)

_DROP = {"title", "$defs"}


def structural(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> dict[str, Any]:
    """JSON Schema (pydantic) -> a Kubernetes structural schema."""
    defs = schema.get("$defs", {}) if defs is None else defs
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return structural(merged, defs)
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        nullable = len(options) != len(schema["anyOf"])
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        if len(options) == 1:
            single = structural({**options[0], **rest}, defs)
            if nullable:
                single["nullable"] = True
            return single
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = structural(value, defs)
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out[key] = structural(value, defs)
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "default" and value is None:
            continue
        elif key == "enum":
            out[key] = value
            out.setdefault("type", "string")
        else:
            out[key] = value
    if "properties" in out:
        out.setdefault("type", "object")
    return out


def _spec_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = structural(model.model_json_schema(by_alias=True, mode="validation"))
    # pydantic leaves factory defaults out of the JSON schema; the apiserver should apply
    # them (an object's own field defaults then apply inside it).
    for name, info in model.model_fields.items():
        if info.default_factory is not None:
            value = info.default_factory()  # type: ignore[call-arg]
            if isinstance(value, BaseModel):
                schema["properties"][info.alias or name]["default"] = {}
            elif value:  # an empty list stays absent rather than [] on every object
                schema["properties"][info.alias or name]["default"] = value
    return schema


CONDITIONS = {
    "type": "array",
    "description": "Ready, and what explains it (Resolved, Synced)",
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
    "items": {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer", "format": "int64"},
        },
    },
}


def _status(extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        # kopf keeps its own bookkeeping beside ours.
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {
            "observedGeneration": {"type": "integer", "format": "int64"},
            "conditions": CONDITIONS,
            **extra,
        },
    }


UNIQUE_AGENTS = {
    "rule": "self.agents.all(a, self.agents.exists_one(b, b.name == a.name))",
    "message": "agent names must be unique within the pool",
}

def _path(field: str) -> tuple[str, str]:
    """Where a route field lives in a RoutingPolicy's spec (CEL path, Kubernetes name)."""
    for owner, prefix in ((StrategySpec, "self.strategy."), (RoutingPolicySpec, "self.")):
        info = owner.model_fields.get(field)
        if info is not None:
            name = info.alias or field
            return prefix + name, name
    raise KeyError(f"{field} is not a RoutingPolicy field")


def _present(path: str, field: str) -> str:
    guards = []
    parts = path.split(".")
    for end in range(2, len(parts) + 1):
        guards.append(f"has({'.'.join(parts[:end])})")
    info = RoutingPolicySpec.model_fields.get(field) or StrategySpec.model_fields[field]
    if "list" in str(info.annotation) or "dict" in str(info.annotation):
        guards.append(f"size({path}) > 0")
    return " && ".join(guards)


def _strategy_in(strategies: tuple[str, ...]) -> str:
    type_path, _ = _path("strategy")
    default = StrategySpec.model_fields["strategy"].default  # what an absent type means
    chosen = f"(has(self.strategy) && has({type_path}) ? {type_path} : '{default}')"
    if len(strategies) == 1:
        return f"{chosen} == '{strategies[0]}'"
    return f"{chosen} in [{', '.join(repr(s) for s in strategies)}]"


def cel(rule: StrategyRule) -> dict[str, str]:
    """One of the engine's strategy rules (`agent.config.STRATEGY_RULES`) as CEL."""
    path, name = _path(rule.field)
    present, chosen = _present(path, rule.field), _strategy_in(rule.strategies)
    if rule.kind == "only":
        expression = f"!({present}) || {chosen}"
    else:
        expression = f"!({chosen}) || ({present})"
    return {"rule": expression, "message": rule.message.format(field=name)}


# Unique pools and routes need no rule: they are list-type sets.
POLICY_RULES = [cel(rule) for rule in STRATEGY_RULES]


def _crd(kind: str, plural: str, short: list[str], spec: dict[str, Any],
         status: dict[str, Any], columns: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short,
                "categories": ["agentrouter"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (spec.pop("description", "") or kind).strip(),
                            "required": ["spec"],
                            "properties": {"spec": spec, "status": status},
                        }
                    },
                }
            ],
        },
    }


READY = {"name": "Ready", "type": "string",
         "jsonPath": '.status.conditions[?(@.type=="Ready")].status'}
AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def agent_pool_crd() -> dict[str, Any]:
    spec = _spec_schema(AgentPoolSpec)
    spec["description"] = "Agents (provider, model, key) that routing policies draw from."
    spec["x-kubernetes-validations"] = [UNIQUE_AGENTS]
    status = _status({
        "agents": {"type": "integer", "description": "How many agents the pool has"},
        "policies": {"type": "integer", "description": "Policies that use this pool"},
    })
    columns = [
        {"name": "Agents", "type": "integer", "jsonPath": ".status.agents"},
        {"name": "Policies", "type": "integer", "jsonPath": ".status.policies"},
        READY,
        AGE,
    ]
    return _crd("AgentPool", "agentpools", ["apool", "apools"], spec, status, columns)


def routing_policy_crd() -> dict[str, Any]:
    spec = _spec_schema(RoutingPolicySpec)
    spec["description"] = "Routes for the sidecars of the selected pods, over pools' agents."
    spec["x-kubernetes-validations"] = POLICY_RULES
    status = _status({
        "targetPods": {"type": "integer", "description": "Pods the selector picks"},
        "syncedPods": {"type": "integer", "description": "Of those, the pods whose sidecar "
                       "acknowledged the config compiled for it"},
        "configVersion": {"type": "string",
                          "description": "Version (the document's hash) the synced pods "
                          "serve, when it is one"},
        "synced": {"type": "string", "description": "syncedPods/targetPods, for kubectl"},
        "refused": {"type": "object", "additionalProperties": {"type": "string"},
                    "description": "Pods whose sidecar refused the config delivered to it, "
                    "and why (the previous config keeps serving there)"},
        "quota": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                  "description": "Remaining room per limit of the routes (routes) and their "
                  "agents (agents), for every pod: with the chart's shared Redis only"},
    })
    columns = [
        {"name": "Strategy", "type": "string", "jsonPath": ".spec.strategy.type"},
        {"name": "Pools", "type": "string", "jsonPath": ".spec.pools"},
        {"name": "Synced", "type": "string", "jsonPath": ".status.synced"},
        READY,
        AGE,
    ]
    return _crd("RoutingPolicy", "routingpolicies", ["rpol", "rpols"], spec, status, columns)


def render() -> dict[str, str]:
    """File name -> YAML text, exactly as committed under crds/."""
    header = "# Generated by `python -m agent_operator.crdgen crds/` from resources.py. Do not edit.\n"
    return {
        "agentpools.yaml": header + yaml.safe_dump(agent_pool_crd(), sort_keys=False),
        "routingpolicies.yaml": header + yaml.safe_dump(routing_policy_crd(), sort_keys=False),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0] if args else "crds")
    target.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (target / name).write_text(text)
        print(f"wrote {target / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
