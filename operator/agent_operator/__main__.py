"""`agent-operator`: watch AgentPools and RoutingPolicies, keep sidecars in sync, inject
sidecars into opted-in pods.

    agent-operator --all-namespaces                    # in a cluster (see the Helm chart)
    agent-operator --namespace team-a --standalone     # one namespace, no peering
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import sys
from pathlib import Path

import kopf


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="agent-operator", description=__doc__.splitlines()[0])
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[],
                       help="watch this namespace (repeatable; globs allowed)")
    scope.add_argument("-A", "--all-namespaces", action="store_true")
    peering = p.add_mutually_exclusive_group()
    peering.add_argument("--standalone", action="store_true",
                         help="no peering: only for a single replica")
    peering.add_argument("--peering", default=os.environ.get("AGENT_OPERATOR_PEERING",
                                                             "agent-router"),
                         help="kopf peering name: replicas that share it never act at once")
    p.add_argument("--priority", type=int,
                   default=int(os.environ.get("AGENT_OPERATOR_PRIORITY", "0"))
                   or random.randint(1, 1_000_000),
                   help="peering priority; replicas draw distinct random ones by default, so "
                   "exactly one acts and the next takes over when it dies")
    p.add_argument("--no-webhook", action="store_true", help="do not serve sidecar injection")
    p.add_argument("--webhook-addr", default=os.environ.get("AGENT_OPERATOR_WEBHOOK_ADDR",
                                                            "0.0.0.0"))
    p.add_argument("--webhook-port", type=int,
                   default=int(os.environ.get("AGENT_OPERATOR_WEBHOOK_PORT", "9443")))
    p.add_argument("--webhook-host", default=os.environ.get("AGENT_OPERATOR_WEBHOOK_HOST"),
                   help="host name or IP the apiserver dials (the Service's DNS name)")
    p.add_argument("--webhook-service", default=os.environ.get("AGENT_OPERATOR_WEBHOOK_SERVICE")
                   or None, help="<namespace>/<name>:<port> of the webhook's Service: "
                   "registered as a service reference (in a cluster); default: the URL")
    p.add_argument("--webhook-cert-dir", type=Path,
                   default=os.environ.get("AGENT_OPERATOR_WEBHOOK_CERT_DIR") or None,
                   help="tls.crt, tls.key and ca.crt (e.g. from cert-manager); "
                   "default: a self-signed CA made at start")
    p.add_argument("--webhook-name", default=os.environ.get("AGENT_OPERATOR_WEBHOOK_NAME",
                                                            "sidecar-injector.agentrouter.io"))
    p.add_argument("--liveness", default=os.environ.get("AGENT_OPERATOR_LIVENESS"),
                   help="e.g. http://0.0.0.0:8080/healthz")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)

    from agent_operator import handlers

    handlers.options.peering = not args.standalone
    handlers.options.webhook = not args.no_webhook
    if handlers.options.webhook:
        handlers.serve_injection()
    handlers.options.webhook_addr = args.webhook_addr
    handlers.options.webhook_port = args.webhook_port
    handlers.options.webhook_host = args.webhook_host
    handlers.options.webhook_cert_dir = args.webhook_cert_dir
    if args.webhook_service:
        try:  # a typo fails at start, not at the first admission
            handlers.options.webhook_service = handlers.parse_service(args.webhook_service)
        except ValueError as exc:
            p.error(str(exc))
    handlers.options.webhook_name = args.webhook_name
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.PLAIN)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    asyncio.run(kopf.operator(
        clusterwide=args.all_namespaces or not args.namespace,
        namespaces=args.namespace,
        standalone=args.standalone,
        peering_name=None if args.standalone else args.peering,
        priority=args.priority,
        liveness_endpoint=args.liveness,
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
