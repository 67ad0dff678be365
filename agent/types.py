"""The library's data: requests, responses, stream events and route information.

Plain dataclasses (slots) because they sit on every call's path; the config
document (`agent.config`) is the only pydantic model the engine validates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

if TYPE_CHECKING:
    from agent._base import BaseAgent
    from agent.errors import AgentError
    from agent.limits import ProviderLimits

T = TypeVar("T")

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(slots=True, frozen=True)
class TextPart:
    text: str
    type: Literal["text"] = "text"


@dataclass(slots=True, frozen=True)
class ImagePart:
    """An image by URL, or inline as base64 `data` with its `media_type`."""

    url: str | None = None
    data: str | None = None
    media_type: str = "image/png"
    type: Literal["image"] = "image"


@dataclass(slots=True, frozen=True)
class DocumentPart:
    """A document (a PDF, a text file) inline as base64 `data`, by `url`, or as plain
    `text`; `name` is its file name when the caller gave one."""

    data: str | None = None
    url: str | None = None
    text: str | None = None
    media_type: str = "application/pdf"
    name: str | None = None
    type: Literal["document"] = "document"


@dataclass(slots=True, frozen=True)
class AudioPart:
    """Audio inline as base64 `data` in `format` ("wav", "mp3")."""

    data: str
    format: str = "wav"
    type: Literal["audio"] = "audio"


ContentPart = TextPart | ImagePart | DocumentPart | AudioPart


@dataclass(slots=True)
class ToolCall:
    """A call the model asked for; `result` is filled in when the agent ran it."""

    id: str
    name: str
    arguments: dict[str, Any]
    result: Any = None
    error: str | None = None
    # What a provider needs back with the call next turn (Gemini's thoughtSignature).
    provider_data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Message:
    role: Role
    content: str | list[ContentPart] = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None  # for role="tool": which call this answers
    name: str | None = None  # for role="tool": the tool's name (Gemini needs it)

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    @property
    def has_images(self) -> bool:
        return not isinstance(self.content, str) and any(
            isinstance(p, ImagePart) for p in self.content
        )


@dataclass(slots=True, frozen=True)
class ToolSpec:
    """A tool the model may call: JSON-schema parameters and, optionally, the function."""

    name: str
    description: str
    parameters: dict[str, Any]
    function: Callable[..., Any] | None = None


@dataclass(slots=True, frozen=True)
class OutputSchema:
    """Structured output requested by `json()`: a JSON schema and its name. `any_object`
    asks for any JSON object (OpenAI's json_object mode): `schema` is then just
    `{"type": "object"}`, for the formats that need one."""

    name: str
    schema: dict[str, Any]
    parse: Callable[[str], Any] | None = None  # validates the model's JSON text
    any_object: bool = False


@dataclass(slots=True, frozen=True)
class ToolChoice:
    """Whether the model must call a tool: "auto" (it decides), "none", "required" (some
    tool), or "tool" (the one called `name`)."""

    mode: Literal["auto", "none", "required", "tool"]
    name: str | None = None


@dataclass(slots=True, frozen=True)
class Reasoning:
    """Ask the model to reason before it answers, and to say what it reasoned (the
    summary comes back as `Response.reasoning`), where its format has both: Anthropic's
    extended thinking (a budget of tokens) and OpenAI's Responses API (an effort, with
    summaries). Each format says it in its own words; one that has no place for it
    (chat completions, Gemini) goes without, named like any uncarried field."""

    budget_tokens: int | None = None  # Anthropic's words
    effort: str | None = None  # OpenAI's: "minimal", "low", "medium" or "high"


@dataclass(slots=True, frozen=True)
class Relay:
    """A caller's own request body in its wire format ("openai", "anthropic"): an agent
    that speaks that format sends it upstream as it came (its `model` and the agent's own
    `extra` set), with `headers` (provider headers the caller sent), and hands the answer
    back as the provider's own bytes (`Response.body`, `WireBytes` events)."""

    wire: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class Origin:
    """The wire format a request came in, when it came in one (an app calling the
    sidecar), and what of the caller's body the engine's request has no place for. An
    agent of that format is sent the body as it came; an agent of another format goes
    without those fields, and they are named on its attempt span and to the caller
    (`agent.wire.carry.ignored`)."""

    wire: str
    untranslated: frozenset[str] = frozenset()


