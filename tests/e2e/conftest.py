"""The e2e tests' node: a real kubelet, containerd and the rest (tests/support/node.py),
started once per session next to its own control plane, stopped at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.controlplane import KEEP_ENV, skip_requested
from support.node import Node, node_inputs, start_node


def short_workdir() -> Path:
    """A node's work directory: short, as containerd's sockets live in it and a socket's
    path holds at most 107 bytes (pytest's tmp_path in an xdist worker is longer)."""
    return Path(tempfile.mkdtemp(prefix="agent-router-node-"))


@pytest.fixture
def node_workdir() -> Iterator[Path]:
    """A `short_workdir()` for a node of the test's own, removed after the test."""
    workdir = short_workdir()
    yield workdir
    if not os.environ.get(KEEP_ENV):
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def node() -> Iterator[Node]:
    if skip_requested():
        pytest.skip("AGENT_ROUTER_SKIP_CONTROLPLANE is set (explicit opt-out)")
    assets, images = node_inputs()
    workdir = short_workdir()
    try:
        started = start_node(workdir, assets, images)
    except Exception as exc:  # the workdir (logs) is kept for inspection
        pytest.fail(f"the node did not start: {exc}\n(kept {workdir})", pytrace=False)
    try:
        yield started
    finally:
        started.stop()
        if not os.environ.get(KEEP_ENV):
            shutil.rmtree(workdir, ignore_errors=True)
