#!/usr/bin/env python3
"""A service's last rollout: what was declared, one line per step, and the decision (issue 20).

    scripts/stack.py rollout <stack> <service>

Reads `<stateDir>/rollouts/<project>-<stack>/<service>.json`, which the rollout writes whole
after each step and at its end (promoted, rolled back, or interrupted), so this also shows a
rollout that failed `up`. The service is found in the stack's state as `stack.py logs` finds it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stack.py rollout", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stack")
    parser.add_argument("service")
    args = parser.parse_args(argv)
    import service_logs
    import stack as stack_cli

    if str(stack_cli.ROOT) not in sys.path:
        sys.path.insert(0, str(stack_cli.ROOT))
    from mldeploy.providers.core.paths import local
    from mldeploy.providers.rollouts.records import load_record, record_path, render

    try:
        st = stack_cli.select_stack(args.stack)
        deployment = st.export_stack().deployment or {}
        kind, props = service_logs.find_service(deployment, args.service)
        if kind == "kubernetes":
            # An AksService's canary keeps where its record is in its own resource's inputs.
            props = kubernetes_canary(deployment, args.service) or props
        path = record_path(local(props["state_dir"]), props["project"], props["stack"], args.service)
    except (service_logs.LogsError, stack_cli.PassphraseMissing, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if kind == "local" and props.get("candidate"):
        print(held_now(props))
    held = None
    if kind == "kubernetes":
        try:
            held = held_now_kubernetes(deployment, args.service)
        except Exception as exc:  # the cluster unreachable: the record still shows
            print(f"held split: cannot read the pods' split logs: {exc}", file=sys.stderr)
        if held:
            print(held)
    found = load_record(path)
    if found is None and (props.get("candidate") or held):
        return 0
    if found is None:
        print(f"{args.service}: no rollout recorded (a canary, a held split or a mirror writes {path})")
        return 0
    print(render(*found))
    return 0


CANARY_TYPE = "pulumi-python:dynamic/mldeploy:KubernetesCanary"


def kubernetes_canary(deployment: dict, service: str) -> dict | None:
    """The inputs of an AksService's canary resource in the state, or None when it declares no canary."""
    for res in deployment.get("resources") or []:
        inputs = res.get("inputs") or {}
        if res.get("type") == CANARY_TYPE and inputs.get("name") == service:
            return inputs
    return None


def held_now(props: dict) -> str:
    """A held split or mirror, live: each version's requests, non-2xx answers and p99 from the gateway's split log."""
    from mldeploy.providers.rollouts.words import held_words
    from mldeploy.providers.targets.local import TARGET

    candidate = props["candidate"]
    lines = TARGET._gateway(props).split_log(candidate["split_log"])
    versions = ", ".join(f"{k} v{v}" for k, v in sorted((candidate.get("model_versions") or {}).items()))
    return "\n".join([f"held: {held_words(props)} (candidate {versions})", *version_lines(lines)])


def version_lines(lines: list[str]) -> list[str]:
    """Each version's live requests, non-2xx answers and p99 from a split log's lines."""
    from mldeploy.providers.front.split import metrics_from_log

    out = []
    for version in ("current", "candidate", "mirror"):
        m = metrics_from_log(lines, version, 0.0)
        p99 = "n/a" if m.p99_ms is None else f"{m.p99_ms:.0f} ms"
        rate = f"{m.errors / m.requests * 100:.2f} %" if m.requests else "n/a"
        out.append(f"{version}: {m.requests} requests, {m.errors} not 2xx (error rate {rate}), p99 {p99}")
    return out


def held_now_kubernetes(deployment: dict, service: str) -> str | None:
    """An AksService's held split or mirror, live: the serving pods' split logs, merged (None when none is held)."""
    import service_logs
    from mldeploy.providers.rollouts.words import held_words
    from mldeploy.providers.targets import kubernetes as target
    from mldeploy.providers.targets.kubernetes import kube
    from mldeploy.providers.targets.kubernetes.canary import serving_pods

    res = next((r for r in deployment.get("resources") or [] if r.get("type") == CANARY_TYPE
                and (r.get("inputs") or {}).get("name") == service), None)
    held = service_logs._plain(((res or {}).get("outputs") or {}).get("held"))
    if not held:
        return None
    inputs = res["inputs"]
    kubeconfig = service_logs.deployment_kubeconfig(deployment, service)
    if not kubeconfig:
        return None
    ns = inputs["namespace"]
    with kube.Reader(kubeconfig) as reader:
        pods = serving_pods(reader.pods(ns, target.selector(service)))
    lines: list[str] = []
    for pod in pods:
        lines += kube.exec_in(kubeconfig, ns, pod, "front", ["sh", "-c", f"cat {held['log_path']} 2>/dev/null || true"]).splitlines()
    words = held_words({"traffic": inputs.get("traffic"), "mirror_percent": inputs.get("mirror_percent")})
    return "\n".join([f"held: {words} (split logs of {', '.join(pods) or 'no serving pod'})", *version_lines(lines)])


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
