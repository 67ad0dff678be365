"""Shared fixtures: the fake providers and the real control plane, registered once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.catalog import PROVIDERS

pytest_plugins = ["fakes.fixtures", "support.controlplane"]


@pytest.fixture(autouse=True)
def hermetic_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test sees a real key or URL from the machine: nothing can reach a real provider."""
    for preset in PROVIDERS.values():
        for name in (*preset.key_env, preset.base_url_env):
            monkeypatch.delenv(name, raising=False)
    yield


@pytest.fixture
def use_fake(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Point the standard environment variables at a fake: `use_fake(fake, "deepseek")`."""

    def point(fake, kind: str | None = None) -> None:  # type: ignore[no-untyped-def]
        for name, value in fake.env(kind).items():
            monkeypatch.setenv(name, value)

    return point
