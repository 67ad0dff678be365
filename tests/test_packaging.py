"""`pip install .` (not editable) ships all three import names, and no `operator`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_regular_install_imports_all_three(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--target", str(target), str(ROOT)],
        check=True, capture_output=True,
    )
    probe = (
        "import agent, agent_sidecar, agent_operator, operator, sys\n"
        "print(agent.__file__); print(agent_sidecar.__file__); print(agent_operator.__file__)\n"
        "print(operator.__file__)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, check=True,
                         capture_output=True, text=True, env={"PYTHONPATH": str(target)}).stdout
    agent_file, sidecar_file, operator_file, stdlib_operator = out.splitlines()
    for path in (agent_file, sidecar_file, operator_file):
        assert path.startswith(str(target)), path
    assert "site-packages" not in stdlib_operator and str(target) not in stdlib_operator
    assert not (target / "operator").exists() and not (target / "sidecar").exists()
    assert (target / "agent" / "py.typed").exists()


def test_the_editable_install_serves_the_source_tree() -> None:
    import agent_operator
    import agent_sidecar

    import agent

    assert Path(agent.__file__).is_relative_to(ROOT / "agent")
    assert Path(agent_sidecar.__file__).is_relative_to(ROOT / "sidecar" / "agent_sidecar")
    assert Path(agent_operator.__file__).is_relative_to(ROOT / "operator" / "agent_operator")
