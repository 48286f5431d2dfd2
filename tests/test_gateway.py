"""Tests of the gateway's runtime client (`mldeploy.providers.targets.local.gateway`).

The renderers have their own tests (tests/test_gateway_config.py). Unit tests
here check the lock and the files with a fake Docker; integration tests
(marked ``docker``) run the real gateway container against tiny HTTP backends
on host loopback and against Unix-socket backends; they fail, never skip,
when Docker or the image is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mldeploy.providers.targets.local import gateway as gw_mod
from mldeploy.providers.targets.local.gateway import (
    DEFAULT_IMAGE,
    Gateway,
    GatewayError,
    backend_socket,
    parse_route_meta,
    render_service_conf,
)

KEY1 = "k1_" + "A" * 20 + "-x"
KEY2 = "k2_" + "b" * 30


# ------------------------------------------------------------------ the lock (a fake Docker: no daemon needed)


class FakeContainer:
    """Enough of docker-py's Container for the Gateway client: nginx always agrees."""

    def __init__(self, world: "FakeDocker", name: str, image: str, labels: dict, conf_dir: str):
        self.world, self.name, self.labels = world, name, labels
        self.id = f"id-{name}-{len(world.made)}"
        self.status = "running"
        self.attrs = {
            "Config": {"Image": image},
            "Mounts": [{"Destination": gw_mod.CONTAINER_CONF_DIR, "Source": conf_dir}],
            "HostConfig": {"NetworkMode": "host"},
        }

    def reload(self) -> None:
        pass

    def exec_run(self, cmd, demux=False):
        return 0, (b"1 0" if "/proc/" in " ".join(cmd) else b"")

    def stop(self, timeout=10) -> None:
        self.status = "exited"

    def remove(self, force=False) -> None:
        self.world.containers_by_name.pop(self.name, None)

    def logs(self, tail=50) -> bytes:
        return b""


class FakeDocker:
    """One fake daemon shared by several Gateway clients (several provider processes)."""

    def __init__(self) -> None:
        self.containers_by_name: dict[str, FakeContainer] = {}
        self.made: list[FakeContainer] = []
        self.containers = self

    # docker-py's `client.containers` API
    def get(self, name: str) -> FakeContainer:
        import docker.errors

        if name not in self.containers_by_name:
            raise docker.errors.NotFound(f"no container {name}")
        return self.containers_by_name[name]

    def run(self, image, name, labels, volumes, **_kw) -> FakeContainer:
        c = FakeContainer(self, name, image, labels, next(iter(volumes)))
        self.containers_by_name[name] = c
        self.made.append(c)
        return c

    def list(self, all=False, filters=None) -> list:
        return list(self.containers_by_name.values())


@pytest.fixture
def fake_docker(monkeypatch: pytest.MonkeyPatch) -> FakeDocker:
    world = FakeDocker()
    monkeypatch.setattr(Gateway, "_docker", lambda self: contextlib.nullcontext(world))

    def marker(port: int, path: str, timeout: float = 1.0) -> str | None:
        """What a request to the port would say: the backend of the route that owns it, while nginx runs."""
        for c in world.containers_by_name.values():
            conf_dir = Path(c.attrs["Mounts"][0]["Source"])
            for route in (conf_dir / gw_mod.ROUTES_SUBDIR).glob("*.conf"):
                meta = parse_route_meta(route.read_text()) or {}
                if c.status == "running" and meta.get("port") == port:
                    return str(meta["backend_port"])
        return None

    monkeypatch.setattr(gw_mod, "_marker", marker)
    monkeypatch.setattr(gw_mod, "port_free", lambda port: True)
    return world


