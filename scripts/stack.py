#!/usr/bin/env python3
"""Run a stack of this project with the Automation API and the real engine.

The Python language host (pulumi-language-python) cannot be built here (its
Go module is not served), so the program runs inline: this process serves
`__main__.py` to the `pulumi` CLI, which does the rest as usual (state, diff,
dynamic providers, secrets). Usage:

    scripts/stack.py up dev
    scripts/stack.py preview dev --diff
    scripts/stack.py refresh|destroy|outputs dev
    scripts/stack.py profile dev aciservice [--input FILE] [--duration S]
    scripts/stack.py logs dev aciservice [--tail N] [--follow]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import runpy
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Mapping

ROOT = Path(__file__).resolve().parents[1]
DEV_STACK = "dev"
DEV_PASSPHRASE = "mldeploy-dev-passphrase"
"""The dev stack's secrets passphrase. Documented, so it protects nothing: it applies to `dev` only."""
PASSPHRASE_VARS = ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE")


class PassphraseMissing(RuntimeError):
    """A stack other than dev, and no passphrase chosen for it; the message says what to set."""


def _stack_secrets_provider(stack_name: str, root: Path) -> str:
    """The `secretsprovider:` a stack's config file names, "" when it names none."""
    project = (root / "Pulumi.yaml").read_text() if (root / "Pulumi.yaml").is_file() else ""
    m = re.search(r"^stackConfigDir:\s*(\S+)", project, re.M)
    stack_file = root / (m.group(1) if m else ".") / f"Pulumi.{stack_name}.yaml"
    try:
        text = stack_file.read_text()
    except OSError:
        return ""
    m = re.search(r"^secretsprovider:\s*(\S+)", text, re.M)
    return m.group(1).strip("'\"") if m else ""


