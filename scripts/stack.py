#!/usr/bin/env python3
"""Run a stack of this project with the Automation API and the real engine.

The Python language host (pulumi-language-python) cannot be built here (its
Go module is not served), so the program runs inline: this process serves
`__main__.py` to the `pulumi` CLI, which does the rest as usual (state, diff,
dynamic providers, secrets). Usage:

    scripts/stack.py up dev
    scripts/stack.py preview dev --diff
    scripts/stack.py refresh|destroy|outputs dev
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


def project_program(root: Path = ROOT) -> Callable[[], None]:
    """The project's own `__main__.py` as an inline program."""

    def program() -> None:
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        runpy.run_path(str(root / "__main__.py"), run_name="__pulumi_program__")

    return program


def clear_stale_locks(project_name: str, stack_name: str) -> list[Path]:
    """Remove locks of the local file backend left by a `pulumi` process that no longer exists.

    A CLI killed mid-update (Ctrl-C twice) cannot release its lock; the next run would
    otherwise stop with "the stack is currently locked". Locks held by live processes,
    or taken on another host, are left alone.
    """
    url = os.environ.get("PULUMI_BACKEND_URL", "")
    if not url.startswith("file://"):
        return []
    locks = Path(url.removeprefix("file://").split("?")[0]) / ".pulumi" / "locks"
    removed = []
    for lock in locks.glob(f"*/{project_name}/{stack_name}/*.json"):
        try:
            info = json.loads(lock.read_text())
            pid, host = int(info.get("pid", 0)), info.get("hostname", "")
        except (OSError, ValueError):
            continue
        if host != socket.gethostname() or pid <= 0:
            continue
        try:
            os.kill(pid, 0)
            continue  # still running: a real lock
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        lock.unlink(missing_ok=True)
        removed.append(lock)
        print(f"[mldeploy] removed the stale lock of stack {stack_name} left by pid {pid}", file=sys.stderr)
    return removed


def select_stack(stack_name: str, program: Callable[[], None] | None = None, root: Path = ROOT, env: dict[str, str] | None = None):
    """Create or select a stack whose program runs in this process."""
    from pulumi import automation as auto

    os.environ.setdefault("MLDEPLOY_PROJECT_DIR", str(root))
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    opts = auto.LocalWorkspaceOptions(work_dir=str(root), env_vars=env or {})
    import yaml

    project_name = yaml.safe_load((root / "Pulumi.yaml").read_text())["name"]
    stale = clear_stale_locks(project_name, stack_name)
    stack = auto.create_or_select_stack(stack_name, project_name=project_name, program=program or project_program(root), opts=opts)
    recover_if_interrupted(stack, force=bool(stale))
    return stack


def recover_if_interrupted(stack, force: bool = False) -> bool:
    """After an interrupted update, refresh first so the next up converges.

    The refresh drops pending creates (their containers carry labels, so the
    next create removes them) and finds leftover containers of interrupted rolls.
    """
    pending = (stack.export_stack().deployment or {}).get("pending_operations") or []
    if not (force or pending):
        return False
    print(f"[mldeploy] the last update of {stack.name} was interrupted; refreshing before going on", file=sys.stderr)
    stack.refresh(clear_pending_creates=True, on_output=lambda line: print(line, file=sys.stderr, flush=True))
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["preview", "up", "refresh", "destroy", "outputs", "rm"])
    parser.add_argument("stack", nargs="?", default="dev")
    parser.add_argument("--diff", action="store_true", help="show a detailed diff (preview, up)")
    parser.add_argument("--show-secrets", action="store_true", help="print secret outputs in plain text (outputs)")
    parser.add_argument("--expect-no-changes", action="store_true")
    parser.add_argument("--skip-preview", action="store_true", help="up without the preview that otherwise comes first")
    args = parser.parse_args(argv)

    version = subprocess.run(["pulumi", "version"], capture_output=True, text=True, check=True).stdout.strip()
    print(f"pulumi engine {version}", flush=True)
    stack = select_stack(args.stack)
    out = lambda line: print(line, flush=True)  # noqa: E731
    if args.command == "preview":
        stack.preview(on_output=out, diff=args.diff, expect_no_changes=args.expect_no_changes)
    elif args.command == "up":
        if not args.skip_preview:
            # As the CLI does: bad input fails here, before anything changes.
            stack.preview(on_output=out, diff=args.diff)
        stack.up(on_output=out, diff=args.diff, expect_no_changes=args.expect_no_changes)
    elif args.command == "refresh":
        stack.refresh(on_output=out)
    elif args.command == "destroy":
        stack.destroy(on_output=out)
    elif args.command == "rm":
        stack.workspace.remove_stack(args.stack)
    if args.command in ("up", "outputs"):
        outputs = stack.outputs()
        shown = {k: (v.value if (args.show_secrets or not v.secret) else "[secret]") for k, v in outputs.items()}
        print(json.dumps(shown, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # the engine's own output has already been printed
        from pulumi import automation as auto

        if isinstance(exc, auto.CommandError):
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
        raise
