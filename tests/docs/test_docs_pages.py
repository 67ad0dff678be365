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
    FOREIGN,
    ILLUSTRATIVE,
    PYTHON,
    ROOT,
    SHELL,
    YAML,
    DocsError,
    Page,
    check_output,
    fake_providers,
    fresh_process_state,
    is_config,
    is_kubernetes,
    pages,
    parse,
    run_python,
    run_shell,
    shell_env,
    yaml_documents,
)
from fakes import CutStream, Fail, FakeProvider, Hang, Reply, StreamError

from agent.config import parse_config

PAGES = pages()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, FakeProvider]]:
    with fake_providers(monkeypatch) as fakes:
        yield fakes


def run_page(page: Page, fake: dict[str, FakeProvider]) -> dict[str, Any]:
    """Run the page's python and shell blocks in order; returns the page's namespace."""
    namespace: dict[str, Any] = {
        "__name__": "__main__",
        "fake": fake,
        "Reply": Reply,
        "Fail": Fail,
        "CutStream": CutStream,
        "StreamError": StreamError,
        "Hang": Hang,
    }
    with fresh_process_state():
        for block in page.blocks:
            if block.skip or block.controlplane:
                continue
            if block.lang == "hidden" or block.lang in PYTHON:
                check_output(block, run_python(block, namespace))
            elif block.lang in SHELL:
                check_output(block, run_shell(block, shell_env()))
            elif block.lang in YAML or block.lang in ILLUSTRATIVE:
                continue
            else:
                raise DocsError(
                    f"{block.where}: `{block.lang}` blocks are neither run nor known to be "
                    "illustrative: use python/bash/yaml, console for illustrations, or mark "
                    "it <!-- test: skip REASON -->"
                )
    return namespace


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
    for block in parse(name).of(*YAML):
        if block.skip:
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
        else:
            raise DocsError(
                f"{block.where}: YAML that is neither a Kubernetes object nor a config "
                "document: mark it <!-- test: skip REASON -->"
            )


def test_every_page_is_checked() -> None:
    """No page escapes the runner without being listed as someone else's."""
    assert PAGES, "no docs pages found"
    assert "routing.md" in PAGES
    assert not FOREIGN & set(PAGES)
    for name in PAGES:
        page = parse(name)
        for block in page.blocks:
            if block.lang in PYTHON | SHELL and block.skip:
                assert len(block.skip) > 10, f"{block.where}: say why it is not run"


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
        "tracing.md": 1,
    }.items():
        runnable = [
            b
            for b in parse(name).blocks
            if b.lang in PYTHON | SHELL and not b.skip and not b.controlplane
        ]
        assert len(runnable) >= at_least, f"docs/{name}: only {len(runnable)} runnable blocks"
