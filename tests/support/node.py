"""A real Kubernetes node for the tests: containerd + runc, a CNI bridge, the kubelet,
kube-scheduler, kube-controller-manager and kube-proxy, next to its own etcd and
kube-apiserver, with the project's images (``hack/images``) loaded into containerd.

    node = start_node(workdir, assets, images)   # Ready, images loaded
    node.control_plane.kubectl("get", "nodes")   # through 127.0.0.1 here
    url = node.reach("10.244.0.7", 4001)         # a pod's port, as http://127.0.0.1:N
    node.stop()                                  # nothing left behind (node.leftovers())

Everything lives in namespaces this run creates: one network namespace (the node's
address, the pods' bridge and addresses, kube-proxy's iptables rules), one mount
namespace (containerd's and the kubelet's mounts, a /run and /var/log of their own) and
one PID namespace whose first process holds them all: when it exits, the kernel ends
every process in it and drops every mount, link and rule. Private addresses exist only
in there; this machine's network, iptables and mounts are never touched. What the node
shares with the machine, the cgroup trees, it keeps under one root of its own
(``agent-router-node-<id>``), removed at the end.

The kubelet sets six kernel tunables (vm.overcommit_memory, kernel.panic, ...) that are
global, not per namespace; inside the node's mount namespace each is a file holding the
value the kubelet wants, so it finds them set and the machine's stay as they were.

The test process reaches the node through ``support.relay.Relay``: TCP forwarding
between this machine's loopback and addresses inside the namespace (the API server,
pods and Services), and from the node's address to this machine's loopback (Jaeger and
the fake providers the pods call).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from support.controlplane import (
    BINARIES,
    ControlPlane,
    ManagedProcess,
    find_assets,
    start_control_plane,
    tail,
    wait_until,
    write_kubeconfig,
)
from support.relay import Relay

IMAGES_ENV = "AGENT_ROUTER_IMAGES"
ROOT = Path(__file__).resolve().parents[2]
IMAGES_SCRIPT = ROOT / "hack" / "images"
NODE_BINARIES = ("kubelet", "kube-scheduler", "kube-controller-manager", "kube-proxy")
NODE_NAME = "node-0"
NODE_IP = "172.31.0.1"  # on an empty bridge: the kubelet refuses a loopback node IP
POD_CIDR = "10.244.0.0/24"
CGROUPS = Path("/sys/fs/cgroup")
CGROUP_PREFIX = "agent-router-node-"
READY_TIMEOUT = 180.0
CNI_BIN = "/usr/lib/cni"  # Debian's containernetworking-plugins
# What the kubelet wants these global tunables to be (setupKernelTunables).
KERNEL_TUNABLES = {"vm/overcommit_memory": 1, "vm/panic_on_oom": 0, "kernel/panic": 10,
                   "kernel/panic_on_oops": 1, "kernel/keys/root_maxkeys": 1000000,
                   "kernel/keys/root_maxbytes": 25000000}
# The first process of the namespaces: reaps orphans (the shims) and ends on SIGTERM.
INIT = """
import os, signal
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
signal.signal(signal.SIGCHLD, lambda *_: None)
while True:
    signal.pause()
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
"""
DEBIAN_PACKAGES = {"containerd": "containerd", "runc": "runc", "unshare": "util-linux",
                   "nsenter": "util-linux", "ip": "iproute2", "iptables": "iptables",
                   f"{CNI_BIN}/bridge": "containernetworking-plugins"}


class NodeError(RuntimeError):
    """The node could not start; the message says what was seen."""


def missing_debian_packages() -> list[str]:
    """The packages (hack/lib.sh's ensure_debian installs them) whose commands are missing."""
    return sorted({pkg for cmd, pkg in DEBIAN_PACKAGES.items()
                   if not (os.access(cmd, os.X_OK) if "/" in cmd else shutil.which(cmd))})


def find_images() -> Path:
    """The built images: ``AGENT_ROUTER_IMAGES``, else ``hack/images --check``."""
    given = os.environ.get(IMAGES_ENV)
    if given:
        return Path(given)
    proc = subprocess.run(["bash", str(IMAGES_SCRIPT), "--check"], capture_output=True,
                          text=True, check=False)
    match = re.search(rf"^{IMAGES_ENV}=(.+)$", proc.stdout, re.MULTILINE)
    if proc.returncode != 0 or not match:
        raise NodeError(f"the node's images are not built: run `hack/images` (hack/test does) "
                        f"and export the {IMAGES_ENV}=... line it prints\n{proc.stderr}")
    return Path(match.group(1).strip())


def node_inputs() -> tuple[Path, Path]:
    """The binaries and images a node needs, or a test failure saying how to get them."""
    import pytest

    assets = find_assets((*BINARIES, *NODE_BINARIES))
    try:
        return assets, find_images()
    except NodeError as exc:
        pytest.fail(str(exc), pytrace=False)


def image_refs(images: Path) -> dict[str, str]:
    """name -> reference (``localhost/agent-router/<name>:<key>``) from images.txt."""
    lines = (images / "images.txt").read_text().splitlines()
    return {name: ref for name, ref, _ in (line.split() for line in lines if line)}


# ---- the namespaces ----------------------------------------------------------------------------


@dataclass
class Namespaces:
    """The node's network, mount and PID namespaces, held by their first process."""

    holder: ManagedProcess
    pid: int  # the first process inside, as this machine sees it
    ip: str = NODE_IP
    relay: Relay | None = None
    _forwards: dict[tuple[str, int], int] = field(default_factory=dict)

    @property
    def netns(self) -> Path:
        return Path(f"/proc/{self.pid}/ns/net")

    def command(self, args: list[str]) -> list[str]:
        return ["nsenter", f"--target={self.pid}", "--net", "--mount", "--pid", "--", *args]

    def run(self, script: str) -> None:
        """A shell script inside; raises with its output when it fails."""
        proc = subprocess.run(self.command(["sh", "-euc", script]), capture_output=True,
                              text=True, check=False, timeout=60)
        if proc.returncode != 0:
            raise NodeError(f"inside the node: {script!r} failed:\n{proc.stdout}{proc.stderr}")

    def _relay(self) -> Relay:
        if self.relay is None:
            self.relay = Relay(self.netns)
        return self.relay

    def publish(self, port: int) -> None:
        """127.0.0.1:port here reaches 127.0.0.1:port inside (the API server, etcd)."""
        self._relay().forward((False, "127.0.0.1", port), (True, "127.0.0.1", port))

    def reach(self, host: str, port: int) -> str:
        """``http://127.0.0.1:N`` here for ``host:port`` inside (a pod, a Service)."""
        key = (host, port)
        if key not in self._forwards:
            self._forwards[key] = self._relay().forward((False, "127.0.0.1", 0),
                                                        (True, host, port))
        return f"http://127.0.0.1:{self._forwards[key]}"

    def offer(self, port: int) -> str:
        """``host:port`` at which the node and its pods reach 127.0.0.1:port here (Jaeger,
        the fake providers)."""
        key = ("offer", port)
        if key not in self._forwards:
            self._forwards[key] = self._relay().forward((True, self.ip, port),
                                                        (False, "127.0.0.1", port))
        return f"{self.ip}:{port}"

    def stop(self) -> None:
        if self.relay is not None:
            self.relay.close()
            self.relay = None
        self.holder.stop()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    with contextlib.suppress(OSError):
        return [int(p) for p in path.read_text().split()]
    return []


def start_namespaces(workdir: Path) -> Namespaces:
    """New network, mount and PID namespaces with the node's address, a default route
    that ends inside, and private /run and /var/log; the kernel tunables as above."""
    holder = ManagedProcess("namespaces", [
        "unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
        "--propagation=private", "--", sys.executable, "-c", INIT], workdir / "logs" / "init.log")
    holder.start()
    assert holder.popen is not None
    unshare = holder.popen.pid
    wait_until(lambda: bool(_children(unshare)), timeout=20, what="the node's namespaces",
               procs=[holder])
    ns = Namespaces(holder, _children(unshare)[0])
    tunables = workdir / "tunables"
    tunables.mkdir(parents=True)
    binds = []
    for name, value in KERNEL_TUNABLES.items():
        (tunables / name.replace("/", ".")).write_text(f"{value}\n")
        binds.append(f"mount --bind {tunables / name.replace('/', '.')} /proc/sys/{name}")
    try:
        ns.run("\n".join([
            "mount -t tmpfs -o mode=755 node-run /run",
            "mount -t tmpfs -o mode=755 node-log /var/log",
            "mkdir -p /var/log/pods /var/log/containers",
            *binds,
            "ip link set lo up",
            "ip link add node0 type bridge",
            f"ip addr add {NODE_IP}/32 dev node0",
            "ip link set node0 up",
            # Nothing routed ever leaves: node0 has no ports. Local traffic to Service IPs
            # needs a route before kube-proxy's rules rewrite it.
            "ip route add default dev node0",
            "echo 1 > /proc/sys/net/ipv4/ip_forward",
        ]))
    except BaseException:
        ns.stop()
        raise
    return ns


# ---- cgroups -------------------------------------------------------------------------------------


def cgroup_dirs(name: str) -> list[Path]:
    """``name`` in every mounted cgroup hierarchy (v1 controllers, named, unified)."""
    if (CGROUPS / "cgroup.controllers").exists():  # cgroup v2 only
        return [CGROUPS / name]
    return [d / name for d in sorted(CGROUPS.iterdir()) if d.is_dir() and not d.is_symlink()]


def make_cgroup_root(name: str) -> None:
    for path in cgroup_dirs(name):
        path.mkdir(exist_ok=True)
        if path.parent.name == "cpuset":  # a v1 cpuset child starts empty
            for knob in ("cpuset.cpus", "cpuset.mems"):
                (path / knob).write_text((path.parent / knob).read_text())


def remove_cgroup_root(name: str, timeout: float = 30.0) -> list[str]:
    """rmdir every cgroup under ``name``, deepest first; returns those still there."""
    deadline = time.monotonic() + timeout
    left: list[str] = []
    while True:
        left = []
        for top in cgroup_dirs(name):
            if not top.exists():
                continue
            for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    left.append(dirpath)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


# ---- the node ---------------------------------------------------------------------------------------


@dataclass
class Node:
    workdir: Path
    namespaces: Namespaces
    control_plane: ControlPlane
    cgroup_root: str
    images: dict[str, str]  # name -> reference in containerd
    processes: list[ManagedProcess]
    import_seconds: float = 0.0
    ready_seconds: float = 0.0

    @property
    def ip(self) -> str:
        return self.namespaces.ip

    def reach(self, host: str, port: int) -> str:
        return self.namespaces.reach(host, port)

    def offer(self, port: int) -> str:
        return self.namespaces.offer(port)

    def logs(self) -> str:
        procs = [*self.control_plane.processes, *self.processes]
        return "\n\n".join(f"== {p.name}\n{tail(p.log_path, 30)}" for p in procs)

    def stop(self) -> None:
        """Stop the processes (the kubelet first), then the namespaces' first process:
        the kernel ends what is left in them and drops their mounts, links and rules;
        then the node's cgroups. The work directory is the caller's."""
        for proc in reversed(self.processes):
            proc.stop()
        self.control_plane.stop()
        pid = self.namespaces.pid
        self.namespaces.stop()
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=30,
                   what="the node's namespaces to end")
        left = remove_cgroup_root(self.cgroup_root)
        if left:
            raise NodeError(f"cgroups still in use after the node stopped: {left}")

    def leftovers(self) -> list[str]:
        """What of this node still exists on the machine (empty after ``stop``)."""
        found = [f"process {p.pid}: {' '.join(p.cmdline)}" for p in _processes_under(self.workdir)]
        found += [f"cgroup {d}" for d in cgroup_dirs(self.cgroup_root) if d.exists()]
        mounts = Path("/proc/self/mountinfo").read_text()
        found += [f"mount {line}" for line in mounts.splitlines() if str(self.workdir) in line]
        return found


