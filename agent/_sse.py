"""Incremental Server-Sent Events parsing (WHATWG rules), bytes in, events out."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(slots=True)
class SSEEvent:
    event: str  # "message" when the frame had no `event:` line
    data: str


class SSEParser:
    """Feed raw bytes as they arrive; get complete events back. No I/O.

    Lines that are no SSE field at all (Gemini appends a raw JSON error object to a
    stream) are kept in `stray` rather than silently dropped.
    """

    __slots__ = ("_after_cr", "_buf", "stray")

    def __init__(self) -> None:
        self._buf = b""  # line endings already normalized to LF
        self._after_cr = False  # the last chunk ended in CR: a leading LF completes it
        self.stray: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        quick = self.quick(chunk)
        if quick is not None:
            return quick[0]
        events: list[SSEEvent] = []
        for frame in self.frames(chunk):
            if (event := self.parse(frame)) is not None:
                events.append(event)
        return events

    def quick(self, chunk: bytes) -> tuple[list[SSEEvent], int] | None:
        """A chunk made only of the frames nearly every stream is made of (one data line,
        or one `event:` line and one data line, LF-ended), parsed in one pass: its events
        and where the frame still arriving begins (kept for the next chunk). None for
        anything else, or when a frame began in an earlier chunk: `frames` and `parse`
        then apply the general rules, as they would have here."""
        if self._buf or self._after_cr or b"\r" in chunk:
            return None
        pieces = _QUICK.split(chunk)  # [b"", event, data, b"", event, data, ..., rest]
        rest = pieces[-1]
        if any(pieces[0:-1:3]) or b"\n\n" in rest:  # something between or after them
            return None
        self._buf = rest
        events = [
            SSEEvent(
                "message" if name is None else name.decode("utf-8", "replace"),
                data.decode("utf-8", "replace"),
            )
            for name, data in zip(pieces[1::3], pieces[2::3], strict=True)
        ]
        return events, len(chunk) - len(rest)

    def frames(self, chunk: bytes) -> list[bytes]:
        """The frames this chunk completes, unparsed, without their blank line (line
        endings normalized to LF): to `parse` one by one, keeping each one's bytes."""
        if self._after_cr:
            self._after_cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]  # the second half of a CRLF split across chunks
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in chunk:
            # A CR ends a line at once (an event is not held back waiting for a possible
            # LF); a following LF, even in the next chunk, belongs to it.
            self._after_cr = chunk.endswith(b"\r")
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        frames = buf.split(b"\n\n")
        self._buf = frames.pop()  # the frame still arriving (b"" when none is)
        return frames

    def parse(self, frame: bytes) -> SSEEvent | None:
        """One frame's event (None for a frame of comments only)."""
        # The frames nearly every event is (the general rules agree): one data line, or
        # one `event:` line and one data line.
        if frame.startswith(b"data: "):
            if b"\n" not in frame:
                return SSEEvent("message", frame[6:].decode("utf-8", "replace"))
        elif frame.startswith(b"event: "):
            end = frame.find(b"\n")
            if frame.startswith(b"data: ", end + 1) and frame.find(b"\n", end + 1) < 0:
                name = frame[7:end].decode("utf-8", "replace")
                return SSEEvent(name, frame[end + 7 :].decode("utf-8", "replace"))
        return _parse_frame(frame, self.stray)

    def close(self) -> list[SSEEvent]:
        """End of stream: a last frame without its blank line still counts."""
        rest = self.rest()
        event = self.parse(rest) if rest else None
        return [event] if event is not None else []

    def rest(self) -> bytes:
        """End of stream: the last frame, that came without its blank line (or b"")."""
        rest, self._buf = self._buf.rstrip(b"\r\n"), b""
        return rest.replace(b"\r\n", b"\n")


_FIELDS = ("data", "event", "id", "retry")
# One frame of the kind `SSEParser.quick` reads; `split` gives its event name (None when
# it has none) and data between the bytes around the frames.
_QUICK = re.compile(rb"(?:event: ([^\n]*)\n)?data: ([^\n]*)\n\n")


def _parse_frame(frame: bytes, stray: list[str]) -> SSEEvent | None:
    name = "message"
    data: list[str] = []
    for raw in frame.split(b"\n"):
        if not raw or raw.startswith(b":"):
            continue
        line = raw.decode("utf-8", "replace")
        field, _, value = line.partition(":")
        if field not in _FIELDS:
            stray.append(line)
            continue
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
    if not data:
        return None
    return SSEEvent(name, "\n".join(data))
