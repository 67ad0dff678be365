"""Shared fixtures: the fake providers and the real control plane, registered once; and
how `hack/test` shares the suite among its pytest-xdist workers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.catalog import PROVIDERS

pytest_plugins = ["fakes.fixtures", "support.controlplane"]

# The tests that start a real node (tests/e2e) run in one worker, one after another: the
# session's node serves them all, and test_node compares the machine before and after a
# node of its own, which another node starting meanwhile would disturb.
NODE_TESTS = "tests/e2e/"
# Tables printed at the end of the run, a row from each test that adds one (summary_row).
SUMMARY_PROPERTY = "summary row"
summary_tables: dict[str, list[dict[str, str]]] = {}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With pytest-xdist workers (`hack/test`), each test file goes to one worker whole,
    so that its module-scoped fixtures (an operator, a control plane of its own) start
    once, and the node's tests all to one worker."""
    from xdist.scheduler import LoadScopeScheduling

    class ByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return NODE_TESTS if nodeid.startswith(NODE_TESTS) else nodeid.split("::")[0]

    return None if config.getoption("dist") == "each" else ByFile(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In a worker, the node's tests come first: the longest group, started last it
    would finish long after the rest (hack/test keeps this order: --no-loadscope-reorder)."""
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: not item.nodeid.startswith(NODE_TESTS))


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


@pytest.fixture
def summary_row(request: pytest.FixtureRequest) -> Callable[[str, dict[str, str]], None]:
    """`summary_row(table, row)`: a row of `table`, printed at the end of the run. The row
    goes with the test's result, so it reaches the summary from a pytest-xdist worker too."""

    def add(table: str, row: dict[str, str]) -> None:
        request.node.user_properties.append((SUMMARY_PROPERTY, [table, row]))

    return add


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":
        for name, value in report.user_properties:
            if name == SUMMARY_PROPERTY:
                table, row = value
                summary_tables.setdefault(table, []).append(row)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for table, rows in summary_tables.items():
        columns = list(rows[0])
        widths = {c: max(len(c), *(len(row[c]) for row in rows)) for c in columns}
        terminalreporter.section(table)
        terminalreporter.write_line(" | ".join(c.ljust(widths[c]) for c in columns))
        terminalreporter.write_line("-+-".join("-" * widths[c] for c in columns))
        for row in rows:
            terminalreporter.write_line(" | ".join(row[c].ljust(widths[c]) for c in columns))
