"""Run a fake provider standalone.

    python tests/fakes/serve.py --kind openai --port 0 [--delay 0] [--chunk-delay 0]

Prints `READY <kind> <url>` (url = http://127.0.0.1:PORT) on stdout once listening, then
serves until SIGINT/SIGTERM. Requests are not recorded (lean hot path: rendered bodies are
cached per request shape, no logging). Every request gets the same reply.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fakes import KINDS, FakeProvider, Reply


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", default="openai", choices=KINDS)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--delay", type=float, default=0.0, help="seconds before the response headers")
    p.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between streamed chunks")
    p.add_argument("--text", default=None, help="reply text (default: 'Hello from <kind>')")
    p.add_argument("--usage", default=None, help="fixed usage 'IN,OUT' (default: computed)")
    p.add_argument("--api-key", default=None, help="expected key (default: accept any key)")
    p.add_argument("--model", default=None, help="default model name")
    return p


async def _main(args: argparse.Namespace) -> None:
    fake = FakeProvider(args.kind, api_key=args.api_key, model_default=args.model, record=False,
                        host=args.host, port=args.port)
    usage = None
    if args.usage:
        i, o = args.usage.split(",")
        usage = (int(i), int(o))
    text = args.text if args.text is not None else f"Hello from {fake.format}"
    fake.default = Reply(text=text, delay=args.delay, chunk_delay=args.chunk_delay, usage=usage)
    await fake.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {args.kind} {fake.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> None:
    asyncio.run(_main(_parser().parse_args(argv)))


if __name__ == "__main__":
    main()
