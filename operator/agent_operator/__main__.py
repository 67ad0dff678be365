"""`agent-operator`: watch AgentPools and RoutingPolicies, keep sidecars in sync, inject
sidecars into opted-in pods.

    agent-operator --all-namespaces --lease agent-router/agent-router \\
        --webhook-cert-secret agent-router/agent-router-webhook-tls      # in a cluster
    agent-operator --namespace team-a --no-webhook                       # one namespace
"""

from __future__ import annotations

import asyncio
import logging
import sys

import kopf

from agent_operator import handlers, options


def main(argv: list[str] | None = None) -> int:
    opts = options.parse(argv)
    if opts.webhook:
        handlers.serve_injection()
    kopf.configure(verbose=opts.verbose, log_format=kopf.LogFormat.PLAIN)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    asyncio.run(kopf.operator(
        clusterwide=not opts.namespaces,
        namespaces=opts.namespaces,
        # The Lease decides which replica acts; kopf's own peering is not used.
        standalone=True,
        memo=handlers.Operator(opts),
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
