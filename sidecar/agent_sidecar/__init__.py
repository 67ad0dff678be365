"""The per-pod routing sidecar: the engine behind OpenAI- and Anthropic-compatible
endpoints on localhost, with an admin port for config pushes, health and metrics.

    agent-sidecar --config router.yaml        # or no file: wait for PUT /config

Embedding (tests, other tools): `Sidecar(Settings(...))`, see `agent_sidecar.server`.
"""

from agent_sidecar.server import Sidecar
from agent_sidecar.settings import Settings, parse_args

__all__ = ["Settings", "Sidecar", "parse_args"]
