"""Read the docs' Markdown pages into runnable blocks, and run them.

Conventions (also described for writers in docs/writing-docs.md):

* ```` ```python ```` blocks run in order, one namespace per page, as a reader would run them.
* ```` ```bash ```` / ```` ```sh ```` / ```` ```shell ```` blocks run with ``bash -euo pipefail``
  from the repository root with ``.venv/bin`` first on ``PATH``.
* ```` ```console ````, ```` ```text ```` and ```` ```json ```` blocks are illustrations, never
  run: allowed only on the pages of ``ILLUSTRATIONS_ALLOWED``; on the others
  (``EVERY_BLOCK_RUNS``) such a block must be marked ``skip`` with its reason.
* A ```` ```text title="Output" ```` block right after a python or shell block is what that
  block must print (stdout, for shell stdout and stderr together); ``...`` matches anything.
* ```` ```yaml ```` blocks are Kubernetes objects (``apiVersion`` and ``kind``: applied to a
  real control plane) or config documents (``agents``/``routes``: validated with
  ``agent.config.parse_config``). Anything else must be marked ``skip``.
* HTML comments (invisible on the site) carry what the reader does not need to see:

  ``<!-- test: setup ... -->`` or ``<!-- test: check ... -->``
      hidden Python run at that point of the page, in the page's namespace (the fake
      providers are ``fake["openai"]`` and so on; ``Reply``, ``Fail``, ``CutStream``,
      ``StreamError``, ``Stall`` and ``Hang`` are defined).
  ``<!-- test: skip REASON -->``
      the next block is not run; the reason is required.
  ``<!-- test: controlplane -->``
      the next block (shell, or hidden code) runs only against the real control plane
      (``kubectl`` and ``helm`` on ``PATH``, the current namespace a fresh one); pages in
      ``OWN_CONTROL_PLANE`` get a control plane of their own.
  ``<!-- test: background -->``
      the next shell block is a server: started, waited for until it has printed its
      Output block, left running for the rest of the page (``background[i]`` in the
      namespace), stopped at the end.
  ``<!-- test: exit N -->``
      the next shell block must exit with status N (an example of an error).

* A block titled ``title="NAME"`` (other than Output) is a file the page's commands use:
  it is written to a temporary directory and ``NAME`` in the page's code names it.
* ``rewrite`` (a dict in the page's namespace, filled by hidden code) maps text the reader
  types (``127.0.0.1:4000``) to what the test uses (a free port): applied to the code of
  python and shell blocks, and backwards to what they print.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakes import KINDS, FakeProvider
from opentelemetry import trace
from opentelemetry.util._once import Once
from support.controlplane import free_port, free_ports

import agent.tracing

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

# Pages whose examples change what is cluster-wide (CRDs, ClusterRoles, webhook
# configurations, a release in a namespace of its own name): their control-plane blocks
# run in order on a control plane of their own, never on the one the other tests share.
OWN_CONTROL_PLANE = frozenset({"helm.md"})

# Pages on which a block that is not run must say why (<!-- test: skip REASON -->), even
# an illustration (console, text, json): every block runs, or is excused by name.
EVERY_BLOCK_RUNS = frozenset({
    "index.md", "getting-started.md", "middleware.md", "errors.md", "providers.md",
    "structured-output.md", "config.md", "tracing.md", "sidecar.md", "helm.md",
    "operator.md", "testing-control-plane.md", "writing-docs.md", "routing.md",
    "walkthrough.md", "benchmarks.md", "testing.md", "limits.md",
})  # fmt: skip
# The pages still allowed unmarked illustrations, until they join EVERY_BLOCK_RUNS; every
# other page with code blocks must be in it (test_every_page_is_checked).
ILLUSTRATIONS_ALLOWED: frozenset[str] = frozenset()

PYTHON = {"python", "py", "pycon"}
SHELL = {"bash", "sh", "shell"}
ILLUSTRATIVE = {"console", "text", "json", "http", "toml", "ini", "markdown", "properties"}
YAML = {"yaml", "yml"}

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")
DIRECTIVE = re.compile(r"^\s*<!--\s*test:\s*(?P<word>[a-z-]+)(?P<rest>.*)$")
# pymdownx.snippets: a line `--8<-- "path"` in a block is the file's text (from the root).
SNIPPET = re.compile(r'^--8<-- "(?P<path>[^"]+)"$')
TITLE = re.compile(r'\btitle="([^"]+)"')


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
    background: bool = False  # a server, left running for the rest of the page
    exit_code: int = 0  # what a shell block must exit with
    output: Block | None = None  # the Output block that follows, if any

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"

    @property
    def title(self) -> str | None:
        m = TITLE.search(self.info)
        return m.group(1) if m else None

    @property
    def is_output(self) -> bool:
        return self.lang == "text" and self.title == "Output"

    @property
    def is_file(self) -> bool:
        """A titled block (not Output): a file the page's commands use, by that name."""
        return self.title is not None and not self.is_output and self.lang != "hidden"