@dataclass(slots=True)
class Request:
    """One normalized request, the same for every provider.

    `input` is the text of the last user message: what a custom router reads.
    """

    messages: list[Message]
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    tools: list[ToolSpec] = field(default_factory=list)
    output_schema: OutputSchema | None = None
    tool_choice: ToolChoice | None = None  # None: the provider's default (auto)
    parallel_tool_calls: bool | None = None  # None: the provider's default (allowed)
    reasoning: Reasoning | None = None  # None: the provider's default
    stream: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # provider-specific body fields
    metadata: dict[str, Any] = field(default_factory=dict)
    relay: Relay | None = None  # the caller's own body, for agents that speak its format
    origin: Origin | None = None  # the caller's wire format, when it called in one
    # The assistant's answer so far, which another agent failed to finish: to continue it.
    continues: str | None = None
    # A caller's body whose conversation was not read into `messages` (every agent of its
    # route sends the body on as it came, and nothing on the way reads it): the length
    # of its text, for the token estimate (0 when the conversation was read).
    unread_chars: int = 0

    @property
    def input(self) -> str:
        for message in reversed(self.messages):
            if message.role == "user":
                return message.text
        return ""

    @property
    def has_images(self) -> bool:
        return any(m.has_images for m in self.messages)

    def approx_input_tokens(self) -> int:
        """A cheap token estimate (4 characters a token) for cost and context checks."""
        chars = len(self.system or "") + sum(len(m.text) for m in self.messages)
        return (chars + self.unread_chars) // 4 + 1

    def copy(self, **changes: Any) -> Request:
        return replace(self, **changes)


