"""Agent Router, the whole story, on a real (local) Kubernetes control plane.

etcd + kube-apiserver and Jaeger start on loopback from the pinned test binaries;
`helm install` installs the chart; the operator runs as the chart's service account; an
AgentPool over two fake providers (the primary overloaded) and a fallback RoutingPolicy
are applied with kubectl; a labelled pod is injected with the sidecar, which then runs
for real at the pod's IP; an app request with the official openai SDK falls back, and
the sidecar's headers, metrics and the trace in Jaeger say so; kubectl switches the
policy to round_robin; the operator is killed and restarted. Each step prints what
happened and where to look; then it waits (Enter or Ctrl-C) before tearing down.

    hack/demo                      # ensures the test binaries, then runs this
    python examples/story.py [--no-wait]   # with AGENT_ROUTER_ASSETS set

The steps are tests/support/story.py's, the same ones tests/e2e/test_story.py asserts.
There is no kubelet: the demo plays its part for the one pod (sets its status, runs its
sidecar as a local process with the injected environment).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.story import POD, POLICY, Story

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
    title(1, "A control plane and Jaeger, on loopback")
    story.start()
    cluster = story.cluster()
    say(f"kube-apiserver {cluster.server} (etcd behind it; no kubelet, no scheduler)")
    say(f"Jaeger: OTLP in at {cluster.otlp_endpoint}, query API at {cluster.jaeger_ui}")
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
    look(f"helm -n {installed.namespace} status {installed.release}   (the chart's notes)",
         f"kubectl get mutatingwebhookconfiguration {installed.webhook_name} -o yaml")

    title(3, "The operator, as the chart's service account")
    up = story.start_operator()
    say(f"agent-operator {' '.join(up.args)}   (pid {up.pid})")
    say(f"as {up.identity}, with the env of the chart's Deployment")
    say("(the Deployment's pod cannot run without a kubelet: this is its container's command)")
    say(f"webhook: {up.webhooks[0]}, filled in by the operator")
    look(f"less {up.log}   (the operator's log)")

    title(4, "Two fake providers, an AgentPool and a RoutingPolicy (kubectl apply -f)")
    fakes = story.start_fakes()
    for kind, url in fakes.urls.items():
        role = f"the primary, {fakes.primary_behaviour}" if kind == fakes.primary else \
            "the secondary, answers"
        say(f"{kind} fake at {url} ({role})")
    applied = story.apply_pool_and_policy()
    for name in ("pool.yaml", "policy.yaml"):
        say(f"{name}:")
        block(applied.texts[name], "       ")
    say(f"(these files, and keys.yaml with the Secret, are in {applied.files['pool.yaml'].parent})")
    command(f"kubectl -n {ns} apply -f keys.yaml -f pool.yaml -f policy.yaml")
    block(applied.output)

    title(5, "A pod that asks for the sidecar: the webhook injects it")
    pod = story.create_pod()
    command(f"kubectl -n {ns} apply -f pod.yaml   # label agentrouter.io/inject: \"true\"")
    say(f"pod/{POD} as stored: initContainers: {', '.join(pod.init_containers)} "
        f"(restartPolicy {pod.sidecar.get('restartPolicy')}: a native sidecar)")
    say(f"image {pod.sidecar.get('image')}, env:")
    block("\n".join(f"{k}={v}" for k, v in pod.sidecar_env.items()))
    say("the app container's env gained: " +
        ", ".join(f"{k}={v}" for k, v in pod.app_env.items()))
    look(f"kubectl -n {ns} get pod {POD} -o yaml")

    title(6, "The pod runs (the kubelet's part, played here)")
    sidecar = story.start_sidecar()
    say(f"agent-sidecar (pid {sidecar.pid}) with the injected env, at the pod's IP {sidecar.ip}:")
    say(f"app {sidecar.app_url}, admin {sidecar.admin_url}")
    say(f"pod/{POD} marked Running and Ready, podIP {sidecar.ip}")
    command(f"kubectl -n {ns} get pod {POD} -o wide")
    block(sidecar.pod_table)

    title(7, "The operator pushes the config to the sidecar")
    pushed = story.wait_for_config()
    say(f"the sidecar serves config version {pushed.version}: route {pushed.routes[0]}, "
        f"{pushed.strategy} over " + " -> ".join(a["name"] for a in pushed.agents) +
        f" (api keys {pushed.agents[0]['api_key']})")
    say(f"RoutingPolicy {POLICY}: synced {pushed.status['synced']}, Ready True")
    command(f"kubectl -n {ns} get agentrouter")
    block(story.kubectl("get", "agentrouter", "-n", ns))
    look(f"kubectl -n {ns} describe routingpolicy {POLICY}")

    title(8, "The app asks, with the official openai SDK")
    call = story.ask()
    block(call.app_code.replace("PROMPT", json.dumps(call.prompt)))
    say(f"answer: {call.answer!r}")
    for name in ("x-agent-provider", "x-agent-model", "x-agent-attempts",
                 "x-agent-route-reason"):
        say(f"{name}: {call.headers[name]}")

    title(9, "The sidecar's metrics (admin port)")
    metrics = story.metrics()
    command(f"curl -s {metrics.url} | grep -E 'requests_total|attempts_total|fallbacks'")
    block("\n".join(ln for ln in metrics.lines if "config_version" not in ln))

    title(10, "The trace, in Jaeger")
    trace = story.find_trace(call.trace_id)
    say(f"trace id: {trace.trace_id} (the app's span; the sidecar continued it)")
    block("\n".join(trace.tree()))
    say("no prompt text and no key in it: attributes only")
    command(f"curl -s {trace.api_url}")
    say(f"Jaeger UI: {trace.ui_url}")

    title(11, "kubectl switches the policy to round_robin")
    switched = story.switch_strategy("round_robin", requests=4)
    say("the anthropic fake is healthy again")
    command(f"kubectl -n {ns} apply -f policy.yaml   # strategy.type: round_robin")
    say(switched.command)
    say(f"pushed: config version {switched.version}")
    say(f"4 requests, answered by: {', '.join(switched.providers)}")
    say("the fakes received: " + ", ".join(f"{k} {v}" for k, v in switched.received.items()))

    title(12, "The operator dies (SIGKILL); the sidecar keeps serving")
    killed = story.kill_operator()
    say(f"agent-operator pid {killed.pid}: {killed.signal}, exit code {killed.exit_code}")
    during = story.ask()
    say(f"a request meanwhile: answered by {during.headers['x-agent-provider']} "
        f"(config version {during.headers['x-agent-config-version']})")
    changed = story.apply_policy("fallback")
    command(f"kubectl -n {ns} apply -f policy.yaml   # strategy.type: fallback, no operator")
    say(f"generation {changed.generation}, status.observedGeneration still "
        f"{changed.observed_generation}; the sidecar still serves {changed.served_strategy}")

    title(13, "The operator comes back and catches up")
    recovered = story.restart_operator()
    caught_up = recovered.status
    say(f"agent-operator pid {recovered.pid}; status: observedGeneration "
        f"{caught_up['observedGeneration']}, synced {caught_up['synced']}, Ready True")
    say(f"the sidecar serves {recovered.served_strategy} (config version {recovered.version})")
    command(f"kubectl -n {ns} get routingpolicies")
    block(recovered.policies_table)
    command(f"kubectl -n {ns} get agentrouter")
    block(recovered.agentrouter_table)
    after = story.ask()
    say(f"and a request: answered by {after.headers['x-agent-provider']} "
        f"({after.headers['x-agent-route-reason']})")


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
    print(bold("Agent Router: the whole story, on a real Kubernetes control plane"))
    print(dim("(kube-apiserver, etcd, helm, kubectl and Jaeger from the pinned test binaries; "
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
        log = story.operator.log_path if story.operator else None
        print(f"\nthe story stopped here; work directory {story.workdir}"
              + (f", operator log {log}" if log else ""), file=sys.stderr)
        code = 1
    finally:
        print("Tearing down...", flush=True)
        story.close(keep_workdir=code != 0)
    return code


if __name__ == "__main__":
    sys.exit(main())
