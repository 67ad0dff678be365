"""How a sidecar is run: flags, each with an `AGENT_SIDECAR_*` environment variable."""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Settings:
    config: Path | None = None
    host: str = "127.0.0.1"  # the app port is for the pod's own containers only
    port: int = 4000
    # Config and reload: for the pod's own processes only, so loopback and nothing else.
    admin_host: str = "127.0.0.1"
    admin_port: int = 4001
    # Health, readiness and metrics, which hold no secret: what the kubelet and Prometheus
    # reach from outside the pod. "" is every address of both families (IPv4, IPv6,
    # dual-stack); None: not served on a port of its own (the admin port has them too).
    health_host: str = ""
    health_port: int | None = None
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    state_dir: Path | None = None
    # Config delivery: the operator's URL, the CA bundle that signs its certificate, and
    # the pod's projected service-account token for the operator's audience.
    operator_url: str | None = None
    operator_ca: Path | None = None
    identity_token_file: Path | None = None
    # Pods the API server injects: a file with the operator's IP (connected to, its
    # certificate checked against the URL's host name), and the namespace's configs and
    # the pod's labels, which give a config to start from while no operator answers.
    operator_address_file: Path | None = None
    fallback_configs: Path | None = None
    pod_labels_file: Path | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    body_budget_bytes: int = 64 * 1024 * 1024  # large bodies held at once (see bodies.py)
    max_config_bytes: int = 4 * 1024 * 1024
    read_timeout: float = 30.0  # for a request body to arrive
    idle_timeout: float = 15.0  # an idle connection, or one still sending its headers
    max_connections: int = 1000  # on the app port; past it, the oldest idle ones close
    request_timeout: float = 600.0  # for an answer (for a stream: its first event)
    drain_timeout: float = 30.0  # on SIGTERM, for requests and streams in flight
    loop: str = "auto"  # auto (uvloop when installed), uvloop, asyncio
    transport: str = "http1"  # the upstream HTTP client: http1 (the sidecar's), aiohttp, httpx
    server: str = "http1"  # the app port's HTTP server: http1 (the sidecar's), or aiohttp
    log_level: str = "info"
    access_log: bool = False

    def __post_init__(self) -> None:
        if not is_loopback(self.admin_host):
            raise ValueError(f"the admin address must be a loopback address (127.0.0.0/8, "
                             f"::1 or localhost), not {self.admin_host!r}: it takes configs "
                             "with API keys")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "" (every address), or a name that may resolve anywhere


