"""Shared pieces of the wire renderers: request facts, rendered responses, text helpers."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .behaviours import Reply, ToolCall

# Every id in a rendered response embeds this token; a cached rendering is re-used by
# replacing it with a fresh random one (`Rendered.with_core`). Same length as `new_core()`.
CORE_PLACEHOLDER = "FAKECOREIDXXXXXXXXXXXX"
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def new_core() -> str:
    """22 random base62 characters (the random part of a response id)."""
    raw = os.urandom(22)
    return "".join(_ALPHABET[b % 62] for b in raw)


@dataclass
class Call:
    """What the fake learnt from a request that passed validation."""

    endpoint: str  # "chat" | "models" | "model" | "count_tokens"
    model: str
    stream: bool = False
    include_usage: bool = False  # OpenAI stream_options.include_usage
    include_obfuscation: bool = True  # OpenAI stream_options.include_obfuscation
    sse: bool = True  # Gemini streamGenerateContent: alt=sse (else a streamed JSON array)
    input_tokens: int = 1
    choices: int = 1  # OpenAI n
    logprobs: bool = False  # OpenAI logprobs
    request: dict[str, Any] = field(default_factory=dict)  # Responses API: fields it echoes


@dataclass
class Rendered:
    """A response ready to send: either `body` or, for a stream, `frames`.

    `content` holds the indices of the frames that carry content (text or tool-call pieces);
    the frames from `tail` on are the terminator (finish/usage/[DONE]/message_stop...).
    """

    status: int
    headers: dict[str, str]
    body: bytes | None = None
    frames: list[bytes] = field(default_factory=list)
    content: list[int] = field(default_factory=list)
    tail: int = 0

    @property
    def is_stream(self) -> bool:
        return self.body is None

    def with_core(self, core: str) -> Rendered:
        """A copy whose ids use `core` instead of the placeholder."""
        ph = CORE_PLACEHOLDER.encode()
        c = core.encode()
        return Rendered(
            status=self.status,
            headers=self.headers,
            body=None if self.body is None else self.body.replace(ph, c),
            frames=[f.replace(ph, c) for f in self.frames],
            content=self.content,
            tail=self.tail,
        )

    def prefix_len(self, n: int) -> int:
        """How many frames to send to deliver `n` content frames (plus what precedes them)."""
        cp = self.content
        if not cp:
            return self.tail
        if n <= 0:
            return cp[0]
        if n >= len(cp):
            return cp[-1] + 1
        return cp[n - 1] + 1

    def batches(self, frames: Sequence[bytes] | None = None) -> list[bytes]:
        """Group the frames into writes: a batch ends after each content frame, so that
        `chunk_delay` is the time between content chunks."""
        frames = self.frames if frames is None else frames
        marks = set(self.content)
        out: list[bytes] = []
        cur: list[bytes] = []
        for i, f in enumerate(frames):
            cur.append(f)
            if i in marks:
                out.append(b"".join(cur))
                cur = []
        if cur:
            out.append(b"".join(cur))
        return out


_WORD = re.compile(r"\s*\S+")


def split_text(text: str, chunks: int | None) -> list[str]:
    """Pieces whose concatenation is `text`: one per word (leading whitespace attached, like
    real token deltas), or `chunks` nearly equal pieces."""
    if not text:
        return []
    if chunks is None:
        parts = _WORD.findall(text)
        if not parts:
            return [text]
        used = sum(len(p) for p in parts)
        if used < len(text):
            parts[-1] += text[used:]
        return parts
    n = max(1, min(chunks, len(text)))
    size, rem = divmod(len(text), n)
    out: list[str] = []
    i = 0
    for k in range(n):
        step = size + (1 if k < rem else 0)
        out.append(text[i : i + step])
        i += step
    return out


def split_json(s: str, size: int = 8) -> list[str]:
    """Split an encoded JSON string into pieces (tool-call argument deltas)."""
    if not s:
        return []
    return [s[i : i + size] for i in range(0, len(s), size)]


_SKIP_KEYS = frozenset(
    {"role", "type", "id", "tool_call_id", "tool_use_id", "cache_control", "mime_type",
     "mimeType", "data", "image_url", "signature"}
)


def count_words(obj: Any) -> int:
    """Words in the string leaves of a request section (roles, ids, types and blobs skipped)."""
    if isinstance(obj, str):
        return len(obj.split())
    if isinstance(obj, Mapping):
        return sum(count_words(v) for k, v in obj.items() if k not in _SKIP_KEYS)
    if isinstance(obj, list):
        return sum(count_words(v) for v in obj)
    return 0


def tool_args(tc: ToolCall) -> tuple[str, Any]:
    """(encoded-as-given string or None marker, decoded object) for a tool call's arguments."""
    args = tc.get("arguments", tc.get("input", tc.get("args", {})))
    if isinstance(args, str):
        try:
            return args, json.loads(args)
        except ValueError:
            return args, {}
    return "", args


def output_tokens(reply: Reply) -> int:
    n = len(reply.text.split())
    for tc in reply.tool_calls:
        raw, obj = tool_args(tc)
        n += len((raw or json.dumps(obj)).split())
    return max(1, n)


def usage_of(reply: Reply, call: Call) -> tuple[int, int]:
    if reply.usage is not None:
        return int(reply.usage[0]), int(reply.usage[1])
    return call.input_tokens, output_tokens(reply)


_FINISH_CANON = {
    "stop": "stop", "end_turn": "stop", "STOP": "stop",
    "length": "length", "max_tokens": "length", "MAX_TOKENS": "length",
    "tool_calls": "tool", "tool_use": "tool", "function_call": "tool",
    "content_filter": "filter", "refusal": "filter", "SAFETY": "filter",
}


def finish_canon(value: str | None) -> str | None:
    """Neutral name of a finish reason ("stop"/"length"/"tool"/"filter"), or None if the
    value is not one of the known ones (then it is passed through as is)."""
    if value is None:
        return None
    return _FINISH_CANON.get(value)


def compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def parse_json_body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None
