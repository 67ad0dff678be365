"""The docs runner itself: what it reads from a page, and that it catches what it must."""

from __future__ import annotations

import pytest
from docs_runner import (
    FILE,
    LOCAL,
    OUTPUT,
    DocsError,
    PageRun,
    check_output,
    contains,
    disposition,
    fresh_process_state,
    matches,
    parse,
    rewritten,
    run_python,
)

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


SERVER_PAGE = """
<!-- test: setup
import os
port = free_port()
rewrite["127.0.0.1:4000"] = f"127.0.0.1:{port}"
os.environ["PORT"] = str(port)
-->

<!-- test: background -->
```bash
python -u -m http.server --bind 127.0.0.1 "$PORT" --directory docs
```

```text title="Output"
Serving HTTP on 127.0.0.1 port ... (http://127.0.0.1:4000/) ...
```

```json title="data.json"
{"answer": 42}
```

```bash
curl -s -o /dev/null -w '%{http_code} from 127.0.0.1:4000\n' http://127.0.0.1:4000/index.md
python -c 'import json, sys; print(json.load(open(sys.argv[1]))["answer"])' data.json
echo "served by 127.0.0.1:4000"
```

```text title="Output"
200 from 127.0.0.1:4000
42
served by 127.0.0.1:4000
```

<!-- test: exit 3 -->
```bash
echo "no such route" >&2; exit 3
```

```text title="Output"
no such route
```

<!-- test: check
assert background[0].stop() in (0, -15), background[0].output()
-->
"""


def test_background_servers_rewrites_files_and_exit_codes() -> None:
    page = parse("server.md", SERVER_PAGE)
    server, shell, failing = page.of("bash")
    assert server.background and not shell.background and failing.exit_code == 3
    assert [disposition("server.md", b) for b in page.blocks] == [
        LOCAL, LOCAL, OUTPUT, FILE, LOCAL, OUTPUT, LOCAL, OUTPUT, LOCAL,
    ]  # fmt: skip
    with fresh_process_state(), PageRun(page, LOCAL) as run:
        namespace = run.run_all()
        assert run.executed == [b for b in page.blocks if b.lang != "text"]
        assert namespace["rewrite"]["data.json"].endswith("/data.json")


def test_a_failing_background_or_exit_code_fails_the_page() -> None:
    wrong_exit = SERVER_PAGE.replace("<!-- test: exit 3 -->", "<!-- test: exit 2 -->")
    with fresh_process_state(), PageRun(parse("bad.md", wrong_exit), LOCAL) as run:
        with pytest.raises(DocsError, match=r"exited 3 \(it must exit 2\)"):
            run.run_all()
    never_ready = SERVER_PAGE.replace("Serving HTTP on", "Listening on")
    with fresh_process_state(), PageRun(parse("bad.md", never_ready), LOCAL) as run:
        with pytest.raises(DocsError, match="not ready"):
            run.background_timeout = 2.0
            run.run_all()


def test_rewrites_are_whole_words_and_undone_in_output() -> None:
    table = {"127.0.0.1:4000": "127.0.0.1:51234", "10.1.2.3:4001": "127.0.0.1:5"}
    code = "curl http://127.0.0.1:4000/v1 http://127.0.0.1:40001 10.1.2.3:4001"
    assert rewritten(code, table) == (
        "curl http://127.0.0.1:51234/v1 http://127.0.0.1:40001 127.0.0.1:5"
    )
    assert rewritten("app=http://127.0.0.1:51234", table, backwards=True) == (
        "app=http://127.0.0.1:4000"
    )
    assert contains("READY ...", "log line\nREADY app=x\nmore logs")
    assert not contains("READY app", "NOT READY app=x")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("<!-- test: exit 0 -->\n```bash\ntrue\n```\n", "needs a status"),
        ("<!-- test: exit 1 -->\n```python\npass\n```\n", "shell blocks only"),
        ("<!-- test: background -->\n```bash\nsleep 9\n```\n", "needs an Output block"),
        ("<!-- test: skip why -->\n<!-- test: setup\nx = 1\n-->\n", "marks hidden code"),
    ],
)
def test_malformed_directives_are_refused(text: str, error: str) -> None:
    with pytest.raises(DocsError, match=error):
        parse("bad.md", text)


def test_controlplane_marks_hidden_code_too() -> None:
    page = parse("cp.md", "<!-- test: controlplane -->\n<!-- test: setup\nx = 1\n-->\n")
    (hidden,) = page.blocks
    assert hidden.controlplane and disposition("cp.md", hidden) == "controlplane"
    assert disposition("helm.md", hidden) == "own-control-plane"
