"""Thin client over the Docker Engine API for scoring containers.

Every container carries labels naming project, stack and resource, so a
crashed or interrupted run can always be found and cleaned up.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import docker
import docker.errors
import requests

CONTAINER_PORT = 5001
LABEL_PREFIX = "mldeploy."


class ServiceStartError(Exception):
    """A container did not become healthy; the message carries its log."""


@dataclass
class RunningContainer:
    id: str
    name: str
    host_port: int


def client() -> docker.DockerClient:
    return docker.from_env(timeout=300)


def labels_for(project: str, stack: str, resource: str, **extra: str) -> dict[str, str]:
    return {
        f"{LABEL_PREFIX}managed": "true",
        f"{LABEL_PREFIX}project": project,
        f"{LABEL_PREFIX}stack": stack,
        f"{LABEL_PREFIX}resource": resource,
        **{f"{LABEL_PREFIX}{k}": v for k, v in extra.items()},
    }


def run_scoring_container(
    name: str,
    image: str,
    labels: dict[str, str],
    environment: dict[str, str],
    mounts: dict[str, str],
    cpu_cores: float,
    memory_gb: float,
) -> RunningContainer:
    """Start a scoring container, published on 127.0.0.1 only (ephemeral port)."""
    dc = client()
    container = dc.containers.run(
        image,
        name=name,
        detach=True,
        labels=labels,
        environment=environment,
        volumes={host: {"bind": inside, "mode": "ro"} for host, inside in mounts.items()},
        ports={f"{CONTAINER_PORT}/tcp": ("127.0.0.1", None)},
        nano_cpus=int(cpu_cores * 1e9),
        mem_limit=int(memory_gb * 1024**3),
    )
    container.reload()
    binding = container.attrs["NetworkSettings"]["Ports"][f"{CONTAINER_PORT}/tcp"]
    host_port = int(next(b["HostPort"] for b in binding if b["HostIp"] == "127.0.0.1"))
    return RunningContainer(container.id, name, host_port)


# A bearer token in a log line (a user's script printing its request headers):
# the gateway strips keys before the backend, this is the second guard.
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")


def redact(text: str) -> str:
    """Bearer tokens replaced by `[redacted]`."""
    return _BEARER.sub(r"\1[redacted]", text)


def logs(container_id: str, tail: int | str = 60) -> str:
    """The container's log (stdout and stderr), its last `tail` lines ("all": every line), redacted."""
    try:
        return redact(client().containers.get(container_id).logs(tail=tail).decode(errors="replace"))
    except docker.errors.NotFound:
        return "(container is gone)"


def save_log(container_id: str, path: Path, header: str, tail: int = 2000) -> Path | None:
    """Keep a container's log after it is removed: written mode 0600 (its folder 0700), redacted."""
    text = logs(container_id, tail=tail)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(header.rstrip("\n") + "\n" + text)
    except OSError:
        return None  # keeping the log must never hide the failure itself
    return path


def wait_healthy(
    rc: RunningContainer,
    timeout: float = 180.0,
    on_wait: Callable[[float], None] | None = None,
) -> None:
    """Return once the server answers its health probe; raise with the log if it dies or times out.

    The scoring server runs the user's `init()` before it serves, and exits when
    `init()` raises, so a container that exits here is an init failure.
    """
    dc = client()
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{rc.host_port}/"
    while True:
        container = dc.containers.get(rc.id)
        if container.status in ("exited", "dead"):
            code = container.attrs["State"].get("ExitCode")
            raise ServiceStartError(
                f"container {rc.name} exited with code {code} before it was healthy; its log:\n{logs(rc.id)}"
            )
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise ServiceStartError(
                f"container {rc.name} was not healthy after {timeout:.0f}s; its log:\n{logs(rc.id)}"
            )
        if on_wait:
            on_wait(deadline - time.monotonic())
        time.sleep(0.5)


def status(container_id: str) -> str | None:
    """The container's state ('running', 'exited', ...), or None when it is gone."""
    try:
        return client().containers.get(container_id).status
    except docker.errors.NotFound:
        return None


def remove(container_id_or_name: str, stop_timeout: int = 10) -> None:
    """Stop and remove; gone already counts as removed."""
    try:
        container = client().containers.get(container_id_or_name)
    except docker.errors.NotFound:
        return
    try:
        container.stop(timeout=stop_timeout)
    except docker.errors.APIError:
        pass
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass


def find(labels: dict[str, str]) -> list[str]:
    """Ids of containers (running or not) carrying all these labels."""
    filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
    return [c.id for c in client().containers.list(all=True, filters=filters)]
