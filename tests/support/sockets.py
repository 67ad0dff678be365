"""Which addresses a process listens on, read from its own sockets (/proc): its file
descriptors, and the TCP tables of the network namespace it is in (a pod's, for a
process of a pod on the test node)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

LISTEN = "0A"  # TCP state in /proc/net/tcp*


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the process listens on."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = set()
    for table, width in (("tcp", 4), ("tcp6", 16)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != LISTEN or inode not in inodes:
                continue
            hex_addr, hex_port = local.split(":")
            # The kernel prints each 32-bit word in host (little-endian) order.
            raw = b"".join(bytes.fromhex(hex_addr[i:i + 8])[::-1]
                           for i in range(0, 2 * width, 8))
            found.add((str(ipaddress.ip_address(raw)), int(hex_port, 16)))
    return found


def off_loopback(sockets: set[tuple[str, int]]) -> set[int]:
    """The ports among `sockets` that listen on some address other than loopback."""
    return {port for address, port in sockets if not ipaddress.ip_address(address).is_loopback}
