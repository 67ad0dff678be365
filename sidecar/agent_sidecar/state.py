"""The config being served: validated whole, swapped atomically, never replaced by an
older version, and persisted so that a restarted sidecar serves the last good config
before the operator calls again.

Version rules for a pushed document:

    newer version                -> applied (persisted, then swapped in)
    same version, same content   -> unchanged (the operator re-pushing is a no-op)
    same version, other content  -> refused, 409: bump the version
    older version                -> refused, 409

At start the `--config` file and the persisted state are both read; the higher
version serves, and a tie goes to the file (the person starting the process chose it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson

from agent.config import RouterConfig, load_config, parse_config, yaml_error
from agent.errors import ConfigurationError
from agent.transport import AsyncTransport
from agent_sidecar.routes import Loaded

log = logging.getLogger("agent_sidecar.state")

STATE_FILE = "config.json"


class DocumentError(Exception):
    """A pushed document that is not a valid config; the message says what to fix."""


def parse_document(body: bytes) -> RouterConfig:
    """A pushed config document (JSON or YAML) validated whole."""
    if not body.strip():
        raise DocumentError("the body is empty: send the config document as JSON or YAML")
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise DocumentError("the body is not UTF-8 text") from None
    try:
        if len(body) > _OWN_PROCESS_YAML and not text.lstrip().startswith("{"):
            data = _yaml_elsewhere(body)
            if data is not None:
                return parse_config(data)
        return parse_config(text)
    except ConfigurationError as exc:
        raise DocumentError(exc.message) from None


_OWN_PROCESS_YAML = 256 * 1024  # larger YAML documents are parsed in a process of their own
_YAML_TO_JSON = str(Path(__file__).with_name("yaml_to_json.py"))


def _yaml_elsewhere(body: bytes) -> dict[str, object] | None:
    """A large YAML document's data, parsed by a child process (see yaml_to_json.py):
    waiting for it lets go of the interpreter lock, parsing it here would not. None when
    the child could not say (a value JSON cannot carry): then it is parsed here."""
    try:
        child = subprocess.run(
            [sys.executable, _YAML_TO_JSON], input=body, capture_output=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if child.returncode == 3:
        where = orjson.loads(child.stdout)
        raise yaml_error(where["problem"], where.get("line"), where.get("column"))
    if child.returncode != 0:
        return None
    data = orjson.loads(child.stdout)
    return data if isinstance(data, dict) else None


@dataclass(frozen=True, slots=True)
class Outcome:
    result: Literal["applied", "unchanged", "stale", "conflict"]
    version: int
    previous: int | None
    warning: str | None = None


class ConfigStore:
    def __init__(
        self, state_dir: Path | None = None, transport: AsyncTransport | None = None
    ) -> None:
        self.state_dir = state_dir
        self.transport = transport  # every loaded config's routers call upstream with it
        self.loaded: Loaded | None = None
        self._lock = asyncio.Lock()

    @property
    def state_file(self) -> Path | None:
        return self.state_dir / STATE_FILE if self.state_dir else None

    def load_at_start(self, path: Path | None) -> Loaded | None:
        """Serve the --config file or the persisted state, whichever is newer.
        A bad file raises ConfigurationError (OSError if unreadable); a bad state file
        is logged and ignored."""
        from_file = load_config(path) if path is not None else None
        from_state = self._read_state()
        if from_file is not None and (
            from_state is None or from_file.version >= from_state.version
        ):
            self.loaded = Loaded.build(from_file, "file", self.transport)
        elif from_state is not None:
            self.loaded = Loaded.build(from_state, "state", self.transport)
        return self.loaded

    async def push(self, config: RouterConfig, document: bytes | None = None) -> Outcome:
        """Apply `config` if it is newer. `document`: the bytes it was validated from,
        persisted as they are (re-serializing thousands of agents would hold the GIL,
        and so the app's requests, for tens of milliseconds)."""
        async with self._lock:  # one push at a time: the version check and swap are one step
            current = self.loaded
            previous = current.version if current else None
            if current is not None:
                if config.version < current.version:
                    return Outcome("stale", config.version, previous)
                if config.version == current.version:
                    same = config == current.config
                    return Outcome("unchanged" if same else "conflict", config.version, previous)
            # Off the event loop: routers for thousands of agents take a while to build.
            loaded = await asyncio.to_thread(
                Loaded.build, config, "push", self.transport, current
            )
            await asyncio.to_thread(loaded.warm)
            warning = None
            if self.state_dir is not None:
                try:
                    await asyncio.to_thread(self._persist, config, document)
                except OSError as exc:
                    # Serving the new config matters more than remembering it.
                    warning = f"applied but not persisted: {exc.strerror or exc}"
                    log.error("could not persist config version %d: %s", config.version, exc)
            self.loaded = loaded  # the swap: requests already running keep their snapshot
            return Outcome("applied", config.version, previous, warning)

    def _persist(self, config: RouterConfig, document: bytes | None) -> None:
        assert self.state_dir is not None
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = document if document is not None else orjson.dumps(config.document())
        write_private(self.state_dir / STATE_FILE, data)  # JSON, or the YAML pushed

    def _read_state(self) -> RouterConfig | None:
        path = self.state_file
        if path is None or not path.exists():
            return None
        try:
            return parse_document(path.read_bytes())
        except (OSError, DocumentError) as exc:
            log.warning("ignoring the persisted config %s: %s", path, exc)
            return None


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read, atomically (temp file + rename + fsync):
    a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a leftover temp file
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