def test_the_lock_is_never_deleted_while_held(
    tmp_path: Path, fake_docker: FakeDocker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that waits for the lock while another removes the gateway and its files
    must, once it has the lock, still exclude every client after it."""
    import shutil

    conf = tmp_path / "gw" / "proj-stack"
    remover, waiter, third = (Gateway("proj", "stack", str(conf)) for _ in range(3))
    remover.ensure()
    purging, go = threading.Event(), threading.Event()
    real_rmtree = shutil.rmtree

    def pause_then_rmtree(path, *args, **kwargs):
        if Path(path) == conf:  # the remover holds the lock and is about to purge the gateway's files
            purging.set()
            assert go.wait(10)
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", pause_then_rmtree)
    inside, leave = threading.Event(), threading.Event()
    entered: list[str] = []

    def hold(who: Gateway, name: str) -> None:
        with who._lock():
            entered.append(name)
            inside.set()
            assert leave.wait(10)

    t_remove = threading.Thread(target=remover.remove_if_unused)
    t_remove.start()
    assert purging.wait(10)
    t_wait = threading.Thread(target=hold, args=(waiter, "waiter"))
    t_wait.start()  # waits for the lock the remover holds
    time.sleep(0.3)
    assert entered == []
    go.set()  # the purge goes ahead; then the remover lets go
    t_remove.join(10)
    assert inside.wait(10), "the waiter gets the lock once the remover lets go"
    t_third = threading.Thread(target=hold, args=(third, "third"))
    t_third.start()
    time.sleep(0.5)
    try:
        # Had the lock lived in the purged folder, the waiter would hold a deleted file
        # and the third client, locking a new one, would be in here beside it.
        assert entered == ["waiter"], "two clients hold the gateway lock at once"
    finally:
        leave.set()
        t_wait.join(10)
        t_third.join(10)
    assert entered == ["waiter", "third"]


def test_a_route_change_holds_the_lock_from_start_to_finish(
    tmp_path: Path, fake_docker: FakeDocker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Service B's route goes in while service A, the last one, is deleted in another process:
    whoever gets the lock the moment put_route lets go must find B's route, never a gateway
    that put_route started and then lost before writing its route."""
    conf = str(tmp_path / "gw" / "proj-stack")
    creating, deleting = Gateway("proj", "stack", conf), Gateway("proj", "stack", conf)
    real_lock = Gateway._lock
    outcome: dict[str, object] = {}

    @contextlib.contextmanager
    def lock_then_let_the_other_in(self):
        with real_lock(self):
            yield
        if self is creating and "removed" not in outcome:
            # The deleting client was waiting: it takes the lock right away.
            t = threading.Thread(target=lambda: outcome.setdefault("removed", deleting.remove_if_unused()))
            t.start()
            t.join(10)

    monkeypatch.setattr(Gateway, "_lock", lock_then_let_the_other_in)
    update = creating.put_route("svc-b", 25001, 40001, None)
    monkeypatch.setattr(Gateway, "_lock", real_lock)
    assert update.changed
    assert outcome["removed"] is False, "the gateway was removed although svc-b had just been routed"
    assert creating.routes() == ["svc-b"]
    assert creating.is_running()
    assert gw_mod._marker(25001, "/api/v1/service/svc-b/health") == "40001"


def test_atomic_write_is_0600_and_routes_listing(tmp_path):
    g = Gateway("p", "s", str(tmp_path / "gw"))
    assert g.container_name == "mldeploy-gw-p-s"
    assert g.routes() == []
    g._prepare_dirs()
    path = g.routes_dir / "iris.conf"
    gw_mod._write_atomic(path, render_service_conf("iris", 18080, 18081, [KEY1]))
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "gw").stat().st_mode & 0o777 == 0o700
    assert g.routes() == ["iris"]
    assert g.route_info("iris")["backend_port"] == 18081
    assert not [p for p in g.routes_dir.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ValueError, match="^project:"):
        Gateway("bad/name", "s", str(tmp_path))


