"""pytest plugin: fake provider fixtures.

Register with `pytest_plugins = ["fakes.fixtures"]` in the root conftest (or import the
fixtures into a conftest's namespace).

Async (served on the test's event loop): `fake_openai`, `fake_anthropic`, `fake_gemini`,
and `fake_factory` (`fake = await fake_factory("groq", api_key=None)`; all stopped at teardown).
Sync (served from a background thread, for sync code under test): `fake_openai_sync`,
`fake_anthropic_sync`, `fake_gemini_sync`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio

from .provider import FakeProvider

FakeFactory = Callable[..., Awaitable[FakeProvider]]


@pytest_asyncio.fixture
async def fake_openai() -> AsyncIterator[FakeProvider]:
    async with FakeProvider("openai") as fake:
        yield fake


@pytest_asyncio.fixture
async def fake_anthropic() -> AsyncIterator[FakeProvider]:
    async with FakeProvider("anthropic") as fake:
        yield fake


@pytest_asyncio.fixture
async def fake_gemini() -> AsyncIterator[FakeProvider]:
    async with FakeProvider("gemini") as fake:
        yield fake


@pytest_asyncio.fixture
async def fake_factory() -> AsyncIterator[FakeFactory]:
    started: list[FakeProvider] = []

    async def make(kind: str = "openai", **kwargs: Any) -> FakeProvider:
        fake = FakeProvider(kind, **kwargs)
        await fake.start()
        started.append(fake)
        return fake

    try:
        yield make
    finally:
        for fake in reversed(started):
            await fake.stop()


@pytest.fixture
def fake_openai_sync() -> Iterator[FakeProvider]:
    with FakeProvider("openai").running() as fake:
        yield fake


@pytest.fixture
def fake_anthropic_sync() -> Iterator[FakeProvider]:
    with FakeProvider("anthropic").running() as fake:
        yield fake


@pytest.fixture
def fake_gemini_sync() -> Iterator[FakeProvider]:
    with FakeProvider("gemini").running() as fake:
        yield fake
