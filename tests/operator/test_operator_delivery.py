"""Config delivery on the real control plane: real sidecar processes watch the operator
over TLS (its CA pinned) with their pod's projected service-account token, which the
operator checks with a TokenReview; each gets its own pod's config, nothing else."""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from fakes import FakeProvider
from operator_support import OperatorProcess, condition, status_of, wait_for
from sidecar_support import TOKEN, SidecarProcess
from support.watching import (
    AUDIENCE,
    create_pod,
    operator_ca,
    pod_token,
    served,
    strategy,
    watching_sidecar,
)
from test_operator_e2e import KEYS, policy, pool

pytestmark = pytest.mark.controlplane


@pytest.fixture
def fakes() -> Iterator[tuple[FakeProvider, FakeProvider]]:
    with FakeProvider("openai").running() as gpt, FakeProvider("anthropic").running() as claude:
        yield gpt, claude


def url_of(operator: OperatorProcess) -> str:
    return operator.url


def test_an_injected_pod_carries_what_its_sidecar_needs_to_watch(
        control_plane, operator, namespace, fakes, tmp_path) -> None:
    """The webhook on the real API server: the pod it admits names the operator, mounts a
    token for the operator's audience and pins the CA the operator serves with. A sidecar
    given exactly that (the kubelet's part done by hand: the token, the annotation's file)
    gets its config."""
    cp = control_plane
    gpt, claude = fakes
    cp.apply([KEYS, pool("main", gpt, claude), policy()], namespace)
    create_pod(cp, namespace, "chat-0", {"app": "chat"})
    pod = cp.get_json("pod", "chat-0", namespace=namespace)
    (sidecar_spec,) = pod["spec"]["initContainers"]
    env = {e["name"]: e.get("value") for e in sidecar_spec["env"]}
    assert env["AGENT_SIDECAR_OPERATOR_URL"] == url_of(operator)
    (identity,) = [v["projected"] for v in pod["spec"]["volumes"]
                   if v["name"] == "agent-router-identity"]
    assert identity["sources"][0]["serviceAccountToken"]["audience"] == AUDIENCE
    ca = pod["metadata"]["annotations"]["agentrouter.io/operator-ca"]
    assert ca.encode() == operator_ca(cp, tmp_path).read_bytes()

    work = tmp_path / "pod"
    work.mkdir()
    (work / "ca.crt").write_text(ca)
    (work / "token").write_text(pod_token(cp, namespace, "chat-0"))
    sidecar = SidecarProcess(
        ["--port", "0", "--admin-port", "0", "--state-dir", str(work / "state")],
        env={"AGENT_SIDECAR_TOKEN": TOKEN,
             "AGENT_SIDECAR_OPERATOR_URL": env["AGENT_SIDECAR_OPERATOR_URL"],
             "AGENT_SIDECAR_OPERATOR_CA": str(work / "ca.crt"),
             "AGENT_SIDECAR_IDENTITY_TOKEN_FILE": str(work / "token")}).wait_ready()
    try:
        assert wait_for(lambda: strategy(sidecar), 30, "the first config") == "fallback"
    finally:
        sidecar.stop()


def test_a_pod_that_loses_the_injection_label_is_forgotten(
        control_plane, operator, namespace, fakes, tmp_path) -> None:
    """The operator watches injected pods only (a label selector the API server applies):
    a pod whose label is taken off leaves that selection, and its config is no longer
    served. Tried: the pod's own token, before and after `kubectl label ... inject-`."""
    cp = control_plane
    gpt, claude = fakes
    cp.apply([KEYS, pool("main", gpt, claude), policy()], namespace)
    create_pod(cp, namespace, "chat-0", {"app": "chat"})
    headers = {"authorization": f"Bearer {pod_token(cp, namespace, 'chat-0')}"}
    tls = ssl.create_default_context(cafile=str(operator_ca(cp, tmp_path)))

    def answer() -> int:
        return httpx.get(f"{url_of(operator)}/v1/config", params={"wait": "0"},
                         headers=headers, verify=tls, timeout=10).status_code

    wait_for(lambda: answer() == 200, 30, "the pod's config")
    cp.kubectl("label", "pod", "chat-0", "-n", namespace, "agentrouter.io/inject-")
    wait_for(lambda: answer() == 404, 30, "the pod forgotten")


