"""The local cluster's etcd, Secrets at rest and the pause image (issue 18, item 1), read from the running cluster.

etcd is shown closed by reading its command line (/proc/<pid>/cmdline), its
certificates and its data files, and by requests to 127.0.0.1 only: without a
client certificate, or with one of the cluster CA, etcd refuses; with the API
server's own it answers (so the refusals are not a port that is just shut).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509

from mldeploy.providers.targets.kubernetes import local_cluster as cluster

pytestmark = [pytest.mark.e2e, pytest.mark.k8s]

RUN = cluster.run_dir()
PKI = RUN / "pki"
KUBECTL = cluster.kubectl_path()
ETCD = "127.0.0.1:23790"
SECRETS_PREFIX = b"k8s:enc:secretbox:v1:key1:"


def argv(component: str) -> list[str]:
    pid = (RUN / "pids" / f"{component}.pid").read_text().strip()
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def flags(args: list[str]) -> dict[str, str]:
    """`--a=b`, `--a b` and a bare `--a` (value "") of a command line."""
    out: dict[str, str] = {}
    i = 1
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and "=" in arg:
            name, _, value = arg[2:].partition("=")
        elif arg.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            name, value = arg[2:], args[i + 1]
            i += 1
        else:
            name, value = arg.lstrip("-"), ""
        out[name] = value
        i += 1
    return out


def kubectl(kubeconfig: str, *args: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([KUBECTL, "--kubeconfig", kubeconfig, *args], capture_output=True, text=True, timeout=60, **kw)
    if check:
        assert done.returncode == 0, f"kubectl {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def cert(name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((PKI / f"{name}.crt").read_bytes())


def etcd_range(key: bytes, *, prefix: bool = False, client: tuple[str, str] | None, **body: Any) -> requests.Response:
    """etcd's JSON gateway (POST /v3/kv/range) on 127.0.0.1, trusting etcd's CA."""
    payload: dict[str, Any] = {"key": base64.b64encode(key).decode(), **body}
    if prefix:
        payload["range_end"] = base64.b64encode(key[:-1] + bytes([key[-1] + 1])).decode()
    return requests.post(f"https://{ETCD}/v3/kv/range", json=payload, cert=client, verify=str(PKI / "etcd-ca.crt"), timeout=10)


API_SERVER_CLIENT = (str(PKI / "apiserver-etcd-client.crt"), str(PKI / "apiserver-etcd-client.key"))


def test_etcd_serves_tls_on_loopback_to_its_own_ca_and_the_api_server_is_its_client(k8s_cluster: str) -> None:
    etcd = flags(argv("etcd"))
    assert etcd["listen-client-urls"] == etcd["advertise-client-urls"] == f"https://{ETCD}"
    assert etcd["listen-peer-urls"] == etcd["initial-advertise-peer-urls"] == "https://127.0.0.1:23800"
    assert etcd["listen-metrics-urls"] == "http://127.0.0.1:23810"  # /metrics and /health only: no keys
    assert etcd["client-cert-auth"] in ("", "true") and etcd["peer-client-cert-auth"] in ("", "true")
    assert etcd["trusted-ca-file"] == etcd["peer-trusted-ca-file"] == str(PKI / "etcd-ca.crt")
    assert etcd["cert-file"] == str(PKI / "etcd-server.crt") and etcd["key-file"] == str(PKI / "etcd-server.key")
    urls = [v for k, v in etcd.items() if k.endswith("-urls")] + [etcd["initial-cluster"].split("=", 1)[1]]
    assert all(re.fullmatch(r"https?://127\.0\.0\.1:\d+", u) for u in urls), urls
    assert [u for u in urls if u.startswith("http://")] == ["http://127.0.0.1:23810"]

    api = flags(argv("kube-apiserver"))
    assert api["etcd-servers"] == f"https://{ETCD}"
    assert api["etcd-cafile"] == str(PKI / "etcd-ca.crt")
    assert (api["etcd-certfile"], api["etcd-keyfile"]) == API_SERVER_CLIENT
    assert api["allow-privileged"] == "false"

    # etcd's CA is its own: the cluster CA (which also signs CSRs through the
    # controller-manager) signs no certificate etcd accepts.
    etcd_ca, cluster_ca = cert("etcd-ca"), cert("ca")
    assert etcd_ca.subject != cluster_ca.subject and etcd_ca.public_key() != cluster_ca.public_key()
    assert cert("apiserver-etcd-client").issuer == etcd_ca.subject
    assert cert("admin").issuer == cluster_ca.subject
    signed_by_etcd_ca = sorted(p.stem for p in PKI.glob("*.crt") if p.stem != "etcd-ca" and cert(p.stem).issuer == etcd_ca.subject)
    assert signed_by_etcd_ca == ["apiserver-etcd-client", "etcd-peer", "etcd-server"]
    assert stat.S_IMODE(PKI.stat().st_mode) == 0o700
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in PKI.glob("*.key") if stat.S_IMODE(p.stat().st_mode) != 0o600} == {}

    # Secrets at rest: secretbox first (every write sealed), identity only to read what was plain before.
    conf_path = Path(api["encryption-provider-config"])
    assert stat.S_IMODE(conf_path.stat().st_mode) == 0o600
    conf = conf_path.read_text()
    providers = re.findall(r"^      - (\w+):", conf, re.M)
    assert providers == ["secretbox", "identity"], conf_path
    key = re.search(r"secret: (\S+)", conf).group(1)  # type: ignore[union-attr]
    assert len(base64.b64decode(key)) == 32
    assert stat.S_IMODE((PKI / "secrets-encryption.key").stat().st_mode) == 0o600


def test_etcd_refuses_a_request_without_its_client_certificate(k8s_cluster: str) -> None:
    key = b"/registry/namespaces/default"
    # Plain HTTP: no answer with keys (before, this returned the namespace).
    try:
        plain = requests.post(f"http://{ETCD}/v3/kv/range", json={"key": base64.b64encode(key).decode()}, timeout=10)
        assert "kvs" not in plain.text and plain.status_code != 200, plain.text[:200]
    except requests.ConnectionError:
        pass
    # TLS without a client certificate: the handshake is refused.
    with pytest.raises((requests.exceptions.SSLError, requests.ConnectionError)):
        etcd_range(key, client=None)
    # A certificate of the cluster CA (kubectl's admin, system:masters) does not open etcd either.
    with pytest.raises((requests.exceptions.SSLError, requests.ConnectionError)):
        etcd_range(key, client=(str(PKI / "admin.crt"), str(PKI / "admin.key")))
    # The API server's own certificate does: the refusals above are etcd's, not a closed port.
    ok = etcd_range(key, client=API_SERVER_CLIENT, keys_only=True)
    assert ok.status_code == 200 and ok.json()["count"] == "1", ok.text[:200]
    log = (RUN / "logs" / "etcd.log").read_text(errors="replace")
    assert "client didn't provide a certificate" in log


def test_privileged_pods_are_refused(k8s_cluster: str) -> None:
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "privileged-probe", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "127.0.0.1:5000/mldeploy/pause:3.10", "securityContext": {"privileged": True}}]},
    }
    # Admission looks the namespace's default ServiceAccount up first: on a fresh cluster, wait for it.
    deadline = time.monotonic() + 60
    while kubectl(k8s_cluster, "get", "serviceaccount", "default", "-n", "default", check=False).returncode != 0:
        assert time.monotonic() < deadline, "no default ServiceAccount in namespace default"
        time.sleep(1)
    done = kubectl(k8s_cluster, "create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    assert done.returncode != 0 and "privileged" in done.stderr and "disallowed by cluster policy" in done.stderr, done.stderr


def test_a_secrets_value_never_reaches_etcds_files_in_plain(k8s_cluster: str) -> None:
    name = f"etcd-probe-{secrets.token_hex(4)}"
    value = secrets.token_hex(24)
    kubectl(k8s_cluster, "create", "secret", "generic", name, "-n", "default", f"--from-literal=v={value}")
    try:
        got = json.loads(kubectl(k8s_cluster, "get", "secret", name, "-n", "default", "-o", "json").stdout)
        assert base64.b64decode(got["data"]["v"]).decode() == value  # the API server reads it back

        stored = etcd_range(f"/registry/secrets/default/{name}".encode(), client=API_SERVER_CLIENT).json()
        raw = base64.b64decode(stored["kvs"][0]["value"])
        assert raw.startswith(SECRETS_PREFIX) and value.encode() not in raw

        member = RUN / "etcd" / "member"
        files = [member / "snap" / "db", *sorted((member / "wal").glob("*.wal")), *sorted((member / "snap").glob("*.snap"))]
        blobs = {str(f): f.read_bytes() for f in files}
        # The write is in these files (its key is plain in the WAL), its value is not.
        assert any(f"/registry/secrets/default/{name}".encode() in b for b in blobs.values())
        needles = [value.encode(), base64.b64encode(value.encode())]
        assert [f for f, b in blobs.items() if any(n in b for n in needles)] == []

        # Every Secret etcd holds is sealed, those written before encryption at rest too (rewritten by up).
        listed = etcd_range(b"/registry/secrets/", prefix=True, client=API_SERVER_CLIENT).json()
        plain = [base64.b64decode(kv["key"]).decode() for kv in listed["kvs"] if not base64.b64decode(kv["value"]).startswith(SECRETS_PREFIX)]
        assert plain == []
    finally:
        kubectl(k8s_cluster, "delete", "secret", name, "-n", "default", "--ignore-not-found", check=False)


def test_sandboxes_run_the_pause_image_pinned_by_digest(k8s_cluster: str) -> None:
    toml = (RUN / "conf" / "containerd.toml").read_text()
    pinned = re.search(r'^\s*sandbox_image = "([^"]+)"', toml, re.M).group(1)  # type: ignore[union-attr]
    m = re.fullmatch(r"127\.0\.0\.1:5000/mldeploy/pause@(sha256:[0-9a-f]{64})", pinned)
    assert m, pinned
    recorded = [p.read_text().strip() for p in Path(KUBECTL).parents[1].glob("images/pause-*.digest")]
    assert m.group(1) in recorded
    sock = os.environ.get("MLDEPLOY_K8S_RUNTIME_DIR", "/run/mldeploy-k8s") + "/containerd/containerd.sock"
    rows = subprocess.run(["ctr", "--address", sock, "--namespace", "k8s.io", "images", "ls"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert any(r.split()[0] == pinned and r.split()[2] == m.group(1) for r in rows.splitlines()[1:]), rows
