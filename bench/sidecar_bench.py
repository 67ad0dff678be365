"""Sidecar benchmark: what does routing through the sidecar cost?

    .venv/bin/python bench/sidecar_bench.py [--seconds 5] [--connections 32] [--upstream canned|fake]

One run, side by side, plain and streamed calls against a zero-delay canned upstream that
speaks the three wire formats, for each way in (chat completions, messages, responses):

    direct     wrk -> upstream
    thin       wrk -> the thinnest aiohttp byte relay -> upstream   (bench/sidecar_servers.py)
    bytes      wrk -> a relay that copies bytes, no HTTP -> upstream: the latency two more
               loopback hops add whatever runs on them (for chat completions only)
    relay      wrk -> agent-sidecar -> upstream, on a route whose agent speaks the caller's
               format: the body and the answer pass through ("sidecar (uvloop)" and
               "sidecar (asyncio)" for chat completions, on either event loop)
    x-format   wrk -> agent-sidecar (uvloop) -> upstream, on a route whose agent speaks
               another format: chat completions to Messages, Messages to chat completions,
               the Responses API to chat completions

Load comes from `wrk` (apt-get install wrk): a throughput run with a fixed number of
connections and a latency run with one connection. Then the sidecar's RSS after every
request of the run, and its start-up-to-ready time (process start to the READY line, a
config file loaded). Targets, each against the thin relay of the same inbound
format: same format >= 0.85x its throughput (0.9x the stretch), across formats >= 0.65x,
<= 0.2 ms added p50 over direct with one connection on the same format, RSS <= 70 MB,
ready < 1 s. `--only ROW...` measures a few rows (with their thin and direct rows).
`--one-cpu` puts the server under test on the load's CPU: what a relay adds to a call
when no hop has to wake another CPU (on a VM that wake is most of the bytes row's cost).

The upstream is canned bytes on a raw asyncio protocol by default so that it is never the
bottleneck on a small machine; `--upstream fake` uses tests/fakes/serve.py instead.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import signal
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
CROSS = "messages x-format"  # an Anthropic caller on the OpenAI-format route
RESPONSES = "/v1/responses"
THIN_RESPONSES = "thin responses"  # the bare relay, for the Responses API's body and answer


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


_PR_SET_PDEATHSIG = 1  # prctl(2)


def _in_child(cpus: set[int] | None) -> None:
    """In a server's process before it starts: it dies with the benchmark (killed by a
    timeout or ^C, the benchmark would otherwise leave its servers running), and it is
    pinned to `cpus`."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if cpus and PINNED:
        os.sched_setaffinity(0, cpus)


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
        preexec_fn=lambda: _in_child(cpus),
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
    cpu_us: float = float("nan")  # the server's CPU time (user + system) per request


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far, user and system (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk_with_cpu(
    server: Server, body: dict[str, object], connections: int, seconds: float, path: str
) -> Result:
    """`wrk` against `server`, with the CPU time the server spent per request: on a busy
    shared machine throughput swings with the neighbours, CPU per request much less."""
    before = cpu_seconds(server.proc.pid)
    result = wrk(server.url, body, connections, seconds, path)
    spent = cpu_seconds(server.proc.pid) - before
    result.cpu_us = spent / max(1, result.requests) * 1e6
    return result


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
        statistics.median(r.cpu_us for r in results),
    )


