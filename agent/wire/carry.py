"""What each wire format cannot carry of the engine's request, in one table.

A part or setting a target format has no place for is left out of the request built for
it, and named for the caller (the sidecar's `x-agent-ignored-fields` header): never sent
in a shape the provider refuses, never dropped without a word.
"""

from __future__ import annotations

from agent.types import AudioPart, ContentPart, DocumentPart, ImagePart, Request

# wire -> what of the engine's request it has no place for
_CANNOT: dict[str, frozenset[str]] = {
    # Chat Completions takes files inline (file_data) or by its own file ids, not by URL,
    # and gives no reasoning summaries.
    "openai": frozenset({"document_url", "reasoning"}),
    # Messages takes no audio input.
    "anthropic": frozenset({"input_audio"}),
    # Gemini decides for itself whether to call several functions at once; its thoughts
    # are not asked for in either format's words.
    "gemini": frozenset({"parallel_tool_calls", "reasoning"}),
    # The Responses API takes no audio input and has no stop sequences.
    "responses": frozenset({"input_audio", "stop"}),
}


# wire -> the most stop sequences it takes: OpenAI refuses a request with more (a 400), so
# the first ones are sent and the rest named.
_MOST_STOPS: dict[str, int] = {"openai": 4}


# The engine's name of what a format cannot carry, in the words of a caller's format.
_CALLERS_WORDS: dict[str, dict[str, str]] = {"anthropic": {"reasoning": "thinking"}}


def part_kind(part: ContentPart) -> str:
    """A content part's kind, in the words `x-agent-ignored-fields` uses."""
    if isinstance(part, ImagePart):
        return "image"
    if isinstance(part, DocumentPart):
        return "document_url" if part.url else "document"
    if isinstance(part, AudioPart):
        return "input_audio"
    return "text"


def carries(wire: str, kind: str) -> bool:
    return kind not in _CANNOT.get(wire, frozenset())


def uncarried(request: Request, wire: str) -> set[str]:
    """What of `request` an agent speaking `wire` gets without."""
    cannot = _CANNOT.get(wire, frozenset())
    found = {
        kind
        for m in request.messages
        if not isinstance(m.content, str)
        for kind in map(part_kind, m.content)
        if kind in cannot
    }
    if request.parallel_tool_calls is False and "parallel_tool_calls" in cannot:
        found.add("parallel_tool_calls")
    if request.stop and "stop" in cannot:
        found.add("stop")
    if request.reasoning is not None and not reasons(request, wire):
        found.add("reasoning")
    most = _MOST_STOPS.get(wire)
    if most and request.stop and len(request.stop) > most:
        found.add(f"stop[{most}:]")
    return found


def reasons(request: Request, wire: str) -> bool:
    """Whether an agent speaking `wire` is asked to reason: where its format has a place
    for it, and Claude not when a tool call is forced (structured output is one), which
    it refuses with thinking on."""
    if request.reasoning is None or "reasoning" in _CANNOT.get(wire, frozenset()):
        return False
    choice = request.tool_choice
    forced = request.output_schema is not None or (
        choice is not None and choice.mode in ("required", "tool") and bool(request.tools)
    )
    return not (wire == "anthropic" and forced)


def stops(request: Request, wire: str) -> list[str] | None:
    """The stop sequences an agent speaking `wire` is sent."""
    most = _MOST_STOPS.get(wire)
    return request.stop[:most] if request.stop and most else request.stop


def ignored(request: Request, wire: str) -> set[str]:
    """What of a request an agent speaking `wire` goes without: nothing when it speaks
    the caller's own format (it is sent the body as it came, see `Origin`), else what
    the engine's request does not hold of the caller's body and what of the engine's
    request `wire` has no place for."""
    origin = request.origin
    if origin is None:
        return uncarried(request, wire)
    if origin.wire == wire:
        return set()
    words = _CALLERS_WORDS.get(origin.wire, {})
    return {words.get(name, name) for name in uncarried(request, wire)} | origin.untranslated
