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
    from mldeploy.providers.rollouts.records import load_record, record_path, render

    try:
        st = stack_cli.select_stack(args.stack)
        _, props = service_logs.find_service(st.export_stack().deployment or {}, args.service)
        path = record_path(props["state_dir"], props["project"], props["stack"], args.service)
    except (service_logs.LogsError, stack_cli.PassphraseMissing, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    found = load_record(path)
    if found is None:
        print(f"{args.service}: no rollout recorded (a canary, a held split or a mirror writes {path})")
        return 0
    print(render(*found))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
