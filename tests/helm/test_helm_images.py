"""The container images, without a Docker engine: the Dockerfiles are parsed and checked
(multi-stage, slim Python 3.11 runtime, non-root user 65532, no build tools in the final
stage, ENTRYPOINT a console script), the .dockerignore context holds what the build
copies, and the console scripts exist and start."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {"Dockerfile.operator": "agent-operator", "Dockerfile.sidecar": "agent-sidecar"}
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|cc|clang|make|build-essential|apt-get|apk|"
                         r"pip|setuptools|wheel|python3?-dev|libc6?-dev|git)\b")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(path: Path) -> list[Stage]:
    """Instructions per stage: continuation lines joined, comments dropped, and ARGs
    declared before the first FROM substituted into FROM lines."""
    text = path.read_text()
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    assert not buf, f"{path.name}: dangling line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []

    def substitute(text: str) -> str:
        return re.sub(r"\$\{(\w+)\}|\$(\w+)",
                      lambda m: global_args.get(m.group(1) or m.group(2), m.group(0)), text)

    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            base = substitute(args)
            parts = base.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif not stages:
            assert keyword == "ARG", f"{path.name}: {keyword} before FROM"
            key, _, value = args.partition("=")
            global_args[key] = substitute(value)  # a default may name an earlier ARG
        else:
            stages[-1].instructions.append((keyword, args))
    return stages


@pytest.mark.parametrize(("dockerfile", "script"), IMAGES.items())
def test_dockerfile_is_multi_stage_slim_and_non_root(dockerfile: str, script: str) -> None:
    stages = parse_dockerfile(ROOT / dockerfile)
    assert len(stages) >= 2, "multi-stage: build, then runtime"
    build, final = stages[0], stages[-1]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", final.base), final.base
    assert build.base == final.base  # the venv's interpreter links stay valid
    assert build.name and build.name != final.name

    # the build stage builds the project's wheel and installs it into /opt/venv
    build_runs = " ".join(build.all("RUN"))
    assert "/opt/venv/bin/pip wheel" in build_runs and "/wheels/*.whl" in build_runs
    assert "pip uninstall --yes pip setuptools wheel" in build_runs

    # the final stage: only the venv from the build stage; no package managers, compilers
    # or pip run there
    copies = final.all("COPY")
    assert copies == [f"--from={build.name} /opt/venv /opt/venv"], copies
    assert not final.all("RUN"), f"{dockerfile}: the final stage runs {final.all('RUN')}"
    assert not final.all("ADD")
    for keyword, args in final.instructions:
        if keyword != "LABEL":
            assert not BUILD_TOOLS.search(args), f"{dockerfile}: {keyword} {args}"

    users = final.all("USER")
    assert users == ["65532:65532"], users
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric: runAsNonRoot can verify it

    (entrypoint,) = final.all("ENTRYPOINT")
    argv = json.loads(entrypoint)  # exec form: signals reach the process directly
    assert argv == [f"/opt/venv/bin/{script}"]


def test_final_images_run_as_the_user_the_chart_and_the_webhook_expect() -> None:
    values = yaml.safe_load((ROOT / "helm" / "agent-router" / "values.yaml").read_text())
    assert values["securityContext"]["runAsUser"] == 65532
    from agent_operator.inject import SidecarSettings, inject

    pod = inject({"containers": [{"name": "app", "image": "x"}]}, {}, SidecarSettings())
    assert pod is not None
    context = pod["initContainers"][0]["securityContext"]  # the injected sidecar's
    assert (context["runAsUser"], context["runAsGroup"]) == (65532, 65532)


def test_entrypoints_are_the_projects_console_scripts() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for script in IMAGES.values():
        assert script in scripts, f"{script} is not a console script in pyproject.toml"


@pytest.mark.parametrize("script", IMAGES.values())
def test_console_scripts_exist_and_start(script: str) -> None:
    path = Path(sys.executable).parent / script
    assert path.exists(), f"{path} missing: is the project installed in the venv?"
    proc = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {script}")


# ---- the build context -----------------------------------------------------------------------


def dockerignore_patterns() -> list[tuple[bool, str]]:
    out = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        out.append((negate, line.lstrip("!").strip("/")))
    return out


def _matches(pattern: str, rel: str) -> bool:
    """Docker's rules, closely enough: `**` spans directories, a pattern that matches a
    directory matches everything under it."""
    regex = re.escape(pattern).replace(r"\*\*", "\0").replace(r"\*", "[^/]*")
    regex = regex.replace(r"\?", "[^/]").replace("\0/", "(.*/)?").replace("\0", ".*")
    return re.fullmatch(rf"{regex}(/.*)?", rel) is not None or fnmatch.fnmatch(rel, pattern)


def in_context(rel: str, patterns: list[tuple[bool, str]]) -> bool:
    included = True
    for negate, pattern in patterns:  # the last matching pattern decides
        if _matches(pattern, rel):
            included = negate
    return included


def test_dockerignore_context_holds_exactly_what_the_build_needs() -> None:
    patterns = dockerignore_patterns()
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    context = {f for f in tracked if in_context(f, patterns)}
    for needed in ("pyproject.toml", "README.md", "agent/__init__.py",
                   "operator/agent_operator/__main__.py", "sidecar/agent_sidecar/__main__.py"):
        assert needed in context, needed
    # everything a package needs: the package dirs of pyproject.toml, with their data
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package, directory in setup["package-dir"].items():
        files = [f for f in tracked if f.startswith(directory + "/") and f.endswith(".py")]
        assert files and all(f in context for f in files), package
    for package, globs in setup.get("package-data", {}).items():
        for glob in globs:
            data = [f for f in tracked if fnmatch.fnmatch(f, f"{package}/{glob}")]
            assert all(f in context for f in data), (package, glob)
    # and nothing else: no tests, chart, venv, git or caches
    for excluded in ("tests/conftest.py", "helm/agent-router/Chart.yaml", "Dockerfile.operator",
                     ".gitignore", "hack/test"):
        assert excluded not in context, excluded
    for path in (".venv/bin/python", ".git/HEAD", "agent/__pycache__/x.pyc",
                 "build/lib/agent/__init__.py", "agent_router.egg-info/PKG-INFO"):
        assert not in_context(path, patterns), path
    # every COPY source of both Dockerfiles is in the context
    for dockerfile in IMAGES:
        for stage in parse_dockerfile(ROOT / dockerfile):
            for args in stage.all("COPY"):
                if args.startswith("--from="):
                    continue
                *sources, _dest = args.split()
                for src in sources:
                    assert in_context(src.rstrip("/"), patterns), (dockerfile, src)
                    assert (ROOT / src).exists(), (dockerfile, src)
