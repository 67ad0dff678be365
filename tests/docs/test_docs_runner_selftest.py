"""The docs runner itself: what it reads from a page, and that it catches what it must."""

from __future__ import annotations

import pytest
from docs_runner import DocsError, check_output, matches, parse, run_python

PAGE = """
# A page

<!-- test: setup
x = 40
-->

```python
print(x + 2)
```

```text title="Output"
42
```

<!-- test: skip it needs a GPU we do not have -->
```python
raise SystemExit("never run")
```

<!-- test: controlplane -->
```bash
kubectl get pods
```

```console
$ illustration only
```
"""


def test_parse_reads_blocks_directives_and_outputs() -> None:
    page = parse("selftest.md", PAGE)
    langs = [b.lang for b in page.blocks]
    assert langs == ["hidden", "python", "text", "python", "bash", "console"]
    hidden, shown, output, skipped, shell, _ = page.blocks
    assert hidden.code.strip() == "x = 40"
    assert shown.output is output and output.is_output
    assert skipped.skip == "it needs a GPU we do not have"
    assert shell.controlplane and not shown.controlplane


def test_output_is_compared() -> None:
    page = parse("selftest.md", PAGE)
    namespace: dict[str, object] = {}
    run_python(page.blocks[0], namespace)
    check_output(page.blocks[1], run_python(page.blocks[1], namespace))
    with pytest.raises(DocsError, match="printed output differs"):
        check_output(page.blocks[1], "41\n")


def test_matches_wildcards_and_trailing_space() -> None:
    assert matches("took ... ms\nok", "took 12.5 ms   \nok\n")
    assert not matches("took ... ms", "took 12.5 s")
    assert matches("a\n...", "a\nb\nc")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("<!-- test: skip -->\n```python\npass\n```\n", "needs a reason"),
        ("<!-- test: frobnicate -->\n", "unknown directive"),
        ("```\nno language\n```\n", "needs a language"),
        ("```python\nunterminated\n", "unterminated code fence"),
        ('```text title="Output"\n1\n```\n', "must follow code"),
        ("<!-- test: skip dangling at the end -->\n", "marks no block"),
    ],
)
def test_malformed_pages_are_refused(text: str, error: str) -> None:
    with pytest.raises(DocsError, match=error):
        parse("bad.md", text)


def test_a_failing_block_names_its_page_and_line() -> None:
    page = parse("bad.md", "\n\n```python\n1 / 0\n```\n")
    with pytest.raises(DocsError, match=r"(?s)docs/bad.md:3 .*ZeroDivisionError"):
        run_python(page.blocks[0], {})
