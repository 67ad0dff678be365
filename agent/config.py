"""The config document: the one contract between the library, the sidecar and the
operator. The library loads it from YAML, the sidecar from a file or its admin API,
the operator compiles it from AgentPool and RoutingPolicy resources.

    version: 7                       # a newer document never loses to an older one
    agents:
      - name: primary                # unique; routes refer to agents by name
        provider: anthropic
        model: claude-sonnet
        api_key_env: ANTHROPIC_API_KEY   # or api_key: ..., or neither: the standard variable
      - {name: backup, provider: openai, model: gpt-4o}
    routes:
      - name: default                # what apps send as `model`
        agents: [primary, backup]
        strategy: fallback
    default_route: default           # used when the app's model names no route
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import orjson
import pydantic
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from agent.agent import Agent
from agent.catalog import CAPABILITY_NAMES, PROVIDERS
from agent.errors import ConfigurationError, scrub
from agent.limits import make_store
from agent.pricing import Price
from agent.strategies import STRATEGY_NAMES
from agent.types import Request, RouteResult

__all__ = [
    "AgentConfig",
    "AgentLimitsConfig",
    "BudgetConfig",
    "CapabilitiesConfig",
    "CircuitBreakerConfig",
    "LimitsStoreConfig",
    "PriceConfig",
    "RouteConfig",
    "RouteLimitsConfig",
    "RouteOptions",
    "RouterConfig",
    "Rule",
    "load_config",
    "parse_config",
]

# The strategy registry's names (`agent.strategies.STRATEGIES`), as a type pydantic checks.
StrategyName: Any = Literal[STRATEGY_NAMES]

if TYPE_CHECKING:
    from agent.router import AgentRouter

M = TypeVar("M", bound=BaseModel)
log = logging.getLogger("agent.config")

NAME = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"

# The environment variables `api_key_env` may name: the providers' standard ones, and
# any starting with this prefix (for keys the person running the process set up).
KEY_ENV_PREFIX = "AGENT_KEY_"
KEY_ENV_ALLOWED = frozenset(name for p in PROVIDERS.values() for name in p.key_env)
# Where `api_key_file` may point: the directory the sidecar's pod mounts its Secret keys
# in, or the one AGENT_KEY_FILE_DIR names (for keys the person running the process set
# up). Never anywhere else: a pushed document must not read the service-account token.
KEY_FILE_DIR = "/var/run/agent-router/keys"


def read_key_file(path: str, agent: str) -> str | None:
    """The key in a file (a mounted Secret key), or None when it cannot be read: then the
    agent fails at call time, as with no key, and routing falls back past it."""
    try:
        return Path(path).read_text().strip() or None
    except OSError as exc:
        log.warning("agent %s: its key file %s cannot be read (%s); calls to it fail",
                    agent, path, exc.strerror or type(exc).__name__)
        return None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class Kube:
    """How a field is spelled in the Kubernetes resources, where camelCase of its name
    is not the whole story: a unit suffix (`timeout` -> `timeoutSeconds`), or a name of
    its own. The CRD models (`agent_operator.resources`) are derived from these models
    with these spellings; no field is renamed anywhere else."""

    name: str | None = None
    suffix: str = ""


SECONDS = Kube(suffix="Seconds")


class PriceConfig(_Model):
    input_per_mtok: Annotated[float, Kube("inputPerMTok")] = Field(
        ge=0, description="USD per million input tokens"
    )
    output_per_mtok: Annotated[float, Kube("outputPerMTok")] = Field(
        ge=0, description="USD per million output tokens"
    )


class CapabilitiesConfig(_Model):
    """Overrides of the capability table (`agent.catalog.Capabilities`)."""

    tools: bool | None = Field(default=None, description="Accepts tool definitions")
    vision: bool | None = Field(default=None, description="Accepts images")
    structured_output: bool | None = Field(default=None, description="Follows a JSON schema")
    streaming: bool | None = Field(default=None, description="Streams answers")
    context_window: int | None = Field(default=None, ge=1, description="Tokens of context")


assert tuple(CapabilitiesConfig.model_fields) == CAPABILITY_NAMES


class AgentLimitsConfig(_Model):
    """What a provider account allows this agent (shared by every pod that uses it)."""

    rpm: int | None = Field(default=None, ge=1, description="Requests per minute")
    tpm: int | None = Field(default=None, ge=1, description="Tokens (input + output) per minute")
    concurrent: int | None = Field(default=None, ge=1, description="Requests at once")


class BudgetConfig(_Model):
    """USD from the cost estimates, per calendar hour, day and month (UTC)."""

    hourly: float | None = Field(default=None, gt=0, description="USD per hour")
    daily: float | None = Field(default=None, gt=0, description="USD per day")
    monthly: float | None = Field(default=None, gt=0, description="USD per month")


class RouteLimitsConfig(_Model):
    """What a route may use, whichever agents answer."""

    rpm: int | None = Field(default=None, ge=1, description="Requests per minute")
    tpm: int | None = Field(default=None, ge=1, description="Tokens (input + output) per minute")
    budget: BudgetConfig | None = Field(default=None, description="Spend in USD")
    output_tokens: int = Field(
        default=500,
        ge=1,
        description="Output tokens reserved for a request that sets no max_tokens",
    )


class LimitsStoreConfig(_Model):
    """Where limits are counted. Without `redis_url` each process counts alone (in
    memory) against its share of every limit (limit / `shares`); with it every pod
    shares the counters, and falls back to its share while Redis cannot be reached."""

    redis_url: str | None = Field(
        default=None,
        max_length=2048,
        description="redis:// or rediss:// (TLS) address of the shared counters",
    )
    password: SecretStr | None = Field(default=None, description="The password itself (pushed)")
    password_env: str | None = Field(
        default=None, max_length=253, description="Environment variable holding the password"
    )
    ca_file: str | None = Field(
        default=None,
        max_length=4096,
        description="CA bundle that verifies a rediss:// server (default: the system's)",
    )
    ca_pem: str | None = Field(
        default=None,
        max_length=65536,
        description="The CA certificate(s) themselves, PEM: instead of ca_file",
    )
    shares: int = Field(
        default=1, ge=1, description="How many pods share each limit (set by the operator)"
    )
    timeout: Annotated[float, SECONDS] = Field(
        default=0.5,
        gt=0,
        le=10,
        description="Seconds a Redis call may take before this process counts its share "
        "alone for a while (the longest a request waits on a hung Redis)",
    )
    scope: str = Field(
        default="",
        max_length=253,
        description="Whose counters (the operator sets the namespace): equal route and "
        "agent names in another scope are counted apart",
    )


class AgentConfig(_Model):
    """One model at one provider."""

    name: str = Field(
        pattern=NAME, max_length=63, description="Unique name; routes and rules refer to it"
    )
    provider: str = Field(
        description="The API it speaks; openai_compatible with a base URL for any "
        "OpenAI-compatible server"
    )
    model: str = Field(
        min_length=1, max_length=253, description="Model id, or a short name such as claude-sonnet"
    )
    base_url: str | None = Field(
        default=None, max_length=2048, description="Overrides the provider's default URL"
    )
    api_key: SecretStr | None = Field(default=None, description="The key itself (pushed)")
    api_key_env: str | None = Field(
        default=None,
        description="Environment variable holding it: a provider's standard variable "
        f"(OPENAI_API_KEY, ...) or one starting with {KEY_ENV_PREFIX}",
    )
    api_key_file: str | None = Field(
        default=None,
        max_length=1024,
        description=f"File holding it, under {KEY_FILE_DIR} (or AGENT_KEY_FILE_DIR): a "
        "mounted Secret key, read when the agent is built",
    )
    timeout: Annotated[float, SECONDS] = Field(default=60.0, gt=0, description="Per attempt")
    first_token_timeout: Annotated[float | None, SECONDS] = Field(
        default=None, gt=0, description="A stream's longest wait for its first content"
    )
    stall_timeout: Annotated[float | None, SECONDS] = Field(
        default=None, gt=0, description="A stream's longest silence after its first content"
    )
    weight: float = Field(default=1.0, ge=0, description="Share of traffic for `weighted`")
    price: PriceConfig | None = Field(default=None, description="Overrides the price data")
    capabilities: CapabilitiesConfig | None = Field(
        default=None, description="Overrides the capability table"
    )
    headers: dict[str, str] = Field(
        default_factory=dict, repr=False, description="Extra HTTP headers sent to the provider"
    )  # may carry keys
    extra: dict[str, Any] = Field(default_factory=dict, description="Extra body fields")
    limits: AgentLimitsConfig | None = Field(
        default=None, description="The provider account's limits for this agent"
    )
    api: Literal["chat", "responses"] = Field(
        default="chat",
        description="The API an OpenAI-format agent calls: chat (Chat Completions) or "
        "responses (OpenAI's Responses API)",
    )

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        if value not in PROVIDERS:
            # Never quoted (a key pasted on the wrong line must not echo): a suggestion.
            close = difflib.get_close_matches(value, PROVIDERS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown provider{hint}; known: {', '.join(sorted(PROVIDERS))}")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _allowed_variable(cls, value: str | None) -> str | None:
        # A pushed document must not be able to read any secret of the process's
        # environment (a cloud credential, the admin token) by naming it as a key.
        if (
            value is not None
            and value not in KEY_ENV_ALLOWED
            and not (value.startswith(KEY_ENV_PREFIX) and len(value) > len(KEY_ENV_PREFIX))
        ):
            raise ValueError(
                "not an allowed variable: use a provider's standard one "
                f"({', '.join(sorted(KEY_ENV_ALLOWED))}) or a name starting with {KEY_ENV_PREFIX}"
            )
        return value

    @field_validator("api_key_file")
    @classmethod
    def _key_directory(cls, value: str | None) -> str | None:
        if value is None:
            return value
        allowed = Path(os.environ.get("AGENT_KEY_FILE_DIR") or KEY_FILE_DIR)
        path = Path(value)
        if not path.is_absolute() or ".." in path.parts or not path.is_relative_to(allowed):
            raise ValueError(f"not a file under {allowed} (AGENT_KEY_FILE_DIR)")
        return value

    @model_validator(mode="after")
    def _one_source_of_key(self) -> AgentConfig:
        given = [n for n in ("api_key", "api_key_env", "api_key_file")
                 if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"{' and '.join(given)} are exclusive: give one")
        return self

    @model_validator(mode="after")
    def _api_of_its_format(self) -> AgentConfig:
        if self.api == "responses" and PROVIDERS[self.provider].wire != "openai":
            raise ValueError(
                f"api: responses is OpenAI's Responses API; a {self.provider} agent "
                "speaks its own format (leave api out)"
            )
        return self

    def build(self, **options: Any) -> Agent:
        """The agent; `options` add what a document cannot carry (transport=, tools=...)."""
        key = self.api_key.get_secret_value() if self.api_key else None
        if key is None and self.api_key_env:
            key = os.environ.get(self.api_key_env)
        if key is None and self.api_key_file:
            key = read_key_file(self.api_key_file, self.name)
        price = Price(self.price.input_per_mtok, self.price.output_per_mtok) if self.price else None
        caps = self.capabilities.model_dump(exclude_none=True) if self.capabilities else None
        return Agent(
            self.provider,
            self.model,
            api_key=key,
            base_url=self.base_url,
            timeout=self.timeout,
            first_token_timeout=self.first_token_timeout,
            stall_timeout=self.stall_timeout,
            weight=self.weight,
            price=price,
            capabilities=caps or None,
            headers=self.headers,
            name=self.name,
            extra=self.extra,
            limits=self.limits,
            api=self.api,
            **options,
        )


def _compiles(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return value


# A regular expression, checked when the document is read (and by the operator, on the
# RoutingPolicy, where the apiserver cannot check it).
Regex = Annotated[str, AfterValidator(_compiles)]
# Names of agents and routes: bounded, so the apiserver's CEL cost estimates stay small.
ObjectName = Annotated[str, Field(min_length=1, max_length=253)]


class Rule(_Model):
    """custom: the first rule whose conditions all hold picks the first agent."""

    prefer: list[ObjectName] = Field(
        min_length=1, max_length=64, description="Agents to try first, in order"
    )
    reason: str = Field(min_length=1, max_length=256, description="Reported on the response")
    input_contains: list[Annotated[str, Field(max_length=256)]] | None = Field(
        default=None, max_length=64, description="Any of these words, case-insensitive"
    )
    input_matches: Regex | None = Field(
        default=None, max_length=1024, description="A regular expression on the input"
    )
    min_input_chars: int | None = Field(
        default=None, ge=0, description="The input is at least this long"
    )
    max_input_chars: int | None = Field(
        default=None, ge=0, description="The input is at most this long"
    )
    tools: bool | None = Field(default=None, description="Whether the request asks for tools")
    metadata: dict[str, str] | None = Field(
        default=None, description="The request's metadata has all of these values"
    )

    def matches(self, request: Request) -> bool:
        text = request.input
        if self.input_contains and not any(w.lower() in text.lower() for w in self.input_contains):
            return False
        if self.input_matches and not re.search(self.input_matches, text):
            return False
        if self.min_input_chars is not None and len(text) < self.min_input_chars:
            return False
        if self.max_input_chars is not None and len(text) > self.max_input_chars:
            return False
        if self.tools is not None and bool(request.tools) != self.tools:
            return False
        return not self.metadata or all(
            str(request.metadata.get(k)) == v for k, v in self.metadata.items()
        )


class CircuitBreakerConfig(_Model):
    """Per agent: stop trying it after consecutive failures."""

    failures: int = Field(
        default=5, ge=0, description="Consecutive failures that open it (0: never)"
    )
    cooldown: Annotated[float, SECONDS] = Field(
        default=30.0, ge=0, description="Before the agent is probed again"
    )
    probe: bool = Field(
        default=True,
        description="Probe an open agent in the background (one small request) instead "
        "of letting a user request through",
    )


class RouteOptions(_Model):
    """How a route tries its agents: the `AgentRouter` constructor's own arguments."""

    strategy: Annotated[StrategyName, Kube("type")] = Field(
        default="fallback", description="How candidates are ordered or raced"
    )
    retries: int = Field(default=1, ge=0, le=10, description="Per agent, for retryable errors")
    backoff: Annotated[float, SECONDS] = Field(default=0.25, ge=0, description="First retry delay")
    max_retry_after: Annotated[float, SECONDS] = Field(
        default=10.0, ge=0, description="Longer retry-after hints fall back at once"
    )
    deadline: Annotated[float | None, SECONDS] = Field(
        default=None, gt=0, description="For the whole routed call"
    )
    hedge_delay: Annotated[float | None, SECONDS] = Field(
        default=None, ge=0, description="hedged: start the next candidate after this"
    )
    weights: dict[str, float] | None = Field(
        default=None, description="weighted: agent name to weight (else each agent's weight)"
    )
    circuit_breaker: CircuitBreakerConfig = Field(
        default_factory=CircuitBreakerConfig,
        description="Per agent: stop trying it after consecutive failures",
    )
    limits: RouteLimitsConfig | None = Field(
        default=None, description="Requests, tokens and spend allowed on this route"
    )
    first_token_timeout: Annotated[float | None, SECONDS] = Field(
        default=None,
        gt=0,
        description="Per agent: a stream's longest wait for its first content (then fall back)",
    )
    stall_timeout: Annotated[float | None, SECONDS] = Field(
        default=None,
        gt=0,
        description="Per agent: a stream's longest silence after its first content",
    )
    stream_recovery: Literal["error", "continue"] = Field(
        default="error",
        description="A stream failing after content: end it with an error, or continue "
        "the answer on the next agent",
    )


