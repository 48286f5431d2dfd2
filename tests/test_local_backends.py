"""The local target's backends, against real Docker (issue 11, parts 1 and 2).

- **No way around the key.** Proved from the backend's own configuration and
  namespace: no network (`NetworkMode: none`), nothing published, no TCP or UDP
  socket and no interface but `lo` inside it, its only listener a Unix socket in
  a folder that only the gateway also mounts; it runs as nobody with every
  capability dropped and no-new-privileges. No traffic is ever sent to a bridge
  or any other non-loopback address.
- **Rolls under load.** 4 closed-loop keep-alive clients and one client at 20
  requests/s through the gateway while the backend rolls: no request fails, no
  client connection is closed, and every POST reaches a scoring script once.
- **Restarts.** After a crash (SIGKILL of the server from the host) and an OOM
  kill, the service answers again within 30 s with no pulumi command.
- **dockerd restart** (`restarts_docker`): written, and ordered last; it stops
  every container on the machine, so run it only on a machine of your own.

Every loop is bounded in requests and seconds; every request goes to 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import docker
import pytest

from conftest import ROOT
from mldeploy.providers.core import containers
from mldeploy.providers.images import build as images
from mldeploy.providers.front.gateway_config import CONTAINER_BACKENDS_DIR, SCORING_SOCKET_DIR
from mldeploy.providers.targets import local

pytestmark = pytest.mark.docker

SAMPLE = ROOT / "sample"
BASE_IMAGE = "mldeploy/base:bookworm-py3.11"
BODY = json.dumps({"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]}).encode()
AGENT = f"mldeploy-test-load/{uuid.uuid4().hex[:8]}"
BACK_WITHIN_S = 30.0


@pytest.fixture(scope="module")
def dc() -> Iterator[docker.DockerClient]:
    client = docker.from_env(timeout=300)
    client.ping()  # no engine: an error, not a skip
    yield client
    client.close()


@pytest.fixture(scope="module")
def image(dc: docker.DockerClient) -> Iterator[str]:
    tag = f"mldeploy-test/local-backends:{uuid.uuid4().hex[:8]}"
    images.build_inference_image(
        tag, BASE_IMAGE, str(SAMPLE / "src"), "score.py", str(SAMPLE / "env" / "myenv.yml"), {"mldeploy.test": "local-backends"}
    )
    yield tag
    images.remove_image(tag)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("local-backends")
    model = work / "registry" / "sklearn_regression_model" / "1"
    model.mkdir(parents=True)
    subprocess.run([sys.executable, str(SAMPLE / "train.py"), "--out", str(model / "sklearn_regression_model.pkl")],
                   check=True, capture_output=True, timeout=300)
    return work


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(image: str, workspace: Path) -> Iterator[dict[str, Any]]:
    """One service made by the local target (as `up` would); `service["outs"]` follows its rolls."""
    props = {
        "service_name": "svc", "target": "local", "project": f"t{uuid.uuid4().hex[:8]}", "stack": "lb",
        "image_name": image, "image_id": "sha256:test",
        "models": [{"name": "sklearn_regression_model", "version": 1,
                    "model_dir": str(workspace / "registry" / "sklearn_regression_model" / "1")}],
        "cpu_cores": 1, "memory_gb": 0.5, "auth_enabled": True, "environment_variables": {},
        "primary_key_version": 1, "secondary_key_version": 1, "max_request_bytes": 1_048_576,
        "startup_timeout_seconds": 120, "port": free_port(), "gateway_image": BASE_IMAGE,
        "state_dir": str(workspace / "state"), "worker_count": None,
    }
    holder = {"props": props, "outs": local.TARGET.create(dict(props))}
    try:
        yield holder
    finally:
        local.TARGET.delete(holder["outs"])
        assert containers.find(containers.labels_for(props["project"], "lb", "svc", kind="service")) == []


class Client:
    """One keep-alive connection to the gateway (http.client: no proxy from the environment)."""

    def __init__(self, port: int, path: str, key: str, agent: str = "mldeploy-test-probe"):
        self.port, self.path, self.key, self.agent = port, path, key, agent
        self.conn: http.client.HTTPConnection | None = None
        self.connections = 0
        self.announced_closes = 0  # answers with `Connection: close` (nginx's keepalive_requests, 1000)

    def post(self) -> tuple[int, str]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.connections += 1
        try:
            self.conn.request("POST", self.path, body=BODY, headers={
                "Content-Type": "application/json", "Authorization": f"Bearer {self.key}", "User-Agent": self.agent})
            resp = self.conn.getresponse()
            text = resp.read().decode(errors="replace")
            if resp.getheader("Connection", "").lower() == "close":
                self.announced_closes += 1
                self.close()
            return resp.status, text
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return 0, repr(exc)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def score(service: dict[str, Any], key: str | None = None) -> int:
    outs = service["outs"]
    c = Client(int(outs["port"]), f"/api/v1/service/{outs['service_name']}/score", key if key is not None else outs["primary_key"])
    try:
        return c.post()[0]
    finally:
        c.close()


def wait_answers(service: dict[str, Any], within: float = BACK_WITHIN_S) -> float:
    """Seconds until the service scores again through the gateway; fails after `within`."""
    start = time.monotonic()
    while score(service) != 200:
        if time.monotonic() - start > within:
            cid = service["outs"]["container_id"]
            pytest.fail(f"the service did not answer again within {within:.0f} s; its log:\n{containers.logs(cid, tail=30)}")
        time.sleep(0.2)
    return time.monotonic() - start


def backend(dc: docker.DockerClient, service: dict[str, Any]):
    return dc.containers.get(service["outs"]["container_id"])


# ---------------------------------------------------------------- isolation


def test_the_backend_has_no_network_and_serves_only_on_its_socket(dc: docker.DockerClient, service: dict[str, Any]) -> None:
    c = backend(dc, service)
    host = c.attrs["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert not host.get("PortBindings") and not host.get("PublishAllPorts")
    assert not c.attrs["NetworkSettings"].get("Ports")
    assert not c.attrs["NetworkSettings"].get("Networks") or list(c.attrs["NetworkSettings"]["Networks"]) == ["none"]
    assert c.attrs["Config"]["User"] == "65534:65534"
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert "no-new-privileges" in (host.get("SecurityOpt") or [])
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    assert not host.get("Privileged")

    def inside(*cmd: str) -> str:
        code, out = c.exec_run(list(cmd))
        assert code == 0, out
        return out.decode()

    # Its own namespace: only the loopback interface, and no TCP or UDP socket at all.
    interfaces = [ln.split(":")[0].strip() for ln in inside("cat", "/proc/net/dev").splitlines()[2:]]
    assert interfaces == ["lo"]
    for table in ("tcp", "tcp6", "udp", "udp6"):
        rows = inside("cat", f"/proc/net/{table}").splitlines()[1:]
        assert rows == [], f"/proc/net/{table} inside the backend: {rows}"
    # Listening Unix sockets: its scoring socket in the service's folder (and gunicorn's control socket).
    listeners = [ln.split()[7] for ln in inside("cat", "/proc/net/unix").splitlines()[1:]
                 if len(ln.split()) >= 8 and int(ln.split()[3], 16) & 0x10000]
    sock = f"{SCORING_SOCKET_DIR}/{service['outs']['backend_socket']}"
    assert sock in listeners
    assert [p for p in listeners if p != sock and not p.startswith("/tmp/")] == []
    assert inside("id", "-u").strip() == "65534"
    # CapEff 0: no capability at all, not even for root-owned files.
    cap_eff = [ln for ln in inside("cat", "/proc/1/status").splitlines() if ln.startswith("CapEff:")][0]
    assert int(cap_eff.split()[1], 16) == 0

    # Its socket folder: the only writable mount, entered by nobody and the gateway's group only.
    mounts = {m["Destination"]: m for m in c.attrs["Mounts"]}
    assert mounts[SCORING_SOCKET_DIR]["RW"] is True
    assert [d for d, m in mounts.items() if m["RW"] and d != SCORING_SOCKET_DIR] == []
    run_dir = Path(mounts[SCORING_SOCKET_DIR]["Source"])
    st = run_dir.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o750)
    link = run_dir.parent / "current.sock"
    assert os.readlink(link) == f"run/{service['outs']['backend_socket']}"
    assert link.parent.stat().st_uid == 0 and link.parent.stat().st_mode & 0o022 == 0  # the link is out of its reach

    # The gateway mounts every service's folder read-only; it holds the key check.
    gw = dc.containers.get(f"mldeploy-gw-{service['props']['project']}-lb")
    gw_mounts = {m["Destination"]: m for m in gw.attrs["Mounts"]}
    assert gw_mounts[CONTAINER_BACKENDS_DIR]["RW"] is False
    assert score(service, key="") == 401
    assert score(service, key="x" * 43) == 401
    assert score(service) == 200


# ---------------------------------------------------------------- a roll under load


def test_a_roll_under_load_fails_nothing_and_sends_every_post_once(
    dc: docker.DockerClient, service: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    outs = service["outs"]
    port, path, key = int(outs["port"]), f"/api/v1/service/{outs['service_name']}/score", outs["primary_key"]
    saved_logs: dict[str, str] = {}
    real_remove = containers.remove

    def remove_keeping_log(cid: str, stop_timeout: int = 10) -> None:
        # The old backend's access log (one line per request it got) before it goes.
        with_log = dc.containers.get(cid).logs().decode(errors="replace") if containers.status(cid) else ""
        saved_logs[cid] = with_log
        real_remove(cid, stop_timeout=stop_timeout)

    monkeypatch.setattr(containers, "remove", remove_keeping_log)
    stop = threading.Event()
    results: dict[str, list[tuple[int, str]]] = {}
    clients: dict[str, Client] = {}

    def closed_loop(name: str) -> None:
        c = clients[name] = Client(port, path, key, AGENT)
        got = results[name] = []
        end = time.monotonic() + 40
        while not stop.is_set() and len(got) < 6000 and time.monotonic() < end:
            got.append(c.post())
        c.close()

    def steady(name: str, rate: float = 20.0) -> None:
        c = clients[name] = Client(port, path, key, AGENT)
        got = results[name] = []
        start = time.monotonic()
        for i in range(800):  # at most 40 s at 20/s
            if stop.is_set():
                break
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            got.append(c.post())
        c.close()

    threads = [threading.Thread(target=closed_loop, args=(f"loop{i}",)) for i in range(4)]
    threads.append(threading.Thread(target=steady, args=("steady",)))
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        news = {**service["props"], "environment_variables": {"ROLL": "2"}}
        rolled = local.TARGET.update(outs, news, roll=True)
        service["outs"], service["props"] = rolled, news
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert rolled["container_id"] != outs["container_id"] and rolled["backend_socket"] != outs["backend_socket"]
    assert containers.status(outs["container_id"]) is None, "the old backend is gone"

    sent = sum(len(r) for r in results.values())
    failed = [(name, s, body[:200]) for name, r in results.items() for s, body in r if s != 200]
    assert sent > 100 and len(results["steady"]) >= 40, {n: len(r) for n, r in results.items()}
    assert failed == [], f"{len(failed)} of {sent} requests failed during the roll: {failed[:5]}"
    # Keep-alive stayed on through the roll: a client opened a new connection only after
    # the gateway announced the end of the last one (every 1000 requests), never because
    # the roll closed it.
    assert {n: c.connections - c.announced_closes for n, c in clients.items()} == {n: 1 for n in clients}
    assert all(c.connections <= len(results[n]) // 1000 + 1 for n, c in clients.items())

    # Every POST reached a scoring script exactly once: the access logs of the old and the
    # new backend hold one line per request the clients sent (ours carry our User-Agent).
    new_log = backend(dc, service).logs().decode(errors="replace")
    logged = sum(
        1 for log in (*saved_logs.values(), new_log) for ln in log.splitlines() if AGENT in ln and '"POST /score ' in ln
    )
    assert outs["container_id"] in saved_logs
    assert logged == sent, f"the scoring scripts logged {logged} POSTs for {sent} sent"


# ---------------------------------------------------------------- restarts


def test_the_service_answers_again_after_a_crash(dc: docker.DockerClient, service: dict[str, Any]) -> None:
    c = backend(dc, service)
    restarts = c.attrs["RestartCount"]
    os.kill(c.attrs["State"]["Pid"], signal.SIGKILL)  # the scoring server dies; nobody runs pulumi
    deadline = time.monotonic() + BACK_WITHIN_S
    while backend(dc, service).attrs["RestartCount"] == restarts and time.monotonic() < deadline:
        time.sleep(0.1)
    assert backend(dc, service).attrs["RestartCount"] > restarts, "Docker did not restart the backend"
    wait_answers(service)


def test_the_service_answers_again_after_an_oom_kill(dc: docker.DockerClient, service: dict[str, Any]) -> None:
    c = backend(dc, service)
    restarts = c.attrs["RestartCount"]
    # The kernel's OOM killer picks the scoring server (not the allocation below) as its victim.
    Path(f"/proc/{c.attrs['State']['Pid']}/oom_score_adj").write_text("1000")
    code, _ = c.exec_run(["python", "-c", "import time; b = b'x' * (1536 << 20); time.sleep(5)"])
    deadline = time.monotonic() + BACK_WITHIN_S
    while backend(dc, service).attrs["RestartCount"] == restarts and time.monotonic() < deadline:
        time.sleep(0.1)
    after = backend(dc, service)
    assert after.attrs["RestartCount"] > restarts, f"no restart after the allocation (exit {code})"
    events = dc.events(since=int(time.time()) - 120, until=int(time.time()) + 1, decode=True,
                       filters={"container": after.id, "event": "oom"})
    assert list(events), "Docker saw no OOM event for the backend"
    wait_answers(service)


@pytest.mark.restarts_docker
def test_every_service_answers_again_after_dockerd_restarts(dc: docker.DockerClient, service: dict[str, Any]) -> None:
    """Stops and starts dockerd: every container on the machine stops. Run on a machine of your own."""
    pids = subprocess.run(["pidof", "dockerd"], capture_output=True, text=True).stdout.split()
    assert len(pids) == 1, f"one dockerd expected, found {pids}"
    os.kill(int(pids[0]), signal.SIGTERM)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pids[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{pids[0]}").exists(), "dockerd did not stop within 60 s"
    subprocess.run(["bash", str(ROOT / "scripts" / "docker.sh")], check=True, timeout=120)
    wait_answers(service)  # within 30 s of dockerd answering again, with no pulumi command


def test_socket_connections_parser() -> None:
    """The /proc/net/unix reading a roll waits on (pure)."""
    text = (
        "Num       RefCount Protocol Flags    Type St Inode Path\n"
        "0000: 00000002 00000000 00010000 0001 01 11 /run/mldeploy/a.sock\n"
        "0001: 00000003 00000000 00000000 0001 03 12 /run/mldeploy/a.sock\n"
        "0002: 00000002 00000000 00000000 0001 02 13 /run/mldeploy/a.sock\n"
        "0003: 00000003 00000000 00000000 0001 03 14\n"
        "0004: 00000003 00000000 00000000 0001 03 15 /run/mldeploy/b.sock\n"
    )
    assert containers.unix_connections(text, "/run/mldeploy/a.sock") == 2  # accepted + waiting in the backlog
    assert containers.unix_connections(text, "/run/mldeploy/c.sock") == 0
    assert containers.unix_connections(text.splitlines()[0], "/run/mldeploy/a.sock") == 0

