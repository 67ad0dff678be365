"""How the operator is run: flags, each with an `AGENT_OPERATOR_*` environment variable (the
chart sets the variables)."""

from __future__ import annotations

import argparse
import datetime
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent_operator.inject import SidecarSettings
from agent_operator.limits import SharedLimits


@dataclass(frozen=True)
class Options:
    namespaces: list[str] = field(default_factory=list)  # empty: the whole cluster
    # Leader election: (namespace, name) of the Lease; None: act alone (one replica only).
    lease: tuple[str, str] | None = None
    lease_seconds: int = 30
    resync_seconds: float = 30.0
    metrics_addr: str | None = None  # None: every address, IPv4 and IPv6
    metrics_port: int | None = None  # None: no metrics endpoint
    # /healthz: (address, port); None: not served.
    liveness: tuple[str | None, int] | None = None
    webhook: bool = True
    webhook_addr: str | None = None
    webhook_port: int = 9443
    webhook_hosts: list[str] = field(default_factory=lambda: ["localhost"])  # certificate SANs
    webhook_configuration: str | None = None  # the MutatingWebhookConfiguration to keep
    webhook_cert_dir: Path | None = None  # ca.crt, tls.crt, tls.key kept by someone else
    webhook_cert_secret: tuple[str, str] | None = None  # (namespace, name) we keep
    webhook_cert_validity: datetime.timedelta = datetime.timedelta(days=365)
    webhook_cert_check_seconds: float = 60.0
    # From publishing a renewed CA to serving the certificate it signed: time for the bundle
    # to reach the webhook configuration, the namespaces' ConfigMaps and the pods' files.
    webhook_ca_propagation: datetime.timedelta = datetime.timedelta(minutes=5)
    # The audience of the sidecars' projected service-account tokens.
    delivery_audience: str = "agent-router"
    # Keep each namespace's ConfigMap `agent-router`, which pods injected by the API
    # server start from (namespace_config).
    namespace_configs: bool = False
    verbose: bool = False
    sidecar: SidecarSettings = field(default_factory=SidecarSettings)
    limits: SharedLimits = field(default_factory=SharedLimits)  # the Redis sidecars share


def _object_ref(text: str) -> tuple[str, str]:
    namespace, _, name = text.partition("/")
    if not (namespace and name) or "/" in name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected <namespace>/<name>")
    return namespace, name


def _address(text: str) -> str | None:
    """'' or '*' mean every address (both families); brackets around IPv6 are optional."""
    text = text.strip()
    text = text.removeprefix("[").removesuffix("]")
    return None if text in ("", "*", "::") else text