def _percentile(out: str, which: str) -> float:
    match = re.search(rf"^\s+{which}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    assert match, out
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


@dataclass(frozen=True)
class Row:
    """One target of the table: who serves it, what it is sent, and what it is held to."""

    name: str
    server: str  # "upstream", "thin", "bytes", "uvloop" or "asyncio"
    path: str
    route: str  # the body's `model`: a route of the sidecar (ignored by the others)
    relay: str = ""  # the thin row of the same inbound format: its throughput is the 1.0x
    direct: str = ""  # the direct row of the same format: the c=1 latency to add to
    target: float = 0.0  # the share of `relay`'s throughput to reach


ROWS = (
    Row("direct", "upstream", CHAT, "bench"),
    Row("thin", "thin", CHAT, "bench"),
    Row("bytes", "bytes", CHAT, "bench", direct="direct"),  # the floor: no target
    Row("sidecar (uvloop)", "uvloop", CHAT, "bench", "thin", "direct", 0.85),
    Row("sidecar (asyncio)", "asyncio", CHAT, "bench", "thin", "direct", 0.85),
    Row("chat x-format", "uvloop", CHAT, "bench-messages", "thin", target=0.65),
    Row("direct messages", "upstream", MESSAGES, "bench-messages"),
    Row("thin messages", "thin", MESSAGES, "bench-messages"),
    Row("messages relay", "uvloop", MESSAGES, "bench-messages", "thin messages",
        "direct messages", 0.85),
    Row(CROSS, "uvloop", MESSAGES, "bench", "thin messages", target=0.65),
    Row("direct responses", "upstream", RESPONSES, "bench-responses"),
    Row(THIN_RESPONSES, "thin", RESPONSES, "bench-responses"),
    Row("responses relay", "uvloop", RESPONSES, "bench-responses", THIN_RESPONSES,
        "direct responses", 0.85),
    Row("responses x-format", "uvloop", RESPONSES, "bench", THIN_RESPONSES, target=0.65),
)


def body_for(row: Row, stream: bool) -> dict[str, object]:
    """The caller's body in the row's inbound format."""
    body: dict[str, object]
    if row.path == RESPONSES:
        body = {"model": row.route, "input": "Hello"}
    else:
        body = {"model": row.route, "messages": [{"role": "user", "content": "Hello"}]}
        if row.path == MESSAGES:
            body["max_tokens"] = 64
    if stream:
        body["stream"] = True
    return body


def config(upstream: str) -> dict[str, object]:
    """One agent per wire format on the canned upstream, one route each."""
    agent = {"provider": "openai", "model": "gpt-4o-mini", "api_key": "bench"}
    return {
        "version": 1,
        "agents": [
            {**agent, "name": "up", "base_url": upstream + "/v1"},
            {**agent, "name": "up-responses", "base_url": upstream + "/v1", "api": "responses"},
            {**agent, "name": "up-messages", "provider": "anthropic", "model": "claude-bench",
             "base_url": upstream},
        ],
        "routes": [
            {"name": "bench", "agents": ["up"]},
            {"name": "bench-responses", "agents": ["up-responses"]},
            {"name": "bench-messages", "agents": ["up-messages"]},
        ],
    }


def compile_bytecode() -> None:
    """Measure the servers as an image runs them, with their modules compiled: where
    PYTHONDONTWRITEBYTECODE is set and nothing compiled the venv, every start compiles
    every module from source, which leaves the process about 13 MB larger (measured:
    81 MB against 67 MB for an idle sidecar)."""
    import sysconfig

    paths = [sysconfig.get_paths()["purelib"], str(ROOT / "agent"), str(ROOT / "sidecar"),
             str(ROOT / "bench")]
    subprocess.run([PYTHON, "-m", "compileall", "-q", *paths], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=3.0)
    # Five: on a shared VM one run of a row can be 10% off; the median of five rarely is.
    p.add_argument("--rounds", type=int, default=5, help="runs per target; the median is shown")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--upstream", choices=["canned", "fake"], default="canned")
    p.add_argument("--only", nargs="*", default=None, metavar="TARGET",
                   help="measure these rows only (their relay and direct rows come along)")
    p.add_argument("--one-cpu", action="store_true",
                   help="the server under test on CPU 0 too, beside the app (wrk) and the "
                   "upstream: no hop wakes another CPU (the latency; throughput then shares)")
    args = p.parse_args()
    proxy_cpu = LOAD_CPU if args.one_cpu else PROXY_CPU
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 1
    rows = _chosen(args.only)
    compile_bytecode()

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
            cpus=proxy_cpu,
        )
        servers.append(thin)
        floor = spawn(
            "bytes",
            [PYTHON, "bench/sidecar_servers.py", "bytes", "--upstream", upstream.url],
            cpus=proxy_cpu,
        )
        servers.append(floor)

        path = tmp / "router.yaml"
        path.write_text(json.dumps(config(upstream.url)))
        sidecar_cmd = [
            PYTHON,
            "-m",
            "agent_sidecar",
            "--config",
            str(path),
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
            probe = spawn("probe", [*sidecar_cmd, "--loop", "uvloop"], cpus=proxy_cpu)
            ready_times.append(probe.ready_s)
            probe.stop()
        sidecars = {
            loop: spawn(f"sidecar ({loop})", [*sidecar_cmd, "--loop", loop], cpus=proxy_cpu)
            for loop in ("uvloop", "asyncio")
            if any(row.server == loop for row in rows)
        }
        servers += sidecars.values()
        by_role = {"upstream": upstream, "thin": thin, "bytes": floor, **sidecars}

        measured: list[tuple[str, Row, Result, Result]] = []
        for mode in ("plain", "stream"):
            sent = {row.name: body_for(row, mode == "stream") for row in rows}
            for row in rows:  # warm-up
                wrk(by_role[row.server].url, sent[row.name], args.connections, 1, row.path)
            runs: dict[str, list[tuple[Result, Result]]] = {row.name: [] for row in rows}
            for _ in range(args.rounds):  # interleaved, so drifts in the machine hit all alike
                for row in rows:
                    server = by_role[row.server]
                    many = wrk_with_cpu(server, sent[row.name], args.connections, args.seconds, row.path)
                    one = wrk(server.url, sent[row.name], 1, args.seconds, row.path)
                    runs[row.name].append((many, one))
            for row in rows:
                results = runs[row.name]
                measured.append(
                    (mode, row, _median([m for m, _ in results]), _median([o for _, o in results]))
                )
        rss = {loop: s.rss_mb() for loop, s in sidecars.items()}
        served = {
            loop: sum(m.requests + o.requests for _, row, m, o in measured if row.server == loop)
            for loop in sidecars
        }
        thin_rss = thin.rss_mb()
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    _report(args, measured, rss, served, thin_rss, ready_times)
    return 0


def _chosen(only: list[str] | None) -> tuple[Row, ...]:
    if not only:
        return ROWS
    named = {row.name: row for row in ROWS}
    unknown = [name for name in only if name not in named]
    if unknown:
        raise SystemExit(f"no such rows: {unknown}; rows: {list(named)}")
    wanted = set(only)
    for name in only:
        wanted |= {named[name].relay, named[name].direct} - {""}
    return tuple(row for row in ROWS if row.name in wanted)


# A VM's idle CPU first polls this long for work before it halts (Linux's cpuidle-haltpoll
# driver): a wake-up within it is quick, one after it takes a halt exit to the host. It
# decides much of what a hop to the other CPU adds at one connection.
HALT_POLL = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")


def _halt_polling() -> str:
    try:
        ns = int(HALT_POLL.read_text())
    except (OSError, ValueError):
        return ""
    return f", guest halt polling {ns // 1000} us" + (" (off)" if ns == 0 else "")


def _report(
    args: argparse.Namespace,
    measured: list[tuple[str, Row, Result, Result]],
    rss: dict[str, float],
    served: dict[str, int],
    thin_rss: float,
    ready_times: list[float],
) -> None:
    c = args.connections
    pinning = "wrk+upstream on CPU 0, server under test on CPU 1" if PINNED else "no pinning"
    if PINNED and args.one_cpu:
        pinning = "wrk, upstream and the server under test all on CPU 0"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"\nsidecar benchmark: {os.cpu_count()} CPUs ({pinning}), median of {args.rounds} "
        f"runs of {args.seconds:g}s, upstream={args.upstream}, wrk -t1, "
        f"load average {load} (at the end){_halt_polling()}\n"
    )
    head = f"{'mode':<7}{'target':<20}{f'req/s c={c}':>12}{f'p50 c={c}':>11}{f'p99 c={c}':>11}"
    head += f"{'req/s c=1':>11}{'p50 c=1':>10}{'p99 c=1':>10}{'errors':>8}"
    head += f"{'CPU/req':>9}{'x relay':>9}{'target':>8}{'':>6}{'CPU x':>7}{'+p50 c=1':>10}{'':>6}"
    print(head)
    print("-" * len(head))
    results = {(mode, row.name): (many, one) for mode, row, many, one in measured}
    for mode, row, many, one in measured:
        line = (
            f"{mode:<7}{row.name:<20}{many.rps:>12.0f}{many.p50_ms:>9.2f}ms{many.p99_ms:>9.2f}ms"
            f"{one.rps:>11.0f}{one.p50_ms:>8.3f}ms{one.p99_ms:>8.3f}ms"
            f"{many.errors + one.errors:>8}{many.cpu_us:>7.0f}us"
        )
        if row.relay:
            relay = results[(mode, row.relay)][0]
            share = many.rps / relay.rps
            line += f"{share:>8.2f}x{row.target:>7.2f}x{_verdict(share >= row.target):>6}"
            line += f"{relay.cpu_us / many.cpu_us:>6.2f}x"
        if row.direct:
            added = one.p50_ms - results[(mode, row.direct)][1].p50_ms
            verdict = _verdict(added <= 0.2) if row.target else ""  # the floor has none
            line += f"{'':>30}" if not row.relay else ""
            line += f"{added:>8.3f}ms{verdict:>6}"
        print(line)
    print(
        f"\nCPU/req: the server's CPU time per request at c={c}; x relay: its req/s over the "
        "thin relay's for the same inbound format (the target); CPU x: the thin relay's "
        "CPU/req over its own (the share a saturated CPU would give, whatever the "
        "neighbours do); +p50 c=1: added over a direct call (target <= 0.200 ms; the "
        "bytes row: what the two hops alone add)\n"
    )
    for loop, mb in rss.items():
        print(
            f"sidecar ({loop}): RSS {mb:.1f} MB after {served[loop]} requests "
            f"(target <= 70 MB: {_verdict(mb <= 70)})"
        )
    print(f"thin pass-through: RSS {thin_rss:.1f} MB")
    median = statistics.median(ready_times)
    print(
        f"sidecar start-up to ready: median {median * 1000:.0f} ms of {len(ready_times)} "
        f"(min {min(ready_times) * 1000:.0f} ms; target < 1 s: {_verdict(median < 1)})"
    )


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


if __name__ == "__main__":
    sys.exit(main())
