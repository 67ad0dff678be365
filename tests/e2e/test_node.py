"""A node of the test's own: a pod runs on it (its image from the ones loaded into
containerd, its readiness probed by the kubelet, reached through its Service by
kube-proxy's rules, `kubectl exec` and `kubectl logs` through the kubelet), and stopping
it leaves nothing behind on the machine: no process, mount, network link, address,
route, iptables rule or cgroup, and the kernel tunables the kubelet wants as they were.
"""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
from pathlib import Path

import httpx
import pytest
import yaml
from support.node import (
    CGROUP_PREFIX,
    CGROUPS,
    KERNEL_TUNABLES,
    NODE_IP,
    POD_CIDR,
    find_images,
    node_inputs,
    start_node,
)
from support.waiting import wait_for

pytestmark = [pytest.mark.controlplane, pytest.mark.timeout(600)]


def _lines(*cmd: str) -> set[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return {line for line in out.splitlines() if line and not line.startswith("#")}


def machine_state() -> dict[str, set[str]]:
    """What a node could leave behind, as this machine (its own namespaces) sees it."""
    links = {re.split(r":\s+", line)[1].split("@")[0] for line in _lines("ip", "-o", "link")}
    addresses = {re.sub(r"\s+valid_lft.*", "", line) for line in _lines("ip", "-o", "addr")}
    rules = {re.sub(r"\[\d+:\d+\]", "", line)  # packet counters of the chain policies
             for cmd in ("iptables-save", "ip6tables-save") for line in _lines(cmd)}
    mounts = {" ".join(line.split()[3:5]) for line in
              Path("/proc/self/mountinfo").read_text().splitlines()}
    cgroups = {str(p) for p in CGROUPS.glob(f"*/{CGROUP_PREFIX}*")}
    cgroups |= {str(p) for p in CGROUPS.glob(f"{CGROUP_PREFIX}*")}
    tunables = {f"{name}={Path('/proc/sys', name).read_text().strip()}"
                for name in KERNEL_TUNABLES}
    return {"links": links, "addresses": addresses, "routes": _lines("ip", "route"),
            "iptables": rules, "mounts": mounts, "cgroups": cgroups, "tunables": tunables}


APP = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
    "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
             "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{
                 "name": "web", "image": "", "imagePullPolicy": "IfNotPresent",
                 "ports": [{"name": "http", "containerPort": 8080}],
                 "readinessProbe": {"httpGet": {"path": "/", "port": "http"},
                                    "periodSeconds": 1}}]}}},
}  # fmt: skip
SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
           "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}}


def test_a_pod_runs_and_stopping_the_node_leaves_nothing(node_workdir: Path) -> None:
    assets, images = node_inputs()
    before = machine_state()
    node = start_node(node_workdir, assets, images)
    try:
        cp = node.control_plane
        (item,) = cp.get_json("nodes")["items"]
        assert {"type": "InternalIP", "address": NODE_IP} in item["status"]["addresses"]

        # The chat app's image, loaded into containerd, as a plain Deployment + Service.
        app = yaml.safe_load(yaml.safe_dump(APP))
        app["spec"]["template"]["spec"]["containers"][0]["image"] = node.images["chat-app"]
        ns = cp.create_namespace("web")
        cp.apply([app, SERVICE], ns)
        pod = wait_for(lambda: next((p for p in cp.get_json("pods", namespace=ns)["items"]
                                     if any(c["type"] == "Ready" and c["status"] == "True"
                                            for c in p["status"].get("conditions", []))), None),
                       180, "the web pod Ready (scheduled, started, probed by the kubelet)")
        assert pod["status"]["podIP"].startswith(POD_CIDR.rsplit(".", 2)[0])
        name = pod["metadata"]["name"]

        # Through the Service's cluster IP (kube-proxy's rules, inside the namespace).
        ip = cp.get_json("service", "web", namespace=ns)["spec"]["clusterIP"]
        answer = wait_for(lambda: httpx.get(node.reach(ip, 80), timeout=5).json(), 60,
                          "the web Service answering")
        assert answer == {"ok": True, "pod": name}

        # exec and logs go from the API server to the kubelet, inside the namespace.
        out = cp.kubectl("exec", "-n", ns, name, "--", "python3", "-c", "print(6 * 7)").stdout
        assert out.strip() == "42"
        assert "GET / HTTP/1.1" in cp.kubectl("logs", "-n", ns, name).stdout

        # Meanwhile, the machine's own network has none of it.
        during = machine_state()
        assert not {"node0", "cni0"} & during["links"]
        assert not [a for a in during["addresses"] if NODE_IP in a or "10.244." in a]
        assert not [r for r in during["iptables"] if "KUBE-" in r or "CNI-" in r]
    finally:
        node.stop()

    assert node.leftovers() == []
    after = machine_state()
    new = {key: sorted(after[key] - before[key]) for key in before}
    assert new == {key: [] for key in before}
    assert after["tunables"] == before["tunables"]


def image_files(archive: Path) -> set[str]:
    """Every path in a docker archive's image (its layers' union; no whiteouts here)."""
    files: set[str] = set()
    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
        for layer in manifest[0]["Layers"]:
            with tarfile.open(fileobj=outer.extractfile(layer)) as inner:
                files.update(m.name.removeprefix("./") for m in inner.getmembers())
    return files


def test_the_images_are_slim() -> None:
    """What hack/images built: no pip, no compiler or build headers anywhere; no kopf,
    kubernetes client or cryptography in the sidecar (the operator has them)."""
    images = find_images()
    sizes = {}
    for name in ("agent-operator", "agent-sidecar", "chat-app"):
        files = image_files(images / f"{name}.tar")
        sizes[name] = (images / f"{name}.tar").stat().st_size
        packages = {f.split("/")[5] for f in files
                    if f.startswith("opt/venv/lib/python3.11/site-packages/") and f.count("/") > 5}
        assert "usr/bin/python3.11" in files
        assert not {"pip", "setuptools", "wheel"} & packages, name
        assert not [f for f in files if re.match(r"usr/(bin/(gcc|cc|make|pip)|include/)", f)]
        assert not [f for f in files if "python-wheels" in f or "ensurepip/_bundled" in f]
        if name == "agent-sidecar":
            assert {"agent", "agent_sidecar", "aiohttp"} <= packages
            assert not {"kopf", "kubernetes", "cryptography"} & packages
        if name == "agent-operator":
            assert {"agent_operator", "kopf", "kubernetes"} <= packages
    print("image sizes (docker archive):",
          ", ".join(f"{n} {size / 2**20:.0f} MiB" for n, size in sizes.items()))
