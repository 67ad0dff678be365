"""`agent-operator`: watch AgentPools and RoutingPolicies, keep sidecars in sync, inject
sidecars into opted-in pods.

    agent-operator --all-namespaces --lease agent-router/agent-router \\
        --webhook-cert-secret agent-router/agent-router-webhook-tls      # in a cluster
    agent-operator --namespace team-a --no-webhook                       # one namespace
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import ctypes
import logging
import sys

import kopf

from agent_operator import handlers, options


def main(argv: list[str] | None = None) -> int:
    opts = options.parse(argv)
    _few_malloc_arenas()
    _small_tls_read_buffers()
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


def _few_malloc_arenas() -> None:
    """API calls run in worker threads, and glibc gives each thread a heap (arena) of its
    own, up to 8 per core: with a thousand sidecars' token reviews the process kept
    hundreds of MB in half-empty arenas. Two arenas hold the same work."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 2)


_M_ARENA_MAX = -8  # glibc's malloc.h


def _small_tls_read_buffers() -> None:
    """asyncio gives every TLS connection a 256 KiB read buffer, zero-filled when it opens:
    a thousand sidecars' watches held 250 MB of them. Reads of 16 KiB, the most one TLS
    record carries, hold the same connections in 16 MB; a larger body only takes more
    reads."""
    asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


TLS_READ_BUFFER = 16 * 1024


if __name__ == "__main__":
    sys.exit(main())