@dataclass(frozen=True, slots=True)
class StrategyRule:
    """A field that only some strategies use (`only`), or that they need (`needed`).
    Checked here on config documents, and rendered as the RoutingPolicy's CEL rules by
    `agent_operator.crdgen`: one list, two checkers. `message` names the field as
    `{field}`, spelled as the document being checked spells it."""

    field: str
    strategies: tuple[str, ...]
    kind: Literal["only", "needed"]
    message: str

    def broken(self, strategy: str, value: Any) -> bool:
        present = value is not None and value != [] and value != {}
        if self.kind == "only":
            return present and strategy not in self.strategies
        return strategy in self.strategies and not present


STRATEGY_RULES = (
    StrategyRule("rules", ("custom",), "needed", "the custom strategy needs at least one rule"),
    StrategyRule("rules", ("custom",), "only", "{field} apply only to the custom strategy"),
    StrategyRule("weights", ("weighted",), "only", "{field} apply only to the weighted strategy"),
    StrategyRule(
        "hedge_delay",
        ("hedged", "fastest"),
        "only",
        "{field} applies only to the hedged and fastest strategies",
    ),
)


class RouteConfig(RouteOptions):
    name: str = Field(min_length=1, description="What apps send as `model`")
    agents: list[str] = Field(min_length=1, description="Agent names, in order of preference")
    rules: list[Rule] = Field(default_factory=list, description="For the custom strategy")

    @model_validator(mode="after")
    def _strategy_rules(self) -> RouteConfig:
        for rule in STRATEGY_RULES:
            if rule.broken(self.strategy, getattr(self, rule.field)):
                raise ValueError(rule.message.format(field=rule.field))
        return self

    def options(self) -> dict[str, Any]:
        """The constructor arguments of this route's router."""
        return {name: getattr(self, name) for name in RouteOptions.model_fields}


