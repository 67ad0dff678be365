"""The members of a large JSON object, found without building the values.

A 30 MB body becomes about 80 MB of Python objects when parsed whole, and orjson holds
the GIL for the whole parse (about 100 ms here), which would stall every other request
even from a worker thread. So a large body is cut into its top-level members first, by
this scanner: regular-expression runs bounded to 256 KB each (the GIL changes hands
between them), then `decode` parses only the members the caller's format reads. A
large member nobody reads is passed on as the bytes it came as (`orjson.Fragment`).

The scanner checks structure (quotes, balanced brackets, commas between members), not
every token: a member passed on unparsed is judged by the provider that reads it.
"""

from __future__ import annotations

import re

STEP = 256 * 1024  # bytes matched at once: a few milliseconds of GIL at most

_WHITESPACE = re.compile(rb"[ \t\r\n]*")
# Strings without escapes, and anything that is neither a quote, a bracket nor a
# backslash: most of a JSON value, skipped at the regular expression engine's speed.
_RUN = re.compile(rb'(?:"[^"\\]*"|[^"\[\]{}\\])*')
_SCALAR = re.compile(rb"[^,}\]\s]*")
_CLOSE = {ord("]"): ord("["), ord("}"): ord("{")}


class NotJSON(ValueError):
    """The bytes are not one JSON object; the message says where."""


def members(raw: bytes | bytearray) -> list[tuple[bytes, int, int]]:
    """(key as JSON text, start, end) of each value of the object `raw` holds."""
    found: list[tuple[bytes, int, int]] = []
    i = _skip(raw, 0)
    if raw[i : i + 1] != b"{":
        raise NotJSON("the body must be a JSON object")
    i = _skip(raw, i + 1)
    if raw[i : i + 1] == b"}":
        return _end(raw, i + 1, found)
    while True:
        if raw[i : i + 1] != b'"':
            raise NotJSON(f"a member name was expected at byte {i}")
        key_start, key_end = i, _string_end(raw, i)
        i = _skip(raw, key_end)
        if raw[i : i + 1] != b":":
            raise NotJSON(f"':' was expected at byte {i}")
        start = _skip(raw, i + 1)
        end = value_end(raw, start)
        found.append((bytes(raw[key_start:key_end]), start, end))
        i = _skip(raw, end)
        sep = raw[i : i + 1]
        if sep == b"}":
            return _end(raw, i + 1, found)
        if sep != b",":
            raise NotJSON(f"',' or '}}' was expected at byte {i}")
        i = _skip(raw, i + 1)


def value_end(raw: bytes | bytearray, i: int) -> int:
    """Where the JSON value starting at `i` ends."""
    first = raw[i : i + 1]
    if first == b'"':
        return _string_end(raw, i)
    if first in (b"[", b"{"):
        return _nested_end(raw, i)
    end = _SCALAR.match(raw, i).end()  # type: ignore[union-attr]  # matches empty
    if end == i:
        raise NotJSON(f"a value was expected at byte {i}")
    return end


def _nested_end(raw: bytes | bytearray, i: int) -> int:
    opened = [raw[i]]
    i += 1
    n = len(raw)
    while opened:
        bound = min(n, i + STEP)
        i = _RUN.match(raw, i, bound).end()  # type: ignore[union-attr]  # matches empty
        if i == bound:  # a run only ends between tokens: go on from here
            if i == n:
                raise NotJSON("the body ends inside a value")
            continue
        c = raw[i]
        if c == 0x22:  # a string with escapes, or one longer than a run
            i = _string_end(raw, i)
        elif c in (0x5B, 0x7B):  # [ {
            opened.append(c)
            i += 1
        elif c in _CLOSE:
            if opened.pop() != _CLOSE[c]:
                raise NotJSON(f"mismatched brackets at byte {i}")
            i += 1
        else:  # a backslash outside a string
            raise NotJSON(f"unexpected '\\' at byte {i}")
    return i


def _string_end(raw: bytes | bytearray, i: int) -> int:
    j = i + 1
    while True:
        q = raw.find(b'"', j)
        if q < 0:
            raise NotJSON("the body ends inside a string")
        slashes = 0
        while raw[q - 1 - slashes] == 0x5C:
            slashes += 1
        if slashes % 2 == 0:
            return q + 1
        j = q + 1


def _skip(raw: bytes | bytearray, i: int) -> int:
    return _WHITESPACE.match(raw, i).end()  # type: ignore[union-attr]  # matches empty


def _end(
    raw: bytes | bytearray, i: int, found: list[tuple[bytes, int, int]]
) -> list[tuple[bytes, int, int]]:
    if _skip(raw, i) != len(raw):
        raise NotJSON("unexpected content after the JSON object")
    return found
