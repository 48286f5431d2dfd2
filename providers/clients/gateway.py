"""The per-stack gateway: one nginx container in front of all scoring services.

Why a gateway: a service's scoring URI must stay stable
(``http://127.0.0.1:<port>/api/v1/service/<name>/score``) while its backend
container is replaced, keys must be checked in front of the scoring server (as
Azure's front end does), and a rolling update must switch traffic without a
single failed request. nginx with ``network_mode="host"`` listens on
``127.0.0.1:<port>`` in the host network and proxies to the backend's
ephemeral ``127.0.0.1`` port; a route switch is a graceful ``nginx -s reload``.

The renderers are pure (unit-tested without Docker); ``Gateway`` is a thin
client that writes route files (0600, atomically) into a host directory
bind-mounted read-only into the container, validates them with ``nginx -t``
and reloads.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "runtime" / "nginx"
DEFAULT_IMAGE = "mldeploy/base:bookworm-py3.11"

# Paths inside the gateway container.
CONTAINER_CONF_DIR = "/etc/mldeploy-gw"
CONTAINER_RUNTIME_DIR = "/tmp/mldeploy-gw"
ROUTES_SUBDIR = "services"
MAIN_CONF = "nginx.conf"

LABEL_PREFIX = "mldeploy."
MARKER_HEADER = "X-Mldeploy-Backend"

SERVICE_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
# Keys go verbatim into a regex inside nginx config: this alphabet needs no escaping.
KEY_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
# Project/stack end up in a container name and in labels.
SCOPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAX_KEYS = 8
MAX_BODY_LIMIT = 1 << 31
_META_RE = re.compile(r"^# mldeploy-route (\{.*\})$", re.M)
_PLACEHOLDER_RE = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
# Counts nginx workers by process title (nginx rewrites argv[0]): accepting
# ones, and old ones that finish their requests after a reload.
_COUNT_WORKERS = (
    "a=0; s=0; for f in /proc/[0-9]*/cmdline; do "
    "t=$(tr '\\0' '\\n' 2>/dev/null < \"$f\" | head -n1); "
    "case \"$t\" in "
    "'nginx: worker process') a=$((a+1));; "
    "'nginx: worker process is shutting down') s=$((s+1));; "
    "esac; done; echo $a $s"
)


class GatewayError(RuntimeError):
    """The gateway refused a change or did not come up; the message says why."""


@dataclass(frozen=True)
class RouteUpdate:
    """What put_route did, so callers (and benchmarks) can report it."""

    service_name: str
    port: int
    backend_port: int
    changed: bool
    live_after_s: float


# --------------------------------------------------------------------- render


def _template(template: str, /, **values: object) -> str:
    """Fill ``{{ name }}`` placeholders; nginx's own ``$vars`` stay untouched."""
    text = (TEMPLATE_DIR / template).read_text()

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            raise KeyError(f"template {template}: no value for {key}")
        return str(values[key])

    return _PLACEHOLDER_RE.sub(sub, text)


def _check_port(field: str, value: object, low: int = 1024) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 65535:
        raise ValueError(f"{field}: must be an integer port in {low}-65535, got {value!r}")
    return value


def validate_service_name(service_name: object) -> str:
    """Names go into URLs, nginx identifiers and file names: keep them tame."""
    if not isinstance(service_name, str) or not SERVICE_NAME_RE.match(service_name):
        raise ValueError(
            f"service_name: must match {SERVICE_NAME_RE.pattern} "
            f"(lowercase letters, digits, inner dashes, 1-32 chars), got {service_name!r}"
        )
    return service_name


def _check_keys(keys: Sequence[str] | None) -> list[str] | None:
    if keys is None:
        return None
    if isinstance(keys, str) or not isinstance(keys, (list, tuple)):
        raise ValueError("keys: must be None (auth off) or a list of key strings")
    if not keys:
        raise ValueError("keys: an empty list would lock everyone out; pass None to turn auth off")
    if len(keys) > MAX_KEYS:
        raise ValueError(f"keys: at most {MAX_KEYS} keys, got {len(keys)}")
    for i, key in enumerate(keys):
        # Never echo the key itself in the message.
        if not isinstance(key, str) or not KEY_RE.match(key):
            raise ValueError(f"keys[{i}]: must match {KEY_RE.pattern} (16-128 chars of A-Z a-z 0-9 _ -)")
    return list(keys)


