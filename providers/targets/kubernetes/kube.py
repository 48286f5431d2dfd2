"""A thin read-only client of a Kubernetes API server, from a kubeconfig's text.

It answers what Pulumi's own Kubernetes provider does not tell a program before
it applies anything: can the API server be reached with these credentials, which
version is it, and how many vCPUs can its nodes give. The session is injectable,
so a unit test hands in a fake and no cluster is needed.
"""

from __future__ import annotations

import base64
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import requests
import yaml


class KubeconfigError(ValueError):
    """The kubeconfig cannot be used (bad YAML, no current context, unsupported auth)."""


class ClusterUnreachable(RuntimeError):
    """The API server did not answer, or answered with an error; the message is its own."""


@dataclass(frozen=True)
class ClusterFacts:
    server: str
    kubernetes_version: str
    """As the API server reports it, e.g. v1.37.2."""
    node_count: int
    ready_nodes: int
    allocatable_vcpus: float
    node_address: str = ""
    """A Ready node's ExternalIP, else its InternalIP ("" when none says): where its NodePorts answer."""


def node_address(nodes: list[dict]) -> str:
    """The address a NodePort service is reached at: the first Ready node's ExternalIP, else InternalIP. Pure."""
    for kind in ("ExternalIP", "InternalIP"):
        for node in nodes:
            status = node.get("status") or {}
            conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
            if conditions.get("Ready") != "True":
                continue
            for addr in status.get("addresses") or []:
                if addr.get("type") == kind and addr.get("address"):
                    return str(addr["address"])
    return ""


def parse_cpu(quantity: str) -> float:
    """Kubernetes CPU quantities: "4", "3500m", "0.5"."""
    q = str(quantity).strip()
    if q.endswith("m"):
        return int(q[:-1]) / 1000
    return float(q)


@dataclass(frozen=True)
class Endpoint:
    server: str
    ca_pem: bytes | None
    cert_pem: bytes | None
    key_pem: bytes | None
    token: str | None
    insecure: bool


