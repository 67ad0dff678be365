"""The Jaeger UI: hack/jaeger-ui's cache, and the tests' Jaeger serving what it built.

The browser test (tests/e2e/test_trace_view.py) checks the trace view itself; these
check, without a browser, that the build is found, keyed by its source, and served.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest
from support.controlplane import JAEGER_UI_ENV, JAEGER_UI_SCRIPT, Jaeger

pytestmark = pytest.mark.controlplane


def jaeger_ui(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(JAEGER_UI_SCRIPT), *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60, check=False)  # fmt: skip


def test_check_reports_the_build_and_another_source_is_another_build(tmp_path: Path) -> None:
    """--check names the built directory; a tarball with other bytes (here, one more byte)
    is not that build: --check says it is not built and builds nothing."""
    built = jaeger_ui("--check")
    assert built.returncode == 0, built.stderr
    line = built.stdout.strip().splitlines()[-1]
    assert line.startswith(f"{JAEGER_UI_ENV}=")
    directory = Path(line.split("=", 1)[1])
    assert (directory / "index.html").is_file() and any((directory / "static").glob("*.js"))

    source = re.search(r"\(from (\S+\.tar\.gz)\)", built.stderr)
    assert source, built.stderr
    original = Path(source.group(1))
    changed = tmp_path / original.name
    changed.write_bytes(original.read_bytes() + b"\0")
    other = jaeger_ui("--check", AGENT_ROUTER_JAEGER_UI_SOURCE=str(changed))
    assert other.returncode == 1
    assert "not built yet" in other.stderr and str(directory) not in other.stderr
    assert not other.stdout


def test_the_tests_jaeger_serves_the_built_ui(jaeger: Jaeger) -> None:
    """Every page of the UI (a trace's too) is the built index.html, with the config Jaeger
    injects, and the scripts it loads are the built ones, byte for byte."""
    assert jaeger.ui is not None, f"no Jaeger UI built: run hack/jaeger-ui ({JAEGER_UI_ENV})"
    with httpx.Client(base_url=jaeger.query_url, timeout=10) as http:
        for page in ("/", "/search", jaeger.trace_url("0123456789abcdef")):
            served = http.get(page)
            assert served.status_code == 200, page
            assert "<title>Jaeger UI</title>" in served.text
            # Jaeger fills in its version where the built page has a placeholder.
            assert "JAEGER_VERSION = DEFAULT_VERSION" not in served.text
        scripts = re.findall(r'src="\./(static/[^"]+\.js)"', served.text)
        assert scripts
        for script in scripts:
            fetched = http.get(f"/{script}")
            assert fetched.status_code == 200, script
            assert fetched.content == (jaeger.ui / script).read_bytes()
