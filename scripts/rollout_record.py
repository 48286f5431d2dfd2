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
    found = load_record(path)
    if found is None and props.get("candidate"):
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
    from mldeploy.providers.front.split import metrics_from_log
    from mldeploy.providers.rollouts.words import held_words
    from mldeploy.providers.targets.local import TARGET

    candidate = props["candidate"]
    lines = TARGET._gateway(props).split_log(candidate["split_log"])
    versions = ", ".join(f"{k} v{v}" for k, v in sorted((candidate.get("model_versions") or {}).items()))
    out = [f"held: {held_words(props)} (candidate {versions})"]
    for version in ("current", "candidate", "mirror"):
        m = metrics_from_log(lines, version, 0.0)
        p99 = "n/a" if m.p99_ms is None else f"{m.p99_ms:.0f} ms"
        rate = f"{m.errors / m.requests * 100:.2f} %" if m.requests else "n/a"
        out.append(f"{version}: {m.requests} requests, {m.errors} not 2xx (error rate {rate}), p99 {p99}")
    return "\n".join(out)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
