"""How long from `kubectl apply` of a changed RoutingPolicy until every selected sidecar
serves the new config, for 1, 10 and 50 pods, on the real control plane.

    .venv/bin/python bench/propagation_bench.py [--pods 1 10 50] [--rounds 5]

A real kube-apiserver and etcd (the test binaries, AGENT_ROUTER_ASSETS), the operator
as a process with its service account's identity, and N real sidecars (several
servers in one process, each on its own 127.0.0.N address, as one per pod would be).
Pods are created and marked ready by hand, since no kubelet runs. Each round flips
the policy's strategy with kubectl and polls every sidecar's admin API until all of
them serve the new strategy. Target: under 2 s for 50 pods, growing at most linearly.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "operator")]

from support.controlplane import find_assets, start_control_plane  # noqa: E402

TOKEN = "bench-admin-token-0123"
HOST_SCRIPT = """
import asyncio, sys
from pathlib import Path
from agent_sidecar.server import Sidecar
from agent_sidecar.settings import Settings

async def main(ips, token_file):
    cars = []
    for ip in ips:
        car = Sidecar(Settings(host=ip, port=4000, admin_host=ip, admin_port=4001,
                               token_file=Path(token_file)))
        await car.start()
        cars.append(car)
    print("READY", flush=True)
    await asyncio.Event().wait()

asyncio.run(main(sys.argv[2:], sys.argv[1]))
"""


def ips_for(count: int, base: int) -> list[str]:
    return [f"127.0.{base}.{i + 2}" for i in range(count)]


def strategy_spec(kind: str) -> dict[str, object]:
    return {"type": kind, "retries": 0}


async def wait_all(ips: list[str], strategy: str, timeout: float = 60) -> float:
    """Seconds until every sidecar at `ips` serves `strategy`."""
    started = time.perf_counter()
    pending = set(ips)
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        while pending:
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"{len(pending)} sidecar(s) never got {strategy}")

            async def check(ip: str) -> str | None:
                try:
                    async with http.get(f"http://{ip}:4001/config", headers=headers) as r:
                        if r.status != 200:
                            return None
                        routes = (await r.json())["config"]["routes"]
                        return ip if routes and routes[0]["strategy"] == strategy else None
                except aiohttp.ClientError:
                    return None

            done = await asyncio.gather(*(check(ip) for ip in pending))
            pending -= {ip for ip in done if ip}
            if pending:
                await asyncio.sleep(0.01)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import operator_support as ops

    assets = find_assets()
    work = Path(tempfile.mkdtemp(prefix="agent-router-bench-"))
    cp = start_control_plane(work, assets)
    token_file = work / "token"
    token_file.write_text(TOKEN)
    operator = None
    hosts: list[subprocess.Popen[bytes]] = []
    rows = []
    try:
        ops.install_crds(cp)
        kubeconfig = ops.operator_kubeconfig(cp)
        operator = ops.OperatorProcess(
            cp, kubeconfig, None, env={"AGENT_OPERATOR_RESYNC_SECONDS": "300"})
        operator.start()
        for run, count in enumerate(args.pods):
            ns = cp.create_namespace()
            cp.apply({"apiVersion": "v1", "kind": "Secret",
                      "metadata": {"name": "agent-router-sidecar"},
                      "stringData": {"token": TOKEN}}, ns)
            ips = ips_for(count, 10 + run)
            host = subprocess.Popen([sys.executable, "-c", HOST_SCRIPT, str(token_file), *ips],
                                    stdout=subprocess.PIPE, cwd=ROOT)
            hosts.append(host)
            assert host.stdout is not None and host.stdout.readline().strip() == b"READY"
            pool = {"apiVersion": "agentrouter.io/v1alpha1", "kind": "AgentPool",
                    "metadata": {"name": "main"},
                    "spec": {"agents": [
                        {"name": "a", "provider": "openai_compatible", "model": "m",
                         "baseUrl": "http://127.0.0.1:9/v1"},
                        {"name": "b", "provider": "openai_compatible", "model": "m",
                         "baseUrl": "http://127.0.0.1:9/v1"}]}}

            def policy(kind: str) -> dict[str, object]:
                return {"apiVersion": "agentrouter.io/v1alpha1", "kind": "RoutingPolicy",
                        "metadata": {"name": "chat"},
                        "spec": {"selector": {"matchLabels": {"app": "chat"}},
                                 "pools": ["main"], "strategy": strategy_spec(kind)}}

            pods = [{"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": f"chat-{i}",
                                  "labels": {"app": "chat", "agentrouter.io/inject": "true"}},
                     "spec": {"containers": [{"name": "app", "image": "x"}]}}
                    for i in range(count)]
            cp.apply([pool, policy("fallback"), *pods], ns)
            for i, ip in enumerate(ips):
                cp.mark_pod_ready(ns, f"chat-{i}", ip=ip)
            asyncio.run(wait_all(ips, "fallback"))
            times = []
            for r in range(args.rounds):
                kind = "round_robin" if r % 2 == 0 else "fallback"
                started = time.perf_counter()
                cp.apply(policy(kind), ns)
                applied = time.perf_counter() - started
                times.append(applied + asyncio.run(wait_all(ips, kind)))
            rows.append((count, statistics.median(times), max(times)))
            host.terminate()
    finally:
        if operator is not None:
            operator.stop()
        for host in hosts:
            host.kill()
        cp.stop()
    print(f"\nkube-apiserver {os.path.basename(str(assets))}, {os.cpu_count()} cores, "
          f"{args.rounds} policy changes per size")
    print("| pods | p50 apply-to-all-serving (s) | max (s) | per pod (ms) |")
    print("|------|------------------------------|---------|--------------|")
    for count, p50, worst in rows:
        print(f"| {count:4} | {p50:28.3f} | {worst:7.3f} | {p50 * 1000 / count:12.1f} |")


if __name__ == "__main__":
    main()
