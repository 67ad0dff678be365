"""The site builds in strict mode: no broken link, no missing or orphaned page, and an
API reference mkdocstrings can render from every documented module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from docs_runner import DOCS, EVERY_BLOCK_RUNS, ROOT

from agent.config import load_config


def _mkdocs_yml() -> dict:
    class Loader(yaml.SafeLoader):
        pass

    # mkdocs.yml may carry !ENV / !!python tags; none matter here.
    Loader.add_multi_constructor("", lambda loader, suffix, node: None)
    return yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)


def _nav_pages(nav: list) -> list[str]:
    out: list[str] = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            out += _nav_pages(value)
        else:
            out.append(value)
    return out


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    missing = sorted(page for page in EVERY_BLOCK_RUNS if not (DOCS / page).is_file())
    assert not missing, f"the nav links {missing}, and they do not exist"
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    for page in ("index.html", "routing/index.html", "reference/agent/index.html"):
        assert (site / page).is_file(), page
    reference = (site / "reference" / "agent" / "index.html").read_text()
    # The API reference really is generated from the docstrings.
    assert "Every candidate agent failed" in reference  # RoutingError's docstring
    assert "agent.router.AgentRouter" in reference
    operator_ref = (site / "reference" / "agent_operator" / "index.html").read_text()
    assert "agent_operator.resources.PoolAgent" in operator_ref
    sidecar_ref = (site / "reference" / "agent_sidecar" / "index.html").read_text()
    assert "agent_sidecar.settings.Settings" in sidecar_ref


def test_nav_lists_every_page() -> None:
    nav = _nav_pages(_mkdocs_yml()["nav"])
    for page in EVERY_BLOCK_RUNS:
        assert page in nav, f"{page} must be linked from the nav"
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert on_disk <= set(nav), f"pages outside the nav: {sorted(on_disk - set(nav))}"


def test_example_config_files_are_valid() -> None:
    files = sorted((DOCS / "examples").glob("*.yaml"))
    assert files
    for path in files:
        load_config(path)