class RouterConfig(_Model):
    version: int = Field(default=0, ge=0, description="Newer documents replace older ones")
    # Empty is valid: a pod whose last policy was deleted serves no routes (404s that say so).
    agents: list[AgentConfig] = Field(default_factory=list)
    routes: list[RouteConfig] = Field(default_factory=list)
    default_route: str | None = None
    limits_store: LimitsStoreConfig | None = Field(
        default=None, description="Where limits are counted (default: in memory)"
    )
    metadata: dict[str, str] = Field(
        default_factory=dict,
        description="Opaque labels from whoever wrote the document (the operator stamps "
        "its source and content hash here); returned as is by the sidecar",
    )

    @model_validator(mode="after")
    def _references(self) -> RouterConfig:
        # Linear in the document's size: a config of thousands of agents is checked in
        # milliseconds (counting names pairwise took seconds).
        names = Counter(a.name for a in self.agents)
        if dupes := sorted(n for n, count in names.items() if count > 1):
            raise ValueError(f"agent names must be unique: {', '.join(dupes)}")
        routes = Counter(r.name for r in self.routes)
        if dupes := sorted(n for n, count in routes.items() if count > 1):
            raise ValueError(f"route names must be unique: {', '.join(dupes)}")
        known = set(names)
        for route in self.routes:
            wanted = route.agents + [n for rule in route.rules for n in rule.prefer]
            if unknown := sorted(set(wanted) - known):
                raise ValueError(f"route {route.name!r} names unknown agents: {', '.join(unknown)}")
            if route.weights and (stray := sorted(set(route.weights) - set(route.agents))):
                raise ValueError(
                    f"route {route.name!r} weights name agents outside the route: "
                    f"{', '.join(stray)}"
                )
            if rogue := sorted(
                {n for rule in route.rules for n in rule.prefer} - set(route.agents)
            ):
                raise ValueError(
                    f"route {route.name!r} rules prefer agents outside the route: "
                    f"{', '.join(rogue)}"
                )
        if self.default_route is not None and self.default_route not in routes:
            raise ValueError(f"default_route {self.default_route!r} is not a route")
        return self

    def redacted(self) -> dict[str, Any]:
        """The document as JSON with keys, header values and URL credentials replaced by
        '***' (for GET /config, logs, status): extra headers carry credentials too
        (`x-api-key`, `Authorization`, a gateway's token), and a header's name never says
        which."""
        data = self.model_dump(mode="json", exclude_none=True)
        for agent in data["agents"]:
            if "api_key" in agent:
                agent["api_key"] = "***"
            if agent.get("headers"):
                agent["headers"] = dict.fromkeys(agent["headers"], "***")
            if "base_url" in agent:
                agent["base_url"] = scrub(agent["base_url"])
        store = data.get("limits_store")
        if store is not None:
            if "password" in store:
                store["password"] = "***"
            if "redis_url" in store:  # redis://user:password@host carries one too
                store["redis_url"] = scrub(store["redis_url"])
        return data

    def document(self) -> dict[str, Any]:
        """The document as JSON with the keys in it: only for the push to a sidecar."""
        data = self.model_dump(mode="json", exclude_none=True)
        for item, agent in zip(data["agents"], self.agents, strict=True):
            if agent.api_key is not None:
                item["api_key"] = agent.api_key.get_secret_value()
        if self.limits_store is not None and self.limits_store.password is not None:
            data["limits_store"]["password"] = self.limits_store.password.get_secret_value()
        return data

    def build(self, **options: Any) -> dict[str, AgentRouter]:
        """One router per route. `options` go to every router (transport=, middleware=,
        tracer_provider=); each router owns its pools unless a transport is given."""
        agents = {a.name: a.build() for a in self.agents}
        options.setdefault("limits_store", make_store(self.limits_store))
        return {r.name: build_route(r, agents, **options) for r in self.routes}

    def router(self, route: str | None = None, **options: Any) -> AgentRouter:
        """The router of one route (default: `default_route`, else the first)."""
        name = route or self.default_route or (self.routes[0].name if self.routes else None)
        spec = next((r for r in self.routes if r.name == name), None)
        if spec is None:
            known = ", ".join(r.name for r in self.routes) or "none"
            raise ConfigurationError(f"no route {name!r} in the config (routes: {known})")
        agents = {a.name: a.build() for a in self.agents if a.name in spec.agents}
        options.setdefault("limits_store", make_store(self.limits_store))
        return build_route(spec, agents, **options)


