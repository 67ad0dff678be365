"""The client's tests run on both event loops: asyncio's, and uvloop's, which the
sidecar runs on by default (its transports are not `asyncio.Transport` subclasses)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


@pytest.hookimpl(optionalhook=True)  # pytest-asyncio >= 1.4 calls it; older ones use asyncio
def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
