"""Sidecar benchmark: what does routing through the sidecar cost?

    .venv/bin/python bench/sidecar_bench.py [--seconds 5] [--connections 32] [--upstream canned|fake]

One run, side by side, plain and streamed calls against a zero-delay OpenAI-format upstream:

    direct     wrk -> upstream
    thin       wrk -> the thinnest aiohttp pass-through -> upstream   (bench/sidecar_servers.py)
    sidecar    wrk -> agent-sidecar (uvloop, and plain asyncio) -> upstream: chat completions
               in, chat completions out, so the body and the answer pass through as they are
    x-format   wrk -> agent-sidecar (uvloop) -> upstream: Anthropic Messages in, translated
               to chat completions and the answer back to Messages
    responses  the same for OpenAI's Responses API: thin relaying /v1/responses; the
               sidecar relaying it to an agent with `api: responses` (same format); and
               translating it to chat completions (x-format)

Load comes from `wrk` (apt-get install wrk): a throughput run with a fixed number of
connections and a latency run with one connection. Then the sidecar's RSS after every
request of the run, and its start-up-to-ready time (process start to the READY line, a
config file loaded). Targets: same format >= 85% of thin's throughput, across formats
>= 65%, <= 0.2 ms added p50 over direct with one connection on the same format, RSS
<= 70 MB, ready < 1 s.

The upstream is canned bytes on a raw asyncio protocol by default so that it is never the
bottleneck on a small machine; `--upstream fake` uses tests/fakes/serve.py instead.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
CROSS = "sidecar x-format"  # the row of an Anthropic caller on the OpenAI-format route
RESPONSES = "/v1/responses"
THIN_RESPONSES = "thin responses"  # the bare relay, for the Responses API's body and answer
RESPONSES_ROWS = {"responses relay": 0.85, "responses x-format": 0.65}  # and their targets


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    ready_s: float

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


# With two or more CPUs, the load generator and the upstream share CPU 0 and the server
# under test gets CPU 1 to itself: every proxy is measured on the same, uncontended core.
PINNED = (os.cpu_count() or 1) >= 2
LOAD_CPU, PROXY_CPU = {0}, {1}


def spawn(
    name: str, cmd: list[str], env: dict[str, str] | None = None, cpus: set[int] | None = None
) -> Server:
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus and PINNED else None,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    ready = time.perf_counter() - started
    if not line.startswith("READY"):
        raise RuntimeError(f"{name} did not start: {line!r}")
    fields = line.split()
    url = dict(f.split("=", 1) for f in fields[1:] if "=" in f).get("app") or fields[-1]
    return Server(name, proc, url, ready)


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


def wrk(
    url: str, body: dict[str, object], connections: int, seconds: float, path: str = CHAT
) -> Result:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(json.dumps(body))}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
    try:
        out = subprocess.run(
            [
                *(["taskset", "-c", "0"] if PINNED else []),
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--latency",
                "-s",
                script.name,
                url + path,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    return Result(rps, _percentile(out, "50%"), _percentile(out, "99%"), total, errors)


def _median(results: list[Result]) -> Result:
    """The run with the median throughput (its latencies come with it)."""
    ordered = sorted(results, key=lambda r: r.rps)
    middle = ordered[len(ordered) // 2]
    return Result(
        middle.rps,
        middle.p50_ms,
        middle.p99_ms,
        sum(r.requests for r in results),
        sum(r.errors for r in results),
    )


def _percentile(out: str, which: str) -> float:
    match = re.search(rf"^\s+{which}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    assert match, out
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3, help="runs per target; the median is shown")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--upstream", choices=["canned", "fake"], default="canned")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 1

    servers: list[Server] = []
    tmp = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    try:
        if args.upstream == "canned":
            upstream = spawn(
                "upstream", [PYTHON, "bench/sidecar_servers.py", "upstream"], cpus=LOAD_CPU
            )
        else:
            upstream = spawn(
                "upstream",
                [PYTHON, "tests/fakes/serve.py", "--kind", "openai", "--port", "0"],
                cpus=LOAD_CPU,
            )
        servers.append(upstream)
        thin = spawn(
            "thin",
            [PYTHON, "bench/sidecar_servers.py", "thin", "--upstream", upstream.url],
            cpus=PROXY_CPU,
        )
        servers.append(thin)

        config = tmp / "router.yaml"
        config.write_text(
            json.dumps(
                {
                    "version": 1,
                    "agents": [
                        {
                            "name": "up",
                            "provider": "openai",
                            "model": "gpt-4o-mini",
                            "base_url": upstream.url + "/v1",
                            "api_key": "bench",
                        },
                        {
                            "name": "up-responses",
                            "provider": "openai",
                            "model": "gpt-4o-mini",
                            "base_url": upstream.url + "/v1",
                            "api_key": "bench",
                            "api": "responses",
                        },
                    ],
                    "routes": [
                        {"name": "bench", "agents": ["up"]},
                        {"name": "bench-responses", "agents": ["up-responses"]},
                    ],
                }
            )
        )
        sidecar_cmd = [
            PYTHON,
            "-m",
            "agent_sidecar",
            "--config",
            str(config),
            "--port",
            "0",
            "--admin-port",
            "0",
            "--admin-host",
            "127.0.0.1",
            "--log-level",
            "warning",
        ]
        ready_times = []
        for _ in range(5):  # start-up to ready, a few times
            probe = spawn("probe", [*sidecar_cmd, "--loop", "uvloop"], cpus=PROXY_CPU)
            ready_times.append(probe.ready_s)
            probe.stop()
        sidecars = {
            "sidecar (uvloop)": spawn(
                "sidecar", [*sidecar_cmd, "--loop", "uvloop"], cpus=PROXY_CPU
            ),
            "sidecar (asyncio)": spawn(
                "sidecar", [*sidecar_cmd, "--loop", "asyncio"], cpus=PROXY_CPU
            ),
        }
        servers += sidecars.values()
        targets = {
            "direct": upstream,
            "thin": thin,
            **sidecars,
            CROSS: sidecars["sidecar (uvloop)"],
            THIN_RESPONSES: thin,
            **{name: sidecars["sidecar (uvloop)"] for name in RESPONSES_ROWS},
        }

        rows: list[tuple[str, str, Result, Result]] = []
        for mode in ("plain", "stream"):
            body: dict[str, object] = {
                "model": "bench",
                "messages": [{"role": "user", "content": "Hello"}],
            }
            if mode == "stream":
                body["stream"] = True
            calls = {name: (CHAT, body) for name in targets}
            calls[CROSS] = (MESSAGES, {**body, "max_tokens": 64})
            asked: dict[str, object] = {"model": "bench-responses", "input": "Hello"}
            if mode == "stream":
                asked["stream"] = True
            calls[THIN_RESPONSES] = calls["responses relay"] = (RESPONSES, asked)
            calls["responses x-format"] = (RESPONSES, {**asked, "model": "bench"})
            for name, server in targets.items():
                wrk(server.url, calls[name][1], args.connections, 1, calls[name][0])  # warm-up
            runs: dict[str, list[tuple[Result, Result]]] = {name: [] for name in targets}
            for _ in range(args.rounds):  # interleaved, so drifts in the machine hit all alike
                for name, server in targets.items():
                    path, sent = calls[name]
                    runs[name].append(
                        (
                            wrk(server.url, sent, args.connections, args.seconds, path),
                            wrk(server.url, sent, 1, args.seconds, path),
                        )
                    )
            for name, results in runs.items():
                rows.append(
                    (mode, name, _median([m for m, _ in results]), _median([o for _, o in results]))
                )
        rss = {name: s.rss_mb() for name, s in sidecars.items()}
        responses_served = sum(r.requests + o.requests for _, n, r, o in rows if n in RESPONSES_ROWS)
        thin_rss = thin.rss_mb()
        served = {
            name: sum(r.requests + o.requests for _, n, r, o in rows if n in (name, CROSS))
            for name in sidecars
        }
        served["sidecar (uvloop)"] += responses_served  # it serves the responses rows too
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    c = args.connections
    pinning = "wrk+upstream on CPU 0, server under test on CPU 1" if PINNED else "no pinning"
    print(
        f"\nsidecar benchmark: {os.cpu_count()} CPUs ({pinning}), median of {args.rounds} "
        f"runs of {args.seconds:g}s, upstream={args.upstream}, wrk -t1\n"
    )
    head = f"{'mode':<7}{'target':<19}{f'req/s c={c}':>12}{f'p50 c={c}':>11}{f'p99 c={c}':>11}"
    head += f"{'req/s c=1':>11}{'p50 c=1':>10}{'p99 c=1':>10}{'errors':>8}"
    print(head)
    print("-" * len(head))
    for mode, name, many, one in rows:
        print(
            f"{mode:<7}{name:<19}{many.rps:>12.0f}{many.p50_ms:>9.2f}ms{many.p99_ms:>9.2f}ms"
            f"{one.rps:>11.0f}{one.p50_ms:>8.3f}ms{one.p99_ms:>8.3f}ms{many.errors + one.errors:>8}"
        )
    print()
    results = {(mode, name): (many, one) for mode, name, many, one in rows}
    for name in (*sidecars, CROSS):
        target = 0.65 if name == CROSS else 0.85
        for mode in ("plain", "stream"):
            share = results[(mode, name)][0].rps / results[(mode, "thin")][0].rps
            added = results[(mode, name)][1].p50_ms - results[(mode, "direct")][1].p50_ms
            latency = "" if name == CROSS else f" (target <= 0.2 ms: {_verdict(added <= 0.2)})"
            print(
                f"{name} {mode}: {share:.0%} of thin's throughput (target >= {target:.0%}: "
                f"{_verdict(share >= target)}), +{added:.3f} ms p50 over direct at c=1{latency}"
            )
    for name, target in RESPONSES_ROWS.items():
        for mode in ("plain", "stream"):
            share = results[(mode, name)][0].rps / results[(mode, THIN_RESPONSES)][0].rps
            added = results[(mode, name)][1].p50_ms - results[(mode, THIN_RESPONSES)][1].p50_ms
            print(
                f"{name} {mode}: {share:.0%} of thin's throughput on /v1/responses "
                f"(target >= {target:.0%}: {_verdict(share >= target)}), "
                f"+{added:.3f} ms p50 over thin at c=1"
            )
    for name in sidecars:
        print(
            f"{name}: RSS {rss[name]:.1f} MB after {served[name]} requests "
            f"(target <= 70 MB: {_verdict(rss[name] <= 70)})"
        )
    print(f"thin pass-through: RSS {thin_rss:.1f} MB")
    median = statistics.median(ready_times)
    print(
        f"sidecar start-up to ready: median {median * 1000:.0f} ms of {len(ready_times)} "
        f"(min {min(ready_times) * 1000:.0f} ms; target < 1 s: {_verdict(median < 1)})"
    )
    return 0


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


if __name__ == "__main__":
    sys.exit(main())
