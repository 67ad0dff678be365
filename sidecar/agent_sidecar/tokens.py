"""`POST /v1/messages/count_tokens` for a route without an Anthropic agent to ask: an
estimate with tiktoken's cl100k_base encoding.

Claude's own tokenizer is not published; cl100k_base is a close, well-kept stand-in, and
the answer says it is an estimate (`x-agent-token-count`). tiktoken downloads its
encodings on first use, which a pod without egress cannot do, so the encoding's file
ships with the sidecar (gzipped, checked against the hash tiktoken itself expects): it is
the ranks file OpenAI publishes for tiktoken (MIT licence), byte for byte.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
from collections.abc import Iterator
from importlib import resources
from typing import TYPE_CHECKING, Any

from agent.wire.base import dumps

if TYPE_CHECKING:
    import tiktoken

ENCODING = "cl100k_base"
HOW = f"estimate (tiktoken {ENCODING})"  # the x-agent-token-count header of an estimate
_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
# The encoding's pre-tokenizer, as tiktoken defines cl100k_base.
_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
# Anthropic counts an image by its size (width x height / 750) and scales large ones down
# to about 1,600 tokens; the size is not read here, so every image counts as large.
IMAGE_TOKENS = 1600
# What a message adds beyond its content (role and separators), and the request itself.
PER_MESSAGE = 4
PER_REQUEST = 3


@functools.cache
def encoding() -> tiktoken.Encoding:
    """cl100k_base from the file shipped with the sidecar (read once, on first use).
    tiktoken itself is imported here too: 3.5 MB of every sidecar's memory otherwise,
    for an estimate most never make."""
    import tiktoken
    packed = resources.files("agent_sidecar").joinpath(f"data/{ENCODING}.tiktoken.gz")
    data = gzip.decompress(packed.read_bytes())
    if hashlib.sha256(data).hexdigest() != _SHA256:
        raise RuntimeError(f"the shipped {ENCODING} encoding is damaged (its hash differs)")
    ranks = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in data.splitlines() if line)
    }
    return tiktoken.Encoding(ENCODING, pat_str=_PATTERN, mergeable_ranks=ranks, special_tokens={})


def estimate(body: dict[str, Any]) -> int:
    """Input tokens of a Messages request body (already checked to have `messages`)."""
    images = 0
    texts: list[str] = []
    for piece in _pieces(body):
        if piece is None:
            images += 1
        else:
            texts.append(piece)
    counted = len(encoding().encode_ordinary("\n".join(texts)))
    return counted + images * IMAGE_TOKENS + PER_MESSAGE * len(body["messages"]) + PER_REQUEST


def _pieces(body: dict[str, Any]) -> Iterator[str | None]:
    """The text the model reads in a body, piece by piece; None for each image or document."""
    yield from _content(body.get("system"))
    for message in body["messages"]:
        if isinstance(message, dict):
            yield from _content(message.get("content"))
    for tool in body.get("tools") or ():
        if isinstance(tool, dict):
            yield from (str(tool.get(k, "")) for k in ("name", "description"))
            yield dumps(tool.get("input_schema") or {}).decode()


def _content(content: Any) -> Iterator[str | None]:
    if isinstance(content, str):
        yield content
        return
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind in ("image", "document"):
            yield None
        elif kind == "tool_use":
            yield str(block.get("name", ""))
            yield dumps(block.get("input") or {}).decode()
        elif kind == "tool_result":
            yield from _content(block.get("content"))
        else:  # text, thinking, and whatever text a future block carries
            for key in ("text", "thinking"):
                if isinstance(block.get(key), str):
                    yield block[key]