def endpoint(kubeconfig: str) -> Endpoint:
    """The current context's server and credentials."""
    try:
        doc = yaml.safe_load(kubeconfig)
    except yaml.YAMLError as exc:
        raise KubeconfigError(f"kubeconfig is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise KubeconfigError("kubeconfig is not a mapping")
    by_name = lambda kind: {e.get("name"): e.get(kind[:-1]) or {} for e in doc.get(kind) or []}  # noqa: E731
    contexts, clusters, users = by_name("contexts"), by_name("clusters"), by_name("users")
    current = doc.get("current-context") or (next(iter(contexts)) if len(contexts) == 1 else None)
    if current not in contexts:
        raise KubeconfigError(f"kubeconfig has no context {current!r}; contexts: {sorted(k for k in contexts if k)}")
    ctx = contexts[current]
    cluster = clusters.get(ctx.get("cluster"))
    if not cluster or not cluster.get("server"):
        raise KubeconfigError(f"kubeconfig context {current!r} names cluster {ctx.get('cluster')!r}, which has no server")
    user = users.get(ctx.get("user")) or {}
    if "exec" in user or "auth-provider" in user:
        raise KubeconfigError("kubeconfig users with exec or auth-provider plugins are not supported; use a certificate or token")

    def data(entry: dict[str, Any], key: str) -> bytes | None:
        if entry.get(f"{key}-data"):
            return base64.b64decode(entry[f"{key}-data"])
        if entry.get(key):
            with open(entry[key], "rb") as f:
                return f.read()
        return None

    return Endpoint(
        server=str(cluster["server"]).rstrip("/"),
        ca_pem=data(cluster, "certificate-authority"),
        cert_pem=data(user, "client-certificate"),
        key_pem=data(user, "client-key"),
        token=user.get("token"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
    )


@contextmanager
def session_for(ep: Endpoint) -> Iterator[requests.Session]:
    """requests wants files for certificates: they live only as long as the session."""
    with tempfile.TemporaryDirectory(prefix="mldeploy-kube-") as tmp:
        s = requests.Session()
        s.trust_env = False  # never route the API server through a proxy from the environment

        def put(name: str, content: bytes) -> str:
            path = os.path.join(tmp, name)
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                f.write(content)
            return path

        if ep.ca_pem:
            s.verify = put("ca.crt", ep.ca_pem)
        elif ep.insecure:
            s.verify = False
        if ep.cert_pem and ep.key_pem:
            s.cert = (put("client.crt", ep.cert_pem), put("client.key", ep.key_pem))
        if ep.token:
            s.headers["Authorization"] = f"Bearer {ep.token}"
        try:
            yield s
        finally:
            s.close()


def _get(s: requests.Session, server: str, path: str, timeout: float) -> Any:
    try:
        r = s.get(server + path, timeout=timeout)
    except requests.RequestException as exc:
        raise ClusterUnreachable(f"GET {server}{path}: {exc}") from None
    if r.status_code != 200:
        try:
            message = r.json().get("message") or r.text
        except ValueError:
            message = r.text
        raise ClusterUnreachable(f"GET {server}{path}: {r.status_code} {message.strip()[:300]}")
    return r.json()


def facts(kubeconfig: str, timeout: float = 10.0, session: requests.Session | None = None) -> ClusterFacts:
    """Version and capacity of the cluster that the kubeconfig's current context names."""
    ep = endpoint(kubeconfig)

    def read(s: requests.Session) -> ClusterFacts:
        version = _get(s, ep.server, "/version", timeout)
        nodes = _get(s, ep.server, "/api/v1/nodes", timeout).get("items") or []
        ready = 0
        vcpus = 0.0
        for node in nodes:
            conditions = {c.get("type"): c.get("status") for c in node.get("status", {}).get("conditions") or []}
            ready += conditions.get("Ready") == "True"
            vcpus += parse_cpu(node.get("status", {}).get("allocatable", {}).get("cpu", "0"))
        return ClusterFacts(
            server=ep.server,
            kubernetes_version=str(version.get("gitVersion", "")),
            node_count=len(nodes),
            ready_nodes=ready,
            allocatable_vcpus=round(vcpus, 3),
            node_address=node_address(nodes),
        )

    if session is not None:
        return read(session)
    with session_for(ep) as s:
        return read(s)


class Reader:
    """GETs against one API server over one session: a poll loop reuses its connection."""

    def __init__(self, kubeconfig: str, timeout: float = 10.0, session: requests.Session | None = None):
        self._ep = endpoint(kubeconfig)
        self._timeout = timeout
        self._session = session
        self._owned: Any = None

    def __enter__(self) -> "Reader":
        if self._session is None:
            self._owned = session_for(self._ep)
            self._session = self._owned.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._owned is not None:
            self._owned.__exit__(*exc)

    def get(self, path: str) -> Any:
        assert self._session is not None, "use Reader as a context manager"
        return _get(self._session, self._ep.server, path, self._timeout)

    def deployment(self, namespace: str, name: str) -> dict[str, Any]:
        return self.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")

    def pods(self, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        query = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        return self.get(f"/api/v1/namespaces/{namespace}/pods?labelSelector={query}").get("items") or []

    def _send(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200, 201, 202)) -> Any:
        assert self._session is not None, "use Reader as a context manager"
        url = self._ep.server + path
        try:
            r = self._session.request(method, url, json=body, timeout=self._timeout)
        except requests.RequestException as exc:
            raise ClusterUnreachable(f"{method} {url}: {exc}") from None
        if r.status_code not in ok:
            try:
                message = r.json().get("message") or r.text
            except ValueError:
                message = r.text
            raise ClusterUnreachable(f"{method} {url}: {r.status_code} {message.strip()[:300]}")
        return r.json() if r.content else {}

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST an object to its collection (`path`), e.g. /apis/apps/v1/namespaces/ns/deployments."""
        return self._send("POST", path, body)

    def delete(self, path: str) -> bool:
        """DELETE an object, its dependents in the background; False when it was already gone."""
        out = self._send("DELETE", path, {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
                         ok=(200, 202, 404))
        return out.get("code") != 404


def kubectl() -> str:
    """The kubectl to exec with: the one on PATH, else the local cluster's own build."""
    import glob
    import shutil

    found = shutil.which("kubectl") or next(iter(sorted(glob.glob(os.path.expanduser(
        "~/.cache/mldeploy/kubernetes/*/bin/kubectl")), reverse=True)), None)
    if not found:
        raise ClusterUnreachable("kubectl not found (on PATH or in ~/.cache/mldeploy/kubernetes): a canary execs in the front containers with it")
    return found


def exec_in(kubeconfig: str, namespace: str, pod: str, container: str, argv: list[str], stdin: str | None = None,
            timeout: float = 30.0) -> str:
    """Run `argv` in a pod's container through the API server (kubectl exec); its stdout, or raise with stderr."""
    import subprocess

    with tempfile.TemporaryDirectory(prefix="mldeploy-kube-") as tmp:
        path = os.path.join(tmp, "kubeconfig")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(kubeconfig)
        cmd = [kubectl(), "--kubeconfig", path, "-n", namespace, "exec", *(["-i"] if stdin is not None else []),
               pod, "-c", container, "--", *argv]
        try:
            done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ClusterUnreachable(f"exec in {namespace}/{pod} ({container}): no answer in {timeout:g} s") from None
    if done.returncode != 0:
        raise ClusterUnreachable(f"exec in {namespace}/{pod} ({container}) exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout
