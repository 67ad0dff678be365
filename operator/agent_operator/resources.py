"""The custom resources, as pydantic models: the one source of the CRD schemas.

`crds/*.yaml` are generated from these models (`python -m agent_operator.crdgen`), and a
test fails when the committed files differ, so the API, the validation the operator
does and the engine's config document (`agent.config`) cannot drift apart: every field
of an AgentPool agent maps onto `agent.config.AgentConfig`, which a test also checks.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from agent.catalog import PROVIDERS
from agent.config import NAME, Regex, Strategy

GROUP = "agentrouter.io"
VERSION = "v1alpha1"


# The engine's providers: an enum in the CRD, so a typo is refused by the apiserver.
Provider: Any = Literal[tuple(sorted(PROVIDERS))]

# Names of other objects and of routes: bounded, so CEL cost estimates stay small.
ObjectName = Annotated[str, Field(min_length=1, max_length=253)]
# A list whose items must be distinct: the apiserver enforces it (x-kubernetes-list-type).
SET = {"x-kubernetes-list-type": "set"}


class _Spec(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              frozen=True)


class SecretKeyRef(_Spec):
    """A key of a Secret in the resource's namespace."""

    name: str = Field(min_length=1, max_length=253, description="Name of the Secret")
    key: str = Field(min_length=1, max_length=253, description="Key within the Secret's data")


class PoolPrice(_Spec):
    input_per_m_tok: float = Field(ge=0, description="USD per million input tokens")
    output_per_m_tok: float = Field(ge=0, description="USD per million output tokens")


class PoolCapabilities(_Spec):
    tools: bool | None = Field(default=None, description="Accepts tool definitions")
    vision: bool | None = Field(default=None, description="Accepts images")
    structured_output: bool | None = Field(default=None, description="Follows a JSON schema")
    streaming: bool | None = Field(default=None, description="Streams answers")
    context_window: int | None = Field(default=None, ge=1, description="Tokens of context")


class PoolAgent(_Spec):
    """One model at one provider."""

    name: str = Field(pattern=NAME, max_length=63,
                      description="Unique within the pool; policies' rules refer to it")
    provider: Provider = Field(description="The API it speaks; openai_compatible with "
                               "baseUrl for any OpenAI-compatible server")
    model: str = Field(min_length=1, max_length=253,
                       description="Model id, or a short name such as claude-sonnet")
    base_url: str | None = Field(default=None, max_length=2048,
                                 description="Overrides the provider's default URL")
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Where the API key is; omitted for keyless servers")
    weight: float = Field(default=1.0, ge=0, description="Share of traffic for `weighted`")
    timeout_seconds: float = Field(default=60.0, gt=0, description="Per attempt")
    price: PoolPrice | None = Field(default=None, description="Overrides the price data")
    capabilities: PoolCapabilities | None = Field(
        default=None, description="Overrides the capability table")
    headers: dict[str, str] = Field(default_factory=dict,
                                    description="Extra HTTP headers sent to the provider")


class AgentPoolSpec(_Spec):
    agents: list[PoolAgent] = Field(min_length=1, max_length=64,
                                    description="The pool's agents, in order of preference")


class CircuitBreakerSpec(_Spec):
    failures: int = Field(default=5, ge=0, description="Consecutive failures that open it")
    cooldown_seconds: float = Field(default=30.0, ge=0, description="Before a probe")


class StrategySpec(_Spec):
    type: Strategy = Field(default="fallback", description="How candidates are ordered or raced")
    retries: int = Field(default=1, ge=0, le=10, description="Per agent, for retryable errors")
    backoff_seconds: float = Field(default=0.25, ge=0, description="First retry delay")
    max_retry_after_seconds: float = Field(
        default=10.0, ge=0, description="Longer retry-after hints fall back at once")
    deadline_seconds: float | None = Field(default=None, gt=0,
                                           description="For the whole routed call")
    hedge_delay_seconds: float | None = Field(
        default=None, ge=0, description="hedged: start the next candidate after this")
    circuit_breaker: CircuitBreakerSpec | None = Field(
        default=None, description="Per agent: stop trying it after consecutive failures")
    weights: dict[str, float] | None = Field(
        default=None, description="weighted: agent name to weight (overrides the pool's)")


class RuleSpec(_Spec):
    """custom: the first rule whose conditions all hold picks the first agent."""

    prefer: list[ObjectName] = Field(min_length=1, max_length=64,
                              description="Agent names (pool/agent or agent) to try first")
    reason: str = Field(min_length=1, max_length=256, description="Reported on the response")
    input_contains: list[Annotated[str, Field(max_length=256)]] | None = Field(
        default=None, max_length=64, description="Any of these words, case-insensitive")
    input_matches: Regex | None = Field(default=None, max_length=1024,
                                      description="A regular expression on the input")
    min_input_chars: int | None = Field(default=None, ge=0,
                                       description="The input is at least this long")
    max_input_chars: int | None = Field(default=None, ge=0,
                                       description="The input is at most this long")
    tools: bool | None = Field(default=None, description="Whether the request asks for tools")
    metadata: dict[str, str] | None = Field(
        default=None, description="The request's metadata has all of these values")


class LabelSelectorRequirement(_Spec):
    key: str = Field(description="The label's key")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="How the label's value relates to values")
    values: list[str] | None = Field(default=None, description="For In and NotIn")


class PodSelector(_Spec):
    """A Kubernetes label selector; empty selects every pod of the namespace."""

    match_labels: dict[str, str] | None = Field(default=None,
                                                description="Labels the pods must have")
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, description="Requirements on the pods' labels, all of which must hold")


class RoutingPolicySpec(_Spec):
    selector: PodSelector = Field(description="The pods whose sidecars get these routes")
    pools: list[ObjectName] = Field(min_length=1, max_length=16, json_schema_extra=SET,
                                    description="AgentPools in this namespace, in order")
    routes: list[ObjectName] = Field(
        default_factory=lambda: ["default"], min_length=1, max_length=16, json_schema_extra=SET,
        description="Names apps send as `model`; the first is the pod's default route")
    strategy: StrategySpec = Field(default_factory=StrategySpec,
                                   description="How the pools' agents are tried")
    rules: list[RuleSpec] = Field(default_factory=list, max_length=64,
                                  description="For the custom strategy")


class KIND:
    pool = "AgentPool"
    policy = "RoutingPolicy"
