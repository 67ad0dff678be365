"""What a sidecar starts from when it has no state and no operator answers: the config its
namespace's ConfigMap `agent-router` holds for its pod, mounted by the injection policy.

The ConfigMap's `configs.json` is `{"policies": {<policy>: <pod selector>}, "configs":
{"<policy>,<policy>": <document>}}`; the pod's labels (a downward API file, one
`key="value"` a line) pick the policies that select it, and so its document. Documents
hold no key: their agents name key files (`api_key_file`), read when the config is built.
When the pod's set of policies has no document (a set the operator had not seen yet), the
sidecar waits for the watch's config.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from agent.config import RouterConfig
from agent_sidecar.state import DocumentError, parse_document

log = logging.getLogger("agent_sidecar.fallback")


@dataclass(frozen=True)
class Fallback:
    configs_file: Path
    labels_file: Path

    def config(self) -> RouterConfig | None:
        """The pod's document, or None (said in the log) when there is none to start from."""
        try:
            mounted = orjson.loads(self.configs_file.read_bytes())
            labels = read_labels(self.labels_file.read_text())
        except (OSError, ValueError) as exc:
            log.info("no config to start from in %s (%s): waiting for the operator",
                     self.configs_file, getattr(exc, "strerror", None) or type(exc).__name__)
            return None
        policies = mounted.get("policies") or {}
        chosen = sorted(name for name, selector in policies.items()
                        if selects(selector or {}, labels))
        document = (mounted.get("configs") or {}).get(",".join(chosen))
        if not chosen or document is None:
            log.info("the namespace's configs have none for policies %s: waiting for the "
                     "operator", ",".join(chosen) or "(none select this pod)")
            return None
        try:
            return parse_document(orjson.dumps(document))
        except DocumentError as exc:
            log.error("the namespace's config for policies %s is refused: %s",
                      ",".join(chosen), str(exc).splitlines()[0])
            return None


def read_labels(text: str) -> dict[str, str]:
    """The downward API's labels file: `key="value"` lines, the value quoted as Go does."""
    labels = {}
    for line in text.splitlines():
        key, sep, quoted = line.partition("=")
        if sep:
            labels[key] = json.loads(quoted) if quoted.startswith('"') else quoted
    return labels


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A Kubernetes label selector (`matchLabels`, `matchExpressions`); empty selects all."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for req in selector.get("matchExpressions") or []:
        key, op, values = req.get("key"), req.get("operator"), req.get("values") or []
        present = key in labels
        if (op == "In" and (not present or labels[key] not in values)) or (
                op == "NotIn" and present and labels[key] in values) or (
                op == "Exists" and not present) or (op == "DoesNotExist" and present):
            return False
    return True
