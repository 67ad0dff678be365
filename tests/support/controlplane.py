"""pytest plugin: a real Kubernetes control plane, helm and Jaeger for tests.

Load it with ``pytest_plugins = ["support.controlplane"]`` in ``tests/conftest.py``.

What it starts (session scope, on first use only):

* ``control_plane``: etcd and kube-apiserver on free loopback ports with freshly generated
  certificates, RBAC authorization and client-certificate users, plus the pinned
  ``kubectl`` and ``helm``. There is no controller-manager, scheduler or kubelet: nothing
  runs pods, garbage-collects or finalizes namespaces, so each test gets a fresh
  namespace (``namespace`` fixture) and sets pod status itself (``mark_pod_ready``).
* ``jaeger``: Jaeger v2 all-in-one with in-memory storage on free ports, serving the
  real Jaeger UI when ``hack/jaeger-ui`` has built it (``AGENT_ROUTER_JAEGER_UI``).

Binaries come from the directory in ``AGENT_ROUTER_ASSETS`` (``hack/test-binaries``
builds them and prints that line); if it is unset the pinned cache is used when
complete. Missing binaries FAIL the tests that need them, never skip them. The only
opt-outs are explicit: ``AGENT_ROUTER_SKIP_CONTROLPLANE=1`` or ``-m "not controlplane"``.
``AGENT_ROUTER_KUBECONFIG=<file>`` points the ``control_plane`` fixture at an existing
cluster instead of starting one (identity helpers are unavailable there).
Nothing here reads or writes ``~/.kube``: every kubectl/helm call gets an explicit
``--kubeconfig``. See docs/testing-control-plane.md.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime as dt
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ASSETS_ENV = "AGENT_ROUTER_ASSETS"
JAEGER_UI_ENV = "AGENT_ROUTER_JAEGER_UI"
SKIP_ENV = "AGENT_ROUTER_SKIP_CONTROLPLANE"
EXTERNAL_KUBECONFIG_ENV = "AGENT_ROUTER_KUBECONFIG"
KEEP_ENV = "AGENT_ROUTER_KEEP_CONTROLPLANE_DIR"
MARKER = "controlplane"
BINARIES = ("kube-apiserver", "etcd", "kubectl", "helm", "jaeger")
REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_BINARIES_SCRIPT = REPO_ROOT / "hack" / "test-binaries"
JAEGER_UI_SCRIPT = REPO_ROOT / "hack" / "jaeger-ui"
# Fixtures that need the binaries; tests using them are marked `controlplane` implicitly.
CONTROLPLANE_FIXTURES = frozenset({"control_plane", "namespace", "jaeger"})

START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


class ControlPlaneError(RuntimeError):
    """A control-plane process failed to start or a command failed."""


class CommandError(subprocess.CalledProcessError):
    """A kubectl/helm call exited non-zero; ``str()`` includes its output."""

    def __str__(self) -> str:
        return (
            f"{' '.join(map(str, self.cmd))!r} exited {self.returncode}\n"
            f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
        )


# --------------------------------------------------------------------------------------
# opt-out and binaries
# --------------------------------------------------------------------------------------


def skip_requested() -> bool:
    return os.environ.get(SKIP_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _missing(directory: Path, names: Iterable[str]) -> list[str]:
    return [n for n in names if not os.access(directory / n, os.X_OK)]


def find_assets(names: Sequence[str] = BINARIES) -> Path:
    """The directory holding the test binaries, or ``pytest.fail`` saying how to get it.

    ``AGENT_ROUTER_ASSETS`` wins; otherwise ``hack/test-binaries --check`` reports the
    pinned cache when every binary is already built (it never builds from here).
    """
    hint = (
        f"run `{TEST_BINARIES_SCRIPT.relative_to(REPO_ROOT)}` (it builds the pinned "
        f"binaries once and prints `{ASSETS_ENV}=<dir>`) and export that line, or opt out "
        f"explicitly with {SKIP_ENV}=1 or -m 'not {MARKER}'"
    )
    given = os.environ.get(ASSETS_ENV)
    if given:
        directory = Path(given)
        missing = _missing(directory, names)
        if missing:
            pytest.fail(f"{ASSETS_ENV}={given} lacks {', '.join(missing)}: {hint}", pytrace=False)
        return directory
    built = _script_line(TEST_BINARIES_SCRIPT, ASSETS_ENV)
    if built and not _missing(Path(built), names):
        return Path(built)
    pytest.fail(
        f"the control-plane test binaries are not built ({ASSETS_ENV} unset): {hint}", pytrace=False
    )


def _script_line(script: Path, env_name: str) -> str | None:
    """What ``script --check`` prints as ``<env_name>=<value>`` (it builds nothing)."""
    if not script.exists():
        return None
    proc = subprocess.run(
        ["bash", str(script), "--check"], capture_output=True, text=True, check=False
    )
    match = re.search(rf"^{env_name}=(.+)$", proc.stdout, re.MULTILINE)
    return match.group(1).strip() if proc.returncode == 0 and match else None


def find_jaeger_ui() -> Path | None:
    """The built Jaeger UI (a directory with ``index.html``), or None when it is not built.

    ``AGENT_ROUTER_JAEGER_UI`` wins (an error if it holds no UI); otherwise
    ``hack/jaeger-ui --check`` reports the cached build. Without it Jaeger serves the
    placeholder page its Go module embeds; the query API works the same.
    """
    given = os.environ.get(JAEGER_UI_ENV)
    if given:
        if not (Path(given) / "index.html").is_file():
            raise ControlPlaneError(f"{JAEGER_UI_ENV}={given} holds no index.html: run "
                                    f"`{JAEGER_UI_SCRIPT.relative_to(REPO_ROOT)}`")
        return Path(given)
    built = _script_line(JAEGER_UI_SCRIPT, JAEGER_UI_ENV)
    return Path(built) if built else None


# --------------------------------------------------------------------------------------
# certificates
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        key.chmod(0o600)
        return cert, key


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _key_usage(ca: bool) -> x509.KeyUsage:
    """Signing only; a CA also signs certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _name(common_name: str, organizations: Iterable[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


class CertificateAuthority:
    """A throw-away CA (ECDSA P-256) that issues serving and client certificates."""

    def __init__(self, common_name: str) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = _name(common_name)
        public = self._key.public_key()
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        common_name: str,
        *,
        organizations: Iterable[str] = (),
        hosts: Iterable[str] = (),
        server: bool = False,
        client: bool = False,
    ) -> KeyPair:
        """Issue a certificate; ``hosts`` are DNS names or IP addresses (SANs)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, organizations))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_kubeconfig(
    path: Path, *, server: str, ca_pem: bytes | None, user: str, client: KeyPair
) -> Path:
    """Write a self-contained kubeconfig (everything embedded) for one client cert."""
    cluster: dict[str, Any] = {"server": server}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = _b64(ca_pem)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "agent-router-test", "cluster": cluster}],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(client.cert_pem),
                    "client-key-data": _b64(client.key_pem),
                },
            }
        ],
        "contexts": [
            {"name": "agent-router-test", "context": {"cluster": "agent-router-test", "user": user}}
        ],
        "current-context": "agent-router-test",
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: SIGKILL the child if pytest itself dies without tearing down."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def host_ip() -> str:
    """This machine's first non-loopback IPv4 address (what a pod IP would be)."""
    import fcntl
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            try:  # SIOCGIFADDR
                raw = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
            except OSError:
                continue  # no IPv4 address on this interface
            ip = socket.inet_ntoa(raw[20:24])
            if not ipaddress.ip_address(ip).is_loopback:
                return ip
    raise ControlPlaneError("no non-loopback IPv4 address on this machine; Service-routed "
                            "webhooks need one (the Endpoints API refuses loopback)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (sockets held open until all are chosen)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


@dataclass
class ManagedProcess:
    """A child process in its own process group, logging to a file."""

    name: str
    args: list[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(self.args)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                env=dict(self.env) if self.env is not None else None,
            )

    def exited(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def failure(self, why: str) -> ControlPlaneError:
        return ControlPlaneError(
            f"{self.name} {why} (log {self.log_path}); last lines:\n{tail(self.log_path)}"
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        proc = self.popen
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    procs: Sequence[ManagedProcess] = (),
    interval: float = 0.1,
) -> None:
    """Poll ``check`` until true; fail early (with logs) if one of ``procs`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        for proc in procs:
            code = proc.exited()
            if code is not None:
                raise proc.failure(f"exited with code {code} while waiting for {what}")
        try:
            if check():
                return
        except (OSError, httpx.HTTPError):
            pass
        if time.monotonic() > deadline:
            detail = "\n\n".join(f"== {p.name}\n{tail(p.log_path)}" for p in procs)
            raise ControlPlaneError(f"timed out after {timeout:.0f}s waiting for {what}\n{detail}")
        time.sleep(interval)


def _tcp_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --------------------------------------------------------------------------------------
# the control plane
# --------------------------------------------------------------------------------------


@dataclass
class ControlPlane:
    """A running (or external) API server plus the pinned kubectl and helm.

    ``kubectl``/``helm`` always pass ``--kubeconfig`` (the admin one unless given) and
    keep their caches under ``workdir``.
    """

    workdir: Path
    assets: Path
    server: str
    kubeconfig: Path
    serving_ca: CertificateAuthority | None = None
    client_ca: CertificateAuthority | None = None
    ca_pem: bytes | None = None
    processes: list[ManagedProcess] = field(default_factory=list)

    # -- identities ----------------------------------------------------------------------

    @property
    def external(self) -> bool:
        return self.client_ca is None

    def client_cert(self, user: str, groups: Iterable[str] = ()) -> KeyPair:
        """A client certificate for ``user`` (CN) in ``groups`` (O), from the client CA."""
        if self.client_ca is None:
            pytest.skip(
                f"minting identities needs the local control plane ({EXTERNAL_KUBECONFIG_ENV} is set)"
            )
        return self.client_ca.issue(user, organizations=groups, client=True)

    def kubeconfig_for(self, user: str, groups: Iterable[str] = ()) -> Path:
        """Write a kubeconfig authenticating as ``user`` in ``groups``; returns its path."""
        pair = self.client_cert(user, groups)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", user)
        path = self.workdir / "kubeconfigs" / f"{safe}-{uuid.uuid4().hex[:6]}.yaml"
        return write_kubeconfig(
            path, server=self.server, ca_pem=self.ca_pem, user=user, client=pair
        )

    def kubeconfig_for_service_account(self, namespace: str, name: str) -> Path:
        """Act exactly as service account ``namespace/name`` (its user name and groups)."""
        return self.kubeconfig_for(
            f"system:serviceaccount:{namespace}:{name}",
            # The API server adds system:authenticated itself.
            ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
        )

    def issue_serving_cert(self, hosts: Iterable[str] = ("127.0.0.1", "localhost")) -> KeyPair:
        """A TLS serving cert from the serving CA (``ca_pem`` is its caBundle)."""
        if self.serving_ca is None:
            pytest.skip(
                f"issuing certificates needs the local control plane ({EXTERNAL_KUBECONFIG_ENV} is set)"
            )
        hosts = list(hosts)
        return self.serving_ca.issue(hosts[0], hosts=hosts, server=True)

    # -- commands ------------------------------------------------------------------------

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        """Environment for a child process talking to this cluster (KUBECONFIG explicit)."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(kubeconfig or self.kubeconfig)
        # Discovery/http cache of kubectl and helm (default ~/.kube/cache).
        env["KUBECACHEDIR"] = str(self.workdir / "kubectl-cache")
        for var, sub in (
            ("HELM_CACHE_HOME", "helm/cache"),
            ("HELM_CONFIG_HOME", "helm/config"),
            ("HELM_DATA_HOME", "helm/data"),
        ):
            env[var] = str(self.workdir / sub)
        return env

    def _run(
        self,
        argv: list[str],
        *,
        kubeconfig: Path | None,
        input: str | None,
        check: bool,
        timeout: float,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            env=self.env(kubeconfig),
            timeout=timeout,
            check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise CommandError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | str | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl; raises ``CommandError`` on failure unless ``check=False``."""
        cfg = Path(kubeconfig) if kubeconfig else self.kubeconfig
        argv = [
            str(self.assets / "kubectl"),
            f"--kubeconfig={cfg}",
            f"--cache-dir={self.workdir / 'kubectl-cache'}",
            *args,
        ]
        return self._run(argv, kubeconfig=cfg, input=input, check=check, timeout=timeout)

    def helm(
        self,
        *args: str,
        kubeconfig: Path | str | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned helm with an explicit ``--kubeconfig`` and private helm homes."""
        cfg = Path(kubeconfig) if kubeconfig else self.kubeconfig
        argv = [str(self.assets / "helm"), f"--kubeconfig={cfg}", *args]
        return self._run(argv, kubeconfig=cfg, input=None, check=check, timeout=timeout)

    def api_client(self, kubeconfig: Path | str | None = None) -> Any:
        """A ``kubernetes.client.ApiClient`` configured from the (admin) kubeconfig."""
        from kubernetes import config as k8s_config

        return k8s_config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))  # type: ignore[no-untyped-call]

    # -- helpers -------------------------------------------------------------------------

    def apply(
        self,
        manifest: str | Mapping[str, Any] | Sequence[Mapping[str, Any]],
        namespace: str | None = None,
        *,
        kubeconfig: Path | str | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl apply`` YAML text, one object (dict) or a list of objects."""
        if isinstance(manifest, str):
            text = manifest
        elif isinstance(manifest, Mapping):
            text = yaml.safe_dump(dict(manifest), sort_keys=False)
        else:
            text = yaml.safe_dump_all([dict(m) for m in manifest], sort_keys=False)
        args = ["apply", "-f", "-"]
        if namespace:
            args += ["--namespace", namespace]
        return self.kubectl(*args, input=text, kubeconfig=kubeconfig, check=check)

    def server_version(self) -> str:
        """The API server's gitVersion (e.g. ``v1.36.3``); pass it to ``helm template
        --kube-version`` (helm's own default follows its client-go, not this server)."""
        versions = json.loads(self.kubectl("version", "-o", "json").stdout)
        return str(versions["serverVersion"]["gitVersion"])

    def get_json(self, *args: str, namespace: str | None = None) -> Any:
        """``kubectl get ... -o json`` parsed."""
        ns = ["--namespace", namespace] if namespace else []
        return json.loads(self.kubectl("get", *args, *ns, "-o", "json").stdout)

    def create_namespace(
        self, name: str | None = None, labels: Mapping[str, str] | None = None
    ) -> str:
        name = name or f"t-{uuid.uuid4().hex[:10]}"
        meta: dict[str, Any] = {"name": name}
        if labels:
            meta["labels"] = dict(labels)
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
        return name

    def mark_pod_ready(
        self,
        namespace: str,
        name: str,
        ip: str = "127.0.0.1",
        host_ip: str = "127.0.0.1",
        ready: bool = True,
    ) -> None:
        """Make a pod look Running and Ready (no kubelet here): patch its status.

        ``ready=False``: as while a native sidecar's startup probe still fails: the pod has
        its IP and the sidecar runs, but the app containers wait and nothing is Ready."""
        pod = self.get_json("pod", name, namespace=namespace)
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        spec = pod.get("spec", {})
        # Native sidecars (init containers that keep running) count in READY too (2/2).
        sidecars = [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]

        def running(containers: list[dict[str, Any]], up: bool = True) -> list[dict[str, Any]]:
            return [
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": "",
                    "containerID": f"containerd://{uuid.uuid4().hex}",
                    "ready": ready,
                    "started": ready,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": now}}
                    if up
                    else {"waiting": {"reason": "PodInitializing"}},
                }
                for c in containers
            ]

        status = {
            "phase": "Running" if ready else "Pending",
            "startTime": now,
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [
                {"type": t, "status": str(ready or t == "PodScheduled"), "lastTransitionTime": now}
                for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
            ],
            "containerStatuses": running(spec.get("containers", []), up=ready),
            "initContainerStatuses": running(sidecars),
        }
        self.kubectl(
            "patch", "pod", name, "--namespace", namespace, "--subresource=status",
            "--type=merge", "-p", json.dumps({"status": status}),
        )  # fmt: skip

    def publish_endpoints(
        self, namespace: str, service: str, port_name: str, ip: str, port: int
    ) -> None:
        """Point a Service at ``ip:port``, as the endpoint controllers would for a ready pod
        (none run here). The apiserver dials webhooks at these endpoints. ``ip`` cannot be
        a loopback address (the API refuses those): see ``host_ip()``."""
        ports = [{"name": port_name, "port": port, "protocol": "TCP"}]
        self.apply(
            [
                {"apiVersion": "v1", "kind": "Endpoints",
                 "metadata": {"name": service},
                 "subsets": [{"addresses": [{"ip": ip}], "ports": ports}]},
                {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                 "metadata": {"name": f"{service}-local",
                              "labels": {"kubernetes.io/service-name": service}},
                 "addressType": "IPv4", "ports": ports,
                 "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}]},
            ],
            namespace,
        )  # fmt: skip

    def unpublish_endpoints(self, namespace: str, service: str) -> None:
        """Remove what ``publish_endpoints`` made (the endpoint controllers would collect
        it with the Service)."""
        for kind, name in (("endpoints", service), ("endpointslice", f"{service}-local")):
            self.kubectl(
                "delete", kind, name, "--namespace", namespace, "--ignore-not-found",
                check=False,
            )  # fmt: skip

    def stop(self) -> None:
        # Stop the API server before etcd (reverse start order).
        for proc in reversed(self.processes):
            proc.stop()


def _ssl_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


class NodeNetwork(Protocol):
    """A node's network namespace (tests/support/node.py) that the control plane can run
    in, so that the API server reaches pods and the kubelet, and they reach it."""

    ip: str  # the node's address inside it, which the API server advertises

    def command(self, args: list[str]) -> list[str]:
        """``args`` run inside the namespace."""

    def publish(self, port: int) -> None:
        """Make ``127.0.0.1:port`` here reach the same port inside the namespace."""


def start_control_plane(
    workdir: Path, assets: Path, node: NodeNetwork | None = None
) -> ControlPlane:
    """Start etcd and kube-apiserver in ``workdir``; returns once /readyz is ok.

    With ``node`` they run inside its network namespace, reached from here through
    ``node.publish``; pods get service account tokens and the kubelet its Node rights."""
    pki = workdir / "pki"
    logs = workdir / "logs"
    serving_ca = CertificateAuthority("agent-router-test-serving-ca")
    client_ca = CertificateAuthority("agent-router-test-client-ca")
    serving_ca_file = pki / "serving-ca.crt"
    client_ca_file = pki / "client-ca.crt"
    pki.mkdir(parents=True)
    serving_ca_file.write_bytes(serving_ca.cert_pem)
    client_ca_file.write_bytes(client_ca.cert_pem)
    serving = serving_ca.issue(
        "kube-apiserver",
        hosts=["127.0.0.1", "localhost", "10.0.0.1", "kubernetes", "kubernetes.default",
               "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
               *([node.ip] if node else [])],
        server=True,
    )  # fmt: skip
    serving_cert, serving_key = serving.write(pki, "apiserver")
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_priv = pki / "sa.key"
    sa_pub = pki / "sa.pub"
    sa_priv.write_bytes(_key_pem(sa_key))
    sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    admin = client_ca.issue("agent-router-admin", organizations=["system:masters"], client=True)
    admin_cert, admin_key = admin.write(pki, "admin")

    etcd_client, etcd_peer, api_port = free_ports(3)
    server = f"https://127.0.0.1:{api_port}"
    etcd_url = f"http://127.0.0.1:{etcd_client}"
    peer_url = f"http://127.0.0.1:{etcd_peer}"
    inside: Callable[[list[str]], list[str]] = node.command if node else list
    if node:
        node.publish(etcd_client)
        node.publish(api_port)
    etcd = ManagedProcess(
        "etcd",
        inside([
            str(assets / "etcd"),
            "--name=default",
            f"--data-dir={workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]),
        logs / "etcd.log",
    )
    apiserver_args = [
        str(assets / "kube-apiserver"),
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={api_port}",
        f"--cert-dir={pki}",
        f"--tls-cert-file={serving_cert}",
        f"--tls-private-key-file={serving_key}",
        f"--client-ca-file={client_ca_file}",
        "--authorization-mode=RBAC",
        # As envtest: no controller creates the default ServiceAccount here.
        "--disable-admission-plugins=ServiceAccount",
        "--service-cluster-ip-range=10.0.0.0/24",
        # Webhooks registered by Service reference are dialed at the Service's
        # endpoints, not its cluster IP (no kube-proxy here): see publish_endpoints.
        "--enable-aggregator-routing=true",
        "--allow-privileged=true",
        f"--service-account-issuer={server}",
        f"--service-account-key-file={sa_pub}",
        f"--service-account-signing-key-file={sa_priv}",
        "--profiling=false",
        "--v=1",
    ]
    if node:
        # Bound to the node's address too (pods reach it through the `kubernetes`
        # Service), with the ServiceAccount admission that gives pods their tokens, and
        # the Node authorizer for the kubelet.
        changed = {"--bind-address": "0.0.0.0", "--advertise-address": node.ip,
                   "--authorization-mode": "Node,RBAC"}
        apiserver_args = [
            f"{flag}={changed[flag]}" if (flag := a.split("=")[0]) in changed else a
            for a in apiserver_args if "ServiceAccount" not in a
        ] + ["--enable-admission-plugins=NodeRestriction",
             "--kubelet-preferred-address-types=InternalIP",  # no DNS for node names
             "--vmodule=httplog=3"]  # every request, its status and latency, in the log
    apiserver = ManagedProcess("kube-apiserver", inside(apiserver_args), logs / "kube-apiserver.log")
    plane = ControlPlane(
        workdir=workdir,
        assets=assets,
        server=server,
        kubeconfig=workdir / "kubeconfig",
        serving_ca=serving_ca,
        client_ca=client_ca,
        ca_pem=serving_ca.cert_pem,
        processes=[etcd, apiserver],
    )
    write_kubeconfig(
        plane.kubeconfig,
        server=server,
        ca_pem=serving_ca.cert_pem,
        user="agent-router-admin",
        client=admin,
    )
    try:
        etcd.start()
        with httpx.Client(timeout=2.0) as http:
            wait_until(
                lambda: http.get(f"{etcd_url}/health").status_code == 200,
                timeout=START_TIMEOUT, what="etcd /health", procs=[etcd],
            )  # fmt: skip
        apiserver.start()
        ctx = _ssl_context(serving_ca_file, admin_cert, admin_key)
        with httpx.Client(verify=ctx, timeout=2.0) as http:
            wait_until(
                lambda: http.get(f"{server}/readyz").status_code == 200,
                timeout=START_TIMEOUT, what="kube-apiserver /readyz", procs=[etcd, apiserver],
            )  # fmt: skip
        plane.apply(CONFIG_MAP_PARAMS_KEEPER)
    except BaseException:
        plane.stop()
        raise
    return plane


# Kubernetes v1.36.3 stops its informer of ConfigMap params for good once no admission
# policy binding uses them for a moment (kubernetes/kubernetes#130887): a policy bound
# later finds no ConfigMap created after that. The chart's injection policy (the default
# on 1.36) is bound and unbound by every install and uninstall, so each API server the
# tests start holds, for its whole life, this policy and binding that use ConfigMap
# params and match no pod: the tests' outcome cannot depend on their order.
CONFIG_MAP_PARAMS_KEEPER: list[dict[str, Any]] = [
    {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingAdmissionPolicy",
     "metadata": {"name": "agent-router-test-keeps-configmap-params"},
     "spec": {"paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
              "matchConstraints": {
                  "resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                     "operations": ["CREATE"], "resources": ["pods"]}],
                  "objectSelector": {"matchLabels": {"agent-router-test/never": "true"}}},
              "reinvocationPolicy": "Never",
              "mutations": [{"patchType": "ApplyConfiguration",
                             "applyConfiguration": {"expression": "Object{}"}}]}},
    {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingAdmissionPolicyBinding",
     "metadata": {"name": "agent-router-test-keeps-configmap-params"},
     "spec": {"policyName": "agent-router-test-keeps-configmap-params",
              "paramRef": {"name": "agent-router-test-never",
                           "parameterNotFoundAction": "Allow"}}},
]


def external_control_plane(workdir: Path, assets: Path, kubeconfig: Path) -> ControlPlane:
    """Use an existing cluster's kubeconfig (``AGENT_ROUTER_KUBECONFIG``) as admin."""
    config = yaml.safe_load(kubeconfig.read_text())
    current = config.get("current-context")
    contexts = {c["name"]: c["context"] for c in config.get("contexts", [])}
    clusters = {c["name"]: c["cluster"] for c in config.get("clusters", [])}
    server = clusters[contexts[current]["cluster"]]["server"] if current in contexts else ""
    return ControlPlane(workdir=workdir, assets=assets, server=server, kubeconfig=kubeconfig)


# --------------------------------------------------------------------------------------
# Jaeger
# --------------------------------------------------------------------------------------


@dataclass
class Jaeger:
    """A running Jaeger v2 all-in-one (in-memory storage); ``ui`` is the directory of the
    Jaeger UI it serves at ``query_url``, None when it serves the placeholder page."""

    process: ManagedProcess
    otlp_grpc_port: int
    otlp_http_port: int
    query_port: int
    ui: Path | None = None

    @property
    def otlp_http_endpoint(self) -> str:
        """Base URL of the OTLP/HTTP receiver (append ``/v1/traces`` for traces)."""
        return f"http://127.0.0.1:{self.otlp_http_port}"

    @property
    def otlp_grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.otlp_grpc_port}"

    @property
    def query_url(self) -> str:
        return f"http://127.0.0.1:{self.query_port}"

    def trace_url(self, trace_id: str) -> str:
        """The UI's page of one trace (its timeline and every span's attributes)."""
        return f"{self.query_url}/trace/{trace_id}"

    def traces(self, service: str, limit: int = 100) -> list[dict[str, Any]]:
        """Traces of ``service`` from the query API (``[]`` if none yet)."""
        resp = httpx.get(
            f"{self.query_url}/api/traces", params={"service": service, "limit": limit}, timeout=5.0
        )
        if resp.status_code == 404:
            return []
        resp.raise_for_status()
        data = resp.json().get("data") or []
        return list(data)

    def wait_for_trace(
        self,
        service: str,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Poll until a trace of ``service`` (matching ``predicate``) is stored; return it."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            traces = self.traces(service)
            seen = len(traces)
            for trace in traces:
                if predicate is None or predicate(trace):
                    return trace
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no matching trace for service {service!r} within {timeout}s "
                    f"({seen} trace(s) seen); Jaeger log:\n{tail(self.process.log_path, 20)}"
                )
            time.sleep(0.2)

    @staticmethod
    def spans(trace: Mapping[str, Any], name: str | None = None) -> list[dict[str, Any]]:
        """The spans of a trace (from the query API), optionally only those named ``name``."""
        return [s for s in trace.get("spans", []) if name is None or s.get("operationName") == name]

    @staticmethod
    def tags(span: Mapping[str, Any]) -> dict[str, Any]:
        """A span's tags (attributes) as a dict."""
        return {t["key"]: t.get("value") for t in span.get("tags", [])}


def jaeger_config(
    otlp_grpc: int, otlp_http: int, query_http: int, query_grpc: int, ui: Path | None = None
) -> dict[str, Any]:
    """A minimal all-in-one config: OTLP in, memory storage, query API and UI (the assets
    in ``ui``, else the placeholder page); all on loopback."""
    query: dict[str, Any] = {
        "storage": {"traces": "memstore"},
        "enable_tracing": False,
        "http": {"endpoint": f"127.0.0.1:{query_http}"},
        "grpc": {"endpoint": f"127.0.0.1:{query_grpc}"},
    }
    if ui is not None:
        query["ui"] = {"assets_path": str(ui)}
    return {
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query"],
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": [],
                    "exporters": ["jaeger_storage_exporter"],
                }
            },
            # No self-metrics server (it would take port 8888).
            "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "info"}},
        },
        "extensions": {
            "jaeger_query": query,
            "jaeger_storage": {"backends": {"memstore": {"memory": {"max_traces": 100000}}}},
        },
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": f"127.0.0.1:{otlp_grpc}"},
                    "http": {"endpoint": f"127.0.0.1:{otlp_http}"},
                }
            }
        },
        "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
    }


