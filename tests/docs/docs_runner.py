"""Read the docs' Markdown pages into runnable blocks, and run them.

Conventions (also described for writers in docs/writing-docs.md):

* ```` ```python ```` blocks run in order, one namespace per page, as a reader would run them.
* ```` ```bash ```` / ```` ```sh ```` / ```` ```shell ```` blocks run with ``bash -euo pipefail``
  from the repository root with ``.venv/bin`` first on ``PATH``.
* ```` ```console ```` blocks are illustrative (a prompt and its output) and never run.
* A ```` ```text title="Output" ```` block right after a python or shell block is what that
  block must print (stdout, for shell stdout and stderr together); ``...`` matches anything.
* ```` ```yaml ```` blocks are Kubernetes objects (``apiVersion`` and ``kind``: applied to a
  real control plane) or config documents (``agents``/``routes``: validated with
  ``agent.config.parse_config``). Anything else must be marked ``skip``.
* HTML comments (invisible on the site) carry what the reader does not need to see:

  ``<!-- test: setup ... -->`` or ``<!-- test: check ... -->``
      hidden Python run at that point of the page, in the page's namespace (the fake
      providers are ``fake["openai"]`` and so on; ``Reply``, ``Fail``, ``CutStream``,
      ``StreamError`` and ``Hang`` are defined).
  ``<!-- test: skip REASON -->``
      the next block is not run; the reason is required.
  ``<!-- test: controlplane -->``
      the next shell block runs only against the real control plane (``kubectl`` on
      ``PATH``, the current namespace a fresh one).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import textwrap
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakes import KINDS, FakeProvider
from opentelemetry import trace
from opentelemetry.util._once import Once

import agent.tracing

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

# Pages other engineers own and write to their own conventions: linked from the nav and
# checked by the strict build, but their code blocks are not run from here.
FOREIGN = frozenset({"sidecar.md", "helm.md", "testing-control-plane.md"})

PYTHON = {"python", "py", "pycon"}
SHELL = {"bash", "sh", "shell"}
ILLUSTRATIVE = {"console", "text", "json", "http", "toml", "ini", "markdown", "properties"}
YAML = {"yaml", "yml"}

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")
DIRECTIVE = re.compile(r"^\s*<!--\s*test:\s*(?P<word>[a-z-]+)(?P<rest>.*)$")
# pymdownx.snippets: a line `--8<-- "path"` in a block is the file's text (from the root).
SNIPPET = re.compile(r'^--8<-- "(?P<path>[^"]+)"$')


class DocsError(AssertionError):
    """A block of a page failed; the message says which page, line and why."""


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the opening fence (or of the comment)
    lang: str  # python, bash, yaml, text, console, ...; "hidden" for comment code
    info: str  # the whole info string after the fence
    code: str
    skip: str | None = None  # the reason, when marked skip
    controlplane: bool = False
    output: Block | None = None  # the Output block that follows, if any

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"

    @property
    def is_output(self) -> bool:
        return self.lang == "text" and 'title="Output"' in self.info


@dataclass
class Page:
    name: str
    blocks: list[Block] = field(default_factory=list)

    def of(self, *langs: str) -> list[Block]:
        return [b for b in self.blocks if b.lang in langs]


def pages() -> list[str]:
    """Every Markdown page under docs/ that this runner owns, sorted."""
    return sorted(
        str(p.relative_to(DOCS))
        for p in DOCS.rglob("*.md")
        if str(p.relative_to(DOCS)) not in FOREIGN
    )


def parse(name: str, text: str | None = None) -> Page:
    """The page's fenced blocks and hidden directives, in order."""
    lines = (text if text is not None else (DOCS / name).read_text()).splitlines()
    page = Page(name)
    pending_skip: str | None = None
    pending_cp = False
    i = 0
    while i < len(lines):
        line = lines[i]
        m = DIRECTIVE.match(line)
        if m:
            word, rest = m.group("word"), m.group("rest")
            start = i
            body: list[str] = []
            if "-->" in rest:
                inline = rest.split("-->", 1)[0].strip()
            else:
                inline = rest.strip()
                i += 1
                while i < len(lines) and "-->" not in lines[i]:
                    body.append(lines[i])
                    i += 1
                if i == len(lines):
                    raise DocsError(f"docs/{name}:{start + 1}: unterminated <!-- test: comment")
                tail = lines[i].split("-->", 1)[0]
                if tail.strip():
                    body.append(tail)
            if word in ("setup", "check"):
                code = textwrap.dedent("\n".join([inline, *body]) if inline else "\n".join(body))
                page.blocks.append(Block(name, start + 1, "hidden", word, code))
            elif word == "skip":
                reason = " ".join([inline, *body]).strip()
                if not reason:
                    raise DocsError(f"docs/{name}:{start + 1}: `test: skip` needs a reason")
                pending_skip = reason
            elif word == "controlplane":
                pending_cp = True
            else:
                raise DocsError(f"docs/{name}:{start + 1}: unknown directive `test: {word}`")
            i += 1
            continue
        m = FENCE.match(line)
        if m:
            indent, fence, info = m.group("indent"), m.group("fence"), m.group("info").strip()
            start = i
            body = []
            i += 1
            while i < len(lines):
                stripped = lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i]
                if (
                    stripped.rstrip().startswith(fence[0] * len(fence))
                    and not stripped.strip(fence[0]).strip()
                ):
                    break
                body.append(stripped)
                i += 1
            if i == len(lines):
                raise DocsError(f"docs/{name}:{start + 1}: unterminated code fence")
            lang = info.split()[0].lower().lstrip(".{") if info else ""
            body = [_snippet(name, start, b) for b in body]
            block = Block(name, start + 1, lang, info, "\n".join(body) + "\n")
            block.skip, block.controlplane = pending_skip, pending_cp
            pending_skip, pending_cp = None, False
            if block.is_output:
                previous = next((b for b in reversed(page.blocks) if b.lang != "hidden"), None)
                if previous is None or previous.lang not in PYTHON | SHELL:
                    raise DocsError(f"{block.where}: an Output block must follow code")
                previous.output = block
            page.blocks.append(block)
            i += 1
            continue
        i += 1
    if pending_skip or pending_cp:
        raise DocsError(f"docs/{name}: a directive at the end of the page marks no block")
    for block in page.blocks:
        if not block.lang and not block.skip:
            raise DocsError(f"{block.where}: a code block needs a language")
    return page