def passphrase_env(stack_name: str, root: Path = ROOT, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """What the engine needs to open the stack's secrets, beyond the environment.

    A passphrase the operator set (PULUMI_CONFIG_PASSPHRASE, or a file named by
    PULUMI_CONFIG_PASSPHRASE_FILE) is used as it is. Without one, `dev` gets the
    documented dev passphrase and any other stack stops here, before it is created
    or changed, so that no stack is ever encrypted with a passphrase nobody chose.
    Stacks whose secrets are kept elsewhere (a `secretsprovider` other than
    passphrase, or the Pulumi Cloud backend) need none.
    """
    if "PULUMI_CONFIG_PASSPHRASE" in environ or environ.get("PULUMI_CONFIG_PASSPHRASE_FILE"):
        return {}
    provider = _stack_secrets_provider(stack_name, root)
    backend = environ.get("PULUMI_BACKEND_URL", "")
    if (provider and not provider.startswith("passphrase")) or backend.startswith(("https://", "http://")):
        return {}
    if stack_name == DEV_STACK:
        return {"PULUMI_CONFIG_PASSPHRASE": DEV_PASSPHRASE}
    raise PassphraseMissing(
        f"stack {stack_name!r} needs a secrets passphrase of its own: set PULUMI_CONFIG_PASSPHRASE "
        f"(or PULUMI_CONFIG_PASSPHRASE_FILE, the path of a file that holds it) and run again. "
        f"The documented dev passphrase is for the {DEV_STACK!r} stack only."
    )


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
        if _alive(pid):
            continue  # still running: a real lock
        lock.unlink(missing_ok=True)
        removed.append(lock)
        print(f"[mldeploy] removed the stale lock of stack {stack_name} left by pid {pid}", file=sys.stderr)
    return removed


def _alive(pid: int) -> bool:
    """Running, not a zombie: where nothing reaps orphans (a container's init), a killed
    engine stays a zombie, and its lock must still count as stale."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2 :].split()[0] != "Z"
    except (OSError, ValueError, IndexError):
        return True


def _proc_stat(pid: int) -> tuple[str, int]:
    """(command name, parent pid) of a process, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    return name, int(stat[stat.rindex(")") + 2 :].split()[1])


def orphaned_providers(root: Path) -> list[int]:
    """Provider processes of this project whose engine is gone: the dynamic providers, and resource
    plugins such as pulumi-kubernetes.

    An engine stopped hard (Ctrl-C twice) cannot stop the provider processes it
    started; a dynamic provider would otherwise wait for it forever, a resource
    plugin up to its five-minute health check. They run in the project's folder;
    a live engine's are its descendants and are left alone. Linux only.
    """
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    want = str(root.resolve())
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if not any(m in cmdline for m in (b"pulumi.dynamic", b"pulumi-resource-", b"mldeploy.providers.host")):
            continue
        if cwd.removesuffix(" (deleted)") != want:
            continue
        pid, engine_alive = int(entry.name), False
        try:
            parent = _proc_stat(pid)[1]
            while parent > 1:
                name, next_parent = _proc_stat(parent)
                if name == "pulumi":
                    engine_alive = True
                    break
                parent = next_parent
        except (OSError, ValueError):
            continue
        if not engine_alive:
            found.append(pid)
    return found


def _gone(pid: int) -> bool:
    """Exited (a zombie waiting for its parent counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2 :].split()[0] in ("Z", "X")


def end_orphaned_providers(root: Path, grace: float = 5.0) -> list[int]:
    """Stop the provider processes `orphaned_providers` finds (TERM, then KILL after `grace`)."""
    pids = orphaned_providers(root)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in alive if not _gone(pid)]
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if pids:
        print(f"[mldeploy] stopped {len(pids)} provider process(es) left by an interrupted run: {pids}", file=sys.stderr)
    return pids


def select_stack(stack_name: str, program: Callable[[], None] | None = None, root: Path = ROOT, env: dict[str, str] | None = None,
                 new: bool = False):
    """Create or select a stack whose program runs in this process.

    Stops with `PassphraseMissing` before anything is created when the stack needs
    a passphrase that nobody chose (`passphrase_env`). `new`: the name was just made
    up (a test's), so the stack is created without first trying to select it, and has
    nothing to recover; the engine refuses a name that exists.
    """
    from pulumi import automation as auto

    secrets_env = passphrase_env(stack_name, root)
    # The program and the providers resolve the paths in resource inputs against this project.
    os.environ["MLDEPLOY_PROJECT_DIR"] = str(root)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from mldeploy.providers.core.state_backend import check_backend

    # A backend that cannot be used stops here, naming PULUMI_BACKEND_URL (BackendError).
    check_backend(os.environ.get("PULUMI_BACKEND_URL", ""))
    from lazy_stack import LazyStack, cli_env, pulumi_command

    opts = auto.LocalWorkspaceOptions(
        work_dir=str(root), env_vars={**cli_env(), **secrets_env, "MLDEPLOY_PROJECT_DIR": str(root), **(env or {})},
        pulumi_command=pulumi_command(),
    )
    import yaml

    project_name = yaml.safe_load((root / "Pulumi.yaml").read_text())["name"]
    stale = clear_stale_locks(project_name, stack_name)
    end_orphaned_providers(root)
    if new:
        return LazyStack.of(auto.create_stack(stack_name, project_name=project_name,
                                              program=program or project_program(root), opts=opts))
    stack = LazyStack.of(auto.create_or_select_stack(stack_name, project_name=project_name,
                                                     program=program or project_program(root), opts=opts))
    recover_if_interrupted(stack, force=bool(stale))
    return stack


def recover_if_interrupted(stack, force: bool = False) -> bool:
    """After an interrupted update, refresh first so the next up converges.

    The refresh drops pending creates (their containers carry labels, so the
    next create removes them) and finds leftover containers of interrupted rolls.
    """
    if not (force or stack.pending_operations()):
        return False
    print(f"[mldeploy] the last update of {stack.name} was interrupted; refreshing before going on", file=sys.stderr)
    stack.refresh(clear_pending_creates=True, on_output=lambda line: print(line, file=sys.stderr, flush=True))
    return True


def explain_engine_error(stack_name: str, text: str) -> str | None:
    """The engine's words for a wrong passphrase name no setting: say which one, and that nothing changed."""
    if "incorrect passphrase" in text:
        return (
            f"stack {stack_name!r}: PULUMI_CONFIG_PASSPHRASE (or the file PULUMI_CONFIG_PASSPHRASE_FILE names) is not "
            f"the passphrase this stack's secrets were made with (the engine said: incorrect passphrase). "
            f"Nothing was created or changed."
        )
    return None


# Operations with arguments of their own, each in its own module.
TOOLS = {"profile": "profile_service", "logs": "service_logs", "image-cache": "image_cache", "rollout": "rollout_record"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "check-passphrase":
        # Standard library only: scripts/deploy.sh asks this before the set-up, with the system python3.
        try:
            passphrase_env(argv[1] if len(argv) > 1 else DEV_STACK)
        except PassphraseMissing as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    if argv and argv[0] in TOOLS:
        import importlib

        return importlib.import_module(TOOLS[argv[0]]).main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["preview", "up", "refresh", "destroy", "outputs", "rm"])
    parser.add_argument("stack", nargs="?", default="dev")
    parser.add_argument("--diff", action="store_true", help="show a detailed diff (preview, up)")
    parser.add_argument("--show-secrets", action="store_true", help="print secret outputs in plain text (outputs)")
    parser.add_argument("--expect-no-changes", action="store_true")
    parser.add_argument("--skip-preview", action="store_true", help="up without the preview that otherwise comes first")
    args = parser.parse_args(argv)

    from lazy_stack import pulumi_command

    # On stderr: stdout is the engine's output and the outputs' JSON only (`outputs dev | jq` works).
    print(f"pulumi engine v{pulumi_command().version}", file=sys.stderr, flush=True)
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
        if args.show_secrets:
            shown = {k: v.value for k, v in stack.outputs().items()}
        else:  # the engine masks the secrets itself, and needs no passphrase for it
            shown = stack.masked_outputs()
        print(json.dumps(shown, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # the engine's own output has already been printed
        from pulumi import automation as auto

        # BackendError (mldeploy.providers.core.state_backend), by name: its module may not be importable yet.
        if isinstance(exc, (auto.CommandError, PassphraseMissing)) or type(exc).__name__ == "BackendError":
            stack_arg = next((a for a in sys.argv[2:3] if not a.startswith("-")), "dev")
            print(f"error: {explain_engine_error(stack_arg, str(exc)) or exc}", file=sys.stderr)
            sys.exit(1)
        raise
