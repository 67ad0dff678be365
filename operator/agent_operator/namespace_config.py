"""The namespace's ConfigMap `agent-router`: what a pod that the API server injected starts
from while no operator replica answers. The operator keeps one in each namespace it
reconciles (when run with --namespace-configs); the injection policy takes it as params
and mounts it.

    data:
      ca.crt        the CA bundle of the operator's certificate (the old and the new CA
                    while it rotates: the kubelet refreshes the mounted file in running
                    pods too, so a rotation strands no pod)
      address       the operator Service's ClusterIP: the sidecar connects there and checks
                    the certificate against the Service's DNS name (no cluster DNS needed)
      configs.json  {"policies": {<policy>: <its pod selector>},
                     "configs": {"<policy>,<policy>": <document>}}
      keys          <secret>/<key>,... : the Secret keys the documents name as files

A pod's sidecar picks the document of the policies whose selectors match its labels. One
document per set of policies that selects a pod the operator knows, and per single
policy (a first pod with new labels is usually selected by one). No key is in it: the
documents name key files (`api_key_file`, where the injection policy mounts the user's
Secret keys), so no Secret is ever written by the operator. Nor is the limits store (its
password is a secret): until the watch's config arrives, a pod counts its limits in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

import orjson

from agent_operator import kube
from agent_operator.compile import Policy, Problem, compile_policies, key_path, selects
from agent_operator.inject import ADDRESS_KEY, CA_KEY, CONFIG_MAP, CONFIGS_KEY, KEYS_KEY
from agent_operator.resources import AgentPoolSpec

log = logging.getLogger("agent_operator.namespace_config")


def policy_sets(policies: Sequence[Policy],
                pod_labels: Iterable[Mapping[str, str]]) -> set[frozenset[str]]:
    """The sets of policies to compile a document for: each pod's, and each policy alone."""
    sets = {frozenset([p.name]) for p in policies}
    for labels in pod_labels:
        chosen = frozenset(p.name for p in policies if selects(p.spec.selector, labels))
        if chosen:
            sets.add(chosen)
    return sets


def config_map_data(ca_bundle: bytes, address: str, policies: Sequence[Policy],
                    pools: Mapping[str, AgentPoolSpec],
                    problems: Mapping[str, list[Problem]],
                    pod_labels: Iterable[Mapping[str, str]], namespace: str) -> dict[str, str]:
    # A missing Secret is a missing file in the pod, which fails only that agent's calls:
    # the document is still the best a pod can start from.
    usable = {p.name: [x for x in problems.get(p.name, []) if not x.reason.startswith("Secret")]
              for p in policies}
    by_name = {p.name: p for p in policies}
    configs: dict[str, object] = {}
    for names in sorted(policy_sets(policies, pod_labels), key=sorted):
        compiled = compile_policies([by_name[n] for n in names], pools, {}, namespace,
                                    problems=usable, key_files=True)
        if compiled.config is not None:
            configs[",".join(sorted(names))] = compiled.config.model_dump(
                mode="json", exclude_none=True)
    keys = sorted({key_path(a.api_key_secret_ref.name, a.api_key_secret_ref.key)
                   for p in policies for pool in p.spec.pools if pool in pools
                   for a in pools[pool].agents if a.api_key_secret_ref})
    selectors = {p.name: p.spec.selector.model_dump(by_alias=True, exclude_none=True)
                 for p in policies}
    return {
        CA_KEY: ca_bundle.decode(),
        ADDRESS_KEY: address,
        CONFIGS_KEY: orjson.dumps({"policies": selectors, "configs": configs},
                                  option=orjson.OPT_SORT_KEYS).decode(),
        KEYS_KEY: ",".join(keys),
    }


class NamespaceConfigs:
    """Writes each namespace's ConfigMap when what it holds changes."""

    def __init__(self, ca_bundle: Callable[[], bytes | None], address: str) -> None:
        self.ca_bundle, self.address = ca_bundle, address
        self._written: dict[str, dict[str, str]] = {}

    async def keep(self, namespace: str, policies: Sequence[Policy],
                   pools: Mapping[str, AgentPoolSpec], problems: Mapping[str, list[Problem]],
                   pod_labels: Iterable[Mapping[str, str]]) -> None:
        ca = self.ca_bundle()
        if ca is None:
            return  # not serving TLS yet: the next reconcile writes it
        data = config_map_data(ca, self.address, policies, pools, problems, pod_labels,
                               namespace)
        if self._written.get(namespace) == data:
            return
        await kube.write_config_map(namespace, CONFIG_MAP, data)
        self._written[namespace] = data
        log.info("wrote ConfigMap %s/%s (%d policies)", namespace, CONFIG_MAP, len(policies))
