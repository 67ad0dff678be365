"""IPv6: the apiserver calls the webhook at an IPv6 address, and a sidecar watches the
operator at an IPv6 address (the URL brackets it), its certificate valid for it; the
sidecar's own ports listen on IPv6 loopback."""

from __future__ import annotations

import uuid

import pytest
from fakes import FakeProvider
from operator_support import OperatorProcess, install_crds, operator_kubeconfig, wait_for
from support.controlplane import free_port
from support.watching import WatchedPods, served
from test_operator_e2e import KEYS, policy, pool

pytestmark = pytest.mark.controlplane


def test_webhook_and_watch_over_ipv6(control_plane, namespace, tmp_path) -> None:
    cp = control_plane
    install_crds(cp)
    name = f"v6-{uuid.uuid4().hex[:6]}.agentrouter.io"
    port = free_port()
    operator = OperatorProcess(cp, operator_kubeconfig(cp, name), name, port, host="::1",
                               env={"AGENT_SIDECAR_OPERATOR_URL": f"https://[::1]:{port}"})
    try:
        operator.start()
        with FakeProvider("openai").running() as gpt, \
                FakeProvider("anthropic").running() as claude, \
                WatchedPods(cp, namespace, tmp_path, operator.url) as pods:
            assert operator.url == f"https://[::1]:{port}"
            cp.apply([KEYS, pool("main", gpt, claude), policy()], namespace)
            sidecar = pods.start("chat-0", {"app": "chat"}, host="::1")
            # the apiserver reached the webhook at [::1]
            pod = cp.get_json("pod", "chat-0", namespace=namespace)
            assert pod["spec"]["initContainers"][0]["name"] == "agent-sidecar"
            env = {e["name"]: e.get("value") for e in pod["spec"]["initContainers"][0]["env"]}
            assert env["AGENT_SIDECAR_OPERATOR_URL"] == operator.url

            assert sidecar.admin_url.startswith("http://[::1]:")
            loaded = wait_for(lambda: served(sidecar), 30, "the config watched at [::1]")
            assert loaded["routes"] == ["default"]
    finally:
        operator.stop()
        cp.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found",
                   check=False)
