"""Which addresses a sidecar listens on, read from its own sockets (/proc): with the
defaults the injection uses for the app and admin ports, only the health port is
reachable from outside the pod, and it serves probes and metrics, never a config."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import httpx
from agent_operator.inject import SidecarSettings, sidecar_container
from agent_sidecar.settings import parse_args
from sidecar_support import TOKEN, SidecarProcess
from support.controlplane import free_ports

LISTEN = "0A"  # TCP state in /proc/net/tcp*


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the process listens on."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = set()
    for table, width in (("tcp", 4), ("tcp6", 16)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != LISTEN or inode not in inodes:
                continue
            hex_addr, hex_port = local.split(":")
            # The kernel prints each 32-bit word in host (little-endian) order.
            raw = b"".join(bytes.fromhex(hex_addr[i:i + 8])[::-1]
                           for i in range(0, 2 * width, 8))
            found.add((str(ipaddress.ip_address(raw)), int(hex_port, 16)))
    return found


def test_only_the_health_port_listens_beyond_loopback(tmp_path: Path) -> None:
    app, admin, health = free_ports(3)
    # No --host/--admin-host/--health-host: the defaults, as in an injected pod.
    sidecar = SidecarProcess(["--port", str(app), "--admin-port", str(admin),
                              "--health-port", str(health)],
                             env={"AGENT_SIDECAR_TOKEN": TOKEN}).wait_ready()
    try:
        sockets = listening(sidecar.proc.pid)
        assert {port for _, port in sockets} == {app, admin, health}, sockets
        outside = {(a, p) for a, p in sockets if not ipaddress.ip_address(a).is_loopback}
        assert outside and {p for _, p in outside} == {health}, sockets
        assert {a for a, p in sockets if p in (app, admin)} == {"127.0.0.1"}, sockets

        # The health port answers the kubelet and Prometheus...
        assert httpx.get(f"{sidecar.health_url}/healthz", timeout=5).status_code == 200
        assert httpx.get(f"{sidecar.health_url}/readyz", timeout=5).status_code == 503
        assert "agent_sidecar" in httpx.get(f"{sidecar.health_url}/metrics", timeout=5).text
        # ...but takes no config and shows none, even with the admin token.
        auth = {"authorization": f"Bearer {TOKEN}"}
        assert httpx.get(f"{sidecar.health_url}/config", headers=auth,
                         timeout=5).status_code == 404
        assert httpx.put(f"{sidecar.health_url}/config", headers=auth, content=b"{}",
                         timeout=5).status_code in (404, 405)
        assert httpx.get(f"{sidecar.admin_url}/config", headers=auth,
                         timeout=5).status_code == 404  # the admin port: nothing loaded yet
    finally:
        sidecar.stop()


def test_the_injected_environment_opens_the_admin_port_while_the_operator_pushes() -> None:
    """The variables the injection sets, read as the sidecar reads them: an empty admin
    address is every address (the push comes from outside the pod), not the default."""
    container = sidecar_container(SidecarSettings(), "chat")
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    settings = parse_args([], env=env)
    assert (settings.admin_host, settings.admin_port) == ("", 4001)
    assert (settings.health_host, settings.health_port) == ("", 4002)
    assert parse_args([], env={}).admin_host == "127.0.0.1"