@dataclass
class Page:
    name: str
    blocks: list[Block] = field(default_factory=list)

    def of(self, *langs: str) -> list[Block]:
        return [b for b in self.blocks if b.lang in langs]


def pages() -> list[str]:
    """Every Markdown page under docs/, sorted."""
    return sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))


def parse(name: str, text: str | None = None) -> Page:
    """The page's fenced blocks and hidden directives, in order."""
    lines = (text if text is not None else (DOCS / name).read_text()).splitlines()
    page = Page(name)
    pending_skip: str | None = None
    pending_cp = pending_bg = False
    pending_exit = 0
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
                hidden = Block(name, start + 1, "hidden", word, code, controlplane=pending_cp)
                if pending_skip or pending_bg or pending_exit:
                    raise DocsError(f"docs/{name}:{start + 1}: a directive marks hidden code")
                pending_cp = False
                page.blocks.append(hidden)
            elif word == "skip":
                reason = " ".join([inline, *body]).strip()
                if not reason:
                    raise DocsError(f"docs/{name}:{start + 1}: `test: skip` needs a reason")
                pending_skip = reason
            elif word == "controlplane":
                pending_cp = True
            elif word == "background":
                pending_bg = True
            elif word == "exit":
                if not re.fullmatch(r"[1-9][0-9]{0,2}", inline):
                    raise DocsError(f"docs/{name}:{start + 1}: `test: exit N` needs a status > 0")
                pending_exit = int(inline)
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
            block.background, block.exit_code = pending_bg, pending_exit
            if (pending_bg or pending_exit) and block.lang not in SHELL:
                raise DocsError(f"{block.where}: `background` and `exit` mark shell blocks only")
            if pending_bg and pending_exit:
                raise DocsError(f"{block.where}: a block is `background` or `exit N`, not both")
            pending_skip, pending_cp, pending_bg, pending_exit = None, False, False, 0
            if block.is_output:
                previous = next((b for b in reversed(page.blocks) if b.lang != "hidden"), None)
                if previous is None or previous.lang not in PYTHON | SHELL:
                    raise DocsError(f"{block.where}: an Output block must follow code")
                previous.output = block
            page.blocks.append(block)
            i += 1
            continue
        i += 1
    if pending_skip or pending_cp or pending_bg or pending_exit:
        raise DocsError(f"docs/{name}: a directive at the end of the page marks no block")
    for block in page.blocks:
        if not block.lang and not block.skip:
            raise DocsError(f"{block.where}: a code block needs a language")
        if block.background and (block.output is None or block.skip):
            raise DocsError(
                f"{block.where}: a background block needs an Output block (what it prints "
                "once it is ready)"
            )
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