def _health_url(text: str) -> tuple[str | None, int]:
    parts = urllib.parse.urlsplit(text)
    if parts.scheme != "http" or not parts.port or parts.path not in ("", "/healthz"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected http://<address>:<port>/healthz")
    return _address(parts.hostname or "*"), parts.port


def parse(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Options:
    env = os.environ if env is None else env

    def e(name: str, default: str = "") -> str:
        return env.get(f"AGENT_OPERATOR_{name}") or default

    p = argparse.ArgumentParser(
        prog="agent-operator",
        description="Watch AgentPools and RoutingPolicies, keep sidecars in sync, inject "
        "sidecars into opted-in pods.")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[],
                       help="watch this namespace (repeatable; globs allowed)")
    scope.add_argument("-A", "--all-namespaces", action="store_true")
    alone = p.add_mutually_exclusive_group()
    alone.add_argument("--lease", type=_object_ref, default=e("LEASE") or None,
                       help="<namespace>/<name> of the coordination.k8s.io Lease: replicas "
                       "that share it never act at once (default: act alone)")
    alone.add_argument("--standalone", action="store_true",
                       help="act alone, whatever AGENT_OPERATOR_LEASE says (one replica only)")
    p.add_argument("--lease-seconds", type=int, default=int(e("PEERING_LIFETIME", "30")),
                   help="how long a silent leader keeps the Lease: the takeover delay")
    p.add_argument("--resync-seconds", type=float, default=float(e("RESYNC_SECONDS", "30")))
    p.add_argument("--metrics-addr", type=_address, default=e("METRICS_ADDR"))
    p.add_argument("--metrics-port", type=int, default=int(e("METRICS_PORT", "0")) or None,
                   help="serve Prometheus metrics at /metrics on this port")
    p.add_argument("--liveness", type=_health_url, default=e("LIVENESS") or None,
                   help="serve /healthz here, e.g. http://*:8080/healthz (* or [::]: every "
                   "address, IPv4 and IPv6)")
    p.add_argument("--no-webhook", action="store_true", help="do not serve sidecar injection")
    p.add_argument("--webhook-addr", type=_address, default=e("WEBHOOK_ADDR"),
                   help="listen address (default: every address, IPv4 and IPv6)")
    p.add_argument("--webhook-port", type=int, default=int(e("WEBHOOK_PORT", "9443")))
    p.add_argument("--webhook-host", action="append", default=[],
                   help="a DNS name or IP the certificate is for (repeatable; default: "
                   "AGENT_OPERATOR_WEBHOOK_HOSTS, comma-separated, or localhost)")
    p.add_argument("--webhook-name", default=e("WEBHOOK_NAME") or None,
                   help="the MutatingWebhookConfiguration whose caBundle to keep current")
    certs = p.add_mutually_exclusive_group()
    certs.add_argument("--webhook-cert-dir", type=Path, default=e("WEBHOOK_CERT_DIR") or None,
                       help="ca.crt, tls.crt and tls.key kept current by someone else "
                       "(cert-manager): re-read on every check")
    certs.add_argument("--webhook-cert-secret", type=_object_ref,
                       default=e("WEBHOOK_CERT_SECRET") or None,
                       help="<namespace>/<name> of the Secret the replicas share: the "
                       "operator issues the certificate and renews it")
    p.add_argument("--webhook-cert-validity-seconds", type=float,
                   default=float(e("WEBHOOK_CERT_VALIDITY_SECONDS", str(365 * 86400))),
                   help="lifetime of an issued certificate; renewed with a third left")
    p.add_argument("--webhook-cert-check-seconds", type=float,
                   default=float(e("WEBHOOK_CERT_CHECK_SECONDS", "60")))
    p.add_argument("--webhook-ca-propagation-seconds", type=float,
                   default=float(e("WEBHOOK_CA_PROPAGATION_SECONDS", "300")),
                   help="a renewed CA is published this long before the certificate it "
                   "signed is served (at most halfway to the served one's expiry)")
    p.add_argument("--delivery-audience", default=e("DELIVERY_AUDIENCE", "agent-router"),
                   help="audience the sidecars' projected service-account tokens are for")
    p.add_argument("--namespace-configs", action="store_true",
                   default=e("NAMESPACE_CONFIGS", "false").lower() == "true",
                   help="keep each namespace's ConfigMap agent-router (CA, address, configs "
                   "without keys) for pods the API server injects")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    webhook = not a.no_webhook
    if webhook and a.webhook_cert_dir is None and a.webhook_cert_secret is None:
        p.error("the webhook needs --webhook-cert-secret (the operator keeps the certificate) "
                "or --webhook-cert-dir (someone else does), or --no-webhook")
    hosts = a.webhook_host or [h.strip() for h in e("WEBHOOK_HOSTS").split(",") if h.strip()]
    return Options(
        namespaces=a.namespace, lease=None if a.standalone else a.lease, lease_seconds=a.lease_seconds,
        resync_seconds=a.resync_seconds, metrics_addr=a.metrics_addr,
        metrics_port=a.metrics_port, liveness=a.liveness, webhook=webhook,
        webhook_addr=a.webhook_addr, webhook_port=a.webhook_port,
        webhook_hosts=[_address(h) or h for h in hosts] or ["localhost"],
        webhook_configuration=a.webhook_name, webhook_cert_dir=a.webhook_cert_dir,
        webhook_cert_secret=a.webhook_cert_secret,
        webhook_cert_validity=datetime.timedelta(seconds=a.webhook_cert_validity_seconds),
        webhook_cert_check_seconds=a.webhook_cert_check_seconds,
        webhook_ca_propagation=datetime.timedelta(seconds=a.webhook_ca_propagation_seconds),
        delivery_audience=a.delivery_audience, verbose=a.verbose,
        namespace_configs=a.namespace_configs and webhook,
        sidecar=SidecarSettings.from_env(env), limits=SharedLimits.from_env(env))