def test_socket_folders_and_the_switch_link(tmp_path):
    """A service's folder: root's `current.sock` link beside the `run/` folder its backends write."""
    g = Gateway("p", "s", str(tmp_path / "gw"), sockets_dir=str(tmp_path / "sockets"))
    run = g.prepare_service("svc")
    assert run == tmp_path / "sockets" / "svc" / "run"
    assert (tmp_path / "sockets").stat().st_mode & 0o777 == 0o711
    assert (tmp_path / "sockets" / "svc").stat().st_mode & 0o777 == 0o711
    st = run.stat()
    assert st.st_mode & 0o777 == 0o750
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (65534, 65534)
    assert g.current_backend("svc") is None
    g.switch_backend("svc", "aaaa1111.sock")
    assert os.readlink(tmp_path / "sockets" / "svc" / "current.sock") == "run/aaaa1111.sock"  # relative: same in every mount
    g.switch_backend("svc", "bbbb2222.sock")
    assert g.current_backend("svc") == "bbbb2222.sock"
    assert [p.name for p in (tmp_path / "sockets" / "svc").iterdir() if p.name.endswith(".tmp")] == []
    assert g.host_socket("svc", "bbbb2222.sock") == run / "bbbb2222.sock"
    for bad in ("../x.sock", "x", "a/b.sock", ""):
        with pytest.raises(ValueError, match="^socket_name:"):
            g.switch_backend("svc", bad)
    g.prepare_service("svc")  # idempotent: the link stays
    assert g.current_backend("svc") == "bbbb2222.sock"
    g.remove_service_dir("svc")
    g.remove_service_dir("svc")  # gone already counts as removed
    assert not (tmp_path / "sockets").exists()
    with pytest.raises(GatewayError, match="sockets_dir"):
        Gateway("p", "s", str(tmp_path / "gw")).prepare_service("svc")


# ---------------------------------------------------------------- integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backend:
    """A stand-in scoring server on host loopback that says who it is."""

    def __init__(self, tag: str, make_server=None):
        outer = self
        tcp = make_server is None
        self.tag = tag
        self.seen_auth: list[str] = []
        self.conns: set[socket.socket] = set()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = tcp  # else 40 ms delayed-ACK stalls per response (TCP only)

            def log_message(self, *args):  # quiet
                pass

            def setup(self):
                super().setup()
                outer.conns.add(self.connection)

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/":
                    self._send(200, {"status": "Healthy", "backend": outer.tag})
                elif self.path == "/swagger.json":
                    self._send(200, {"swagger": "2.0", "backend": outer.tag})
                else:
                    self._send(404, {"message": "nope"})

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                if self.headers.get("Authorization"):
                    outer.seen_auth.append(self.headers["Authorization"])
                if self.path == "/score":
                    self._send(200, {"backend": outer.tag, "bytes": len(body)})
                else:
                    self._send(404, {"message": "nope"})

        self.server = make_server(Handler) if make_server else ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1] if isinstance(self.server.server_address, tuple) else 0
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)  # shutdown() waits one poll
        self.thread.start()

    def stop(self) -> None:
        """Like a stopped container: no listener and no open keepalive connection."""
        self.server.shutdown()
        self.server.server_close()
        for conn in list(self.conns):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture(scope="module")
def docker_client():
    try:
        import docker

        dc = docker.from_env(timeout=60)
        dc.ping()
    except Exception as e:  # fail, don't skip: these tests are the point
        pytest.fail(f"Docker is required for the gateway integration tests: {e}")
    try:
        dc.images.get(DEFAULT_IMAGE)
    except Exception as e:
        pytest.fail(f"the gateway image {DEFAULT_IMAGE} is missing (scripts/base-image.sh builds it): {e}")
    yield dc
    dc.close()


@pytest.fixture
def gateway(docker_client, tmp_path):
    # TCP backends switch by a reload, which may race a client's idle keep-alive
    # connection: these tests run the gateway with keep-alive off (socket
    # backends switch without a reload: see the socket tests below).
    g = Gateway(f"t{uuid.uuid4().hex[:8]}", f"s{uuid.uuid4().hex[:6]}", str(tmp_path / "gw"), client_keepalive_timeout=0)
    yield g
    g.remove(purge_config=True)
    left = docker_client.containers.list(
        all=True, filters={"label": [f"{k}={v}" for k, v in g.labels.items()]}
    )
    assert not left, f"gateway containers left behind: {[c.name for c in left]}"


@pytest.fixture
def backends():
    made: list[Backend] = []

    def make(tag: str) -> Backend:
        b = Backend(tag)
        made.append(b)
        return b

    yield make
    for b in made:
        try:
            b.stop()
        except Exception:
            pass


def session():
    import requests

    s = requests.Session()
    s.trust_env = False  # loopback only, never through a proxy from the environment
    return s