def test_a_sidecar_gets_its_pods_config_and_follows_changes(
        control_plane, operator, namespace, fakes, tmp_path) -> None:
    cp = control_plane
    gpt, claude = fakes
    cp.apply([KEYS, pool("main", gpt, claude), policy()], namespace)
    create_pod(cp, namespace, "chat-0", {"app": "chat"})
    # The pod has no IP (nothing pushes to it): the sidecar pulls.
    sidecar = watching_sidecar(cp, url_of(operator), namespace, "chat-0", tmp_path)
    try:
        assert wait_for(lambda: strategy(sidecar), 30, "the first config") == "fallback"
        first = served(sidecar)
        assert first is not None and first["routes"] == ["default"]

        # Its acknowledgement is what the policy's status counts.
        status = wait_for(lambda: (s := status_of(cp, "routingpolicy", "chat", namespace))
                          .get("synced") == "1/1" and s, 30, "the policy synced")
        assert status["configVersion"] == first["config"]["metadata"]["hash"]
        assert condition(status, "Synced")["status"] == "True"

        cp.apply(policy("round_robin"), namespace)
        wait_for(lambda: strategy(sidecar) == "round_robin", 30, "the change")
        assert 'agent_operator_config_acks_total{result="applied"}' in operator.metrics()
        wait_for(lambda: status_of(cp, "routingpolicy", "chat", namespace)["configVersion"]
                 == served(sidecar)["config"]["metadata"]["hash"], 30,
                 "the status naming the new version")
        # Keys arrived inside TLS only; the admin API shows them redacted.
        assert "test-key" not in json.dumps(served(sidecar))
    finally:
        sidecar.stop()


def test_a_token_that_is_not_this_pods_gets_nothing(control_plane, operator, namespace,
                                                     fakes, tmp_path) -> None:
    cp = control_plane
    gpt, claude = fakes
    cp.apply([KEYS, pool("main", gpt, claude), policy()], namespace)
    create_pod(cp, namespace, "chat-0", {"app": "chat"})
    create_pod(cp, namespace, "other", {"app": "other"}, inject=False)
    ca = ssl.create_default_context(cafile=str(operator_ca(cp, tmp_path)))

    def ask(token: str) -> httpx.Response:
        return httpx.get(f"{url_of(operator)}/v1/config", params={"wait": "0"}, verify=ca,
                         headers={"authorization": f"Bearer {token}"}, timeout=30)

    # The selected pod's own token: its config.
    mine = wait_for(lambda: (r := ask(pod_token(cp, namespace, "chat-0"))).status_code == 200
                    and r, 30, "chat-0's config")
    assert mine.json()["config"]["routes"][0]["name"] == "default"

    tried = {
        # Another pod's token (same account, a pod no policy serves): no config at all.
        "another pod": (pod_token(cp, namespace, "other"), 404),
        # Right pod, but for the apiserver's audience, not the operator's.
        "wrong audience": (pod_token(cp, namespace, "chat-0", audience="https://kubernetes"),
                           401),
        # The account's token bound to no pod: it names no pod to serve.
        "no pod": (pod_token(cp, namespace, None), 401),
        "garbage": ("not-a-token", 401),
    }
    if not cp.external:  # signing an expired token needs the control plane's own key
        token = pod_token(cp, namespace, "chat-0")
        assert ask(resigned(cp, token, 0)).status_code == 200  # the signing is right...
        tried["expired"] = (resigned(cp, token, 3600), 401)  # ...and only the expiry fails
    for what, (token, status) in tried.items():
        r = ask(token)
        assert r.status_code == status, (what, r.status_code, r.text)
        assert "config" not in r.json() and "test-key" not in r.text, (what, r.text)
    # No Authorization at all: refused, and the acknowledgement endpoint refuses too.
    assert httpx.get(f"{url_of(operator)}/v1/config", verify=ca, timeout=30).status_code == 401
    assert httpx.post(f"{url_of(operator)}/v1/config/ack", verify=ca, timeout=30,
                      json={"version": "x", "error": "forged"},
                      headers={"authorization": "Bearer not-a-token"}).status_code == 401


