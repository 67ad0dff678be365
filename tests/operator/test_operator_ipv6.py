"""IPv6: the apiserver calls the webhook at an IPv6 address, and the operator pushes to a
sidecar whose pod has an IPv6 address (the URL brackets it); the sidecar's admin port,
bound by default, answers on IPv6 (and IPv4)."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import httpx
import pytest
from fakes import FakeProvider
from operator_support import (
    OperatorProcess,
    install_crds,
    operator_kubeconfig,
    pod_manifest,
    sidecar_token,
    wait_for,
)
from sidecar_support import SidecarProcess
from support.controlplane import free_port
from test_operator_e2e import KEYS, policy, pool

pytestmark = pytest.mark.controlplane


def test_webhook_and_push_over_ipv6(control_plane, namespace) -> None:
    cp = control_plane
    install_crds(cp)
    name = f"v6-{uuid.uuid4().hex[:6]}.agentrouter.io"
    port, admin_port = free_port(), free_port()
    operator = OperatorProcess(cp, operator_kubeconfig(cp, name), name, port,
                               host="::1").start()
    sidecar = None
    try:
        with FakeProvider("openai").running() as gpt, \
                FakeProvider("anthropic").running() as claude:
            cp.apply([KEYS, pool("main", gpt, claude), policy()], namespace)
            manifest = pod_manifest("chat-0", {"app": "chat"})
            manifest["metadata"]["annotations"] = {"agentrouter.io/admin-port": str(admin_port)}
            cp.apply(manifest, namespace)  # the apiserver reached the webhook at [::1]
            pod = cp.get_json("pod", "chat-0", namespace=namespace)
            assert pod["spec"]["initContainers"][0]["name"] == "agent-sidecar"

            token = Path(tempfile.mkdtemp(prefix="sidecar-")) / "token"
            token.write_text(sidecar_token(cp, namespace))
            # --admin-host "": every address of both families, as the injection sets it.
            sidecar = SidecarProcess(["--host", "::1", "--port", str(free_port()),
                                      "--admin-host", "", "--admin-port", str(admin_port),
                                      "--token-file", str(token)]).wait_ready()
            cp.mark_pod_ready(namespace, "chat-0", ip="::1")
            headers = {"authorization": f"Bearer {token.read_text()}"}
            loaded = wait_for(lambda: httpx.get(f"http://[::1]:{admin_port}/config",
                                                headers=headers, timeout=5).json()
                              .get("routes"), 30, "the push to http://[::1]")
            assert loaded == ["default"]
            # The same admin port answers on IPv4 too (dual-stack).
            assert httpx.get(f"http://127.0.0.1:{admin_port}/healthz", timeout=5) \
                .status_code == 200
            assert "pod chat-0 now serves config version" in operator.output()
    finally:
        if sidecar is not None:
            sidecar.stop(20)
        operator.stop()
        cp.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found",
                   check=False)
