"""The local single-node Kubernetes cluster (scripts/k8s/cluster.sh) and its image registry, for real.

Every client here talks to 127.0.0.1 only: the API server, the registry,
kube-proxy's configz and the NodePorts. That nothing is exposed elsewhere is
shown by reading kube-proxy's configuration, the iptables rules and the
listening sockets, never by probing another address.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from conftest import ROOT
from mldeploy.providers.targets.kubernetes import local_cluster as cluster
from mldeploy.providers.image_registry import oci_registry

pytestmark = [pytest.mark.k8s]

CLUSTER_SH = str(ROOT / "scripts" / "k8s" / "cluster.sh")
RUN = cluster.run_dir()
KUBECTL = cluster.kubectl_path()
K8S_BIN = str(Path(KUBECTL).parent)
RUNTIME_DIR = os.environ.get("MLDEPLOY_K8S_RUNTIME_DIR", "/run/mldeploy-k8s")
SOCK = f"{RUNTIME_DIR}/containerd/containerd.sock"
NODE = os.environ.get("MLDEPLOY_K8S_NODE", "mldeploy-node")
VERSION = "v" + (os.environ.get("K8S_VERSION") or cluster.K8S_VERSION)
REGISTRY = cluster.registry_address()
PAUSE_IMAGE = f"{REGISTRY}/mldeploy/pause:3.10"
COMPONENTS = ["containerd", "etcd", "kube-apiserver", "kubelet", "kube-proxy", "kube-scheduler", "kube-controller-manager"]
# The hard-coded paths cluster.sh watches (HOST_PATHS there).
HOST_PATHS = ["/var/lib/kubelet", "/var/lib/cni", "/var/log/containers", "/var/log/pods", "/etc/cni", "/opt/cni",
              "/var/lib/containerd", "/run/netns", "/etc/kubernetes"]
UP_BUDGET_S = 60

APP = '''\
import os, signal, socket, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"ok host={socket.gethostname()} version={os.environ.get('APP_VERSION', '')}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


HTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
'''


def run(*cmd: str, timeout: float = 120, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check:
        assert done.returncode == 0, f"{' '.join(cmd)} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def kubectl(kubeconfig: str, *args: str, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    return run(KUBECTL, "--kubeconfig", kubeconfig, *args, timeout=timeout, **kw)


def kubectl_json(kubeconfig: str, *args: str) -> Any:
    return json.loads(kubectl(kubeconfig, *args, "-o", "json").stdout)


def ctr(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("ctr", "--address", SOCK, "--namespace", "k8s.io", *args, timeout=60, check=check)


def containerd_images() -> set[str]:
    return set(ctr("images", "ls", "-q").stdout.split())


def remove_from_containerd(ref: str) -> None:
    """Remove an image with every name containerd gave it (the CRI adds its sha256:<config> id)."""
    rows = [line.split() for line in ctr("images", "ls").stdout.splitlines()[1:]]
    digests = {row[2] for row in rows if row[0] == ref}
    names = [row[0] for row in rows if row[2] in digests]
    if names:
        ctr("images", "rm", *names, check=False)


def apply(kubeconfig: str, *objects: dict[str, Any]) -> None:
    kubectl(kubeconfig, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


def delete_namespace(kubeconfig: str, ns: str) -> None:
    kubectl(kubeconfig, "delete", "namespace", ns, "--ignore-not-found", "--wait=true", "--timeout=120s", timeout=150, check=False)


def deployment(name: str, ns: str, image: str, **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{"name": name, "image": image, "imagePullPolicy": "IfNotPresent", **container}],
                },
            },
        },
    }


def node_port_service(name: str, ns: str, target_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"type": "NodePort", "selector": {"app": name}, "ports": [{"port": 80, "targetPort": target_port}]},
    }


def listeners() -> list[tuple[str, str]]:
    """(local address:port, process) of every listening TCP socket."""
    out = run("ss", "-ltnpH").stdout
    rows = []
    for line in out.splitlines():
        parts = line.split()
        proc = re.search(r'users:\(\("([^"]+)"', line)
        rows.append((parts[3], proc.group(1) if proc else ""))
    return rows


def our_processes() -> list[str]:
    """Command lines of processes that belong to the cluster: its binaries, its containerd, its shims."""
    marks = (K8S_BIN + "/", str(RUN / "conf" / "containerd.toml"), SOCK)
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(m in cmd for m in marks):
            found.append(f"{p.name}: {cmd[:200]}")
    return found


# ---------------------------------------------------------------- the cluster


def test_node_is_ready_at_the_built_version_and_listens_on_loopback_only(k8s_cluster: str) -> None:
    node = kubectl_json(k8s_cluster, "get", "node", NODE)
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"
    assert node["status"]["nodeInfo"]["kubeletVersion"] == VERSION
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://1.6")
    version = json.loads(kubectl(k8s_cluster, "version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == VERSION
    assert version["clientVersion"]["gitVersion"] == VERSION
    assert "server: https://127.0.0.1:6443" in Path(k8s_cluster).read_text()
    assert cluster.is_up()
    status = run(CLUSTER_SH, "status").stdout
    assert f"kubeconfig: {k8s_cluster}" in status and f"node {NODE}: Ready" in status

    # Every socket of the cluster and the registry is on 127.0.0.1.
    ours = ("kube-apiserver", "kubelet", "kube-proxy", "kube-controller", "kube-scheduler", "etcd", "containerd", "docker-registry")
    mine = [(addr, proc) for addr, proc in listeners() if proc in ours]
    ports = {addr.rsplit(":", 1)[1] for addr, _ in mine}
    assert {"6443", "10250", "10248", "10256", "10257", "10259", "23790", "5000"} <= ports, mine
    assert [m for m in mine if not m[0].startswith("127.0.0.1:")] == []


def test_second_up_is_a_fast_no_op(k8s_cluster: str) -> None:
    pids = {c: (RUN / "pids" / f"{c}.pid").read_text().strip() for c in COMPONENTS}
    start = time.monotonic()
    done = run(CLUSTER_SH, "up")
    elapsed = time.monotonic() - start
    assert "already up" in done.stderr, done.stderr
    assert "started" not in done.stderr
    assert elapsed < 10, f"a second up took {elapsed:.1f}s"
    assert {c: (RUN / "pids" / f"{c}.pid").read_text().strip() for c in COMPONENTS} == pids
    assert all(Path(f"/proc/{pid}").exists() for pid in pids.values())
    print(f"second up: {elapsed:.2f}s")


# ---------------------------------------------------------------- an app from the local registry


@pytest.fixture(scope="module")
def web_app(k8s_cluster: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An image built FROM the project's base image, pushed to the local registry, run as a Deployment + NodePort."""
    base = run(str(ROOT / "scripts" / "base-image.sh"), timeout=1800).stdout.strip()
    tag = uuid.uuid4().hex[:10]
    repo = f"{REGISTRY}/mldeploy-test/web"
    image = f"{repo}:{tag}"
    ns = f"clustertest-{tag}"
    ctx = tmp_path_factory.mktemp("webimage")
    (ctx / "app.py").write_text(APP)
    (ctx / "Dockerfile").write_text(f'FROM {base}\nCOPY app.py /app.py\nCMD ["python3", "-u", "/app.py"]\n')
    digest = ""
    try:
        run("docker", "build", "-q", "-t", image, str(ctx), timeout=600, env={**os.environ, "DOCKER_BUILDKIT": "0"})
        # 127.0.0.1:5000 is pull-only: the push goes to the write listener with the project's credentials.
        digest = oci_registry.push(image, repo, tag)
        assert image not in containerd_images(), "the image must come from the registry, not be there already"
        apply(
            k8s_cluster,
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
            deployment(
                "web", ns, image,
                env=[{"name": "APP_VERSION", "value": tag}],
                ports=[{"containerPort": 8080}],
                readinessProbe={"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
            ),
            node_port_service("web", ns, 8080),
        )
        kubectl(k8s_cluster, "rollout", "status", "deployment/web", "-n", ns, "--timeout=180s", timeout=200)
        svc = kubectl_json(k8s_cluster, "get", "service", "web", "-n", ns)
        yield {"ns": ns, "image": image, "repo": repo, "digest": digest, "tag": tag,
               "node_port": svc["spec"]["ports"][0]["nodePort"]}
    finally:
        delete_namespace(k8s_cluster, ns)
        remove_from_containerd(image)
        if digest:
            oci_registry.delete_manifest(repo, digest)  # deletes take the project's credentials (registry.sh)
        run("docker", "rmi", image, check=False)


@pytest.mark.docker
def test_image_pushed_to_the_local_registry_is_pulled_and_serves_on_a_loopback_nodeport(k8s_cluster: str, web_app: dict[str, Any]) -> None:
    ns, image = web_app["ns"], web_app["image"]
    pod = kubectl_json(k8s_cluster, "get", "pods", "-n", ns, "-l", "app=web")["items"][0]
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] is True
    # containerd resolved the tag in the registry: the running image is the pushed manifest.
    assert status["imageID"] == f"{web_app['repo']}@{web_app['digest']}"
    events = kubectl_json(k8s_cluster, "get", "events", "-n", ns)["items"]
    pulled = [e["message"] for e in events if e["reason"] == "Pulled"]
    assert any(f'Successfully pulled image "{image}"' in m for m in pulled), pulled
    assert image in containerd_images()

    url = f"http://127.0.0.1:{web_app['node_port']}/"
    deadline = time.monotonic() + 30
    while True:
        try:
            r = requests.get(url, timeout=3)
            if r.status_code == 200:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer"
        time.sleep(0.5)
    assert r.text == f"ok host={pod['metadata']['name']} version={web_app['tag']}\n"


