"""A real `redis-server` (Debian's package) on loopback, for the limits tests."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from support.controlplane import free_port


class RedisServer:
    """One redis-server on 127.0.0.1 without persistence: `kill()` loses every counter,
    `start()` brings an empty one back on the same port."""

    def __init__(
        self, directory: Path, args: tuple[str, ...] = (), scheme: str = "redis", **client: Any
    ) -> None:
        """`args`: more of redis-server's options (TLS, a password); `client`: what a
        client needs to reach it then (`ssl_ca_certs=`, `password=`)."""
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is missing: hack/test installs Debian's redis-server")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}/0"
        self.args, self.client_options = args, client
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        port = (
            ["--port", "0", "--tls-port", str(self.port)]
            if self.url.startswith("rediss:")
            else ["--port", str(self.port)]
        )
        args = [self.binary, *port, "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.directory), *self.args]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()
        ends = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > ends or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5, **self.client_options)