@dataclass
class _Proc:
    pid: int
    cmdline: list[str]


def _processes_under(workdir: Path) -> list[_Proc]:
    """Processes whose command line names ``workdir`` (every node process does)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            args = (entry / "cmdline").read_bytes().split(b"\0")
            cmdline = [a.decode(errors="replace") for a in args if a]
            if any(str(workdir) in a for a in cmdline):
                found.append(_Proc(int(entry.name), cmdline))
    return found


def _write_yaml(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return path


def _containerd_config(work: Path, pause: str) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{work}/root"
state = "{work}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{work}/containerd.sock"
[ttrpc]
  address = "{work}/containerd.sock.ttrpc"
[{cri}]
  sandbox_image = "{pause}"
  # runc may only raise its own oom_score_adj (no CAP_SYS_RESOURCE here).
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        BinaryName = "{shutil.which("runc") or "runc"}"
        Root = "{work}/runc"
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{work}/cni"
"""


def _cni_config(work: Path) -> dict[str, object]:
    return {"cniVersion": "1.0.0", "name": "pods", "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False,
         "hairpinMode": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]],
                  "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(work / "ipam")}},
        {"type": "loopback"},
    ]}  # fmt: skip


def start_node(workdir: Path, assets: Path, images: Path) -> Node:
    """Start everything, import the images, return once the node is Ready."""
    missing = missing_debian_packages()
    if missing:
        raise NodeError(f"the node needs Debian packages: {' '.join(missing)} "
                        f"(hack/test installs them)")
    started = time.monotonic()
    refs = image_refs(images)
    logs = workdir / "logs"
    ns = start_namespaces(workdir)
    cgroup_root = f"{CGROUP_PREFIX}{uuid.uuid4().hex[:8]}"
    processes: list[ManagedProcess] = []
    plane: ControlPlane | None = None

    def run(name: str, args: list[str]) -> ManagedProcess:
        proc = ManagedProcess(name, ns.command(args), logs / f"{name}.log")
        proc.start()
        processes.append(proc)
        return proc

    try:
        make_cgroup_root(cgroup_root)
        plane = start_control_plane(workdir / "controlplane", assets, node=ns)
        # The node's components authenticate with certificates from the cluster's CA.
        admin = plane.kubeconfig
        assert plane.client_ca is not None
        kubelet_cert = plane.client_ca.issue(f"system:node:{NODE_NAME}",
                                             organizations=["system:nodes"], client=True)
        inner_server = plane.server  # 127.0.0.1:port is the same inside
        kubelet_kubeconfig = write_kubeconfig(workdir / "kubelet" / "kubeconfig",
                                              server=inner_server, ca_pem=plane.ca_pem,
                                              user=f"system:node:{NODE_NAME}",
                                              client=kubelet_cert)
        ca_file = workdir / "controlplane" / "pki" / "serving-ca.crt"

        # containerd, with the images
        ctrd = workdir / "containerd"
        (ctrd / "cni").mkdir(parents=True)
        (ctrd / "config.toml").write_text(_containerd_config(ctrd, refs["pause"]))
        (ctrd / "cni" / "10-pods.conflist").write_text(json.dumps(_cni_config(ctrd)))
        containerd = run("containerd", ["containerd", f"--config={ctrd / 'config.toml'}"])
        sock = ctrd / "containerd.sock"
        wait_until(sock.exists, timeout=60, what="containerd's socket", procs=[containerd])
        t0 = time.monotonic()
        for name in refs:
            ctr = ns.command(["ctr", f"--address={sock}", "--namespace=k8s.io", "images",
                              "import", "--no-unpack=false", str(images / f"{name}.tar")])
            proc = subprocess.run(ctr, capture_output=True, text=True, check=False, timeout=300)
            if proc.returncode != 0:
                raise NodeError(f"importing {name} into containerd failed:\n{proc.stderr}")
        import_seconds = time.monotonic() - t0

        # the kubelet
        kubelet_dir = workdir / "kubelet"
        config = _write_yaml(kubelet_dir / "config.yaml", {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": NODE_IP, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
            # A throwaway node in a namespace of its own: the API server's calls (logs,
            # exec) are not authenticated.
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{cgroup_root}",
            "failCgroupV1": False, "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{sock}",
            "podLogsDir": str(kubelet_dir / "pod-logs"),
            "resolvConf": "", "serializeImagePulls": False,
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "localStorageCapacityIsolation": False,
            # Lowering its own score needs CAP_SYS_RESOURCE, which this machine withholds.
            "oomScoreAdj": 0,
            # How often each pod is synced, and so its ConfigMap volumes refreshed: a
            # rotated CA reaches running pods in seconds, not the default minute.
            "syncFrequency": "10s",
        })
        run("kubelet", [str(assets / "kubelet"), f"--config={config}",
                        f"--kubeconfig={kubelet_kubeconfig}", f"--root-dir={kubelet_dir / 'root'}",
                        f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}", "--v=1"])
        # the controllers, the scheduler and kube-proxy (admin credentials)
        run("kube-controller-manager", [
            str(assets / "kube-controller-manager"), f"--kubeconfig={admin}",
            f"--authentication-kubeconfig={admin}", f"--authorization-kubeconfig={admin}",
            "--leader-elect=false", "--controllers=*", f"--root-ca-file={ca_file}",
            "--use-service-account-credentials=false", "--bind-address=127.0.0.1",
            f"--cert-dir={workdir / 'kcm'}", "--v=1"])
        run("kube-scheduler", [
            str(assets / "kube-scheduler"), f"--kubeconfig={admin}",
            f"--authentication-kubeconfig={admin}", f"--authorization-kubeconfig={admin}",
            "--leader-elect=false", "--bind-address=127.0.0.1",
            f"--cert-dir={workdir / 'scheduler'}", "--v=1"])
        proxy_config = _write_yaml(workdir / "kube-proxy" / "config.yaml", {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(admin)}, "mode": "iptables",
            "hostnameOverride": NODE_NAME, "clusterCIDR": POD_CIDR,
            "healthzBindAddress": "127.0.0.1:10256", "metricsBindAddress": "127.0.0.1:10249",
            # conntrack's table size is global: leave it (and its timeouts) alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                          "tcpCloseWaitTimeout": "0s"},
            # Pods on one bridge calling a Service answered by another: replies go back
            # through the node.
            "iptables": {"masqueradeAll": True},
        })
        run("kube-proxy", [str(assets / "kube-proxy"), f"--config={proxy_config}", "--v=1"])

        def ready() -> bool:
            nodes = plane.get_json("nodes")["items"] if plane else []
            return any(c["type"] == "Ready" and c["status"] == "True"
                       for n in nodes for c in n["status"].get("conditions", [])
                       if not n["spec"].get("taints"))

        wait_until(ready, timeout=READY_TIMEOUT, what=f"node {NODE_NAME} Ready and untainted",
                   procs=[*plane.processes, *processes], interval=0.5)
    except BaseException:
        partial = Node(workdir, ns, plane or ControlPlane(workdir, assets, "", Path()),
                       cgroup_root, refs, processes)
        with contextlib.suppress(Exception):
            partial.stop()
        raise
    return Node(workdir, ns, plane, cgroup_root, refs, processes, import_seconds,
                time.monotonic() - started)