@pytest.mark.docker
def test_nodeports_are_bound_to_loopback_only(k8s_cluster: str, web_app: dict[str, Any]) -> None:
    port = str(web_app["node_port"])
    config = requests.get("http://127.0.0.1:10249/configz", timeout=10).json()["kubeproxy.config.k8s.io"]
    assert config["mode"] == "iptables"
    assert config["nodePortAddresses"] == ["127.0.0.0/8"]
    assert config["iptables"]["localhostNodePorts"] is True

    nat = run("iptables-save", "-t", "nat").stdout.splitlines()
    # The only way into KUBE-NODEPORTS is a loopback destination.
    entries = [r for r in nat if r.startswith("-A ") and r.endswith("-j KUBE-NODEPORTS")]
    assert entries, "no KUBE-NODEPORTS jump"
    for rule in entries:
        dest = re.search(r" -d (\S+)", rule)
        assert dest and dest.group(1).startswith("127."), rule
    assert any(f"--dport {port} " in r for r in nat if r.startswith("-A KUBE-NODEPORTS")), f"no rule for NodePort {port}"
    # route_localnet=1 (for localhost NodePorts) comes with a guard: packets from
    # off the host to 127.0.0.0/8 are dropped.
    filt = run("iptables-save", "-t", "filter").stdout.splitlines()
    assert "-A INPUT -j KUBE-FIREWALL" in filt
    assert any(r.startswith("-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 ") and r.endswith("-j DROP") for r in filt), filt
    # No IPv6 NodePorts, and no socket holds the port on any address.
    assert f"--dport {port} " not in run("ip6tables-save", "-t", "nat").stdout
    assert [a for a, _ in listeners() if a.rsplit(":", 1)[1] == port] == []


