"""The custom resources, as pydantic models derived from the engine's config models.

An AgentPool's agent is `agent.config.AgentConfig`, a RoutingPolicy's strategy is
`agent.config.RouteOptions` and its rules are `agent.config.Rule`: the same fields, the
same bounds and descriptions, spelled the Kubernetes way (camelCase, durations with a
`Seconds` suffix, as each config field's `Kube` mark says). Python code reads them by
the config's own names, so compiling a policy copies fields instead of renaming them.
Only what exists in Kubernetes alone is written here: Secret references, the pod
selector, the pools and route names.

`crds/*.yaml` are generated from these models (`python -m agent_operator.crdgen`), and a
test fails when the committed files differ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict
from pydantic.fields import FieldInfo

from agent.catalog import PROVIDERS
from agent.config import (
    AgentConfig,
    CapabilitiesConfig,
    CircuitBreakerConfig,
    Kube,
    ObjectName,
    PriceConfig,
    RouteOptions,
    Rule,
)

GROUP = "agentrouter.io"
VERSION = "v1alpha1"

# The engine's providers: an enum in the CRD, so a typo is refused by the apiserver.
Provider: Any = Literal[tuple(sorted(PROVIDERS))]
# A list whose items must be distinct: the apiserver enforces it (x-kubernetes-list-type).
SET: JsonDict = {"x-kubernetes-list-type": "set"}


class _Spec(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)


def kube_name(name: str, info: FieldInfo) -> str:
    """A config field's name in the Kubernetes resources."""
    mark = next((m for m in info.metadata if isinstance(m, Kube)), None)
    if mark is not None and mark.name:
        return mark.name
    return to_camel(name) + (mark.suffix if mark else "")


def kube_model(
    source: type[BaseModel],
    *,
    drop: tuple[str, ...] = (),
    types: dict[str, Any] | None = None,
    add: dict[str, tuple[Any, dict[str, Any]]] | None = None,
    doc: str | None = None,
    name: str,
) -> type[_Spec]:
    """`source` spelled for Kubernetes: every field but `drop`, with its constraints,
    default and description, under its Kubernetes name; `types` narrows a field's type
    (an enum, a nested resource model); `add` holds fields only Kubernetes has."""
    fields: dict[str, Any] = {}
    for field, info in source.model_fields.items():
        if field in drop:
            continue
        annotation = (types or {}).get(field, info.annotation)
        if info.metadata:  # the constraints (ge, max_length, ...) and marks travel along
            annotation = Annotated.__class_getitem__((annotation, *info.metadata))  # type: ignore[attr-defined]
        kept: dict[str, Any] = {"description": info.description, "repr": info.repr}
        if info.json_schema_extra is not None:
            kept["json_schema_extra"] = info.json_schema_extra
        if info.default_factory is not None:
            kept["default_factory"] = info.default_factory
        elif not info.is_required():
            kept["default"] = info.default
        fields[field] = (annotation, Field(alias=kube_name(field, info), **kept))
    for field, (annotation, kept) in (add or {}).items():
        fields[field] = (annotation, Field(alias=to_camel(field), **kept))
    model = create_model(name, __base__=_Spec, **fields)
    model.__doc__ = doc or source.__doc__
    return model


class SecretKeyRef(_Spec):
    """A key of a Secret in the resource's namespace."""

    name: str = Field(min_length=1, max_length=253, description="Name of the Secret")
    key: str = Field(min_length=1, max_length=253, description="Key within the Secret's data")


if TYPE_CHECKING:
    # Built at import from the engine's config models, so a type checker cannot see
    # their fields: to it they are Any (the tests check the fields themselves).
    PoolPrice: TypeAlias = Any
    PoolCapabilities: TypeAlias = Any
    PoolAgent: TypeAlias = Any
    CircuitBreakerSpec: TypeAlias = Any
    StrategySpec: TypeAlias = Any
    RuleSpec: TypeAlias = Any
else:
    PoolPrice = kube_model(PriceConfig, name="PoolPrice")
    PoolCapabilities = kube_model(CapabilitiesConfig, name="PoolCapabilities")
    PoolAgent = kube_model(
        AgentConfig,
        name="PoolAgent",
        # The key comes from a Secret; sending extra body fields is not offered on a cluster.
        drop=("api_key", "api_key_env", "api_key_file", "extra"),
        types={
            "provider": Provider,
            "price": PoolPrice | None,
            "capabilities": PoolCapabilities | None,
        },
        add={
            "api_key_secret_ref": (
                SecretKeyRef | None,
                {"default": None, "description": "Where the API key is; omitted for keyless servers"},
            )
        },
    )
    CircuitBreakerSpec = kube_model(CircuitBreakerConfig, name="CircuitBreakerSpec")
    StrategySpec = kube_model(
        RouteOptions,
        name="StrategySpec",
        types={"circuit_breaker": CircuitBreakerSpec},
        doc="How the pools' agents are tried",
    )
    RuleSpec = kube_model(Rule, name="RuleSpec")


class AgentPoolSpec(_Spec):
    agents: list[PoolAgent] = Field(
        min_length=1, max_length=64, description="The pool's agents, in order of preference"
    )


class LabelSelectorRequirement(_Spec):
    key: str = Field(description="The label's key")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="How the label's value relates to values"
    )
    values: list[str] | None = Field(default=None, description="For In and NotIn")


class PodSelector(_Spec):
    """A Kubernetes label selector; empty selects every pod of the namespace."""

    match_labels: dict[str, str] | None = Field(
        default=None, alias="matchLabels", description="Labels the pods must have"
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None,
        alias="matchExpressions",
        description="Requirements on the pods' labels, all of which must hold",
    )


class RoutingPolicySpec(_Spec):
    selector: PodSelector = Field(description="The pods whose sidecars get these routes")
    pools: list[ObjectName] = Field(
        min_length=1,
        max_length=16,
        json_schema_extra=SET,
        description="AgentPools in this namespace, in order",
    )
    routes: list[ObjectName] = Field(
        default_factory=lambda: ["default"],
        min_length=1,
        max_length=16,
        json_schema_extra=SET,
        description="Names apps send as `model`; the first is the pod's default route",
    )
    strategy: StrategySpec = Field(
        default_factory=StrategySpec, description="How the pools' agents are tried"
    )
    rules: list[RuleSpec] = Field(
        default_factory=list, max_length=64, description="For the custom strategy"
    )


class KIND:
    pool = "AgentPool"
    policy = "RoutingPolicy"