@dataclass(slots=True, frozen=True)
class Usage:
    """Tokens of one exchange. `input_tokens` counts every input token, the cached ones
    (`cached_input_tokens` read from the provider's cache, `cache_write_tokens` written to
    it) included; `output_tokens` counts the reasoning ones (`reasoning_tokens`) too."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __repr__(self) -> str:  # the details only when a provider reported some
        shown = ["input_tokens", "output_tokens"] + [
            name
            for name in ("cached_input_tokens", "cache_write_tokens", "reasoning_tokens")
            if getattr(self, name)
        ]
        return f"Usage({', '.join(f'{name}={getattr(self, name)}' for name in shown)})"

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error", "other"]


@dataclass(slots=True)
class Attempt:
    """One try of one agent within a routing decision."""

    agent: str  # "provider/model" (plus #index when the same pair appears twice)
    index: int  # the agent's position in the router's list
    outcome: Literal["ok", "error", "skipped", "cancelled"]
    latency_ms: float = 0.0
    error: AgentError | None = None
    retry: int = 0  # 0 for the first try of this agent, 1.. for retries
    started_ns: int = 0  # wall clock (time.time_ns) when the attempt began
    route: RouteInfo | None = None  # when the agent is itself a router: how it routed

    def __str__(self) -> str:
        tail = f": {self.error}" if self.error else ""
        return f"{self.agent} {self.outcome} in {self.latency_ms:.1f}ms{tail}"


@dataclass(slots=True, frozen=True)
class Continuation:
    """A stream that failed after content, continued by the next agent (`stream_recovery:
    continue`): `failed` stopped after `offset` characters of the answer for `reason`."""

    failed: str
    agent: str
    offset: int
    reason: str


@dataclass(slots=True)
class RouteInfo:
    """Why a router answered the way it did."""

    strategy: str
    reason: str
    attempts: list[Attempt] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)
    continuations: list[Continuation] = field(default_factory=list)

    @property
    def fallbacks(self) -> int:
        return sum(1 for a in self.attempts if a.outcome == "error")

    @property
    def path(self) -> list[str]:
        """The agents that answered, from this router down through nested routers."""
        winner = next((a for a in reversed(self.attempts) if a.outcome == "ok"), None)
        if winner is None:
            return []
        return [winner.agent, *(winner.route.path if winner.route else [])]


@dataclass(slots=True)
class Response(Generic[T]):
    """The answer to one call: text or validated output, and how it was produced."""

    output: T
    text: str
    provider: str
    model: str
    latency_ms: float
    usage: Usage
    cost_estimate: float  # USD; see `cost_known`
    finish_reason: FinishReason
    tool_calls: list[ToolCall] = field(default_factory=list)
    raw: Any = None  # the provider's last response payload (or the stream's chunks)
    id: str | None = None
    cost_known: bool = True  # False when no price is known for the model (cost is 0.0)
    time_to_first_token_ms: float | None = None  # streams only
    route: RouteInfo | None = None
    messages: list[Message] = field(default_factory=list)  # the full exchange
    body: bytes | None = None  # the provider's answer as it sent it, when relayed
    provider_limits: ProviderLimits | None = None  # the provider's rate-limit headers
    reasoning: str = ""  # the model's summary of its reasoning, where its format gives one

    def __str__(self) -> str:
        return self.text


# ---- stream events -------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Started:
    """The first event of a router's stream: which agent answers, announced when its
    first content has arrived (after any retries and fallbacks), just before that
    content. From here on the router is committed to this agent.

    `route` is the routing so far: the reason, and the attempts that failed or were
    skipped before this one (this agent's own attempt is not in it yet).
    """

    agent: str  # the router's name for the agent ("provider/model", or its name)
    provider: str
    model: str  # the model asked for; the one that answers is on Done's response
    route: RouteInfo
    type: Literal["started"] = "started"


@dataclass(slots=True, frozen=True)
class TextDelta:
    text: str
    type: Literal["text_delta"] = "text_delta"


@dataclass(slots=True, frozen=True)
class ReasoningDelta:
    """A piece of the model's reasoning summary (see `Reasoning`), before its answer."""

    text: str
    type: Literal["reasoning_delta"] = "reasoning_delta"


@dataclass(slots=True, frozen=True)
class ToolCallDelta:
    """A piece of a tool call: `arguments` chunks concatenate per `index`."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    type: Literal["tool_call_delta"] = "tool_call_delta"


@dataclass(slots=True, frozen=True)
class ToolResult:
    """The agent ran a tool the model asked for (between two model turns)."""

    call: ToolCall
    type: Literal["tool_result"] = "tool_result"


@dataclass(slots=True, frozen=True)
class Done:
    """The last event of every stream: the assembled response."""

    response: Response[Any]
    type: Literal["done"] = "done"


@dataclass(slots=True, frozen=True)
class WireBytes:
    """The provider's own bytes of a relayed stream (see `Relay`), in the order they
    came; the decoded events of the same bytes follow it."""

    data: bytes
    type: Literal["wire_bytes"] = "wire_bytes"


StreamEvent = (
    Started | TextDelta | ReasoningDelta | ToolCallDelta | ToolResult | WireBytes | Done
)


# ---- routing -------------------------------------------------------------------------


@dataclass(slots=True)
class RouteResult:
    """What a custom router returns: the agent to use first, and why."""

    agent: BaseAgent
    reason: str = "custom"


def as_messages(value: str | Sequence[Message | dict[str, Any]]) -> list[Message]:
    """Accept a prompt string or a list of messages (Message or OpenAI-style dicts).
    Anything else, or a malformed message, is an `InvalidRequestError` saying which."""
    from agent.errors import InvalidRequestError

    if isinstance(value, str):
        return [Message("user", value)]
    if not isinstance(value, list | tuple) and not isinstance(value, Sequence):  # ABCs are slow
        raise InvalidRequestError(
            f"the prompt must be a string or a list of messages, not {type(value).__name__}"
        )
    messages = []
    for i, m in enumerate(value):
        if isinstance(m, Message):
            messages.append(m)
            continue
        if not isinstance(m, dict):
            raise InvalidRequestError(f"message {i} is a {type(m).__name__}, not a dict")
        try:
            messages.append(_message_from_dict(m))
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            # The reason, never the content: messages may carry anything.
            raise InvalidRequestError(
                f"message {i} is malformed: {type(exc).__name__}: {exc}"
            ) from exc
    return messages


_ROLES = ("system", "user", "assistant", "tool")


def _message_from_dict(d: dict[str, Any]) -> Message:
    role = d.get("role", "user")
    if role not in _ROLES:
        raise ValueError(f"role must be one of {', '.join(_ROLES)}")
    content = d.get("content") or ""
    if not isinstance(content, str | list):
        raise TypeError(f"content must be text or a list of parts, not {type(content).__name__}")
    if isinstance(content, list):
        content = [part for p in content if (part := _part_from_dict(p)) is not None]
    calls = [
        ToolCall(c["id"], c["function"]["name"], _loads(c["function"].get("arguments")))
        for c in d.get("tool_calls") or ()
    ]
    return Message(role, content, calls, d.get("tool_call_id"), d.get("name"))


def _part_from_dict(p: dict[str, Any]) -> ContentPart | None:
    """One content part, OpenAI-style (text, image_url, file, input_audio, refusal) or an
    Anthropic-style image or document block."""
    kind = p.get("type")
    if kind == "text":
        return TextPart(p.get("text", ""))
    if kind == "refusal":  # an assistant's earlier refusal: its words, to any model
        return TextPart(p.get("refusal", ""))
    if kind == "image_url":
        url = p["image_url"]["url"] if isinstance(p["image_url"], dict) else p["image_url"]
        return _image_from_url(url)
    if kind == "input_audio":
        audio = p["input_audio"]
        return AudioPart(data=audio["data"], format=audio.get("format", "wav"))
    if kind == "file":
        file = p["file"]
        if "file_data" not in file:
            raise ValueError("a file part without file_data (a file_id) works with OpenAI only")
        head, data = _data_url(file["file_data"], "application/pdf")
        return DocumentPart(data=data, media_type=head, name=file.get("filename"))
    if kind in ("image", "document"):  # Anthropic-style blocks
        src = p.get("source", {})
        title = p.get("title")
        if src.get("type") == "base64":
            if kind == "image":
                return ImagePart(data=src["data"], media_type=src["media_type"])
            return DocumentPart(data=src["data"], media_type=src["media_type"], name=title)
        if src.get("type") == "text":
            return DocumentPart(text=src["data"], media_type="text/plain", name=title)
        if kind == "image":
            return ImagePart(url=src.get("url"))
        return DocumentPart(url=src.get("url"), name=title)
    return None


def _data_url(url: str, default: str) -> tuple[str, str]:
    """A `data:` URL's media type and base64 data; anything else is taken as bare base64."""
    if url.startswith("data:") and ";base64," in url:
        head, data = url[5:].split(";base64,", 1)
        return head or default, data
    return default, url


def _image_from_url(url: str) -> ImagePart:
    if url.startswith("data:") and ";base64," in url:
        media_type, data = _data_url(url, "image/png")
        return ImagePart(data=data, media_type=media_type)
    return ImagePart(url=url)


def _loads(text: str | dict[str, Any] | None) -> dict[str, Any]:
    import json

    if not text:
        return {}
    if isinstance(text, dict):  # arguments already decoded
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"tool call arguments are not JSON ({exc.msg} at {exc.pos})") from None
    return value if isinstance(value, dict) else {"value": value}
