"""The sidecar's log: every line through the one scrubber, and a client's mistakes as
one line at INFO instead of aiohttp's traceback at ERROR.

ERROR then means the sidecar's own trouble: a bad request line, a header too long or a
TLS hello on the plain port is the client's, and says so in one line.
"""

from __future__ import annotations

import logging
import re

from aiohttp.http_exceptions import HttpProcessingError

from agent.errors import scrub

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def install(level: str) -> None:
    logging.basicConfig(level=level.upper())
    for handler in logging.getLogger().handlers:
        handler.setFormatter(Scrubbed(FORMAT))
    logging.getLogger("aiohttp.server").addFilter(client_mistakes)


class Scrubbed(logging.Formatter):
    """Keys, header values, URL credentials and the admin token never reach a log line,
    tracebacks included."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def client_mistakes(record: logging.LogRecord) -> bool:
    """aiohttp's "Error handling request" for a malformed request: one line at INFO."""
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, HttpProcessingError) and (error.code or 400) < 500:
        record.levelno, record.levelname = logging.INFO, "INFO"
        first = str(error.message).splitlines()[0] if error.message else type(error).__name__
        first = re.sub(r"\s*b['\"].*", "", first)  # never the bytes it read: a header's value
        record.msg, record.args = "refused a malformed request: %s (%d)", (first, error.code)
        record.exc_info = record.exc_text = None
    return True
