"""`agent`: a small command line for people.

agent run "Hello" --config router.yaml [--route default] [--stream]
agent check router.yaml          validate a config document, print it redacted
"""

from __future__ import annotations

import argparse
import json
import sys

from agent.config import load_config
from agent.errors import AgentError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="route one prompt and print the answer")
    run.add_argument("prompt")
    run.add_argument("--config", required=True, help="a config document (YAML)")
    run.add_argument("--route", help="the route to use (default: the config's default)")
    run.add_argument("--system")
    run.add_argument("--stream", action="store_true")
    check = sub.add_parser("check", help="validate a config document")
    check.add_argument("config")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            config = load_config(args.config)
            print(json.dumps(config.redacted(), indent=2))
            return 0
        config = load_config(args.config)
        names = [r.name for r in config.routes]
        if args.route and args.route not in names:
            print(f"no route {args.route!r}; routes: {', '.join(names)}", file=sys.stderr)
            return 2
        with config.router(args.route) as router:
            if args.stream:
                for event in router.stream(args.prompt, system=args.system):
                    if event.type == "text_delta":
                        print(event.text, end="", flush=True)
                    elif event.type == "done":
                        response = event.response
                print()
            else:
                response = router.run(args.prompt, system=args.system)
                print(response.text)
        route = response.route
        print(
            f"-- {response.provider}/{response.model} in {response.latency_ms:.0f} ms, "
            f"${response.cost_estimate:.6f}; {route.reason if route else ''}",
            file=sys.stderr,
        )
        return 0
    except AgentError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
