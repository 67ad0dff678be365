"""Self-tests of the fake providers: make `fakes` importable and expose its fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent.parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from fakes.fixtures import (  # noqa: E402
    fake_anthropic,
    fake_anthropic_sync,
    fake_factory,
    fake_gemini,
    fake_gemini_sync,
    fake_openai,
    fake_openai_sync,
)

__all__ = [
    "fake_anthropic",
    "fake_anthropic_sync",
    "fake_factory",
    "fake_gemini",
    "fake_gemini_sync",
    "fake_openai",
    "fake_openai_sync",
]