def parse_args(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env

    def e(name: str, default: str | None = None) -> str | None:
        return env.get(f"AGENT_SIDECAR_{name}") or default

    p = argparse.ArgumentParser(
        prog="agent-sidecar",
        description=(
            "Per-pod LLM routing sidecar: OpenAI- and Anthropic-compatible endpoints on the "
            "app port, config and reload on the loopback admin port, health and metrics on "
            "the health port. Without --config it serves the persisted config (--state-dir), "
            "the operator's (--operator-url), or waits for a PUT /config."
        ),
    )
    p.add_argument("--config", type=Path, default=e("CONFIG"), help="config document (YAML)")
    p.add_argument("--host", default=e("HOST", "127.0.0.1"), help="app address (loopback)")
    p.add_argument("--port", type=int, default=int(e("PORT", "4000") or 4000))
    p.add_argument("--admin-host", default=e("ADMIN_HOST", "127.0.0.1"),
                   help="admin address (config, reload): a loopback address only")
    p.add_argument("--admin-port", type=int, default=int(e("ADMIN_PORT", "4001") or 4001))
    p.add_argument("--health-host", default=e("HEALTH_HOST", ""),
                   help="health port address (default: every address, IPv4 and IPv6)")
    health = e("HEALTH_PORT")
    p.add_argument("--health-port", type=int, default=int(health) if health else None,
                   help="port of /healthz, /readyz and /metrics for the kubelet and "
                   "Prometheus (default: none of its own)")
    p.add_argument(
        "--token-file",
        type=Path,
        default=e("TOKEN_FILE"),
        help="file holding the admin bearer token (else AGENT_SIDECAR_TOKEN); with "
        "neither, one is made and written to <state dir>/admin-token (no state dir: "
        "PUT /config is refused)",
    )
    p.add_argument(
        "--state-dir", type=Path, default=e("STATE_DIR"), help="keeps the last good config"
    )
    p.add_argument("--operator-url", default=e("OPERATOR_URL"),
                   help="watch this operator (https://...) for the pod's config")
    p.add_argument("--operator-ca", type=Path, default=e("OPERATOR_CA"),
                   help="CA bundle the operator's certificate must chain to (pinned)")
    p.add_argument("--identity-token-file", type=Path, default=e("IDENTITY_TOKEN_FILE"),
                   help="the pod's projected service-account token for the operator")
    p.add_argument("--operator-address-file", type=Path, default=e("OPERATOR_ADDRESS_FILE"),
                   help="file holding the operator's IP: connect there, and check its "
                   "certificate against --operator-url's host name")
    p.add_argument("--fallback-configs", type=Path, default=e("FALLBACK_CONFIGS"),
                   help="the namespace's configs (configs.json of its ConfigMap "
                   "agent-router): with no state, start from this pod's")
    p.add_argument("--pod-labels-file", type=Path, default=e("POD_LABELS_FILE"),
                   help="the pod's labels (downward API), which pick its fallback config")
    p.add_argument("--max-config-mb", type=float,
                   default=float(e("MAX_CONFIG_MB", "4") or 4),
                   help="largest config document taken (PUT or delivered)")
    p.add_argument("--max-body-mb", type=float, default=float(e("MAX_BODY_MB", "32") or 32))
    p.add_argument(
        "--body-budget-mb",
        type=float,
        default=float(e("BODY_BUDGET_MB", "64") or 64),
        help="memory for large request bodies (over 1 MB) held at once; past it, 503",
    )
    p.add_argument("--read-timeout", type=float, default=float(e("READ_TIMEOUT", "30") or 30))
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=float(e("IDLE_TIMEOUT", "15") or 15),
        help="seconds before closing an idle connection or one still sending its headers",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=int(e("MAX_CONNECTIONS", "1000") or 1000),
        help="app port connections; past it, the oldest idle ones are closed",
    )
    p.add_argument(
        "--request-timeout", type=float, default=float(e("REQUEST_TIMEOUT", "600") or 600)
    )
    p.add_argument("--drain-timeout", type=float, default=float(e("DRAIN_TIMEOUT", "30") or 30))
    p.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default=e("LOOP", "auto"))
    p.add_argument(
        "--transport",
        choices=["http1", "aiohttp", "httpx"],
        default=e("TRANSPORT", "http1"),
        help="HTTP client for upstream calls (http1: see agent_sidecar.upstream)",
    )
    p.add_argument(
        "--server",
        choices=["http1", "aiohttp"],
        default=e("SERVER", "http1"),
        help="HTTP server of the app port (http1: see agent_sidecar.http1server)",
    )
    p.add_argument("--log-level", default=e("LOG_LEVEL", "info"))
    p.add_argument(
        "--access-log", action="store_true", default=e("ACCESS_LOG", "") in ("1", "true")
    )
    args = p.parse_args(argv)
    if args.operator_url and not (args.operator_url.startswith("https://")
                                  and args.operator_ca and args.identity_token_file):
        p.error("--operator-url needs https://, --operator-ca and --identity-token-file: "
                "the config holds API keys")
    if not is_loopback(args.admin_host):
        p.error(f"--admin-host {args.admin_host!r}: the admin port listens on a loopback "
                "address only (it takes configs with API keys)")
    return Settings(
        config=args.config,
        host=args.host,
        port=args.port,
        admin_host=args.admin_host,
        admin_port=args.admin_port,
        health_host=args.health_host,
        health_port=args.health_port,
        token=env.get("AGENT_SIDECAR_TOKEN") or None,
        token_file=args.token_file,
        state_dir=args.state_dir,
        operator_url=(args.operator_url or "").rstrip("/") or None,
        operator_ca=args.operator_ca,
        identity_token_file=args.identity_token_file,
        operator_address_file=args.operator_address_file,
        fallback_configs=args.fallback_configs,
        pod_labels_file=args.pod_labels_file,
        max_config_bytes=int(args.max_config_mb * 1024 * 1024),
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        body_budget_bytes=int(args.body_budget_mb * 1024 * 1024),
        read_timeout=args.read_timeout,
        idle_timeout=args.idle_timeout,
        max_connections=args.max_connections,
        request_timeout=args.request_timeout,
        drain_timeout=args.drain_timeout,
        loop=args.loop,
        transport=args.transport,
        server=args.server,
        log_level=args.log_level,
        access_log=args.access_log,
    )