def render_nginx_conf(
    include_dir: str = f"{CONTAINER_CONF_DIR}/{ROUTES_SUBDIR}",
    runtime_dir: str = CONTAINER_RUNTIME_DIR,
    worker_processes: int | str = 1,
    access_log: bool = False,
    user: str | None = "www-data",
    worker_shutdown_timeout: int = 75,
    client_keepalive_timeout: int = 65,
) -> str:
    """The gateway's main config. Access log is off by default; when on, its
    format names no header and no query string, so keys never reach a log."""
    for field, value in (("include_dir", include_dir), ("runtime_dir", runtime_dir)):
        if not isinstance(value, str) or not re.match(r"^/[A-Za-z0-9_./-]*$", value):
            raise ValueError(f"{field}: must be an absolute path of [A-Za-z0-9_./-], got {value!r}")
    if worker_processes != "auto" and (
        isinstance(worker_processes, bool) or not isinstance(worker_processes, int) or not 1 <= worker_processes <= 64
    ):
        raise ValueError(f"worker_processes: must be 1-64 or 'auto', got {worker_processes!r}")
    if user is not None and not re.match(r"^[a-z_][a-z0-9_-]{0,31}$", user):
        raise ValueError(f"user: not a valid user name: {user!r}")
    if not isinstance(worker_shutdown_timeout, int) or worker_shutdown_timeout < 1:
        raise ValueError(f"worker_shutdown_timeout: must be a positive integer, got {worker_shutdown_timeout!r}")
    if isinstance(client_keepalive_timeout, bool) or not isinstance(client_keepalive_timeout, int) or client_keepalive_timeout < 0:
        raise ValueError(f"client_keepalive_timeout: must be an integer >= 0, got {client_keepalive_timeout!r}")
    if access_log:
        log = (
            "    log_format mldeploy_safe '$time_iso8601 $remote_addr \"$request_method $uri\" "
            "$status $body_bytes_sent $request_time $upstream_addr';\n"
            "    access_log /dev/stdout mldeploy_safe;"
        )
    else:
        log = "    access_log off;"
    return _template(
        "nginx.conf.tmpl",
        include_dir=include_dir.rstrip("/"),
        runtime_dir=runtime_dir.rstrip("/"),
        worker_processes=worker_processes,
        access_log=log,
        user_line=f"user {user};" if user else "# (no user directive: nginx runs unprivileged already)",
        worker_shutdown_timeout=worker_shutdown_timeout,
        client_keepalive_timeout=client_keepalive_timeout,
    )


def render_service_conf(
    service_name: str,
    port: int,
    backend_port: int,
    keys: list[str] | None,
    max_body_bytes: int = 1_048_576,
    listen_host: str = "127.0.0.1",
    read_timeout_s: int = 60,
) -> str:
    """One service's upstream + server block. Keys (if any) are matched
    exactly against ``Authorization: Bearer <key>`` on the score route only."""
    validate_service_name(service_name)
    # On the shared host only unprivileged ports; a front end in its own network
    # namespace (a pod, a container group) may take a low one such as ACI's 80.
    _check_port("port", port, low=1 if listen_host == "0.0.0.0" else 1024)
    _check_port("backend_port", backend_port)
    if port == backend_port:
        raise ValueError("port: must differ from backend_port (both are 127.0.0.1 ports)")
    checked_keys = _check_keys(keys)
    if listen_host not in ("127.0.0.1", "0.0.0.0"):
        # 0.0.0.0 only inside a pod, whose one port is this front end.
        raise ValueError(f"listen_host: must be 127.0.0.1 or 0.0.0.0, got {listen_host!r}")
    if isinstance(read_timeout_s, bool) or not isinstance(read_timeout_s, int) or not 1 <= read_timeout_s <= 86_400:
        raise ValueError(f"read_timeout_s: must be an integer in 1-86400, got {read_timeout_s!r}")
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or not 1 <= max_body_bytes <= MAX_BODY_LIMIT:
        # 0 would mean "unlimited" to nginx: refuse it.
        raise ValueError(f"max_body_bytes: must be an integer in 1-{MAX_BODY_LIMIT}, got {max_body_bytes!r}")

    ident = service_name.replace("-", "_")
    meta = {
        "service": service_name,
        "port": port,
        "backend_port": backend_port,
        "auth": checked_keys is not None,
        "max_body_bytes": max_body_bytes,
    }
    if checked_keys:
        auth_map = _template(
            "service-auth-map.conf.tmpl", ident=ident, key_alternatives="|".join(checked_keys)
        )
        auth_check = _template(
            "service-auth-check.conf.tmpl", ident=ident, name=service_name, backend_port=backend_port
        ).rstrip("\n")
    else:
        auth_map = ""
        auth_check = "        # auth off: no key required"
    return _template(
        "service.conf.tmpl",
        meta_json=json.dumps(meta, sort_keys=True),
        name=service_name,
        ident=ident,
        port=port,
        listen_host=listen_host,
        read_timeout_s=read_timeout_s,
        backend_port=backend_port,
        max_body_bytes=max_body_bytes,
        auth_map=auth_map,
        auth_check=auth_check,
    )


