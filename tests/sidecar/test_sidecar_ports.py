"""Which addresses a sidecar listens on, read from its own sockets (/proc): with the
settings the injection uses, only the health port is reachable from outside the pod,
and it serves probes and metrics, never a config."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import httpx
from agent_operator.inject import SidecarSettings, sidecar_container
from agent_sidecar.settings import parse_args
from sidecar_support import TOKEN, SidecarProcess
from support.controlplane import free_ports
from support.sockets import listening


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


def test_the_injected_environment_keeps_the_admin_port_on_loopback() -> None:
    """The variables the injection sets, read as the sidecar reads them: the admin port
    on loopback (the config comes from the operator's watch, not from outside the pod),
    the health port on every address, and no admin token given (the sidecar makes one)."""
    container = sidecar_container(SidecarSettings(), "chat")
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    settings = parse_args([], env=env)
    assert (settings.admin_host, settings.admin_port) == ("127.0.0.1", 4001)
    assert (settings.health_host, settings.health_port) == ("", 4002)
    assert settings.token is None and settings.token_file is None
    assert settings.state_dir is not None
    assert [p["name"] for p in container["ports"]] == ["agent-health"]