def start_jaeger(workdir: Path, assets: Path) -> Jaeger:
    """Start Jaeger from ``assets``, serving the Jaeger UI when it is built."""
    ui = find_jaeger_ui()
    otlp_grpc, otlp_http, query_http, query_grpc = free_ports(4)
    config = workdir / "jaeger.yaml"
    workdir.mkdir(parents=True, exist_ok=True)
    config.write_text(
        yaml.safe_dump(jaeger_config(otlp_grpc, otlp_http, query_http, query_grpc, ui))
    )
    proc = ManagedProcess(
        "jaeger", [str(assets / "jaeger"), f"--config={config}"], workdir / "logs" / "jaeger.log"
    )
    jaeger = Jaeger(proc, otlp_grpc, otlp_http, query_http, ui)
    proc.start()
    try:
        with httpx.Client(timeout=2.0) as http:
            wait_until(
                lambda: http.get(f"{jaeger.query_url}/api/services").status_code == 200
                and _tcp_open(otlp_http) and _tcp_open(otlp_grpc),
                timeout=START_TIMEOUT, what="jaeger query API and OTLP receivers", procs=[proc],
            )  # fmt: skip
    except BaseException:
        proc.stop()
        raise
    return jaeger


# --------------------------------------------------------------------------------------
# pytest hooks and fixtures
# --------------------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests that use the fixtures as `controlplane` (so -m can deselect them), and
    skip them, with a reason, only when AGENT_ROUTER_SKIP_CONTROLPLANE is set."""
    skip = (
        pytest.mark.skip(reason=f"{SKIP_ENV} is set (explicit opt-out)")
        if skip_requested()
        else None
    )
    for item in items:
        uses = CONTROLPLANE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if uses and item.get_closest_marker(MARKER) is None:
            item.add_marker(MARKER)
        if skip is not None and item.get_closest_marker(MARKER) is not None:
            item.add_marker(skip)


def _workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"agent-router-{prefix}-"))


def _cleanup(workdir: Path) -> None:
    if os.environ.get(KEEP_ENV):
        print(f"\nkeeping {workdir} ({KEEP_ENV} is set)")
        return
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """etcd + kube-apiserver (RBAC, cert users) with pinned kubectl/helm; session-wide."""
    if skip_requested():
        pytest.skip(f"{SKIP_ENV} is set (explicit opt-out)")
    external = os.environ.get(EXTERNAL_KUBECONFIG_ENV)
    assets = find_assets(
        ("kubectl", "helm") if external else ("kube-apiserver", "etcd", "kubectl", "helm")
    )
    workdir = _workdir("controlplane")
    if external:
        plane = external_control_plane(workdir, assets, Path(external))
    else:
        try:
            plane = start_control_plane(workdir, assets)
        except ControlPlaneError as exc:
            error = str(exc)  # the workdir (logs) is kept for inspection
        else:
            error = ""
        if error:
            pytest.fail(f"control plane did not start: {error}\n(kept {workdir})", pytrace=False)
    try:
        yield plane
    finally:
        plane.stop()
        _cleanup(workdir)


@pytest.fixture(scope="session")
def jaeger() -> Iterator[Jaeger]:
    """Jaeger v2 all-in-one (OTLP gRPC/HTTP in, in-memory storage, query API); session-wide."""
    if skip_requested():
        pytest.skip(f"{SKIP_ENV} is set (explicit opt-out)")
    assets = find_assets(("jaeger",))
    workdir = _workdir("jaeger")
    try:
        instance = start_jaeger(workdir, assets)
    except ControlPlaneError as exc:
        error = str(exc)
    else:
        error = ""
    if error:
        pytest.fail(f"jaeger did not start: {error}\n(kept {workdir})", pytrace=False)
    try:
        yield instance
    finally:
        instance.process.stop()
        _cleanup(workdir)


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A fresh, uniquely named namespace for one test (deleted without waiting: with no
    controller-manager it stays Terminating, which is harmless)."""
    name = control_plane.create_namespace()
    yield name
    control_plane.kubectl(
        "delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False
    )
