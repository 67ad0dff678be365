"""The story's fallback trace, in the real Jaeger UI, in a real browser.

The story's first steps on the real node (helm install, the operator in its pod, an
AgentPool whose primary answers 529 overloaded and a fallback RoutingPolicy, the app's
pod with the injected sidecar) and one request through the official openai SDK from the
app's container; then headless
Chromium (Debian's) opens the trace's page in the Jaeger UI that the tests' Jaeger serves
(built by hack/jaeger-ui), waits for the timeline, opens the routing decision and both
attempts, and reads what a person sees there: every span, the route and its strategy,
the failed attempt with its error type, the agent that answered, and no key or prompt.

It saves a screenshot of that view, and with AGENT_ROUTER_SCREENSHOTS=<dir> also to
<dir>/jaeger-trace.png: that is how docs/images/jaeger-trace.png is made (see
docs/tracing.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest
from support.browser import chromium
from support.controlplane import JAEGER_UI_ENV, Jaeger
from support.node import Node
from support.story import KEYS, PROMPT, Story, TraceSeen

pytestmark = [pytest.mark.controlplane, pytest.mark.timeout(600)]

SCREENSHOTS_ENV = "AGENT_ROUTER_SCREENSHOTS"
SCREENSHOT = "jaeger-trace.png"

# What the timeline shows of each span row, and what an opened span shows of its tags.
ROWS_JS = """[...document.querySelectorAll('.span-row')].map(row => ({
    service: row.querySelector('.span-svc-name').innerText.trim(),
    operation: row.querySelector('.endpoint-name').innerText.trim(),
    error: row.querySelector('.SpanBarRow--errorIcon') !== null,
}))"""
OPEN_JS = """((operations) => {
    for (const row of document.querySelectorAll('.span-row')) {
        const operation = row.querySelector('.endpoint-name').innerText.trim();
        const name = row.querySelector('.span-name');  // a switch: opens the span's detail
        if (operations.includes(operation) && name.getAttribute('aria-checked') !== 'true') {
            name.click();
        }
    }
    return document.querySelectorAll('.detail-row').length;
})(%s)"""
# The first accordion of a span's detail is its tags; opened, it is a key/value table.
OPEN_TAGS_JS = """[...document.querySelectorAll('.detail-row')].map(detail => {
    const tags = detail.querySelector('.AccordianKeyValues--header');
    if (tags.getAttribute('aria-checked') !== 'true') tags.click();
    return detail.querySelectorAll('.KeyValueTable--row').length;
}).every(rows => rows > 0)"""
DETAILS_JS = """[...document.querySelectorAll('.detail-row')].map(detail => ({
    operation: detail.querySelector('h2').innerText.trim(),
    tags: Object.fromEntries([...detail.querySelectorAll('.KeyValueTable--row')].map(row => [
        row.querySelector('.KeyValueTable--keyColumn').innerText.trim(),
        row.querySelector('.KeyValueTable--valueColumn').innerText.trim(),
    ])),
}))"""


async def read_trace_view(url: str, spans: int, open_spans: list[str]) -> dict[str, Any]:
    """Open the trace's page; wait for all ``spans`` rows; open ``open_spans`` and their
    tags; return the rows, the opened spans' tags, the page's text and a screenshot."""
    async with chromium(width=1400, height=900) as page:
        await page.goto(url)
        await page.wait_for(
            f"document.querySelectorAll('.span-row').length === {spans}",
            f"timeline of {spans} spans (Jaeger UI at {url})",
        )
        await page.wait_for(
            OPEN_JS % json.dumps(open_spans) + f" === {len(open_spans)}",
            f"the details of {open_spans}",
        )
        await page.wait_for(OPEN_TAGS_JS, "the tags of the opened spans")
        return {
            "rows": await page.evaluate(ROWS_JS),
            "details": await page.evaluate(DETAILS_JS),
            "text": await page.evaluate("document.body.innerText"),
            "png": await page.screenshot(),
        }


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", png[16:24])  # IHDR, the first chunk
    return width, height


def the_fallback_trace(node: Node, jaeger: Jaeger) -> TraceSeen:
    """The story up to its first request (the primary answers 529), and its trace."""
    suffix = uuid.uuid4().hex[:5]  # names of their own: the node is shared
    s = Story(node, jaeger, release=f"r{suffix}", system_namespace=f"ars-{suffix}",
              app_namespace=f"tv-{suffix}")  # fmt: skip
    try:
        s.install_chart()
        s.wait_for_operator()
        s.start_fakes()
        s.apply_pool_and_policy()
        s.deploy_app()
        s.wait_for_config()
        call = s.ask()
        return s.find_trace(call.trace_id)
    finally:
        s.close()


def test_the_fallback_trace_in_the_jaeger_ui(node: Node, jaeger: Jaeger, tmp_path: Path) -> None:
    assert jaeger.ui is not None, (
        f"the tests' Jaeger serves no UI: run hack/jaeger-ui and export the {JAEGER_UI_ENV}=... "
        "line it prints (hack/test does both)"
    )
    trace = the_fallback_trace(node, jaeger)
    (route,) = trace.named("route ")
    failed, answered = trace.children(route)
    assert trace.ui_url == jaeger.trace_url(trace.trace_id)

    view = asyncio.run(
        read_trace_view(trace.ui_url, len(trace.spans), [route.name, failed.name, answered.name])
    )

    # Every span of the trace is a row of the timeline, with its service; only the failed
    # attempt carries the error mark.
    rows = {(r["service"], r["operation"]): r["error"] for r in view["rows"]}
    assert sorted(rows) == sorted((s.service, s.name) for s in trace.spans)
    assert [op for (_, op), error in rows.items() if error] == [failed.name]
    assert "ask the assistant" in view["text"] and trace.trace_id[:7] in view["text"]

    # The routing decision, the failed attempt and the answer, as the page shows them.
    details = {d["operation"]: d["tags"] for d in view["details"]}
    assert details[route.name]["agent_router.route"] == "default"
    assert details[route.name]["agent_router.strategy"] == "fallback"
    assert details[route.name]["agent_router.chosen"] == "openai/gpt-4o"
    assert details[route.name]["agent_router.fallbacks"] == "1"
    assert failed.name == "chat claude-sonnet-4-5"
    assert details[failed.name]["error.type"] == "OverloadedError"
    assert details[failed.name]["agent_router.attempt.outcome"] == "error"
    assert details[failed.name]["agent_router.agent"] == "main.claude"
    assert details[failed.name]["gen_ai.provider.name"] == "anthropic"
    assert details[failed.name]["http.response.status_code"] == "529"
    assert details[answered.name]["agent_router.attempt.outcome"] == "ok"
    assert details[answered.name]["agent_router.agent"] == "main.gpt"  # pool "main", agent "gpt"
    assert details[answered.name]["gen_ai.provider.name"] == "openai"
    # The page shows what the query API stores, key for key.
    for span in (route, failed, answered):
        assert set(details[span.name]) == set(span.tags), span.name

    # No key and no prompt anywhere on the page.
    for secret in (*KEYS.values(), PROMPT, "purple-elephant"):
        assert secret not in view["text"]
        assert all(secret not in v for tags in details.values() for v in tags.values())

    width, height = png_size(view["png"])
    assert width == 1400 and height >= 900, (width, height)
    (tmp_path / SCREENSHOT).write_bytes(view["png"])
    if directory := os.environ.get(SCREENSHOTS_ENV):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / SCREENSHOT).write_bytes(view["png"])