def validated(model: type[M], value: M | dict[str, Any]) -> M:
    """`value` as `model`, validated; a ConfigurationError says what is wrong."""
    if isinstance(value, model):
        return value
    try:
        return model.model_validate(value)
    except pydantic.ValidationError as exc:
        raise ConfigurationError(describe(exc)) from exc


def build_route(route: RouteConfig, agents: dict[str, Agent], **options: Any) -> AgentRouter:
    from agent.router import AgentRouter

    custom = _rules_router(route.rules) if route.strategy == "custom" else None
    return AgentRouter(
        [agents[n] for n in route.agents],
        custom_router=custom,
        name=route.name,
        **route.options(),
        **options,
    )


def _rules_router(rules: Sequence[Rule]) -> Any:
    def route(request: Request, agents: list[Agent]) -> RouteResult:
        by_name = {a.name: a for a in agents}
        for rule in rules:
            if rule.matches(request):
                return RouteResult(agent=by_name[rule.prefer[0]], reason=rule.reason)
        return RouteResult(agent=agents[0], reason="no rule matched: first agent")

    return route


def load_config(source: str | Path | dict[str, Any]) -> RouterConfig:
    """Read and validate a config document: a YAML (or JSON) file's path, or a dict."""
    if isinstance(source, dict):
        return parse_config(source)
    try:
        text = Path(source).read_text()
    except OSError as exc:
        raise ConfigurationError(f"cannot read config {str(source)!r}: {exc}") from exc
    return parse_config(text)


