"""Helpers for the sidecar tests: config documents for fakes, and real sidecar processes."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fakes import FakeProvider

TOKEN = "s3cret-admin-token"
ROOT = Path(__file__).resolve().parents[2]


def agent_spec(fake: FakeProvider, name: str, **overrides: Any) -> dict[str, Any]:
    """An agent of the config document that calls `fake` (explicit URL and key)."""
    spec: dict[str, Any] = {
        "name": name,
        "provider": fake.kind,
        "model": fake.model_default,
        "base_url": fake.base_url,
        "api_key": fake.api_key or "test-key",
        "timeout": 10,
    }
    spec.update(overrides)
    return spec


def document(
    agents: Sequence[dict[str, Any]],
    routes: Sequence[dict[str, Any]] | None = None,
    *,
    version: int = 1,
    default_route: str | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": version,
        "agents": list(agents),
        "routes": list(routes or [{"name": "default", "agents": [a["name"] for a in agents]}]),
    }
    if default_route is not None:
        doc["default_route"] = default_route
    return doc


def fast_route(name: str, agents: Sequence[str], **overrides: Any) -> dict[str, Any]:
    """A route that falls back at once (no retry, no backoff) for quick tests."""
    return {"name": name, "agents": list(agents), "retries": 0, "backoff": 0, **overrides}


# The app port's server every sidecar of the tests runs (`--server`): set
# AGENT_TEST_SIDECAR_SERVER=aiohttp or http1 to run a whole directory on either.
SERVER = os.environ.get("AGENT_TEST_SIDECAR_SERVER", "")
SERVER_ENV = {"AGENT_SIDECAR_SERVER": SERVER} if SERVER else {}
SERVER_SETTING = {"server": SERVER} if SERVER else {}  # for a Settings made in the tests


class SidecarProcess:
    """`python -m agent_sidecar ...` as a real process; waits for its READY line."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        full_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AGENT_SIDECAR_"))
        }
        full_env.update(SERVER_ENV)
        full_env.update(env or {})
        self.started = time.perf_counter()
        # stderr to a file: a pipe nobody reads could fill up and block the sidecar
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent_sidecar", *args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=full_env,
            cwd=ROOT,
        )
        self.app_url = ""
        self.admin_url = ""
        self.health_url = ""  # when started with --health-port
        self.ready_after = 0.0

    def wait_ready(self, timeout: float = 15.0) -> SidecarProcess:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                line = self.proc.stdout.readline().decode()
                if line.startswith("READY "):
                    self.ready_after = time.perf_counter() - self.started
                    fields = dict(p.split("=", 1) for p in line.split()[1:])
                    self.app_url, self.admin_url = fields["app"], fields["admin"]
                    self.health_url = fields.get("health", "")
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"the sidecar exited {self.proc.returncode}: {self.stderr()}")
        raise TimeoutError(f"the sidecar was not ready in {timeout}s: {self.stderr()}")

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def stderr(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, a drain of up to `timeout` seconds, then SIGKILL if it is still there."""
        self.terminate()
        try:
            self.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


async def first_line(port: int, data: bytes, timeout: float = 20) -> bytes:
    """Send raw bytes on a fresh connection; the answer's status line (b"" if the
    connection was closed without one)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), timeout=timeout)
    except ConnectionError:
        return b""
    finally:
        writer.close()
