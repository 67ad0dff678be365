"""What each wire format cannot carry of the engine's request, in one table.

A part or setting a target format has no place for is left out of the request built for
it, and named for the caller (the sidecar's `x-agent-ignored-fields` header): never sent
in a shape the provider refuses, never dropped without a word.
"""

from __future__ import annotations

from agent.types import AudioPart, ContentPart, DocumentPart, ImagePart, Request

# wire -> what of the engine's request it has no place for
_CANNOT: dict[str, frozenset[str]] = {
    # Chat Completions takes files inline (file_data) or by its own file ids, not by URL.
    "openai": frozenset({"document_url"}),
    # Messages takes no audio input.
    "anthropic": frozenset({"input_audio"}),
    # Gemini decides for itself whether to call several functions at once.
    "gemini": frozenset({"parallel_tool_calls"}),
    # The Responses API takes no audio input and has no stop sequences.
    "responses": frozenset({"input_audio", "stop"}),
}


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
    if not cannot:
        return set()
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
    return found