@pytest.mark.docker
def test_gateway_routes_auth_limits_and_switch(gateway, backends, docker_client):
    import requests

    a, b = backends("A"), backends("B")
    port = free_port()
    base = f"http://127.0.0.1:{port}/api/v1/service/iris"

    cid = gateway.ensure()
    assert gateway.ensure() == cid, "ensure() must be idempotent"
    c = docker_client.containers.get(cid)
    assert c.attrs["HostConfig"]["NetworkMode"] == "host"
    assert c.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert c.labels["mldeploy.resource"] == "gateway" and c.labels["mldeploy.managed"] == "true"

    upd = gateway.put_route("iris", port, a.port, [KEY1, KEY2], max_body_bytes=4096)
    assert upd.changed
    assert gateway.routes() == ["iris"]
    route_file = Path(gateway.conf_dir) / "services" / "iris.conf"
    assert route_file.stat().st_mode & 0o777 == 0o600
    assert gateway.put_route("iris", port, a.port, [KEY1, KEY2], max_body_bytes=4096).changed is False

    s = session()
    payload = {"data": [[1, 2, 3, 4]]}
    r = s.post(f"{base}/score", json=payload)
    assert r.status_code == 401 and "Bearer" in r.headers["WWW-Authenticate"]
    assert "message" in r.json()
    for bad in (f"Bearer {KEY1}x", f"bearer {KEY1}", KEY1, f"Bearer  {KEY1}", f"Basic {KEY1}", "Bearer " + "z" * 20):
        r = s.post(f"{base}/score", json=payload, headers={"Authorization": bad})
        assert r.status_code == 401, bad
    for key in (KEY1, KEY2):
        r = s.post(f"{base}/score", json=payload, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200 and r.json()["backend"] == "A"
        assert r.headers["X-Mldeploy-Backend"] == str(a.port)
    assert a.seen_auth == [], "the key must not reach the backend"

    assert s.get(f"{base}/swagger.json").json()["swagger"] == "2.0"  # open, as in Azure
    assert s.get(f"{base}/").json()["status"] == "Healthy"
    assert s.get(f"{base}/health").status_code == 200
    assert s.get(f"http://127.0.0.1:{port}/elsewhere").status_code == 404

    auth = {"Authorization": f"Bearer {KEY1}", "Content-Type": "application/json"}
    r = s.post(f"{base}/score", data=b"x" * 4096, headers=auth)
    assert r.status_code == 200 and r.json()["bytes"] == 4096
    r = s.post(f"{base}/score", data=b"x" * 4097, headers=auth)
    assert r.status_code == 413 and "limit is 4096 bytes" in r.json()["message"]

    # The same port cannot serve two services; a busy host port is refused.
    with pytest.raises(ValueError, match="^port:"):
        gateway.put_route("other", port, b.port, None)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ValueError, match="^port:"):
            gateway.put_route("other", busy.getsockname()[1], b.port, None)
    assert gateway.routes() == ["iris"]

    # Rolling switch A -> B under load: zero failures, B after the switch.
    results: list[tuple[float, float, object]] = []  # (start, end, backend tag or error)
    stop = threading.Event()

    def client():
        cs = session()
        t_end = time.monotonic() + 15
        while not stop.is_set() and len(results) < 300 and time.monotonic() < t_end:
            t0 = time.monotonic()
            try:
                resp = cs.post(f"{base}/score", json=payload, headers=auth, timeout=10)
                out = resp.json()["backend"] if resp.status_code == 200 else f"HTTP {resp.status_code}"
            except requests.RequestException as e:
                out = e
            results.append((t0, time.monotonic(), out))
            time.sleep(0.005)

    t = threading.Thread(target=client)
    t.start()
    while len(results) < 30 and t.is_alive():
        time.sleep(0.01)
    switch = gateway.put_route("iris", port, b.port, [KEY1, KEY2], max_body_bytes=4096)
    switched_at = time.monotonic()
    assert gateway.wait_drained(timeout=30)
    a.stop()  # old backend gone: everything must now come from B
    n_after = len(results)
    while len(results) < n_after + 30 and t.is_alive():
        time.sleep(0.01)
    stop.set()
    t.join(timeout=20)

    failures = [r for r in results if r[2] not in ("A", "B")]
    late_a = [r for r in results if r[0] > switched_at and r[2] == "A"]
    print(
        f"\nswitch live after {switch.live_after_s * 1000:.0f} ms; {len(results)} requests, "
        f"{len(failures)} failed, {sum(1 for r in results if r[2] == 'B')} from B, {len(late_a)} from A after the switch"
    )
    assert switch.changed and switch.backend_port == b.port
    assert not failures, failures[:5]
    assert not late_a, late_a[:5]
    assert results[-1][2] == "B" and any(r[2] == "A" for r in results)

    logs = gateway.logs(tail=1000)
    assert KEY1 not in logs and KEY2 not in logs

    gateway.remove_route("iris")
    gateway.remove_route("iris")  # idempotent
    assert gateway.routes() == []
    with pytest.raises(requests.ConnectionError):
        session().get(f"{base}/", timeout=2)

    gateway.remove()
    gateway.remove()  # idempotent
    assert not docker_client.containers.list(
        all=True, filters={"label": [f"{k}={v}" for k, v in gateway.labels.items()]}
    )


