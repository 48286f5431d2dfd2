#!/usr/bin/env python3
"""A deployed service's scoring log, as Azure ML's `service.get_logs()` gives it.

    scripts/stack.py logs <stack> <service> [--tail N] [--follow]

Local target: the log of the backend that serves now, then the logs of the
backends that failed since the service's last successful create or roll (a
failed roll removes its container; the local target keeps its log as a file
of mode 0600 under `<stateDir>/logs/<project>-<stack>/<service>/`, removed by
the next successful roll or by destroy).

Kubernetes target: `kubectl logs` of the `scoring` container of every pod of
the service's Deployment, plus `--previous` (the crashed run) for a container
that restarted. kubectl gets the kubeconfig that the stack deployed the service
with (its Kubernetes provider's, from the state, in a 0600 file removed after),
so an attached cluster's logs come from that cluster with that cluster's user,
never with the local cluster's admin credentials.

Keys never reach a scoring container (the gateway and the pod's front end strip
them), and bearer tokens are redacted from what this prints all the same.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

LOCAL_TYPE = "pulumi-python:dynamic/mldeploy:Service"
DEPLOYMENT_TYPE = "kubernetes:apps/v1:Deployment"


class LogsError(ValueError):
    """Bad logs input: the message names the argument."""


def find_service(deployment: dict[str, Any], service: str) -> tuple[str, dict[str, Any]]:
    """("local" | "kubernetes", the resource's outputs and inputs merged) of `service` in the state."""
    found = []
    for res in deployment.get("resources") or []:
        inputs, outputs = res.get("inputs") or {}, res.get("outputs") or {}
        if res.get("type") == LOCAL_TYPE:
            found.append(inputs.get("service_name"))
            if inputs.get("service_name") == service:
                return "local", {**inputs, **outputs}
        elif res.get("type") == DEPLOYMENT_TYPE:
            name = (inputs.get("metadata") or {}).get("name")
            found.append(name)
            if name == service:
                return "kubernetes", {**inputs, **outputs}
    known = ", ".join(sorted(n for n in found if n)) or "none"
    raise LogsError(f"service {service!r} is not in the stack; its services: {known}")


SECRET_SIG = ("4dabf18193072939515e22adb298388d", "1b47061264138c4ac30d75fd1eb44270")
"""How `pulumi stack export --show-secrets` marks a secret: {sig: value, "plaintext": JSON text}."""


def _plain(value: Any) -> Any:
    if isinstance(value, dict) and value.get(SECRET_SIG[0]) == SECRET_SIG[1]:
        if "plaintext" not in value:
            raise LogsError("the state holds the cluster's kubeconfig encrypted: export it with the stack's passphrase")
        return json.loads(value["plaintext"])
    return value


def deployment_kubeconfig(deployment: dict[str, Any], service: str) -> str | None:
    """The kubeconfig the stack deployed `service`'s Deployment with (its Kubernetes provider's input).

    None when the Deployment names no provider with a kubeconfig (a default provider: the
    ambient kubeconfig, which the local admin one stands in for).
    """
    resources = deployment.get("resources") or []
    found = next((r for r in resources if r.get("type") == DEPLOYMENT_TYPE
                  and ((r.get("inputs") or {}).get("metadata") or {}).get("name") == service), None)
    ref = str((found or {}).get("provider") or "")
    urn = ref.rsplit("::", 1)[0] if "::" in ref else ""
    provider = next((r for r in resources if urn and r.get("urn") == urn), None)
    if provider is None:
        return None
    text = _plain((provider.get("inputs") or {}).get("kubeconfig"))
    return text if isinstance(text, str) and text.strip() else None


def _tail_lines(text: str, tail: int | None) -> str:
    lines = text.splitlines()
    return "\n".join(lines if tail is None else lines[-tail:]) + ("\n" if lines else "")


def local_logs(props: dict[str, Any], tail: int | None, follow: bool, out: TextIO) -> None:
    import docker
    import docker.errors

    from mldeploy.providers.core import containers
    from mldeploy.providers.targets.local import failed_logs_dir

    folder = failed_logs_dir(props)
    failed = sorted(folder.glob("*.log")) if folder.is_dir() else []
    for f in failed:
        out.write(f"==> failed backend, removed (its log kept in {f}) <==\n")
        out.write(containers.redact(_tail_lines(f.read_text(errors="replace"), tail)))
    cid = props.get("container_id") or ""
    try:
        container = containers.client().containers.get(cid)
    except docker.errors.NotFound:
        out.write(f"==> the serving backend {cid[:12] or '(none)'} is gone: run `scripts/stack.py refresh` and `up` <==\n")
        return
    out.write(f"==> serving backend {container.name} ({container.status}) <==\n")
    if not follow:
        out.write(containers.redact(container.logs(tail=tail if tail is not None else "all").decode(errors="replace")))
        out.flush()
        return
    out.flush()
    for chunk in container.logs(stream=True, follow=True, tail=tail if tail is not None else "all"):
        out.write(containers.redact(chunk.decode(errors="replace")))
        out.flush()


def kubectl_argv(props: dict[str, Any], tail: int | None, follow: bool) -> list[list[str]]:
    """The `kubectl logs` calls for the Deployment's pods (pure: what `kubernetes_logs` runs)."""
    meta = props.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    labels = ((props.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    base = ["logs", "-n", namespace, "-l", selector, "-c", "scoring", "--prefix", "--max-log-requests", "20"]
    base += ["--tail", str(tail if tail is not None else -1)]
    return [base + (["--follow"] if follow else [])]


def kubernetes_logs(props: dict[str, Any], tail: int | None, follow: bool, out: TextIO,
                    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                    kubeconfig: str | None = None) -> None:
    """`kubeconfig`: the path of the service's cluster's kubeconfig; None for the local cluster's."""
    from mldeploy.providers.targets.kubernetes import local_cluster as cluster
    from mldeploy.providers.core.containers import redact

    kubectl = [cluster.kubectl_path(), "--kubeconfig", kubeconfig or cluster.kubeconfig_path()]
    meta = props.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    labels = ((props.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    pods = run([*kubectl, "get", "pods", "-n", namespace, "-l", selector, "-o", "json"], capture_output=True, text=True, timeout=60)
    if pods.returncode != 0:
        raise LogsError(f"kubectl could not list the pods of {meta.get('name')}: {pods.stderr.strip()}")
    for pod in json.loads(pods.stdout).get("items") or []:
        name = pod["metadata"]["name"]
        statuses = {s["name"]: s for s in (pod.get("status") or {}).get("containerStatuses") or []}
        scoring = statuses.get("scoring") or {}
        if scoring.get("restartCount"):
            prev = run([*kubectl, "logs", "-n", namespace, name, "-c", "scoring", "--previous",
                        "--tail", str(tail if tail is not None else -1)], capture_output=True, text=True, timeout=60)
            out.write(f"==> pod {name}: the scoring container's previous run (restarted {scoring['restartCount']}x) <==\n")
            out.write(redact(prev.stdout or prev.stderr))
        if not follow:
            now = run([*kubectl, "logs", "-n", namespace, name, "-c", "scoring",
                       "--tail", str(tail if tail is not None else -1)], capture_output=True, text=True, timeout=60)
            out.write(f"==> pod {name}: scoring <==\n")
            out.write(redact(now.stdout or now.stderr))
    out.flush()
    if follow:
        proc = subprocess.Popen([*kubectl, *kubectl_argv(props, tail, follow)[0]], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                out.write(redact(line))
                out.flush()
        finally:
            proc.terminate()


@contextlib.contextmanager
def _kubeconfig_file(text: str | None) -> Iterator[str | None]:
    """`text` in a file only this user can read, removed afterwards; None stays None."""
    if text is None:
        yield None
        return
    fd, path = tempfile.mkstemp(prefix="mldeploy-kubeconfig-")  # 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        yield path
    finally:
        os.unlink(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stack.py logs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stack")
    parser.add_argument("service")
    parser.add_argument("--tail", type=int, default=None, help="only the last N lines of each log (default: all)")
    parser.add_argument("--follow", "-f", action="store_true", help="keep printing the serving backend's new lines")
    args = parser.parse_args(argv)
    import stack as stack_cli

    if str(stack_cli.ROOT) not in sys.path:
        sys.path.insert(0, str(stack_cli.ROOT))
    try:
        if args.tail is not None and args.tail < 0:
            raise LogsError(f"--tail: must be 0 or more, got {args.tail}")
        st = stack_cli.select_stack(args.stack)
        deployment = st.export_stack().deployment or {}
        kind, props = find_service(deployment, args.service)
        if kind == "local":
            local_logs(props, args.tail, args.follow, sys.stdout)
        else:
            with _kubeconfig_file(deployment_kubeconfig(deployment, args.service)) as path:
                kubernetes_logs(props, args.tail, args.follow, sys.stdout, kubeconfig=path)
    except (LogsError, stack_cli.PassphraseMissing) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