def parse_route_meta(conf_text: str) -> dict | None:
    """The non-secret header line of a rendered route file (no keys in it)."""
    m = _META_RE.search(conf_text)
    return json.loads(m.group(1)) if m else None


# ---------------------------------------------------------------------- files


def _write_atomic(path: Path, text: str) -> None:
    """Write via a 0600 temp file + rename, so nginx never reads half a file
    and the keys are never world-readable, not even for a moment."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def port_free(port: int) -> bool:
    """Whether 127.0.0.1:<port> can be bound (the gateway shares the host network)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _marker(port: int, path: str, timeout: float = 1.0) -> str | None:
    """The backend marker the listener on 127.0.0.1:<port> answers with, on a
    fresh connection (http.client: no proxy settings from the environment)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return resp.getheader(MARKER_HEADER)
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


# --------------------------------------------------------------------- client


class Gateway:
    """One nginx container per (project, stack), routes in ``conf_dir``."""

    worker_processes = 1  # 2-core hosts; a reload waits for exactly this many accepting workers

    def __init__(
        self,
        project: str,
        stack: str,
        conf_dir: str,
        image: str = DEFAULT_IMAGE,
        *,
        client_keepalive_timeout: int = 0,
    ):
        """client_keepalive_timeout 0 (default) answers every request with
        ``Connection: close``: a reload then never races a client reusing a
        keepalive connection that an old worker is closing, so a switch fails
        no request even under tight load. >0 trades that for a little
        throughput (measured ~0.1% failed requests per switch under a tight
        3-client loop with 65 s)."""
        for field, value in (("project", project), ("stack", stack)):
            if not isinstance(value, str) or not SCOPE_RE.match(value):
                raise ValueError(f"{field}: must match {SCOPE_RE.pattern}, got {value!r}")
        self.project = project
        self.stack = stack
        self.conf_dir = Path(conf_dir).resolve()
        self.image = image
        render_nginx_conf(client_keepalive_timeout=client_keepalive_timeout)  # validate early
        self.client_keepalive_timeout = client_keepalive_timeout

    # -- naming

    @property
    def container_name(self) -> str:
        return f"mldeploy-gw-{self.project}-{self.stack}"

    @property
    def labels(self) -> dict[str, str]:
        return {
            f"{LABEL_PREFIX}managed": "true",
            f"{LABEL_PREFIX}project": self.project,
            f"{LABEL_PREFIX}stack": self.stack,
            f"{LABEL_PREFIX}resource": "gateway",
        }

    @property
    def routes_dir(self) -> Path:
        return self.conf_dir / ROUTES_SUBDIR

    @property
    def lock_path(self) -> Path:
        """Beside conf_dir, never in it: removing the gateway's files must not remove the lock
        that a waiting client holds open (it would then lock a deleted file, alone)."""
        return self.conf_dir.parent / f".{self.conf_dir.name}.lock"

    def _route_file(self, service_name: str) -> Path:
        return self.routes_dir / f"{validate_service_name(service_name)}.conf"

    # -- docker plumbing (a client per call: nothing held between calls)

    @contextlib.contextmanager
    def _docker(self) -> Iterator:
        import docker

        dc = docker.from_env(timeout=120)
        try:
            yield dc
        finally:
            dc.close()

    def _get(self, dc):
        """Our container, None when absent; refuses a same-named stranger."""
        import docker.errors

        try:
            c = dc.containers.get(self.container_name)
        except docker.errors.NotFound:
            return None
        labels = c.labels or {}
        if any(labels.get(k) != v for k, v in self.labels.items()):
            raise GatewayError(
                f"a container named {self.container_name} exists but is not this gateway "
                f"(labels {labels}); refusing to touch it"
            )
        return c

    def _exec(self, container, *cmd: str) -> tuple[int, str]:
        code, out = container.exec_run(list(cmd), demux=False)
        return code, (out or b"").decode(errors="replace").strip()

    def _nginx(self, container, *args: str) -> tuple[int, str]:
        return self._exec(container, "nginx", "-e", "stderr", "-c", f"{CONTAINER_CONF_DIR}/{MAIN_CONF}", *args)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise every change to the gateway and its routes (Pulumi runs resource
        operations in parallel, in several provider processes): a broken file of one
        route must not make another route's test fail, and a gateway that one client
        removes must not vanish under another client's route change. Not reentrant:
        code under it calls the `_locked` variants."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                self._prepare_dirs()
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _prepare_dirs(self) -> None:
        for d in (self.conf_dir, self.routes_dir):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o700)

    # -- lifecycle

    def ensure(self, timeout: float = 30.0) -> str:
        """Start the gateway if it is missing, stopped or stale (other image or
        conf_dir); reuse it otherwise. Returns the container id once nginx runs."""
        with self._lock():
            return self._ensure_locked(timeout)

    def _ensure_locked(self, timeout: float = 30.0) -> str:
        main = self.conf_dir / MAIN_CONF
        wanted = render_nginx_conf(
            worker_processes=self.worker_processes, client_keepalive_timeout=self.client_keepalive_timeout
        )
        main_changed = not main.exists() or main.read_text() != wanted
        if main_changed:
            _write_atomic(main, wanted)
        with self._docker() as dc:
            c = self._get(dc)
            if c is not None and c.status == "running" and self._is_current(c):
                if main_changed:
                    self._test_and_reload(c)
                return c.id
            if c is not None:
                c.remove(force=True)
            c = self._run(dc)
            self._wait_running(c, timeout)
            return c.id

    def _is_current(self, c) -> bool:
        mounts = {m.get("Destination"): m.get("Source") for m in c.attrs.get("Mounts", [])}
        return (
            c.attrs.get("Config", {}).get("Image") == self.image
            and mounts.get(CONTAINER_CONF_DIR) == str(self.conf_dir)
            and c.attrs.get("HostConfig", {}).get("NetworkMode") == "host"
        )

    def _run(self, dc):
        from docker.types import LogConfig

        script = (
            f"mkdir -p {CONTAINER_RUNTIME_DIR} && "
            f"exec nginx -e stderr -c {CONTAINER_CONF_DIR}/{MAIN_CONF} -g 'daemon off;'"
        )
        return dc.containers.run(
            self.image,
            name=self.container_name,
            entrypoint=["/bin/sh", "-c", script],
            detach=True,
            labels=self.labels,
            network_mode="host",
            volumes={str(self.conf_dir): {"bind": CONTAINER_CONF_DIR, "mode": "ro"}},
            restart_policy={"Name": "unless-stopped"},
            read_only=True,
            tmpfs={"/tmp": "rw,nosuid,nodev,noexec,size=64m,mode=1777"},
            # Master: read 0600 files of any host uid, switch workers to
            # www-data, chown its temp dirs, signal old workers on reload.
            cap_drop=["ALL"],
            cap_add=["CHOWN", "DAC_READ_SEARCH", "SETUID", "SETGID", "KILL"],
            security_opt=["no-new-privileges"],
            mem_limit="256m",
            log_config=LogConfig(type="json-file", config={"max-size": "10m", "max-file": "3"}),
        )

    def _wait_running(self, c, timeout: float) -> None:
        """nginx writes its pid file after it has opened every listening socket."""
        pid = f"{CONTAINER_RUNTIME_DIR}/nginx.pid"
        deadline = time.monotonic() + timeout
        while True:
            c.reload()
            if c.status in ("exited", "dead"):
                raise GatewayError(f"gateway {self.container_name} exited on start:\n{self._tail(c)}")
            if c.status == "running":
                code, _ = self._exec(c, "/bin/sh", "-c", f'test -s {pid} && kill -0 "$(cat {pid})"')
                if code == 0:
                    return
            if time.monotonic() > deadline:
                raise GatewayError(f"gateway {self.container_name} did not start in {timeout}s:\n{self._tail(c)}")
            time.sleep(0.1)

    def _running(self, dc):
        c = self._get(dc)
        if c is None or c.status != "running":
            return None
        return c

    def is_running(self) -> bool:
        """Whether the gateway container runs (refresh uses it to find drift)."""
        with self._docker() as dc:
            return self._running(dc) is not None

    def remove_if_unused(self) -> bool:
        """Remove the gateway and its files when no route is left; one decision under the lock,
        so services deleted in parallel agree on who removes it."""
        with self._lock():
            if self.routes():
                return False
            self._remove_locked(purge_config=True)
            return True

    def remove(self, purge_config: bool = False) -> None:
        """Stop and remove the gateway (idempotent). purge_config also deletes
        conf_dir, i.e. the route files holding the keys (never the lock beside it)."""
        with self._lock():
            self._remove_locked(purge_config)

    def _remove_locked(self, purge_config: bool) -> None:
        import docker.errors

        with self._docker() as dc:
            found = [c for c in [self._get(dc)] if c is not None]
            selector = [f"{k}={v}" for k, v in self.labels.items()]
            found += dc.containers.list(all=True, filters={"label": selector})
            seen: set[str] = set()
            for c in found:
                if c.id in seen:
                    continue
                seen.add(c.id)
                with contextlib.suppress(docker.errors.NotFound):
                    c.stop(timeout=10)
                try:
                    c.remove(force=True)
                except docker.errors.NotFound:
                    pass
                except docker.errors.APIError as e:
                    if e.status_code != 409:  # "removal already in progress": someone else is on it
                        raise
        if purge_config and self.conf_dir.exists():
            import shutil

            shutil.rmtree(self.conf_dir)

    def logs(self, tail: int = 50) -> str:
        """nginx's error log (stderr) of the gateway container."""
        with self._docker() as dc:
            c = self._get(dc)
            return self._tail(c, tail) if c is not None else "(gateway container is gone)"

    @staticmethod
    def _tail(c, tail: int = 50) -> str:
        try:
            return c.logs(tail=tail).decode(errors="replace")
        except Exception as e:  # the container may vanish under us
            return f"(no logs: {e})"

    # -- routes

    def routes(self) -> list[str]:
        """Names of the services that have a route file."""
        if not self.routes_dir.is_dir():
            return []
        return sorted(p.stem for p in self.routes_dir.glob("*.conf") if SERVICE_NAME_RE.match(p.stem))

    def route_info(self, service_name: str) -> dict | None:
        """The non-secret facts of a route (port, backend_port, auth, limit)."""
        path = self._route_file(service_name)
        try:
            return parse_route_meta(path.read_text())
        except FileNotFoundError:
            return None

    def put_route(
        self,
        service_name: str,
        port: int,
        backend_port: int,
        keys: list[str] | None,
        max_body_bytes: int = 1_048_576,
        live_timeout: float = 15.0,
    ) -> RouteUpdate:
        """Create or switch a route and return once new connections to
        127.0.0.1:<port> reach backend_port. On any failure the previous route
        file is restored and GatewayError carries nginx's message."""
        text = render_service_conf(service_name, port, backend_port, keys, max_body_bytes)
        health = f"/api/v1/service/{service_name}/health"
        path = self._route_file(service_name)
        # One hold of the lock from starting the gateway to the live route: a client
        # removing an unused gateway in between would leave this route with none.
        with self._lock():
            self._ensure_locked()
            previous = path.read_text() if path.exists() else None
            prev_meta = parse_route_meta(previous) if previous else None
            for other in self.routes():
                meta = self.route_info(other) if other != service_name else None
                if meta and meta.get("port") == port:
                    raise ValueError(f"port: {port} is already the port of service {other!r} on this gateway")
            if (prev_meta is None or prev_meta.get("port") != port) and not port_free(port):
                raise ValueError(f"port: 127.0.0.1:{port} is already in use by another process")

            with self._docker() as dc:
                c = self._running(dc)
                if c is None:
                    raise GatewayError(f"gateway {self.container_name} is not running")
                if previous == text:
                    if _marker(port, health) == str(backend_port):
                        return RouteUpdate(service_name, port, backend_port, False, 0.0)
                t0 = time.monotonic()
                _write_atomic(path, text)
                try:
                    self._test_and_reload(c)
                    self._wait_marker(port, health, str(backend_port), live_timeout, c)
                except Exception:
                    self._restore(c, path, previous)
                    raise
                return RouteUpdate(service_name, port, backend_port, True, time.monotonic() - t0)

    def _test_and_reload(self, c) -> None:
        code, out = self._nginx(c, "-t", "-q")
        if code != 0:
            raise GatewayError(f"nginx rejected the configuration: {out}")
        code, out = self._nginx(c, "-s", "reload")
        if code != 0:
            raise GatewayError(f"nginx reload failed: {out}")

    def _wait_marker(self, port: int, path: str, want: str, timeout: float, c) -> None:
        """Live means: a new worker answers with the new marker, and every old
        worker has stopped accepting. nginx's master waits ~100 ms after
        starting new workers before it tells old ones to quit; until then an
        old worker may still take new connections to the old backend."""
        deadline = time.monotonic() + timeout
        while _marker(port, path) != want:
            if time.monotonic() > deadline:
                raise GatewayError(
                    f"route on 127.0.0.1:{port} did not go live within {timeout}s "
                    f"(port taken, or reload failed); gateway log:\n{self._tail(c, 20)}"
                )
            time.sleep(0.02)
        while self._worker_counts(c)[0] > self.worker_processes:
            if time.monotonic() > deadline:
                raise GatewayError(f"old nginx workers still accept {timeout}s after the reload")
            time.sleep(0.02)

    def _worker_counts(self, c) -> tuple[int, int]:
        """(accepting workers, workers shutting down) from process titles."""
        code, out = self._exec(c, "/bin/sh", "-c", _COUNT_WORKERS)
        try:
            active, shutting = (int(x) for x in out.split())
        except ValueError:
            raise GatewayError(f"cannot count nginx workers (exit {code}): {out}") from None
        return active, shutting

    def _restore(self, c, path: Path, previous: str | None) -> None:
        """Put the last good file back (or drop the new one) and reload it."""
        if previous is None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        else:
            _write_atomic(path, previous)
        with contextlib.suppress(GatewayError):
            self._test_and_reload(c)

    def remove_route(self, service_name: str, timeout: float = 15.0) -> None:
        """Drop a route (idempotent) and return once its port stops answering."""
        path = self._route_file(service_name)
        with self._lock():
            previous = path.read_text() if path.exists() else None
            if previous is None:
                return
            meta = parse_route_meta(previous) or {}
            path.unlink()
            with self._docker() as dc:
                c = self._running(dc)
                if c is None:
                    return  # nothing listens; the file is gone, done
                try:
                    self._test_and_reload(c)
                except GatewayError:
                    _write_atomic(path, previous)
                    raise
            port = meta.get("port")
            if isinstance(port, int):
                deadline = time.monotonic() + timeout
                while _marker(port, f"/api/v1/service/{service_name}/health") is not None:
                    if time.monotonic() > deadline:
                        raise GatewayError(f"127.0.0.1:{port} still answers {timeout}s after removing the route")
                    time.sleep(0.05)

    def wait_drained(self, timeout: float = 80.0) -> bool:
        """True once no pre-reload nginx worker is left. Call it before stopping
        an old backend: old workers may still finish requests against it."""
        deadline = time.monotonic() + timeout
        with self._docker() as dc:
            c = self._running(dc)
            if c is None:
                return True
            while True:
                if self._worker_counts(c)[1] == 0:
                    return True
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.1)