@pytest.mark.docker
def test_gateway_without_keys_and_restart(gateway, backends, docker_client):
    b = backends("B")
    port = free_port()
    gateway.put_route("open-svc", port, b.port, None)  # put_route starts the gateway itself
    s = session()
    url = f"http://127.0.0.1:{port}/api/v1/service/open-svc/score"
    assert s.post(url, json={}).json()["backend"] == "B"

    # A stopped gateway is brought back by ensure() with its routes.
    docker_client.containers.get(gateway.container_name).stop(timeout=5)
    gateway.ensure()
    assert s.post(url, json={}).json()["backend"] == "B"

    # A dead backend gives a JSON 502 from the gateway, not a hang.
    b.stop()
    r = s.post(url, json={})
    assert r.status_code == 502 and "not available" in r.json()["message"]
    # The gateway's error log says why: the backend refused, for this service's route.
    logs = gateway.logs(tail=200)
    failed = [line for line in logs.splitlines() if "connect() failed" in line and "while connecting to upstream" in line]
    assert failed, logs[-2000:]
    assert "/api/v1/service/open-svc/score" in failed[-1] and f"127.0.0.1:{b.port}" in failed[-1]


@pytest.mark.docker
def test_put_route_refuses_a_stranger_container(docker_client, tmp_path):
    g = Gateway(f"t{uuid.uuid4().hex[:8]}", "s", str(tmp_path / "gw"))
    stranger = docker_client.containers.create(DEFAULT_IMAGE, name=g.container_name, command=["true"])
    try:
        with pytest.raises(GatewayError, match="not this gateway"):
            g.ensure()
    finally:
        stranger.remove(force=True)


@pytest.mark.docker
def test_rejected_config_restores_previous_route(gateway, backends):
    a, b = backends("A"), backends("B")
    port = free_port()
    gateway.put_route("iris", port, a.port, [KEY1])
    before = (gateway.routes_dir / "iris.conf").read_text()
    # A foreign, broken file in the routes dir makes `nginx -t` fail.
    broken = gateway.routes_dir / "zz-broken.conf"
    broken.write_text("this is not nginx config;\n")
    with pytest.raises(GatewayError, match="nginx rejected the configuration: .*unknown directive"):
        gateway.put_route("iris", port, b.port, [KEY1])
    assert (gateway.routes_dir / "iris.conf").read_text() == before
    with pytest.raises(GatewayError, match="nginx rejected"):
        gateway.put_route("new-svc", free_port(), b.port, None)
    assert not (gateway.routes_dir / "new-svc.conf").exists()
    broken.unlink()
    r = session().post(
        f"http://127.0.0.1:{port}/api/v1/service/iris/score", json={}, headers={"Authorization": f"Bearer {KEY1}"}
    )
    assert r.status_code == 200 and r.json()["backend"] == "A"


# ---------------------------------------------------------------- socket backends (the local target's)


