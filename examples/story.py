"""Agent Router, the whole story, on a real (local) Kubernetes node.

A node starts in network, mount and PID namespaces of its own: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kube-proxy, the kubelet and containerd with the
images hack/images built (the pinned test binaries; nothing is pulled); Jaeger runs on
loopback. `helm install` deploys the operator in its pod; an AgentPool over two fake
providers (the primary overloaded) and a fallback RoutingPolicy are applied with
kubectl; the app's Deployment, labelled for injection, gets the sidecar (injected by the
API server, from the namespace's ConfigMap the operator keeps, where the cluster serves
admission policies), which watches the operator for its config; the app's openai SDK call falls back, and the
sidecar's headers, metrics and the trace in Jaeger say so; kubectl switches the policy
to round_robin; the operator's pod is deleted and comes back; the app rolls to a new
version. Each step prints what happened and where to look; then it waits (Enter or
Ctrl-C) before tearing down.

    hack/demo                      # ensures the binaries and images, then runs this
    python examples/story.py [--no-wait]   # with AGENT_ROUTER_ASSETS (and _IMAGES) set

The steps are tests/support/story.py's, the same ones tests/e2e/test_story.py asserts.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.story import POLICY, Story

COLOUR = sys.stdout.isatty()
STARTED = time.monotonic()


def bold(text: str) -> str:
    return f"\033[1m{text}\033[0m" if COLOUR else text


def dim(text: str) -> str:
    return f"\033[2m{text}\033[0m" if COLOUR else text


def title(number: int, text: str) -> None:
    print(f"\n{bold(f'== {number}. {text}')} {dim(f'({time.monotonic() - STARTED:.0f}s)')}",
          flush=True)


def say(text: str = "") -> None:
    print(f"   {text}" if text else "", flush=True)


def block(text: str, indent: str = "     ") -> None:
    for line in text.rstrip("\n").splitlines():
        print(f"{indent}{line}".rstrip())
    sys.stdout.flush()


def command(text: str) -> None:
    say(f"$ {text}")


def look(*commands: str) -> None:
    say(dim("look:") + f" {commands[0]}")
    for more in commands[1:]:
        say(f"      {more}")


def tell(story: Story, ns: str) -> None:
    """Every step, in order, printing what happened."""
    title(1, "A node, its control plane and Jaeger")
    story.start()
    cluster = story.cluster()
    node = story.node
    assert node is not None
    say(f"kube-apiserver {cluster.server}, with etcd, kube-controller-manager, kube-scheduler,")
    say(f"kube-proxy, the kubelet and containerd, in namespaces of their own (node IP "
        f"{cluster.node_ip}); ready in {node.ready_seconds:.0f}s, images imported in "
        f"{node.import_seconds:.0f}s:")
    block("\n".join(f"{name}: {ref}" for name, ref in cluster.images.items()))
    command("kubectl get nodes -o wide")
    block(cluster.nodes_table)
    say(f"Jaeger: query API at {cluster.jaeger_ui}; the pods export to {cluster.otlp_endpoint}")
    say("In another terminal, use kubectl against it:")
    block(f"export KUBECONFIG={cluster.kubeconfig}\n"
          f"export PATH={cluster.kubectl.parent}:$PATH")

    title(2, "helm install")
    installed = story.install_chart()
    command(installed.command)
    status = next((ln for ln in installed.notes.splitlines() if ln.startswith("STATUS:")), "")
    say(f"{status}; {len(installed.objects)} objects:")
    block("\n".join(installed.objects))
    say(f"CRDs (the chart's crds/): {', '.join(installed.crds)}")
    policy = next((o.split("/", 1)[1] for o in installed.objects
                   if o.startswith("MutatingAdmissionPolicy/")), "")
    injector = (f"mutatingadmissionpolicy {policy}" if policy
                else f"mutatingwebhookconfiguration {installed.webhook_name}")
    look(f"helm -n {installed.namespace} status {installed.release}   (the chart's notes)",
         f"kubectl get {injector} -o yaml")

    title(3, "The operator, in its Deployment's pod")
    up = story.wait_for_operator()
    say(f"pod {up.pod} Ready (image {up.image}), as {up.identity}")
    command(f"kubectl -n {installed.namespace} get pods -o wide")
    block(up.pods_table)
    if up.webhooks:
        say(f"webhook: {up.webhooks[0]}, registered by the operator")
    else:
        say(f"injected by the API server: MutatingAdmissionPolicy {policy} "
            "(the chart's injection.by=auto on a cluster that serves it): pods start while "
            "no operator replica runs")
    look(f"kubectl -n {installed.namespace} logs {up.pod}   (the operator's log)")

    title(4, "Two fake providers, an AgentPool and a RoutingPolicy (kubectl apply -f)")
    fakes = story.start_fakes()
    for kind, url in fakes.urls.items():
        role = f"the primary, {fakes.primary_behaviour}" if kind == fakes.primary else \
            "the secondary, answers"
        say(f"{kind} fake at {url}, reached by the pods at {fakes.node_urls[kind]} ({role})")
    applied = story.apply_pool_and_policy()
    for name in ("pool.yaml", "policy.yaml"):
        say(f"{name}:")
        block(applied.texts[name], "       ")
    say(f"(these files, and keys.yaml with the Secret, are in {applied.files['pool.yaml'].parent})")
    command(f"kubectl -n {ns} apply -f keys.yaml -f pool.yaml -f policy.yaml")
    block(applied.output)

    title(5, "The app's Deployment, labelled for injection")
    app = story.deploy_app()
    command(f"kubectl -n {ns} apply -f app.yaml   # label agentrouter.io/inject: \"true\"")
    say(f"pod/{app.pod}: initContainers: {', '.join(app.init_containers)} "
        f"(restartPolicy {app.sidecar.get('restartPolicy')}: a native sidecar)")
    say(f"image {app.sidecar.get('image')}, env:")
    block("\n".join(f"{k}={v}" for k, v in app.sidecar_env.items()))
    say("the app container's env gained: " +
        ", ".join(f"{k}={v}" for k, v in app.app_env.items()))
    say(f"Ready {app.ready_after:.0f}s after kubectl apply (the sidecar's startup probe "
        f"waited for a config: its namespace's, or the operator's); events:")
    block("\n".join(app.events))
    command(f"kubectl -n {ns} get pod {app.pod} -o wide")
    block(app.pod_table)

    title(6, "The sidecar watched the operator for its config")
    configured = story.wait_for_config()
    say("over TLS (the operator's CA trusted), with the pod's projected service-account "
        "token, which the operator checks with a TokenReview")
    say(f"the sidecar serves config version {configured.version}: route "
        f"{configured.routes[0]}, {configured.strategy} over "
        + " -> ".join(a["name"] for a in configured.agents)
        + f" (api keys {configured.agents[0]['api_key']})")
    say(f"RoutingPolicy {POLICY}: synced {configured.status['synced']} (acknowledged "
        f"{configured.hash}), Ready True")
    command(f"kubectl -n {ns} get agentrouter")
    block(story.kubectl("get", "agentrouter", "-n", ns))
    look(f"kubectl -n {ns} describe routingpolicy {POLICY}")

    title(7, "The app asks, with the official openai SDK, in its pod")
    call = story.ask()
    say(f"POST /ask to the app's Service; in pod {call.pod}, examples/chat-app/app.py does:")
    block(call.app_code)
    say(f"answer: {call.answer!r}")
    for name in ("x-agent-provider", "x-agent-model", "x-agent-attempts",
                 "x-agent-route-reason"):
        say(f"{name}: {call.headers[name]}")

    title(8, "The sidecar's metrics (health port, what Prometheus scrapes)")
    metrics = story.metrics()
    command(f"kubectl -n {ns} exec {app.pod} -c agent-sidecar -- python3 -c "
            "\"import urllib.request as u; print(u.urlopen('http://127.0.0.1:4002/metrics')"
            ".read().decode())\"")
    block("\n".join(ln for ln in metrics.lines if "config_version" not in ln))
    say("its admin API (config, reload) listens on the pod's loopback only, with the token "
        "the sidecar made:")
    command(f"kubectl -n {ns} exec {app.pod} -c agent-sidecar -- "
            "cat /var/lib/agent-sidecar/admin-token")

    title(9, "The trace, in Jaeger")
    trace = story.find_trace(call.trace_id)
    say(f"trace id: {trace.trace_id} (the app's span; the sidecar continued it)")
    block("\n".join(trace.tree()))
    say("no prompt text and no key in it: attributes only")
    command(f"curl -s {trace.api_url}")
    say(f"Jaeger UI: {trace.ui_url}")

    title(10, "kubectl switches the policy to round_robin")
    switched = story.switch_strategy("round_robin", requests=4)
    say("the anthropic fake is healthy again")
    command(f"kubectl -n {ns} apply -f policy.yaml   # strategy.type: round_robin")
    say(switched.command)
    say(f"the sidecar serves config version {switched.version}")
    say(f"4 requests, answered by: {', '.join(switched.providers)}")
    say("the fakes received: " + ", ".join(f"{k} {v}" for k, v in switched.received.items()))

    title(11, "The operator's pod is deleted; the app keeps serving")
    deleted = story.delete_operator_pod()
    command(f"kubectl -n {story.system_namespace} delete pod {deleted.pod}")
    say(deleted.output)
    say(f"a request meanwhile: answered by {deleted.during.headers['x-agent-provider']} "
        f"(config version {deleted.during.headers['x-agent-config-version']})")
    changed = story.apply_policy("fallback")
    command(f"kubectl -n {ns} apply -f policy.yaml   # strategy.type: fallback")
    say(f"generation {changed.generation}, while the other replica ({', '.join(deleted.others)}) "
        "serves the sidecars' watches and the Deployment replaces the deleted pod")

    title(12, "The Deployment's new operator pod, and the status caught up")
    recovered = story.wait_for_new_operator()
    caught_up = recovered.status
    say(f"pod {recovered.pod} Ready; status: observedGeneration "
        f"{caught_up['observedGeneration']}, synced {caught_up['synced']}, Ready True")
    say(f"the sidecar serves {recovered.served_strategy} (config version {recovered.version})")
    command(f"kubectl -n {ns} get routingpolicies")
    block(recovered.policies_table)
    command(f"kubectl -n {ns} get agentrouter")
    block(recovered.agentrouter_table)

    title(13, "A rolling update of the app")
    rolled = story.roll_app()
    command(rolled.command)
    command(f"kubectl -n {ns} rollout status deployment/chat")
    say(rolled.rollout.splitlines()[-1])
    say(f"{rolled.old_pod} -> {rolled.new_pod}: injected, configured (synced "
        f"{rolled.status['synced']}), Ready")
    say(f"and a request: answered by {rolled.call.headers['x-agent-provider']} in "
        f"{rolled.call.pod} ({rolled.call.headers['x-agent-route-reason']})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--no-wait", action="store_true",
                   help="tear down at the end instead of waiting for Enter (CI, tests)")
    args = p.parse_args(argv)

    def terminate(signum: int, _: Any) -> None:
        raise SystemExit(128 + signum)  # tear down in the finally below

    signal.signal(signal.SIGTERM, terminate)
    story = Story()
    ns = story.namespace
    print(bold("Agent Router: the whole story, on a real Kubernetes node"))
    print(dim("(the pinned Kubernetes binaries, containerd and the images hack/images built; "
              "fake providers on loopback; nothing leaves this machine)"))
    code = 0
    try:
        tell(story, ns)
        print(f"\n{bold('Done.')} Everything still runs: try the commands above "
              f"(after the two exports of step 1).")
        if not args.no_wait:
            try:
                input("Press Enter (or Ctrl-C) to tear everything down... ")
            except EOFError:
                pass
    except KeyboardInterrupt:
        print()
    except Exception:
        traceback.print_exc()
        print(f"\nthe story stopped here; work directory {story.workdir} (logs in "
              f"node/logs)", file=sys.stderr)
        code = 1
    finally:
        print("Tearing down...", flush=True)
        story.close(keep_workdir=code != 0)
    return code


if __name__ == "__main__":
    sys.exit(main())
