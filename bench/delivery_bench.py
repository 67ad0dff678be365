"""Config delivery at scale: how long from `kubectl apply` of a changed RoutingPolicy
until every watching sidecar serves it, and what the operator costs meanwhile.

    .venv/bin/python bench/delivery_bench.py [--simulated 1000] [--real 20] [--rounds 5]

A real kube-apiserver and etcd (the test binaries, AGENT_ROUTER_ASSETS) and the
operator as a process with its service account's RBAC and its TLS port. One namespace
with `--simulated + --real` pods (created through the operator's injection webhook),
each with its own pod-bound service-account token from the TokenRequest API, as the
kubelet would project it. Every pod's sidecar watches the operator over TLS with its
token, which the operator checks with a TokenReview:

* simulated sidecars: the sidecar's own watch client (`agent_sidecar.delivery`), one per
  pod, spread over `--client-processes` processes (not this one, not the operator's),
  which say when each config arrives instead of building routers from it;
* real sidecars: `agent_sidecar` servers (two processes), whose admin API is polled
  until each serves the change.

Each round flips the policy's strategy with kubectl; the times are from just before
`kubectl apply` until each sidecar has the new config. Operator RSS is read from /proc
(its peak, VmHWM, and what it holds after the rounds), its CPU is the user+system time
it used across the rounds; the clients' CPU and the load average are printed too, since
every process shares the machine's cores.
Targets: p50 under 1 s, p99 under 2 s, operator memory under 256 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "operator")]

from agent_sidecar.delivery import ConfigWatch, Operator  # noqa: E402
from agent_sidecar.metrics import Metrics  # noqa: E402
from agent_sidecar.state import ConfigStore  # noqa: E402
from support.controlplane import find_assets, free_ports, start_control_plane  # noqa: E402

ADMIN_TOKEN = "bench-admin-token-0123"
ACCOUNT = "chat"
HOST_SCRIPT = """
import asyncio, sys
from pathlib import Path
from agent_sidecar.server import Sidecar
from agent_sidecar.settings import Settings

async def main(url, ca, token, specs):
    cars = []
    for spec in specs:
        port, token_file = spec.split("=")
        car = Sidecar(Settings(port=0, admin_port=int(port), token=token, operator_url=url,
                               operator_ca=Path(ca), identity_token_file=Path(token_file)))
        await car.start()
        cars.append(car)
    print("READY", flush=True)
    await asyncio.Event().wait()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))
"""


class Recording(ConfigWatch):
    """The sidecar's watch client; applying a config means saying when it came."""

    def __init__(self, operator: Operator, arrived: Callable[[str, str], None],
                 pod: str) -> None:
        super().__init__(ConfigStore(), Metrics(ConfigStore()), operator, 4 * 1024 * 1024)
        self.arrived, self.pod = arrived, pod

    async def _apply(self, version: str, answer: dict[str, Any]) -> str | None:
        routes = (answer.get("config") or {}).get("routes") or []
        if routes:
            self.arrived(self.pod, routes[0]["strategy"])
        return None


def policy(kind: str) -> dict[str, Any]:
    return {"apiVersion": "agentrouter.io/v1alpha1", "kind": "RoutingPolicy",
            "metadata": {"name": "chat"},
            "spec": {"selector": {"matchLabels": {"app": "chat"}}, "pools": ["main"],
                     "strategy": {"type": kind, "retries": 0}}}


POOL = {"apiVersion": "agentrouter.io/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": "main"},
        "spec": {"agents": [{"name": n, "provider": "openai_compatible", "model": "m",
                             "baseUrl": "http://127.0.0.1:9/v1"} for n in ("a", "b")]}}


def pod_tokens(cp: Any, namespace: str, names: list[str], directory: Path) -> dict[str, Path]:
    """A pod-bound token for each pod (what the kubelet projects), in a file each."""
    from kubernetes import client

    api = client.CoreV1Api(cp.api_client())
    files = {}
    for name in names:
        uid = api.read_namespaced_pod(name, namespace).metadata.uid
        request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=["agent-router"], expiration_seconds=3600,
            bound_object_ref=client.V1BoundObjectReference(kind="Pod", api_version="v1",
                                                           name=name, uid=uid)))
        answer = api.create_namespaced_service_account_token(ACCOUNT, namespace, request)
        files[name] = directory / f"{name}.token"
        files[name].write_text(answer.status.token)
    return files


