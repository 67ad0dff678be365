"""YAML on standard input, the same data as JSON on standard output: run as a process
of its own (`python yaml_to_json.py`, which imports nothing of the project) so that a
large YAML push is parsed without holding the sidecar's interpreter lock. libyaml
builds a whole document in one call that never lets go of it: a 3 MB document would
stall every request for as long as that takes.

Exit status 0: the JSON follows. 3: the YAML is broken; a JSON object with the parser's
`problem`, `line` and `column` (0-based) follows, never the text of the line.
Anything else: the caller parses the document itself (a value JSON cannot carry).
"""

import sys

import orjson
import yaml


def main() -> int:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(sys.stdin.buffer.read(), Loader=loader)  # a safe loader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = {"line": mark.line, "column": mark.column} if mark else {}
        sys.stdout.buffer.write(orjson.dumps({"problem": str(exc.problem), **where}))
        return 3
    except yaml.YAMLError:
        sys.stdout.buffer.write(orjson.dumps({"problem": None}))
        return 3
    sys.stdout.buffer.write(orjson.dumps(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
