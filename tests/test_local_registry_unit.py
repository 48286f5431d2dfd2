"""Deletes from the local registry go to its listener with the project's credentials (issue 18, item 1).

The registry on 127.0.0.1:5000 refuses deletes; 127.0.0.1:5001 takes them with
the credentials scripts/k8s/registry.sh writes. No registry runs here: the
credentials file is a temporary one and HTTP is recorded, not sent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from mldeploy.providers.image_registry import oci_registry
from mldeploy.providers.image_registry.oci_registry import RegistryAuth

ACCESS = RegistryAuth("127.0.0.1:5001", "mldeploy", "s3cret")


def test_delete_route_moves_only_the_local_registry_to_its_delete_listener() -> None:
    assert oci_registry.delete_route("127.0.0.1:5000/p/x", None, ACCESS) == ("127.0.0.1:5001/p/x", ACCESS)
    # Credentials given for :5000 open nothing there: the project's are used.
    given = RegistryAuth("127.0.0.1:5000", "ci", "pw")
    assert oci_registry.delete_route("127.0.0.1:5000/p/x", given, ACCESS) == ("127.0.0.1:5001/p/x", ACCESS)
    # Any other registry keeps its address and its own credentials.
    acr = RegistryAuth("myacr.azurecr.io", "u", "p")
    assert oci_registry.delete_route("myacr.azurecr.io/p/x", acr, ACCESS) == ("myacr.azurecr.io/p/x", acr)
    assert oci_registry.delete_route("127.0.0.1:5002/p/x", None, ACCESS) == ("127.0.0.1:5002/p/x", None)
    # No credentials file (a registry set up before): unchanged, and the registry says no.
    assert oci_registry.delete_route("127.0.0.1:5000/p/x", None, None) == ("127.0.0.1:5000/p/x", None)


def test_local_delete_access_reads_the_file_registry_sh_writes(tmp_path: Path) -> None:
    assert oci_registry.local_delete_access(str(tmp_path)) is None
    (tmp_path / "registry").mkdir()
    creds = tmp_path / "registry" / "credentials.json"
    creds.write_text("{not json")
    assert oci_registry.local_delete_access(str(tmp_path)) is None
    creds.write_text(json.dumps({"address": "127.0.0.1:5001", "username": "mldeploy", "password": "s3cret"}))
    got = oci_registry.local_delete_access(str(tmp_path))
    assert got == ACCESS and "s3cret" not in repr(got)


class Recorded:
    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None):
        self.status_code, self._body, self.headers, self.text = status, body, headers or {}, json.dumps(body)

    def json(self) -> Any:
        return self._body


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, Any]]:
    seen: list[tuple[str, str, Any]] = []
    base = "http://127.0.0.1:5001/v2/p/x"
    table = {
        ("GET", f"{base}/tags/list"): Recorded(200, {"name": "p/x", "tags": ["t1"]}),
        ("HEAD", f"{base}/manifests/t1"): Recorded(200, headers={"Docker-Content-Digest": "sha256:1"}),
        ("DELETE", f"{base}/manifests/sha256:1"): Recorded(202),
    }

    def request(self: requests.Session, method: str, url: str, *a: Any, **kw: Any) -> Recorded:
        seen.append((method, url, kw.get("auth") or self.auth))
        return table.get((method, url), Recorded(404))

    monkeypatch.setattr(requests.Session, "request", request)
    monkeypatch.setattr(oci_registry, "local_delete_access", lambda cache=None: ACCESS)
    return seen


def test_deletes_from_the_local_registry_carry_the_project_credentials(calls: list[tuple[str, str, Any]]) -> None:
    assert oci_registry.delete_repository("127.0.0.1:5000/p/x") == 1
    assert [(m, u) for m, u, _ in calls] == [
        ("GET", "http://127.0.0.1:5001/v2/p/x/tags/list"),
        ("HEAD", "http://127.0.0.1:5001/v2/p/x/manifests/t1"),
        ("DELETE", "http://127.0.0.1:5001/v2/p/x/manifests/sha256:1"),
    ]
    assert {a for _, _, a in calls} == {("mldeploy", "s3cret")}
    calls.clear()
    oci_registry.delete_manifest("127.0.0.1:5000/p/x", "sha256:1")
    assert calls == [("DELETE", "http://127.0.0.1:5001/v2/p/x/manifests/sha256:1", ("mldeploy", "s3cret"))]


class RecordingApi:
    """docker's APIClient as push uses it: tag, push (a stream of progress), remove_image."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def tag(self, image: str, repository: str, tag: str) -> None:
        self.calls.append(("tag", repository, tag))

    def push(self, repository: str, tag: str, stream: bool, decode: bool, **kw: Any):
        self.calls.append(("push", repository, tag, kw.get("auth_config")))
        yield {"id": "l1", "status": "Pushed"}
        yield {"aux": {"Digest": "sha256:" + "a" * 64}}

    def remove_image(self, ref: str, force: bool = False, noprune: bool = False) -> None:
        self.calls.append(("remove", ref))


def test_an_anonymous_push_to_the_local_registry_goes_to_its_write_listener(monkeypatch: pytest.MonkeyPatch) -> None:
    api = RecordingApi()
    monkeypatch.setattr(oci_registry.images, "client", lambda: api)
    monkeypatch.setattr(oci_registry, "local_delete_access", lambda cache=None: ACCESS)
    digest = oci_registry.push("sha256:img", "127.0.0.1:5000/p/x", "t1")
    assert digest == "sha256:" + "a" * 64  # the same storage: 127.0.0.1:5000/p/x@digest pulls it
    assert api.calls == [
        ("tag", "127.0.0.1:5000/p/x", "t1"),  # the name the providers and the local copy use
        ("tag", "127.0.0.1:5001/p/x", "t1"),
        ("push", "127.0.0.1:5001/p/x", "t1", ACCESS.docker_auth_config()),
        ("remove", "127.0.0.1:5001/p/x:t1"),  # only the write listener's alias goes
    ]


def test_without_the_credentials_file_a_local_push_names_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    api = RecordingApi()
    monkeypatch.setattr(oci_registry.images, "client", lambda: api)
    monkeypatch.setattr(oci_registry, "local_delete_access", lambda cache=None: None)
    with pytest.raises(oci_registry.RegistryError, match=r"credentials\.json is missing \(scripts/k8s/registry\.sh up"):
        oci_registry.push("sha256:img", "127.0.0.1:5000/p/x", "t1")
    assert not [c for c in api.calls if c[0] == "push"]