@pytest.mark.docker
def test_import_helper_loads_a_docker_save_into_containerd(k8s_cluster: str, tmp_path: Path) -> None:
    """The fallback for an image that cannot be pulled: `cluster.sh import` of a `docker save`."""
    image = f"mldeploy-test/imported:{uuid.uuid4().hex[:10]}"
    (tmp_path / "hello.txt").write_text("hello\n")
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\n")
    ref = f"docker.io/{image}"
    try:
        run("docker", "build", "-q", "-t", image, str(tmp_path), env={**os.environ, "DOCKER_BUILDKIT": "0"})
        run("docker", "save", "-o", str(tmp_path / "image.tar"), image)
        run(CLUSTER_SH, "import", str(tmp_path / "image.tar"))
        assert ref in containerd_images()
    finally:
        remove_from_containerd(ref)
        run("docker", "rmi", image, check=False)
    assert ref not in containerd_images()


# ---------------------------------------------------------------- down leaves nothing; up again


@pytest.mark.docker
@pytest.mark.restarts_cluster
def test_down_leaves_nothing_behind_and_up_brings_it_back(k8s_cluster: str) -> None:
    ns = f"cycletest-{uuid.uuid4().hex[:8]}"
    # A running pod and a NodePort, so there are sandboxes, veths, mounts and KUBE-* rules to undo.
    apply(
        k8s_cluster,
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        deployment("idle", ns, PAUSE_IMAGE),
        node_port_service("idle", ns, 8080),
    )
    try:
        kubectl(k8s_cluster, "rollout", "status", "deployment/idle", "-n", ns, "--timeout=120s", timeout=150)
        assert Path("/sys/class/net/cni0").exists()
        assert "KUBE-" in run("iptables-save").stdout
        try:
            down_s = check_down_leaves_nothing_behind()
        finally:
            # Later tests in the session still need the cluster.
            start = time.monotonic()
            up = run(CLUSTER_SH, "up", timeout=600)
            up_s = time.monotonic() - start
        print(f"down: {down_s:.1f}s, up to Ready: {up_s:.1f}s\n{up.stderr}")
        assert up_s <= UP_BUDGET_S, f"up took {up_s:.1f}s"
        assert cluster.is_up()
        node = kubectl_json(k8s_cluster, "get", "node", NODE)
        assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"] == "True"
        # The objects survived in etcd, and the controllers run the pod again.
        kubectl(k8s_cluster, "rollout", "status", "deployment/idle", "-n", ns, "--timeout=120s", timeout=150)
    finally:
        delete_namespace(k8s_cluster, ns)


