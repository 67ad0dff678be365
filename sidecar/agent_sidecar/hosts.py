"""Which requests a browser could have sent, for the app port to refuse.

A local model server on `127.0.0.1` is reachable from every web page the developer
opens: a page may POST `text/plain` to it (no preflight), and DNS rebinding points a
page's own name at `127.0.0.1`. Browsers always send `Origin` on a cross-site POST and
the page's name as `Host`; the SDKs and servers that are the sidecar's real callers send
no `Origin` and a loopback `Host`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping

LOOPBACK_NAMES = frozenset({"localhost", "localhost."})
WILDCARDS = frozenset({"0.0.0.0", "::", ""})  # listening on every address: any Host


def foreign(headers: Mapping[str, str], allowed: Collection[str]) -> str | None:
    """Why these request headers look like a browser's or a foreign name's, else None.
    `allowed`: the names besides loopback the port answers to (its own address)."""
    if "Origin" in headers:
        return "requests from web pages are refused: the request carries an Origin header"
    host = headers.get("Host")
    if host is None or not WILDCARDS.isdisjoint(allowed):
        return None
    name = _name(host)
    if name in allowed or name in LOOPBACK_NAMES or _is_loopback(name):
        return None
    return "the Host header must name this machine (localhost or a loopback address)"


def _name(host: str) -> str:
    """`Host` without its port: `[::1]:4000` -> `::1`, `localhost:4000` -> `localhost`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _is_loopback(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
