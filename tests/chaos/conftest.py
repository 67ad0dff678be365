"""The chaos suite: a real sidecar process attacked the way a demanding user would, each
test bounded in time. The run's summary prints what every test put it through and what
was lost (nothing). The longer soak is `bench/soak.py`."""

from __future__ import annotations

import pytest
from chaos_support import FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    columns = list(FIGURES[0])
    widths = {c: max(len(c), *(len(row[c]) for row in FIGURES)) for c in columns}
    terminalreporter.section("chaos: what the sidecar held")
    line = " | ".join(c.ljust(widths[c]) for c in columns)
    terminalreporter.write_line(line)
    terminalreporter.write_line("-+-".join("-" * widths[c] for c in columns))
    for row in FIGURES:
        terminalreporter.write_line(" | ".join(row[c].ljust(widths[c]) for c in columns))
