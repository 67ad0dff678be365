"""The chaos suite: a real sidecar process attacked the way a demanding user would, each
test bounded in time. The run's summary prints what every test put it through and what
was lost (nothing). The longer soak is `bench/soak.py`."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from chaos_support import FIGURES


@pytest.fixture(autouse=True)
def figures_to_summary(summary_row: Callable[[str, dict[str, str]], None]) -> Iterator[None]:
    """The rows a test reports, in the table at the end of the run."""
    before = len(FIGURES)
    yield
    for row in FIGURES[before:]:
        summary_row("chaos: what the sidecar held", row)
