"""Thin client over the Docker Engine API for scoring containers.

Every container carries labels naming project, stack and resource, so a
crashed or interrupted run can always be found and cleaned up.

The local target's backends (`run_socket_container`) have no network at all
(`network_mode: none`, no published port): the scoring server listens on a Unix
socket in a folder that only the stack's gateway also mounts, so nothing else
on the machine (no container, no bridge address) can reach it without the key.
They run as an unprivileged user with every capability dropped and
no-new-privileges, and restart by themselves once proven (`keep_running`).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import docker
import docker.errors
import requests

from mldeploy.providers.core.scoring import unix_request

LABEL_PREFIX = "mldeploy."
SCORING_USER = "65534:65534"
"""nobody:nogroup. The inference image declares no user; its files are world-readable,
so the server runs unprivileged. The group is the one the gateway's workers share."""
RESTART_POLICY = {"Name": "unless-stopped"}
"""After an OOM kill, a crash or a dockerd restart, Docker starts the backend again."""
# What a scoring script can take of the host (issue 18, item 8): its log is rotated, its
# process count capped, and its scratch space is a size-limited tmpfs, not the host's disk.
LOG_MAX_SIZE = "10m"
LOG_MAX_FILE = "3"
PIDS_LIMIT = 1024
TMP_OPTIONS = "rw,nosuid,nodev,size=256m"


def run_limits() -> dict[str, Any]:
    """The limits as docker-py's `containers.run` takes them (scoring and smoke-test containers)."""
    from docker.types import LogConfig

    return {
        "log_config": LogConfig(type="json-file", config={"max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILE}),
        "pids_limit": PIDS_LIMIT,
        "tmpfs": {"/tmp": TMP_OPTIONS},
    }


def host_config_limits() -> dict[str, Any]:
    """The same limits as Docker's ContainerCreate `HostConfig` keys (the local IoT Edge agent)."""
    return {
        "LogConfig": {"Type": "json-file", "Config": {"max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILE}},
        "PidsLimit": PIDS_LIMIT,
        "Tmpfs": {"/tmp": TMP_OPTIONS},
    }


class ServiceStartError(Exception):
    """A container did not become healthy; the message carries its log."""


@dataclass
class RunningContainer:
    id: str
    """Docker's container id."""
    name: str
    """The container's name."""
    host_port: int
    """127.0.0.1 port it is published on; 0 for a socket backend."""
    socket: str | None = None
    """This host's path of its Unix socket (socket backends)."""


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


def run_socket_container(
    name: str,
    image: str,
    labels: dict[str, str],
    environment: dict[str, str],
    mounts: dict[str, str],
    cpu_cores: float,
    memory_gb: float,
    socket_dir: str,
    socket_name: str,
    container_socket_dir: str,
    command: list[str] | None = None,
) -> RunningContainer:
    """Start a scoring container with no network that serves on `<socket_dir>/<socket_name>`.

    `socket_dir` (this host's) is its only writable mount, at `container_socket_dir`.
    No restart policy yet: a backend whose init() fails must stay down; `keep_running`
    adds it once the backend is proven.
    """
    dc = client()
    volumes = {host: {"bind": inside, "mode": "ro"} for host, inside in mounts.items()}
    volumes[socket_dir] = {"bind": container_socket_dir, "mode": "rw"}
    container = dc.containers.run(
        image,
        **({"command": command} if command else {}),  # else the image's own
        name=name,
        detach=True,
        labels=labels,
        environment={"HOME": "/tmp", **environment, "MLDEPLOY_BIND_SOCKET": f"{container_socket_dir}/{socket_name}"},
        volumes=volumes,
        network_mode="none",
        user=SCORING_USER,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        nano_cpus=int(cpu_cores * 1e9),
        mem_limit=int(memory_gb * 1024**3),
        memswap_limit=int(memory_gb * 1024**3),  # memory_gb is all it gets: no swap on top
        **run_limits(),
    )
    return RunningContainer(container.id, name, 0, os.path.join(socket_dir, socket_name))


def image_command(image: str) -> list[str] | None:
    """The image's own CMD, as Docker reports it."""
    return (client().images.get(image).attrs.get("Config") or {}).get("Cmd")


def keep_running(container_id: str) -> None:
    """From now on Docker restarts it after an OOM kill, a crash or a daemon restart."""
    client().containers.get(container_id).update(restart_policy=RESTART_POLICY)


def unix_connections(proc_net_unix: str, path: str) -> int:
    """Connections to the socket at `path` (as the server sees it) in a /proc/net/unix text:
    accepted ones and those still waiting in its backlog. The listener is not counted."""
    count = 0
    for line in proc_net_unix.splitlines()[1:]:
        fields = line.split()
        # Num RefCount Protocol Flags Type St Inode [Path]
        if len(fields) < 8 or fields[7] != path:
            continue
        if int(fields[3], 16) & 0x10000:  # __SO_ACCEPTCON: the listening socket
            continue
        count += 1
    return count


def socket_connections(container_id: str, path: str) -> int | None:
    """Open connections to the server's socket `path` (its own view), read from
    /proc/net/unix inside its namespace; None when the container is not running."""
    try:
        code, out = client().containers.get(container_id).exec_run(["cat", "/proc/net/unix"], demux=False)
    except (docker.errors.NotFound, docker.errors.APIError):
        return None
    if code != 0:
        return None
    return unix_connections((out or b"").decode(errors="replace"), path)


def wait_idle(container_id: str, path: str, timeout: float = 90.0, settle: int = 2) -> bool:
    """True once the server's socket has had no connection for `settle` reads in a row
    (in-flight requests answered, backlog empty); False after `timeout`."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while True:
        n = socket_connections(container_id, path)
        if n is None:
            return True
        quiet = quiet + 1 if n == 0 else 0
        if quiet >= settle:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


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
        if rc.socket:
            if os.path.exists(rc.socket) and unix_request(rc.socket, "GET", "/", timeout=2).status == 200:
                return
        else:
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
        time.sleep(0.1 if rc.socket else 0.5)  # a socket probe costs nothing


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