def _snippet(name: str, start: int, line: str) -> str:
    m = SNIPPET.match(line.strip())
    if not m:
        return line
    path = ROOT / m.group("path")
    if not path.is_file():
        raise DocsError(f"docs/{name}:{start + 1}: snippet {m.group('path')!r} not found")
    return path.read_text().rstrip("\n")


# ---- running --------------------------------------------------------------------------


def matches(expected: str, actual: str) -> bool:
    """Output comparison: trailing spaces ignored, `...` matches anything."""

    def norm(text: str) -> str:
        return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())

    pattern = ".*?".join(re.escape(part) for part in norm(expected).split("..."))
    return re.fullmatch(pattern, norm(actual), re.DOTALL) is not None


def check_output(block: Block, printed: str) -> None:
    if block.output is not None and not matches(block.output.code, printed):
        raise DocsError(
            f"{block.where}: printed output differs from the Output block at "
            f"{block.output.where}\n--- expected\n{block.output.code}--- printed\n{printed}"
        )


@contextlib.contextmanager
def _stdout() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield buffer
    sys.stdout.write(buffer.getvalue())  # still shown by pytest on failure


def run_python(block: Block, namespace: dict[str, Any]) -> str:
    """Execute one block in the page's namespace; returns what it printed."""
    code = compile(block.code, f"<{block.where}>", "exec")
    with _stdout() as out:
        try:
            exec(code, namespace)
        except BaseException as exc:
            tb = "".join(traceback.format_exception(exc)[-6:])
            raise DocsError(f"{block.where} ({block.lang}) raised:\n{tb}") from exc
    return out.getvalue()


def shell_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def run_shell(block: Block, env: dict[str, str], timeout: float = 120.0) -> str:
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.code],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise DocsError(
            f"{block.where} (shell) exited {proc.returncode}:\n{block.code}--- output\n"
            f"{proc.stdout}"
        )
    return proc.stdout


def yaml_documents(block: Block) -> list[Any]:
    try:
        return [d for d in yaml.safe_load_all(block.code) if d is not None]
    except yaml.YAMLError as exc:
        raise DocsError(f"{block.where}: not valid YAML: {exc}") from exc


def is_kubernetes(docs: list[Any]) -> bool:
    return bool(docs) and all(
        isinstance(d, dict) and "apiVersion" in d and "kind" in d for d in docs
    )


def is_config(docs: list[Any]) -> bool:
    return (
        len(docs) == 1
        and isinstance(docs[0], dict)
        and bool({"agents", "routes"} & set(docs[0]))
        and "apiVersion" not in docs[0]
    )


# ---- the process a page runs in ----------------------------------------------------------


@contextlib.contextmanager
def fake_providers(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, FakeProvider]]:
    """One fake per provider kind, the standard variables pointing at each (the tests'
    `fake` fixture; no conftest here, so that `conftest` stays unambiguous for others)."""
    with contextlib.ExitStack() as stack:
        fakes = {kind: stack.enter_context(FakeProvider(kind).running()) for kind in KINDS}
        for kind, server in fakes.items():
            for name, value in server.env(kind).items():
                monkeypatch.setenv(name, value)
        yield fakes


@contextlib.contextmanager
def fresh_process_state() -> Iterator[None]:
    """A page may install a tracer provider or set variables, as a script would: give it
    the process as a fresh interpreter has it and put everything back afterwards."""
    environ = dict(os.environ)
    saved = (trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE)
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    agent.tracing._tracer = None
    try:
        yield
    finally:
        provider = trace._TRACER_PROVIDER
        if provider is not None and hasattr(provider, "shutdown"):
            provider.shutdown()
        trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = saved
        agent.tracing._tracer = None
        os.environ.clear()
        os.environ.update(environ)
