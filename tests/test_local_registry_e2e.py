"""The local registry (scripts/k8s/registry.sh) takes writes only with the project's credentials (issue 18, item 1).

127.0.0.1:5000 serves pulls and nothing else: an upload, a manifest or a delete
there is refused (405; before this, an anonymous push was taken). A small image
is pushed over HTTP to 127.0.0.1:5001 with the credentials registry.sh wrote (as
the providers push) and pulls from 5000; deleting it without or with wrong
credentials is refused; the providers' delete removes it. Every request goes to
127.0.0.1.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import secrets
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
import requests

from mldeploy.providers.image_registry import oci_registry

pytestmark = [pytest.mark.e2e]

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def push_blob(base: str, repo: str, data: bytes, auth: tuple[str, str] | None) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = requests.post(f"{base}/v2/{repo}/blobs/uploads/", auth=auth, timeout=30)
    assert start.status_code == 202, start.text
    location = start.headers["Location"]
    location = location if location.startswith("http") else base + location
    done = requests.put(location, params={"digest": digest}, data=data, headers={"Content-Type": "application/octet-stream"},
                        auth=auth, timeout=30)
    assert done.status_code == 201, done.text
    return digest


def one_layer_image() -> tuple[bytes, bytes]:
    """A one-layer image's config and layer blobs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        body = secrets.token_bytes(64)
        info = tarfile.TarInfo("probe.bin")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(buf.getvalue()).hexdigest()]}}).encode()
    return config, gzip.compress(buf.getvalue(), mtime=0)


def push_image(address: str, repo: str, tag: str, auth: tuple[str, str] | None) -> str:
    """A one-layer image, pushed with `auth`; returns the manifest's digest."""
    base = f"http://{address}"
    config, layer = one_layer_image()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST_V2,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(config), "digest": push_blob(base, repo, config, auth)},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": len(layer), "digest": push_blob(base, repo, layer, auth)}],
    }).encode()
    put = requests.put(f"{base}/v2/{repo}/manifests/{tag}", data=manifest, headers={"Content-Type": MANIFEST_V2}, auth=auth, timeout=30)
    assert put.status_code == 201, put.text
    return put.headers["Docker-Content-Digest"]


def test_the_pull_listener_refuses_every_write(local_registry: str) -> None:
    """Before: an anonymous upload to 5000 got 202 and its manifest 201, so any local process could add images."""
    repo = f"mldeploy-test/write-probe-{secrets.token_hex(4)}"
    base = f"http://{local_registry}"
    config, layer = one_layer_image()
    upload = requests.post(f"{base}/v2/{repo}/blobs/uploads/", timeout=30)
    assert upload.status_code == 405, upload.text
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    monolithic = requests.post(f"{base}/v2/{repo}/blobs/uploads/", params={"digest": digest}, data=layer, timeout=30)
    assert monolithic.status_code == 405, monolithic.text
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_V2, "config": {}, "layers": []}).encode()
    put = requests.put(f"{base}/v2/{repo}/manifests/t1", data=manifest, headers={"Content-Type": MANIFEST_V2}, timeout=30)
    assert put.status_code == 405, put.text
    # The write listener without credentials: 401 before anything is stored.
    access = oci_registry.local_delete_access()
    assert access is not None
    assert requests.post(f"http://{access.server}/v2/{repo}/blobs/uploads/", timeout=30).status_code == 401
    assert requests.post(f"http://{access.server}/v2/{repo}/blobs/uploads/", auth=("mldeploy", "wrong"), timeout=30).status_code == 401
    assert oci_registry.tags(f"{local_registry}/{repo}") == []


def test_deletes_need_the_projects_credentials(local_registry: str) -> None:
    repo = f"mldeploy-test/delete-probe-{secrets.token_hex(4)}"
    access = oci_registry.local_delete_access()
    assert access is not None and access.server == "127.0.0.1:5001"
    digest = push_image(access.server, repo, "t1", (access.username, access.password))
    try:
        assert oci_registry.manifest_exists(f"{local_registry}/{repo}", digest)  # pulled from 5000, pushed to 5001
        # Without credentials: the open listener has no deletes at all (before: 202, gone).
        anon = requests.delete(f"http://{local_registry}/v2/{repo}/manifests/{digest}", timeout=30)
        assert anon.status_code == 405, anon.text
        # The delete listener wants the project's credentials, nothing else.
        admin = f"http://{access.server}/v2/{repo}/manifests/{digest}"
        assert requests.delete(admin, timeout=30).status_code == 401
        assert requests.delete(admin, auth=(access.username, "wrong-" + secrets.token_hex(4)), timeout=30).status_code == 401
        assert requests.delete(admin, auth=("someone", access.password), timeout=30).status_code == 401
        assert oci_registry.manifest_exists(f"{local_registry}/{repo}", digest)
        # The providers' delete: to the delete listener, with the credentials; the open one sees it gone at once.
        oci_registry.delete_manifest(f"{local_registry}/{repo}", digest)
        assert not oci_registry.manifest_exists(f"{local_registry}/{repo}", digest)
        assert requests.get(f"http://{local_registry}/v2/{repo}/manifests/t1", headers={"Accept": MANIFEST_V2}, timeout=30).status_code == 404
    finally:
        oci_registry.delete_manifest(f"{local_registry}/{repo}", digest)


def test_the_registry_config_and_credentials_on_disk(local_registry: str) -> None:
    access = oci_registry.local_delete_access()
    assert access is not None
    d = Path(os.environ.get("MLDEPLOY_CACHE") or Path.home() / ".cache" / "mldeploy") / "registry"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for name in ("credentials.json", "htpasswd", "config.yml", "admin.yml", "http.secret"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name
    htpasswd = (d / "htpasswd").read_text()
    # bcrypt at its least cost: the password is 192 random bits, and the registry checks it on every request.
    assert re.fullmatch(r"mldeploy:\$2[aby]\$04\$[./A-Za-z0-9]{53}\n+", htpasswd) and access.password not in htpasswd
    open_conf, admin_conf = (d / "config.yml").read_text(), (d / "admin.yml").read_text()
    assert "addr: 127.0.0.1:5000" in open_conf and re.search(r"delete:\n\s+enabled: false", open_conf) and "auth:" not in open_conf
    assert "addr: 127.0.0.1:5001" in admin_conf and re.search(r"delete:\n\s+enabled: true", admin_conf)
    # 5000's storage is read-only (distribution's maintenance.readonly); 5001's is not.
    assert re.search(r"maintenance:\n\s+readonly:\n\s+enabled: true", open_conf), open_conf
    assert re.search(r"maintenance:\n\s+readonly:\n\s+enabled: false", admin_conf), admin_conf
    assert re.search(r"auth:\n\s+htpasswd:\n\s+realm: \S+\n\s+path: " + re.escape(str(d / "htpasswd")), admin_conf)
    # Neither keeps blob descriptors in memory: a delete through one is seen by the other.
    assert "blobdescriptor" not in open_conf + admin_conf
    sockets = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines()
    registry = [line.split()[3] for line in sockets if '"docker-registry"' in line]
    assert {"127.0.0.1:5000", "127.0.0.1:5001"} <= set(registry) and all(a.startswith("127.0.0.1:") for a in registry), registry