def _norm(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def _pattern(expected: str) -> str:
    return ".*?".join(re.escape(part) for part in _norm(expected).split("..."))


def matches(expected: str, actual: str) -> bool:
    """Output comparison: trailing spaces ignored, `...` matches anything."""
    return re.fullmatch(_pattern(expected), _norm(actual), re.DOTALL) is not None


def contains(expected: str, actual: str) -> bool:
    """Whether whole lines of `actual` match `expected` (others may come before and after):
    a background block's Output among its logs."""
    pattern = rf"(?:^|\n){_pattern(expected)}(?:\n|$)"
    return re.search(pattern, _norm(actual), re.DOTALL) is not None


def check_output(block: Block, printed: str) -> None:
    if block.output is not None and not matches(block.output.code, printed):
        raise DocsError(
            f"{block.where}: printed output differs from the Output block at "
            f"{block.output.where}\n--- expected\n{block.output.code}--- printed\n{printed}"
        )


def rewritten(text: str, rewrite: dict[str, str], backwards: bool = False) -> str:
    """`text` with each key of `rewrite` (as a whole word: not inside a longer name or
    number) replaced by its value; `backwards`, each value by its key (the first one
    when several keys share a value)."""
    table = {v: k for k, v in reversed(rewrite.items())} if backwards else dict(rewrite)
    if not table:
        return text
    words = "|".join(re.escape(old) for old in sorted(table, key=len, reverse=True))
    return re.sub(rf"(?<![\w.-])(?:{words})(?!\w)", lambda m: table[m.group(0)], text)


@contextlib.contextmanager
def _stdout() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield buffer
    sys.stdout.write(buffer.getvalue())  # still shown by pytest on failure


def run_python(block: Block, namespace: dict[str, Any], code: str | None = None) -> str:
    """Execute one block (or `code` for it) in the page's namespace; returns what it
    printed."""
    compiled = compile(block.code if code is None else code, f"<{block.where}>", "exec")
    with _stdout() as out:
        try:
            exec(compiled, namespace)
        except BaseException as exc:
            tb = "".join(traceback.format_exception(exc)[-6:])
            raise DocsError(f"{block.where} ({block.lang}) raised:\n{tb}") from exc
    return out.getvalue()


def shell_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def shell(code: str, env: dict[str, str]) -> tuple[list[str], dict[str, Any]]:
    """How every shell block runs: strict bash in the repository, output merged."""
    return ["bash", "-euo", "pipefail", "-c", code], {
        "cwd": ROOT, "env": env, "stdin": subprocess.DEVNULL,
        "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT,
    }  # fmt: skip


def run_shell(
    block: Block, env: dict[str, str], timeout: float = 120.0, code: str | None = None
) -> str:
    """Run one shell block (or `code` for it); it must exit with `block.exit_code`."""
    code = block.code if code is None else code
    args, options = shell(code, env)
    proc = subprocess.run(args, **options, text=True, timeout=timeout, check=False)
    if proc.returncode != block.exit_code:
        wanted = f" (it must exit {block.exit_code})" if block.exit_code else ""
        raise DocsError(
            f"{block.where} (shell) exited {proc.returncode}{wanted}:\n{code}--- output\n"
            f"{proc.stdout}"
        )
    return proc.stdout


class Background:
    """A background shell block: a server the rest of the page talks to."""

    def __init__(self, block: Block, code: str, env: dict[str, str]) -> None:
        self.block = block
        self._chunks: list[str] = []
        args, options = shell(code, env)
        # its own process group: stopped as a whole
        self.proc = subprocess.Popen(args, **options, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            self._chunks.append(line.decode(errors="replace"))

    def output(self) -> str:
        """What it has printed so far (stdout and stderr)."""
        return "".join(self._chunks)

    def wait_ready(self, rewrite: dict[str, str], timeout: float = 60.0) -> None:
        """Until it has printed its Output block (after the rewrite, backwards)."""
        assert self.block.output is not None
        expected = self.block.output.code
        deadline = time.monotonic() + timeout
        while not contains(expected, rewritten(self.output(), rewrite, backwards=True)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._reader.join(1)
                why = "exited" if self.proc.poll() is not None else f"not ready in {timeout}s"
                raise DocsError(
                    f"{self.block.where} (background) {why} before printing the Output block "
                    f"at {self.block.output.where}\n--- expected\n{expected}--- printed\n"
                    f"{self.output()}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM to its process group, as a terminal's Ctrl-C or a kubelet would; its
        exit status (killed after `timeout`)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._reader.join(5)
        return self.proc.returncode


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


# ---- which test runs a block, and running a page ----------------------------------------

LOCAL = "local"  # test_docs_pages: with the fake providers, no cluster
CONTROLPLANE = "controlplane"  # test_docs_controlplane: the shared control plane
OWN = "own-control-plane"  # test_docs_controlplane: a control plane of the page's own
JAEGER = "jaeger"  # test_docs_controlplane: python sending traces to a real Jaeger
VALIDATED = "validated"  # a config document, parsed (test_page_yaml_is_valid)
FILE = "file"  # a titled block: written where the page's commands find it
OUTPUT = "output"  # compared with what the code before it printed
SKIPPED = "skipped"  # marked <!-- test: skip REASON -->
ILLUSTRATION = "illustration"  # console, text, json: never run
UNKNOWN = "unknown"  # an error: neither run nor known to be illustrative


def disposition(page: str, block: Block) -> str:
    """What becomes of a block: which run executes it, or why none does."""
    if block.skip:
        return SKIPPED
    if block.is_output:
        return OUTPUT
    if block.lang == "hidden" or block.lang in PYTHON | SHELL:
        if not block.controlplane:
            return LOCAL
        if page in OWN_CONTROL_PLANE:
            return OWN
        return JAEGER if block.lang in PYTHON else CONTROLPLANE
    if block.is_file:
        return FILE
    if block.lang in YAML:
        try:
            docs = yaml_documents(block)
        except DocsError:
            return UNKNOWN
        if is_kubernetes(docs):
            return OWN if page in OWN_CONTROL_PLANE else CONTROLPLANE
        return VALIDATED if is_config(docs) else UNKNOWN
    return ILLUSTRATION if block.lang in ILLUSTRATIVE else UNKNOWN


class PageRun:
    """The blocks of one page that one run executes (`LOCAL`, `CONTROLPLANE`, `OWN` or
    `JAEGER`), in page order, in one namespace, with the page's files written, its
    `rewrite`s applied and its background servers stopped at the end (`close`)."""

    def __init__(
        self,
        page: Page,
        run: str,
        env: dict[str, str] | None = None,
        apply: Callable[[str], Any] | None = None,
        **names: Any,
    ) -> None:
        self.page = page
        self.run = run
        # What the run's environment adds to this process's (at each block, os.environ as
        # hidden code left it, plus this).
        self.env = {k: v for k, v in (env or {}).items() if os.environ.get(k) != v}
        self.apply = apply
        self.workdir = Path(tempfile.mkdtemp(prefix="docs-page-"))
        self.rewrite: dict[str, str] = {}
        self.background: list[Background] = []
        self.background_timeout = 60.0  # for a background block to print its Output
        self.executed: list[Block] = []
        self.namespace: dict[str, Any] = {
            "__name__": "__main__",
            "rewrite": self.rewrite,
            "background": self.background,
            "free_port": free_port,
            "free_ports": free_ports,
            **names,
        }

    def __enter__(self) -> PageRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def mine(self, block: Block) -> bool:
        return disposition(self.page.name, block) in (self.run, FILE)

    def run_all(self) -> dict[str, Any]:
        """Run every block of this run; returns the page's namespace."""
        for block in self.page.blocks:
            self.step(block)
        missed = [b.where for b in self.page.blocks if self.mine(b) and b not in self.executed]
        assert not missed, f"blocks of the {self.run} run not executed: {missed}"
        return self.namespace

    def step(self, block: Block) -> None:
        kind = disposition(self.page.name, block)
        if kind == UNKNOWN:
            raise DocsError(
                f"{block.where}: `{block.lang}` blocks are neither run nor known to be "
                "illustrative: use python/bash/yaml (Kubernetes objects or config documents), "
                "console for illustrations, or mark it <!-- test: skip REASON -->"
            )
        if kind == FILE:
            assert block.title is not None
            path = self.workdir / block.title
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.code)
            self.rewrite[block.title] = str(path)
        elif kind != self.run:
            return
        elif block.lang == "hidden":
            run_python(block, self.namespace)
        elif block.lang in PYTHON:
            code = rewritten(block.code, self.rewrite)
            printed = run_python(block, self.namespace, code)
            check_output(block, rewritten(printed, self.rewrite, backwards=True))
        elif block.lang in SHELL:
            code = rewritten(block.code, self.rewrite)
            env = shell_env(self.env)
            if block.background:
                server = Background(block, code, env)
                self.background.append(server)
                server.wait_ready(self.rewrite, self.background_timeout)
            else:
                printed = run_shell(block, env, code=code)
                sys.stdout.write(f"$ {block.where}\n{printed}")  # shown by pytest on failure
                check_output(block, rewritten(printed, self.rewrite, backwards=True))
        elif block.lang in YAML and self.apply is not None:
            self.apply(block.code)
        else:
            raise DocsError(f"{block.where}: the {self.run} run cannot execute this block")
        self.executed.append(block)

    def close(self) -> None:
        for server in reversed(self.background):
            server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