CLIENT_SCRIPT = """
import asyncio, sys, time
from pathlib import Path
sys.path[:0] = [sys.argv[1]]
from delivery_bench import run_simulated
asyncio.run(run_simulated(sys.argv[2], Path(sys.argv[3]), sys.argv[4:]))
"""


async def run_simulated(url: str, ca: Path, specs: list[str]) -> None:
    """Simulated sidecars (`pod=token file` each) in this process: each config that
    arrives is printed as `pod strategy time`, for the bench to read."""
    def arrived(pod: str, strategy: str) -> None:
        print(pod, strategy, repr(time.time()), flush=True)

    watches = [Recording(Operator(url, ca, Path(path)), arrived, pod)
               for pod, path in (spec.split("=", 1) for spec in specs)]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(_watch(w, session) for w in watches))


async def _watch(watch: Recording, session: aiohttp.ClientSession) -> None:
    while True:
        try:
            await watch.once(session)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            print(f"{watch.pod}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            await asyncio.sleep(1)


class Simulated:
    """The simulated sidecars, split over `processes` processes of their own (none shares
    the operator's or this process's interpreter), and when each got which config."""

    def __init__(self, url: str, ca: Path, tokens: dict[str, Path], processes: int,
                 cleanup: contextlib.ExitStack) -> None:
        self.arrivals: dict[str, float] = {}
        pods = list(tokens)
        self.procs = []
        for share in (pods[i::processes] for i in range(processes)):
            if not share:
                continue
            proc = subprocess.Popen(
                [sys.executable, "-c", CLIENT_SCRIPT, str(ROOT / "bench"), url, str(ca),
                 *(f"{pod}={tokens[pod]}" for pod in share)],
                stdout=subprocess.PIPE, cwd=ROOT, text=True)
            cleanup.callback(proc.kill)
            threading.Thread(target=self._read, args=(proc,), daemon=True).start()
            self.procs.append(proc)

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            pod, strategy, at = line.split()
            self.arrivals[f"{pod}/{strategy}"] = float(at)

    def cpu(self) -> float:
        return sum(proc_figures(proc.pid)[1] for proc in self.procs)

    def done(self, pods: list[str], kind: str, since: float) -> dict[str, float]:
        """The pods that got `kind` at `since` or later (one that never got it is not
        done, whatever `since` is)."""
        return {p: t for p in pods
                if (t := self.arrivals.get(f"{p}/{kind}")) is not None and t >= since}


async def real_serving(ports: list[int], kind: str) -> dict[int, float]:
    """When each real sidecar (by admin port) is seen serving `kind`, polling every 10 ms."""
    seen: dict[int, float] = {}
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession() as http:
        deadline = time.time() + 120
        while len(seen) < len(ports) and time.time() < deadline:
            async def check(port: int) -> None:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/config", headers=headers) as r:
                        if r.status == 200:
                            routes = (await r.json())["config"]["routes"]
                            if routes and routes[0]["strategy"] == kind:
                                seen[port] = time.time()
                except aiohttp.ClientError:
                    pass

            await asyncio.gather(*(check(p) for p in ports if p not in seen))
            await asyncio.sleep(0.01)
    return seen


def proc_figures(pid: int) -> tuple[float, float]:
    """(peak RSS in MB, user+system CPU seconds) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return hwm / 1024, cpu


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulated", type=int, default=1000)
    parser.add_argument("--real", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--client-processes", type=int, default=2,
                        help="processes the simulated sidecars are spread over")
    args = parser.parse_args()

    import operator_support as ops

    assets = find_assets()
    work = Path(tempfile.mkdtemp(prefix="agent-router-delivery-bench-"))
    with contextlib.ExitStack() as cleanup:  # undone in reverse: sidecars, operator, cluster
        cp = start_control_plane(work, assets)
        cleanup.callback(cp.stop)
        ops.install_crds(cp)
        webhook = "bench.agentrouter.io"
        (port,) = free_ports(1)
        operator = ops.OperatorProcess(cp, ops.operator_kubeconfig(cp, webhook), webhook, port,
                                       env={"AGENT_OPERATOR_RESYNC_SECONDS": "300"}).start()
        cleanup.callback(operator.stop)
        assert operator.proc is not None
        url = f"https://127.0.0.1:{port}"
        ns = cp.create_namespace()
        total = args.simulated + args.real
        names = [f"chat-{i}" for i in range(total)]
        cp.apply([{"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": ACCOUNT}}, POOL, policy("fallback")], ns)
        started = time.perf_counter()
        pods = [{"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": n, "labels": {"app": "chat",
                                                    "agentrouter.io/inject": "true"}},
                 "spec": {"serviceAccountName": ACCOUNT,
                          "containers": [{"name": "app", "image": "x"}]}} for n in names]
        for chunk in range(0, total, 250):  # one kubectl call per 250 pods
            cp.kubectl("create", "-n", ns, "-f", "-", timeout=600,
                       input=_as_list(pods[chunk:chunk + 250]))
        created = time.perf_counter() - started
        tokens = pod_tokens(cp, ns, names, work)
        ca = work / "ca.crt"  # the operator's CA: what the injection would give each pod
        secret = cp.get_json("secret", ops.CERT_SECRET, namespace=ops.OPERATOR_NS)
        ca.write_bytes(base64.b64decode(secret["data"]["ca.crt"]))

        real_names = names[args.simulated:]
        real_ports = free_ports(len(real_names))
        half = (len(real_names) + 1) // 2
        for group in (slice(0, half), slice(half, None)):
            specs = [f"{p}={tokens[n]}" for n, p in zip(real_names[group], real_ports[group],
                                                         strict=True)]
            if not specs:
                continue
            host = subprocess.Popen([sys.executable, "-c", HOST_SCRIPT, url, str(ca),
                                     ADMIN_TOKEN, *specs], stdout=subprocess.PIPE, cwd=ROOT)
            cleanup.callback(host.kill)
            assert host.stdout is not None and host.stdout.readline().strip() == b"READY"
        sim_names = names[:args.simulated]
        simulated = Simulated(url, ca, {n: tokens[n] for n in sim_names},
                              args.client_processes, cleanup)

        def everyone(kind: str, since: float) -> list[float]:
            real = asyncio.run(real_serving(real_ports, kind))
            deadline = time.time() + 120
            while len(simulated.done(sim_names, kind, since)) < len(sim_names) and \
                    time.time() < deadline:
                time.sleep(0.02)
            sims = simulated.done(sim_names, kind, since)
            if len(real) < len(real_ports) or len(sims) < len(sim_names):
                raise TimeoutError(f"{len(real_ports) - len(real)} real and "
                                   f"{len(sim_names) - len(sims)} simulated sidecars never "
                                   f"got {kind}")
            return [t - since for t in [*real.values(), *sims.values()]]

        everyone("fallback", 0.0)  # all connected and serving
        connected, cpu_before = proc_figures(operator.proc.pid)
        clients_before = simulated.cpu()
        load_before = os.getloadavg()
        times: list[float] = []
        per_round: list[float] = []
        for r in range(args.rounds):
            kind = "round_robin" if r % 2 == 0 else "fallback"
            since = time.time()
            cp.apply(policy(kind), ns)
            got = everyone(kind, since)
            times += got
            per_round.append(max(got))
        peak, cpu_after = proc_figures(operator.proc.pid)
        steady = rss_now(operator.proc.pid)
        clients = simulated.cpu() - clients_before
        load_after = os.getloadavg()
    cpu = cpu_after - cpu_before
    print(f"\nkube-apiserver {os.path.basename(str(assets))}; {os.cpu_count()} cores shared "
          f"by every process (operator, apiserver, etcd, {args.client_processes} processes "
          f"of simulated sidecars, 2 of real ones); load average {load_before[0]:.1f} before "
          f"the changes, {load_after[0]:.1f} after; {args.simulated} simulated + {args.real} "
          f"real sidecars watching, {args.rounds} policy changes; pods created in "
          f"{created:.1f} s; operator RSS {connected:.0f} MB once all were connected; the "
          f"simulated sidecars used {clients / args.rounds:.2f} s CPU per change")
    print("| sidecars | p50 apply-to-serving (s) | p99 (s) | slowest round (s) | "
          "operator peak RSS (MB) | RSS after (MB) | operator CPU per change (s) |")
    print("|----------|--------------------------|---------|-------------------|"
          "------------------------|----------------|-----------------------------|")
    print(f"| {total:8} | {statistics.median(times):24.3f} | {percentile(times, 0.99):7.3f} | "
          f"{max(per_round):17.3f} | {peak:22.0f} | {steady:14.0f} | "
          f"{cpu / args.rounds:27.2f} |")


def rss_now(pid: int) -> float:
    """A process's resident memory now, in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines()
                if line.startswith("VmRSS")) / 1024


def _as_list(items: list[dict[str, Any]]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


if __name__ == "__main__":
    main()
