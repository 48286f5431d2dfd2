"""The per-stack gateway's runtime client: files, the nginx container, probes, /proc.

Why a gateway: a service's scoring URI must stay stable
(``http://127.0.0.1:<port>/api/v1/service/<name>/score``) while its backend
container is replaced, keys must be checked in front of the scoring server (as
Azure's front end does), and a rolling update must switch traffic without a
single failed request. nginx with ``network_mode="host"`` listens on
``127.0.0.1:<port>`` in the host network. Local backends have no network: each
serves on a Unix socket in its service's folder under ``sockets_dir``, which the
gateway mounts read-only; the route names the folder's ``current.sock`` link and
a roll re-points that link (`switch_backend`), so no reload happens and client
keep-alive connections stay open. Keys, ports and limits change by a graceful
``nginx -s reload``.

The config is rendered by ``mldeploy.providers.front.gateway_config`` (pure, tested
without Docker); ``Gateway`` writes route files (0600, atomically) into a host
directory bind-mounted read-only into the container, validates them with
``nginx -t`` and reloads.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from mldeploy.providers.front.gateway_config import (  # noqa: F401 - re-exported: older callers import them from here
    CONTAINER_BACKENDS_DIR,
    CONTAINER_CONF_DIR,
    CONTAINER_RUNTIME_DIR,
    CANDIDATE_LINK,
    CURRENT_LINK,
    DEFAULT_IMAGE,
    KEY_RE,
    LABEL_PREFIX,
    MAIN_CONF,
    MARKER_HEADER,
    MAX_BODY_LIMIT,
    MAX_KEYS,
    ROUTES_SUBDIR,
    RUN_SUBDIR,
    SCOPE_RE,
    SERVICE_NAME_RE,
    SOCKET_GROUP,
    TEMPLATE_DIR,
    SplitRoute,
    backend_socket,
    parse_route_meta,
    render_nginx_conf,
    render_service_conf,
    upgrade_route,
    validate_service_name,
)
from mldeploy.providers.core.naming import service_path

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
    backend_port: int | None
    changed: bool
    live_after_s: float
    backend_socket: str | None = None


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
        client_keepalive_timeout: int = 65,
        sockets_dir: str | None = None,
    ):
        """client_keepalive_timeout: seconds an idle client connection stays open
        (0: ``Connection: close`` after every answer). Rolls of socket backends
        never reload nginx, so keep-alive costs them nothing; a reload (a key,
        port or limit change) may race a client reusing an idle connection that
        an old worker is closing. sockets_dir: the host folder of the stack's
        backend sockets (one folder per service), mounted read-only."""
        for field, value in (("project", project), ("stack", stack)):
            if not isinstance(value, str) or not SCOPE_RE.match(value):
                raise ValueError(f"{field}: must match {SCOPE_RE.pattern}, got {value!r}")
        self.project = project
        self.stack = stack
        self.conf_dir = Path(conf_dir).resolve()
        self.sockets_dir = Path(sockets_dir).resolve() if sockets_dir else None
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

    # -- backend sockets (local target)

    def _sockets(self) -> Path:
        if self.sockets_dir is None:
            raise GatewayError("this gateway has no sockets_dir: it cannot serve socket backends")
        return self.sockets_dir

    def service_dir(self, service_name: str) -> Path:
        """`<sockets_dir>/<service>`: root's, holds the `current.sock` link and `run/`."""
        return self._sockets() / validate_service_name(service_name)

    def prepare_service(self, service_name: str, uid: int = 65534, gid: int = 65534) -> Path:
        """The service's `run/` folder (host path), made if missing. Only its scoring
        containers (uid) write there and only the gateway's workers (gid) enter it;
        the link beside it is out of the containers' reach. Under the gateway's lock: a
        service removed in parallel may be removing the (then empty) root folder."""
        with self._lock():
            return self._prepare_service_locked(service_name, uid, gid)

    def _prepare_service_locked(self, service_name: str, uid: int, gid: int) -> Path:
        root = self._sockets()
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o711)
        svc = self.service_dir(service_name)
        svc.mkdir(exist_ok=True)
        os.chmod(svc, 0o711)
        run = svc / RUN_SUBDIR
        run.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            os.chown(run, uid, gid)
        os.chmod(run, 0o750)
        return run

    def switch_backend(self, service_name: str, socket_name: str, link: str = CURRENT_LINK) -> None:
        """Point the service's route at `run/<socket_name>`: one atomic rename of a
        relative link, so every new connection reaches the new backend and none
        fails; connections made before it finish on the old one. `link`: the
        canary's `candidate.sock` instead, while a split lasts."""
        if not re.match(r"^[A-Za-z0-9_-]{1,64}\.sock$", socket_name):
            raise ValueError(f"socket_name: must be [A-Za-z0-9_-]+.sock, got {socket_name!r}")
        if link not in (CURRENT_LINK, CANDIDATE_LINK):
            raise ValueError(f"link: must be {CURRENT_LINK} or {CANDIDATE_LINK}, got {link!r}")
        svc = self.service_dir(service_name)
        tmp = svc / f".{link}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(f"{RUN_SUBDIR}/{socket_name}", tmp)
        os.replace(tmp, svc / link)

    def drop_candidate(self, service_name: str) -> None:
        """The canary's link goes once no route names it (idempotent)."""
        with contextlib.suppress(FileNotFoundError, GatewayError):
            (self.service_dir(service_name) / CANDIDATE_LINK).unlink()

    def split_log(self, path: str) -> list[str]:
        """The lines of a split log inside the gateway (`providers/front/split.py`); [] before any."""
        with self._docker() as dc:
            c = self._running(dc)
            if c is None:
                raise GatewayError(f"gateway {self.container_name} is not running")
            code, out = self._exec(c, "cat", path)
        return out.splitlines() if code == 0 else []

    def remove_split_log(self, path: str) -> None:
        with self._docker() as dc:
            c = self._running(dc)
            if c is not None:
                self._exec(c, "rm", "-f", path)

    def current_backend(self, service_name: str) -> str | None:
        """The socket name the route's link points at, None without one."""
        try:
            target = os.readlink(self.service_dir(service_name) / CURRENT_LINK)
        except (FileNotFoundError, GatewayError):
            return None
        return os.path.basename(target)

    def host_socket(self, service_name: str, socket_name: str) -> Path:
        """Where this host sees a backend's socket."""
        return self.service_dir(service_name) / RUN_SUBDIR / socket_name

    def remove_service_dir(self, service_name: str) -> None:
        """Drop the service's socket folder (idempotent); the last one out drops the root."""
        import shutil

        if self.sockets_dir is None:
            return
        with self._lock():
            shutil.rmtree(self.service_dir(service_name), ignore_errors=True)
            with contextlib.suppress(OSError):
                self.sockets_dir.rmdir()  # only when empty

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
            # Status codes, methods and paths (never headers or query strings), rotated with the container's log.
            access_log=True,
            worker_processes=self.worker_processes,
            client_keepalive_timeout=self.client_keepalive_timeout,
            group=SOCKET_GROUP if self.sockets_dir else None,
        )
        if self.sockets_dir is not None:
            self.sockets_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.sockets_dir, 0o711)
        main_changed = not main.exists() or main.read_text() != wanted
        if main_changed:
            _write_atomic(main, wanted)
        upgraded = self._upgrade_routes()
        with self._docker() as dc:
            c = self._get(dc)
            if c is not None and c.status == "running" and self._is_current(c):
                if main_changed or upgraded:
                    try:
                        self._test_and_reload(c)
                    except GatewayError:
                        for path, previous in upgraded.items():
                            self._restore(c, path, previous)
                        raise
                return c.id
            if c is not None:
                c.remove(force=True)
            c = self._run(dc)
            self._wait_running(c, timeout)
            return c.id

    def _upgrade_routes(self) -> dict[Path, str]:
        """Routes an earlier release rendered, upgraded in place (`upgrade_route`): their services
        are not rolled, and their keys stay where they are. Returns {file: its previous text}."""
        previous: dict[Path, str] = {}
        for name in self.routes():
            path = self._route_file(name)
            text = path.read_text()
            new = upgrade_route(text)
            if new != text:
                _write_atomic(path, new)
                previous[path] = text
        return previous

    def _is_current(self, c) -> bool:
        mounts = {m.get("Destination"): m.get("Source") for m in c.attrs.get("Mounts", [])}
        return (
            c.attrs.get("Config", {}).get("Image") == self.image
            and mounts.get(CONTAINER_CONF_DIR) == str(self.conf_dir)
            and mounts.get(CONTAINER_BACKENDS_DIR) == (str(self.sockets_dir) if self.sockets_dir else None)
            and c.attrs.get("HostConfig", {}).get("NetworkMode") == "host"
        )

    def _run(self, dc):
        from docker.types import LogConfig

        script = (
            f"mkdir -p {CONTAINER_RUNTIME_DIR} && "
            f"exec nginx -e stderr -c {CONTAINER_CONF_DIR}/{MAIN_CONF} -g 'daemon off;'"
        )
        volumes = {str(self.conf_dir): {"bind": CONTAINER_CONF_DIR, "mode": "ro"}}
        if self.sockets_dir is not None:
            volumes[str(self.sockets_dir)] = {"bind": CONTAINER_BACKENDS_DIR, "mode": "ro"}
        return dc.containers.run(
            self.image,
            name=self.container_name,
            entrypoint=["/bin/sh", "-c", script],
            detach=True,
            labels=self.labels,
            network_mode="host",
            volumes=volumes,
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
        backend_port: int | None,
        keys: list[str] | None,
        max_body_bytes: int = 1_048_576,
        live_timeout: float = 15.0,
        *,
        backend_socket: str | None = None,
        split: SplitRoute | None = None,
    ) -> RouteUpdate:
        """Create or change a route and return once new connections to
        127.0.0.1:<port> get it (backend_port, or the service's socket link with
        backend_socket). On any failure the previous route file is restored and
        GatewayError carries nginx's message."""
        text = render_service_conf(service_name, port, backend_port, keys, max_body_bytes, backend_socket=backend_socket, split=split)
        want = str((parse_route_meta(text) or {}).get("marker") or backend_port)
        health = f"{service_path(service_name)}/health"
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
                    if _marker(port, health) == want:
                        return RouteUpdate(service_name, port, backend_port, False, 0.0, backend_socket)
                t0 = time.monotonic()
                _write_atomic(path, text)
                try:
                    self._test_and_reload(c)
                    self._wait_marker(port, health, want, live_timeout, c)
                except Exception:
                    self._restore(c, path, previous)
                    raise
                return RouteUpdate(service_name, port, backend_port, True, time.monotonic() - t0, backend_socket)

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
                while _marker(port, f"{service_path(service_name)}/health") is not None:
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