class SocketBackend(Backend):
    """The stand-in server on a Unix socket in a service's `run/` folder, owned as gunicorn's would be."""

    def __init__(self, tag: str, path: Path):
        import socketserver

        class UnixServer(ThreadingHTTPServer):
            address_family = socket.AF_UNIX

            def server_bind(self) -> None:
                socketserver.TCPServer.server_bind(self)
                self.server_name, self.server_port = "localhost", 0

            def get_request(self):
                conn, _ = self.socket.accept()
                return conn, ("unix", 0)

        super().__init__(tag, make_server=lambda handler: UnixServer(str(path), handler))
        os.chown(path, 65534, 65534)
        os.chmod(path, 0o770)
        self.path = path


@pytest.mark.docker
def test_socket_routes_switch_without_a_reload_under_keep_alive_load(docker_client, tmp_path):
    """The route names the service's link; re-pointing it moves new requests at once, with no
    reload, no failed request and no client connection closed."""
    g = Gateway(f"t{uuid.uuid4().hex[:8]}", "s", str(tmp_path / "gw"), sockets_dir=str(tmp_path / "sockets"))
    made: list[SocketBackend] = []
    try:
        run = g.prepare_service("iris")
        a = SocketBackend("A", run / "a.sock")
        made.append(a)
        g.switch_backend("iris", "a.sock")
        port = free_port()
        g.ensure()
        g.put_route("iris", port, None, [KEY1], backend_socket=backend_socket("iris"))
        c = docker_client.containers.get(g.container_name)
        mounts = {m["Destination"]: m for m in c.attrs["Mounts"]}
        assert mounts["/run/mldeploy-backends"]["RW"] is False
        workers_before = _nginx_workers(c)
        assert len(workers_before) == 1
        base = f"http://127.0.0.1:{port}/api/v1/service/iris"
        s = session()
        assert s.post(f"{base}/score", json={}).status_code == 401
        assert s.post(f"{base}/score", json={}, headers={"Authorization": f"Bearer {KEY1}"}).json()["backend"] == "A"

        b = SocketBackend("B", run / "b.sock")
        made.append(b)
        seen: list[object] = []
        connections = [0]

        def client():
            import http.client

            conn = None
            t_end = time.monotonic() + 15
            while len(seen) < 400 and time.monotonic() < t_end:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    connections[0] += 1
                try:
                    conn.request("POST", "/api/v1/service/iris/score", body=b"{}",
                                 headers={"Authorization": f"Bearer {KEY1}", "Content-Type": "application/json"})
                    r = conn.getresponse()
                    body = json.loads(r.read())
                    seen.append(body["backend"] if r.status == 200 else f"HTTP {r.status}")
                    if r.getheader("Connection", "").lower() == "close":
                        conn.close()
                        conn = None
                except (OSError, http.client.HTTPException) as e:
                    seen.append(e)
                    conn.close()
                    conn = None
                time.sleep(0.005)
            if conn is not None:
                conn.close()

        t = threading.Thread(target=client)
        t.start()
        while len(seen) < 50 and t.is_alive():
            time.sleep(0.01)
        g.switch_backend("iris", "b.sock")
        t.join(timeout=30)
        assert set(seen) == {"A", "B"}, [x for x in seen if x not in ("A", "B")][:5]
        assert seen.index("B") > 0 and "A" not in seen[seen.index("B"):], "after the switch only B answers"
        assert g.current_backend("iris") == "b.sock"
        # No reload happened (the same nginx worker), and the client kept its one keep-alive connection.
        assert _nginx_workers(c) == workers_before
        assert connections == [1]
    finally:
        for backend in made:
            backend.stop()
        g.remove(purge_config=True)
        g.remove_service_dir("iris")


def _nginx_workers(c) -> list[str]:
    """PIDs of the gateway's nginx workers, by process title (a reload starts new ones)."""
    script = (
        "for f in /proc/[0-9]*/cmdline; do t=$(tr '\\0' '\\n' 2>/dev/null < \"$f\" | head -n1); "
        "case \"$t\" in 'nginx: worker process'*) d=${f%/cmdline}; echo ${d#/proc/};; esac; done"
    )
    code, out = c.exec_run(["/bin/sh", "-c", script])
    assert code == 0, out
    return sorted(out.decode().split())