def parse_config(source: str | dict[str, Any]) -> RouterConfig:
    """Validate a config document given as YAML/JSON text or as a dict."""
    data = source if isinstance(source, dict) else _load_text(source)
    try:
        return RouterConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ConfigurationError(describe(exc)) from None
    except RecursionError:  # nesting deeper than any config needs
        raise ConfigurationError("invalid config: nested too deeply") from None


# libyaml when PyYAML was built with it: about 10 times faster than the pure-Python
# loader, and it refuses nesting deeper than 1,000 levels instead of recursing.
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_text(text: str) -> Any:
    """A document's data. JSON (what the operator pushes) takes the fast path; anything
    else is YAML. Errors say where, never what: the line may hold a key."""
    if text.lstrip().startswith("{"):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # YAML's flow style also starts with "{": let YAML judge it
    try:
        return yaml.load(text, Loader=_YAML_LOADER)  # a safe loader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line, mark.column) if mark else (None, None)
        raise yaml_error(exc.problem, line, column) from None
    except (yaml.YAMLError, RecursionError):
        raise yaml_error(None, None, None) from None


def yaml_error(problem: str | None, line: int | None, column: int | None) -> ConfigurationError:
    """Where a YAML document is broken (0-based line and column) and the parser's word
    for what, never the line itself: it may hold a key."""
    if line is None or column is None:
        return ConfigurationError("config is not valid YAML")
    return ConfigurationError(
        f"config is not valid YAML at line {line + 1}, column {column + 1}: {scrub(str(problem))}"
    )


def describe(exc: pydantic.ValidationError) -> str:
    """A validation error as lines a person can act on (no input values: they may be keys)."""
    lines = [f"invalid config ({exc.error_count()} problem(s)):"]
    for e in exc.errors():
        where = ".".join(_named(p) for p in e["loc"]) or "(document)"
        lines.append(f"  {where}: {e['msg']}")
    return "\n".join(lines)


def _named(part: int | str) -> str:
    """A step of an error's location. Field names are the document's own; a name that
    came from the document (an unknown field, a header) is shown only when it cannot be
    a key: letters, '-' and '_' without digits."""
    if isinstance(part, int) or re.fullmatch(r"[A-Za-z][A-Za-z_-]{0,39}", part):
        return str(part)
    return "(a name not shown)"
