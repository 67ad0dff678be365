"""Every code block of every docs page runs, against the fake providers.

The fakes are reached through the standard environment variables (OPENAI_BASE_URL,
ANTHROPIC_API_KEY, ...), exactly as a reader's real keys would be: the pages' code is
run as written. What a reader need not see (a provider made to fail so that a fallback
shows, a placeholder tool) lives in HTML comments; see docs_runner.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from docs_runner import (
    EVERY_BLOCK_RUNS,
    FILE,
    ILLUSTRATION,
    ILLUSTRATIONS_ALLOWED,
    JAEGER,
    LOCAL,
    OUTPUT,
    OWN,
    PYTHON,
    ROOT,
    SHELL,
    SKIPPED,
    UNKNOWN,
    YAML,
    DocsError,
    Page,
    PageRun,
    disposition,
    fake_providers,
    fresh_process_state,
    is_config,
    is_kubernetes,
    pages,
    parse,
    yaml_documents,
)
from fakes import CutStream, Fail, FakeProvider, Hang, Reply, Stall, StreamError

from agent.config import parse_config

PAGES = pages()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, FakeProvider]]:
    with fake_providers(monkeypatch) as fakes:
        yield fakes


def run_page(page: Page, fake: dict[str, FakeProvider]) -> dict[str, Any]:
    """Run the page's local blocks (python, shell and hidden code not marked controlplane)
    in order; returns the page's namespace."""
    names = {"fake": fake, "Reply": Reply, "Fail": Fail, "CutStream": CutStream,
             "StreamError": StreamError, "Hang": Hang, "Stall": Stall}  # fmt: skip
    with fresh_process_state(), PageRun(page, LOCAL, **names) as run:
        return run.run_all()


@pytest.mark.parametrize("name", PAGES)
def test_page_runs(
    name: str,
    fake: dict[str, FakeProvider],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(ROOT)
    run_page(parse(name), fake)


@pytest.mark.parametrize("name", PAGES)
def test_page_yaml_is_valid(name: str) -> None:
    """Config documents validate; Kubernetes objects of ours validate against the models
    the CRDs are generated from (the control-plane test also applies them for real)."""
    from agent_operator.resources import GROUP, VERSION, AgentPoolSpec, RoutingPolicySpec

    models = {"AgentPool": AgentPoolSpec, "RoutingPolicy": RoutingPolicySpec}
    for block in parse(name).of(*YAML, "json"):
        if block.skip or (block.lang == "json" and not block.is_file):
            continue
        docs = yaml_documents(block)
        if is_config(docs):
            parse_config(block.code)
        elif is_kubernetes(docs):
            for doc in docs:
                if doc["kind"] in models:
                    assert doc["apiVersion"] == f"{GROUP}/{VERSION}", block.where
                    assert "namespace" not in doc.get("metadata", {}), (
                        f"{block.where}: leave the namespace to the reader (kubectl -n)"
                    )
                    models[doc["kind"]].model_validate(doc["spec"])
        elif not block.is_file:
            raise DocsError(
                f"{block.where}: YAML that is neither a Kubernetes object nor a config "
                "document: mark it <!-- test: skip REASON -->"
            )


def test_every_page_is_checked() -> None:
    """Every block of every page is run, checked, or an illustration; skips say why."""
    assert PAGES, "no docs pages found"
    assert {"routing.md", "sidecar.md", "helm.md", "operator.md"} <= set(PAGES)
    assert set(PAGES) >= EVERY_BLOCK_RUNS | ILLUSTRATIONS_ALLOWED
    assert not EVERY_BLOCK_RUNS & ILLUSTRATIONS_ALLOWED
    for name in PAGES:
        page = parse(name)
        assert not page.blocks or name in EVERY_BLOCK_RUNS | ILLUSTRATIONS_ALLOWED, (
            f"docs/{name}: add it to EVERY_BLOCK_RUNS (tests/docs/docs_runner.py)"
        )
        for block in page.blocks:
            assert disposition(name, block) != UNKNOWN, f"{block.where}: `{block.lang}`"
            if block.lang in PYTHON | SHELL and block.skip:
                assert len(block.skip) > 10, f"{block.where}: say why it is not run"
            if disposition(name, block) == JAEGER:
                assert name == "tracing.md", f"{block.where}: only tracing.md has a Jaeger run"


@pytest.mark.parametrize("name", sorted(EVERY_BLOCK_RUNS))
def test_every_block_runs_or_says_why_not(name: str) -> None:
    """On these pages no block escapes: each one is run by a test (here or on a control
    plane), compared as the output of one that is, a file one uses, a config document
    that is parsed, or marked <!-- test: skip REASON -->. An illustration fails."""
    page = parse(name)
    run = [b for b in page.blocks if disposition(name, b) not in (
        FILE, OUTPUT, SKIPPED, ILLUSTRATION, UNKNOWN)]  # fmt: skip
    checked_outputs = {id(b.output) for b in run if b.output is not None}
    excused_outputs = {id(b.output) for b in page.blocks if b.skip and b.output is not None}
    code = "\n".join(b.code for b in run)
    for block in page.blocks:
        kind = disposition(name, block)
        assert kind not in (ILLUSTRATION, UNKNOWN), (
            f"{block.where}: a `{block.lang}` block that nothing runs: make it "
            "runnable, or mark it <!-- test: skip REASON --> (see writing-docs.md)"
        )
        if kind == SKIPPED:
            assert len(block.skip or "") > 10, f"{block.where}: say why it is not run"
        if kind == OUTPUT:
            assert id(block) in checked_outputs | excused_outputs, block.where
        if kind == FILE:
            assert block.title in code, f"{block.where}: no command uses {block.title}"
    assert run, f"docs/{name}: nothing runs"


def test_the_main_pages_really_run_code() -> None:
    """Guard against a page whose blocks all slipped out of the runner (a typo in a
    language, a stray skip): the pages that promise runnable examples have them."""
    for name, at_least in {
        "getting-started.md": 3,
        "routing.md": 12,
        "middleware.md": 3,
        "errors.md": 3,
        "providers.md": 4,
        "structured-output.md": 4,
        "config.md": 2,
        "tracing.md": 2,
        "sidecar.md": 8,
    }.items():
        runnable = [
            b
            for b in parse(name).blocks
            if b.lang in PYTHON | SHELL and not b.skip and not b.controlplane
        ]
        assert len(runnable) >= at_least, f"docs/{name}: only {len(runnable)} runnable blocks"
    # The Helm page runs on a control plane of its own: install, upgrades, uninstall.
    helm = [b for b in parse("helm.md").of(*SHELL) if disposition("helm.md", b) == OWN]
    assert len(helm) >= 7, f"docs/helm.md: only {len(helm)} blocks run on a control plane"