def check_down_leaves_nothing_behind() -> float:
    """Run `cluster.sh down` and compare the host with what cluster.sh recorded before its start."""
    host = RUN / "host"
    recorded_sysctls = dict(line.split("=", 1) for line in (host / "sysctl").read_text().splitlines())
    recorded_nft = set((host / "nft-tables").read_text().splitlines())
    recorded_paths = set((host / "paths").read_text().splitlines())
    recorded_nfacct = set((host / "nfacct").read_text().split())
    recorded_cgroups = set((host / "cgroups").read_text().split())
    hosts_added = (host / "hosts-added").exists()
    dockerd = run("pgrep", "-x", "dockerd").stdout.split()

    start = time.monotonic()
    down = run(CLUSTER_SH, "down", timeout=300)
    down_s = time.monotonic() - start
    print(down.stderr)

    assert our_processes() == []
    assert not Path("/sys/class/net/cni0").exists()
    assert "KUBE-" not in run("iptables-save").stdout
    assert "KUBE-" not in run("ip6tables-save").stdout
    assert "MLDEPLOY-" not in run("iptables-save").stdout, "the pod-to-pod chain (cluster.sh allow_pods) is left"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    assert [m for m in mounts if m.startswith((str(RUN), RUNTIME_DIR, "/run/netns", "/var/lib/kubelet"))] == []
    assert not Path(RUNTIME_DIR).exists()
    assert {k: run("sysctl", "-n", k).stdout.strip() for k in recorded_sysctls} == recorded_sysctls
    assert set(run("nft", "list", "tables").stdout.splitlines()) == recorded_nft
    assert set(re.findall(r"} = (\S+);", run("nfacct", "list").stdout)) <= recorded_nfacct
    assert [p for p in HOST_PATHS if Path(p).exists() and p not in recorded_paths] == []
    assert [str(p) for p in Path("/sys/fs/cgroup").glob("*/kubepods") if str(p) not in recorded_cgroups] == []
    if hosts_added:
        assert "added by mldeploy scripts/k8s/cluster.sh" not in Path("/etc/hosts").read_text()
    assert run("pgrep", "-x", "dockerd").stdout.split() == dockerd, "dockerd must not be disturbed"
    run("docker", "info")
    assert run(CLUSTER_SH, "status", check=False).returncode != 0
    assert not cluster.is_up()
    return down_s