def resigned(cp: Any, token: str, expired_for: int) -> str:
    """`token`, expired `expired_for` seconds ago (0: as it was), signed again with the
    control plane's service-account key: otherwise valid in every way."""
    header, payload, _ = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    shift = int(time.time()) - claims["exp"] - expired_for if expired_for else 0
    for claim in ("exp", "iat", "nbf"):
        claims[claim] += shift
    claims["kubernetes.io"].pop("warnafter", None)
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    key = serialization.load_pem_private_key((cp.workdir / "pki" / "sa.key").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    signature = key.sign(f"{header}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{body}." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


def test_a_man_in_the_middle_certificate_is_refused(control_plane, operator, namespace,
                                                    tmp_path) -> None:
    """A server at the operator's address with a valid certificate from another CA: the
    sidecar refuses the handshake, so its token never leaves the pod."""
    cp = control_plane
    create_pod(cp, namespace, "chat-0", {"app": "chat"})
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.headers.get("authorization", ""))
            self.send_response(200)
            self.end_headers()

    cert, key = cp.issue_serving_cert(["127.0.0.1"]).write(tmp_path, "mitm")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sidecar = watching_sidecar(cp, f"https://127.0.0.1:{server.server_address[1]}", namespace,
                               "chat-0", tmp_path / "sidecar")
    try:
        wait_for(lambda: "the operator's certificate is not trusted" in sidecar.stderr(), 30,
                 "the sidecar refusing the certificate")
        assert requests == []
        assert served(sidecar) is None  # nothing was taken from it
    finally:
        sidecar.stop()
        server.shutdown()


def test_a_refused_config_shows_on_the_policy_and_the_old_one_keeps_serving(
        control_plane, operator, namespace, fakes, tmp_path) -> None:
    cp = control_plane
    gpt, claude = fakes
    cp.apply([KEYS, pool("main", gpt, claude), policy()], namespace)
    create_pod(cp, namespace, "chat-0", {"app": "chat"})
    # A sidecar that takes 8 KB documents at most: the policy's first config fits...
    sidecar = watching_sidecar(cp, url_of(operator), namespace, "chat-0", tmp_path,
                               "--max-config-mb", str(8 / 1024))
    try:
        wait_for(lambda: strategy(sidecar) == "fallback", 30, "the first config")
        # ...the next, with 60 more agents, does not.
        big = pool("big", gpt, claude)
        big["spec"]["agents"] = [{**big["spec"]["agents"][1], "name": f"gpt-{i}"}
                                 for i in range(60)]
        bigger = policy("round_robin")
        bigger["spec"]["pools"] = ["main", "big"]
        cp.apply([big, bigger], namespace)

        def refused() -> str:
            return str((status_of(cp, "routingpolicy", "chat", namespace).get("refused")
                        or {}).get("chat-0", ""))

        assert "over 8192 bytes" in wait_for(refused, 30, "the refusal on the policy")
        ready = condition(status_of(cp, "routingpolicy", "chat", namespace), "Ready")
        wait_for(lambda: condition(status_of(cp, "routingpolicy", "chat", namespace),
                                   "Ready").get("reason") == "Refused", 30,
                 f"Ready=False, Refused (was {ready})")
        assert strategy(sidecar) == "fallback"  # the old config keeps serving
        assert httpx.get(f"{sidecar.admin_url}/readyz", timeout=5).status_code == 200

        cp.apply(policy("round_robin"), namespace)  # small again: taken, refusal cleared
        wait_for(lambda: strategy(sidecar) == "round_robin", 30, "the next config")
        wait_for(lambda: refused() == "", 30, "the refusal cleared")
    finally:
        sidecar.stop()


def test_the_operator_restarted_its_sidecars_catch_up(control_plane, operator, namespace,
                                                      fakes, tmp_path) -> None:
    cp = control_plane
    gpt, claude = fakes
    cp.apply([KEYS, pool("main", gpt, claude), policy()], namespace)
    create_pod(cp, namespace, "chat-0", {"app": "chat"})
    sidecar = watching_sidecar(cp, url_of(operator), namespace, "chat-0", tmp_path)
    try:
        wait_for(lambda: strategy(sidecar) == "fallback", 30, "the first config")
        operator.kill()
        cp.apply(policy("round_robin"), namespace)  # while no operator runs
        assert strategy(sidecar) == "fallback"  # still serving what it had
        assert httpx.get(f"{sidecar.admin_url}/readyz", timeout=5).status_code == 200
        operator.start()
        wait_for(lambda: strategy(sidecar) == "round_robin", 60, "the catch-up")
    finally:
        sidecar.stop()
