"""Pods whose sidecar watches the operator, as an injected one does, on the real control
plane: the pod object (with its own service account), the token the kubelet would
project for the operator's audience (no kubelet here: the same API call, bound to the
pod), the operator's CA bundle to pin, and a real sidecar process given exactly those.

The sidecars' admin ports listen on loopback, with a known token, so that tests read
what each one serves (`served`)."""

from __future__ import annotations

import base64
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "sidecar"))

from sidecar_support import TOKEN, SidecarProcess  # noqa: E402

AUDIENCE = "agent-router"  # the operator's default
ACCOUNT = "chat"
OPERATOR_NS = "agent-router-system"
CERT_SECRET = "agent-router-webhook-tls"
INJECT = {"agentrouter.io/inject": "true"}


def pod_manifest(name: str, labels: dict[str, str], inject: bool = True) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {**(INJECT if inject else {}), **labels}},
            "spec": {"serviceAccountName": ACCOUNT,
                     "containers": [{"name": "app", "image": "registry.example/chat:1"}]}}


def create_pod(cp: Any, namespace: str, name: str, labels: dict[str, str],
               inject: bool = True) -> None:
    """The pod and its service account (the projected token needs one)."""
    cp.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": ACCOUNT}},
             namespace)
    cp.apply(pod_manifest(name, labels, inject), namespace)


def pod_token(cp: Any, namespace: str, pod: str | None, audience: str = AUDIENCE) -> str:
    """What the kubelet would project into the pod: a token for `audience` bound to it."""
    bound = ["--bound-object-kind", "Pod", "--bound-object-name", pod] if pod else []
    return str(cp.kubectl("create", "token", ACCOUNT, "-n", namespace, "--audience", audience,
                          "--duration", "10m", *bound).stdout.strip())


def operator_ca(cp: Any, directory: Path, namespace: str = OPERATOR_NS,
                secret: str = CERT_SECRET) -> Path:
    """The CA bundle the operator serves with (its certificate Secret's), in a file."""
    data = cp.get_json("secret", secret, namespace=namespace)["data"]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ca.crt"
    path.write_bytes(base64.b64decode(data["ca.crt"]))
    return path


def watching_sidecar(cp: Any, url: str, namespace: str, pod: str, work: Path,
                     *extra: str, ca: Path | None = None, host: str = "127.0.0.1",
                     state_dir: Path | None = None) -> SidecarProcess:
    """A real sidecar for `pod`, watching the operator at `url` with the pod's token."""
    work.mkdir(parents=True, exist_ok=True)
    token = work / "token"
    token.write_text(pod_token(cp, namespace, pod))
    return SidecarProcess(
        ["--host", host, "--port", "0", "--admin-host", host, "--admin-port", "0",
         "--state-dir", str(state_dir or work / "state"), "--operator-url", url,
         "--operator-ca", str(ca or operator_ca(cp, work)), "--identity-token-file",
         str(token), *extra],
        env={"AGENT_SIDECAR_TOKEN": TOKEN}).wait_ready()


def served(sidecar: SidecarProcess) -> dict[str, Any] | None:
    """What the sidecar serves (its admin API's redacted view), or None yet."""
    r = httpx.get(f"{sidecar.admin_url}/config", timeout=5,
                  headers={"authorization": f"Bearer {TOKEN}"})
    return r.json() if r.status_code == 200 else None


def strategy(sidecar: SidecarProcess) -> str | None:
    """The strategy of the sidecar's one route, or None while it serves no config."""
    config = served(sidecar)
    if config is None:
        return None
    routes = config["config"]["routes"]
    return str(routes[0]["strategy"]) if routes else None


class WatchedPods:
    """`start(pod, labels)`: the pod, and a sidecar watching the operator at `url` for it;
    every sidecar stopped on close."""

    def __init__(self, cp: Any, namespace: str, work: Path, url: str) -> None:
        self.cp, self.namespace, self.work, self.url = cp, namespace, work, url
        self.sidecars: list[SidecarProcess] = []

    def __enter__(self) -> WatchedPods:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def start(self, pod: str, labels: dict[str, str] | None = None, *extra: str,
              state_dir: Path | None = None, host: str = "127.0.0.1") -> SidecarProcess:
        """With `labels`, the pod is created first; without, it exists already."""
        if labels is not None:
            create_pod(self.cp, self.namespace, pod, labels)
        sidecar = watching_sidecar(self.cp, self.url, self.namespace, pod,
                                   self.work / f"{pod}-{len(self.sidecars)}", *extra,
                                   host=host, state_dir=state_dir)
        self.sidecars.append(sidecar)
        return sidecar

    def state_dir(self, sidecar: SidecarProcess) -> Path:
        args = sidecar.proc.args
        assert isinstance(args, Sequence)
        return Path(str(args[list(args).index("--state-dir") + 1]))

    def close(self) -> None:
        for sidecar in self.sidecars:
            sidecar.stop(20)
