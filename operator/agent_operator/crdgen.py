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

from agent_operator.resources import GROUP, VERSION, AgentPoolSpec, RoutingPolicySpec

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
            out = structural({**options[0], **rest}, defs)
            if nullable:
                out["nullable"] = True
            return out
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

POLICY_RULES = [
    {
        "rule": "!has(self.strategy) || self.strategy.type != 'custom' || "
        "(has(self.rules) && size(self.rules) > 0)",
        "message": "the custom strategy needs at least one rule",
    },
    {
        "rule": "!has(self.rules) || size(self.rules) == 0 || "
        "(has(self.strategy) && self.strategy.type == 'custom')",
        "message": "rules apply only to the custom strategy",
    },
    {
        "rule": "!has(self.strategy) || !has(self.strategy.weights) || "
        "self.strategy.type == 'weighted'",
        "message": "weights apply only to the weighted strategy",
    },
    {
        "rule": "!has(self.strategy) || !has(self.strategy.hedgeDelaySeconds) || "
        "self.strategy.type in ['hedged', 'fastest']",
        "message": "hedgeDelaySeconds applies only to the hedged and fastest strategies",
    },
    # Unique pools and routes need no rule: they are list-type sets.
]


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
        "targetPods": {"type": "integer", "description": "Pods the selector picks whose sidecar runs"},
        "syncedPods": {"type": "integer", "description": "Of those, serving this config"},
        "configVersion": {"type": "integer", "format": "int64",
                          "description": "Version of the last compiled config"},
        "synced": {"type": "string", "description": "syncedPods/targetPods, for kubectl"},
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
