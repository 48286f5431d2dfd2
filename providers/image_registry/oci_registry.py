"""Images for targets that pull from a registry: Kubernetes today, IoT Edge and ACI next.

A cluster node or an edge device has no model store to mount, so a model
version travels as one small image layer on top of the inference image, at the
paths Azure ML uses. Only that layer is new for a new version; the inference
image's layers are already in the registry. The local registry (Debian's
`docker-registry` on 127.0.0.1) stands in for Azure Container Registry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import docker
import requests

from mldeploy.providers.images import build as images
from mldeploy.providers.core.naming import MODELS_ROOT



class RegistryError(RuntimeError):
    """A push or a registry call failed; the message is the registry's own."""


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for a registry that wants them (ACR, or a local registry with auth); repr hides the password."""

    server: str
    username: str
    password: str = field(repr=False)

    def docker_auth_config(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password, "serveraddress": self.server}


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="...",scope="..."` -> ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


class AuthSession(requests.Session):
    """A session that answers a registry's 401 as Docker does: Basic, or a Bearer token from the realm.

    The token endpoint (Docker's token protocol, which ACR's /oauth2/token also
    speaks) gets the username and password as Basic auth; tokens are kept per scope.
    """

    def __init__(self, auth: RegistryAuth):
        super().__init__()
        self.registry_auth = auth
        self._tokens: dict[str, str] = {}

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        r = super().request(method, url, *args, **kwargs)
        if r.status_code != 401 or "WWW-Authenticate" not in r.headers:
            return r
        scheme, params = _challenge(r.headers["WWW-Authenticate"])
        creds = (self.registry_auth.username, self.registry_auth.password)
        headers = dict(kwargs.pop("headers", None) or {})
        if scheme == "basic":
            return super().request(method, url, *args, headers=headers, auth=creds, **kwargs)
        if scheme != "bearer" or "realm" not in params:
            return r
        key = params.get("scope", "")
        token = self._tokens.get(key)
        if token is None:
            query = {k: v for k, v in params.items() if k in ("service", "scope")}
            t = super().request("GET", params["realm"], params=query, auth=creds, timeout=kwargs.get("timeout", 10))
            if t.status_code != 200:
                raise RegistryError(f"token from {params['realm']}: {t.status_code} {t.text.strip()[:200]}")
            body = t.json()
            token = self._tokens[key] = body.get("token") or body.get("access_token") or ""
        headers["Authorization"] = f"Bearer {token}"
        return super().request(method, url, *args, headers=headers, **kwargs)


def auth_from(value: Any) -> RegistryAuth | None:
    """A resource input `{"server", "username", "password"}` (a Pulumi secret) as RegistryAuth; None when absent."""
    if not value or not isinstance(value, dict) or not value.get("username"):
        return None
    return RegistryAuth(str(value.get("server") or ""), str(value["username"]), str(value.get("password") or ""))


def session_for(auth: RegistryAuth | None, session: requests.Session | None = None) -> requests.Session:
    if session is not None:
        return session
    return AuthSession(auth) if auth is not None else requests.Session()


def model_layer_tag(source_image_id: str, models: list[dict[str, Any]]) -> str:
    """Same inference image and same model versions, same tag: a rebuild is a cache hit."""
    key = source_image_id + "|" + "|".join(f"{m['name']}={int(m['version'])}" for m in sorted(models, key=lambda m: m["name"]))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def model_dir_env(models: list[dict[str, Any]]) -> str:
    if len(models) == 1:
        return f"{MODELS_ROOT}/{models[0]['name']}/{int(models[0]['version'])}"
    return MODELS_ROOT


def render_model_dockerfile(from_image: str, models: list[dict[str, Any]]) -> str:
    return (
        f"FROM {from_image}\n"
        "# The model versions, where Azure ML puts them.\n"
        f"COPY models/ {MODELS_ROOT}/\n"
        f"ENV AZUREML_MODEL_DIR={model_dir_env(models)}\n"
    )


def build_model_image(
    tag: str,
    from_image: str,
    models: list[dict[str, Any]],
    labels: dict[str, str],
    on_log: Callable[[str], None] | None = None,
) -> str:
    """Build the inference image plus the model layer; returns the image id."""
    with tempfile.TemporaryDirectory(prefix="mldeploy-model-image-") as tmp:
        ctx = Path(tmp)
        for m in models:
            src = Path(m["model_dir"])
            if not src.is_dir():
                raise images.ImageBuildError(f"model {m['name']} version {m['version']}: {src} is missing from the registry")
            dest = ctx / "models" / m["name"] / str(int(m["version"]))
            shutil.copytree(src, dest, copy_function=_link_or_copy)
        (ctx / "Dockerfile").write_text(render_model_dockerfile(from_image, models))
        return images._build(images.client(), ctx, tag, labels, on_log or (lambda _l: None))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _refuse_anonymous_push(repository: str, tag: str) -> None:
    """dockerd retries a refused push for about a minute; a registry that wants credentials says so at once."""
    host = repository.split("/", 1)[0]
    try:
        r = requests.get(f"{base_url(host)}/v2/", timeout=10)
    except requests.RequestException:
        return  # unreachable: the push itself says how
    if r.status_code == 401:
        raise RegistryError(
            f"push of {repository}:{tag} failed: unauthorized: the registry {host} wants credentials and the stack sets "
            "none (mldeploy:acrName, or mldeploy:imageRegistryUsername with mldeploy:imageRegistryPassword)"
        )


def push(
    image: str,
    repository: str,
    tag: str,
    on_log: Callable[[str], None] | None = None,
    auth: RegistryAuth | None = None,
    stats: dict[str, int] | None = None,
) -> str:
    """Tag `image` as repository:tag, push it, return the manifest digest.

    `stats`, when given, gets how many layers were uploaded (`pushed`) and how
    many the registry had already (`existing`): a model-only update uploads one.
    """
    api = images.client()
    api.tag(image, repository, tag)
    if auth is None and split(repository)[0] == LOCAL_REGISTRY:
        # The local registry's pull listener is read-only: the push goes to its write listener, with
        # the project's credentials, over the same storage, so `repository@digest` pulls as before.
        access = local_delete_access()
        if access is None:
            raise RegistryError(
                f"push of {repository}:{tag} failed: the local registry takes pushes only with the project's "
                "credentials, and $MLDEPLOY_CACHE/registry/credentials.json is missing (scripts/k8s/registry.sh up writes it)"
            )
        routed, _ = write_route(repository, None, access)
        try:
            return push(image, routed, tag, on_log=on_log, auth=access, stats=stats)
        finally:
            images.remove_image(f"{routed}:{tag}")
    if auth is None:
        _refuse_anonymous_push(repository, tag)
    log = on_log or (lambda _l: None)
    digest = None
    layers: dict[str, str] = {}
    extra = {"auth_config": auth.docker_auth_config()} if auth is not None else {}
    try:
        for chunk in api.push(repository, tag=tag, stream=True, decode=True, **extra):
            if "error" in chunk:
                raise RegistryError(f"push of {repository}:{tag} failed: {chunk['error'].strip()}")
            if chunk.get("aux", {}).get("Digest"):
                digest = chunk["aux"]["Digest"]
            elif chunk.get("id") and chunk.get("status") in ("Pushed", "Layer already exists") or str(chunk.get("status", "")).startswith("Mounted from"):
                layers[chunk["id"]] = "pushed" if chunk["status"] == "Pushed" else "existing"
            elif chunk.get("status") and chunk.get("id") is None:
                log(chunk["status"])
    except docker.errors.APIError as exc:
        raise RegistryError(f"push of {repository}:{tag} failed: {exc}") from None
    if not digest:
        raise RegistryError(f"push of {repository}:{tag} reported no digest")
    if stats is not None:
        stats["pushed"] = sum(1 for v in layers.values() if v == "pushed")
        stats["existing"] = sum(1 for v in layers.values() if v == "existing")
    return digest


def base_url(host: str) -> str:
    """Plain HTTP for a registry on this machine (as dockerd treats 127.0.0.0/8), HTTPS elsewhere (ACR)."""
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host
    local = name in ("localhost", "[::1]") or name.startswith("127.")
    return f"{'http' if local else 'https'}://{host}"


def split(repository: str) -> tuple[str, str]:
    """"127.0.0.1:5000/a/b" -> ("127.0.0.1:5000", "a/b")."""
    host, _, path = repository.partition("/")
    return host, path


def manifest_exists(repository: str, digest: str, session: requests.Session | None = None, auth: RegistryAuth | None = None) -> bool:
    host, path = split(repository)
    s = session_for(auth, session)
    try:
        r = s.head(
            f"{base_url(host)}/v2/{path}/manifests/{digest}",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
            timeout=10,
        )
    except requests.RequestException as exc:
        raise RegistryError(f"registry {host} did not answer: {exc}") from None
    return r.status_code == 200


LOCAL_REGISTRY = "127.0.0.1:5000"
"""The local registry (scripts/k8s/registry.sh): pulls without credentials, read-only there."""


def local_delete_access(cache: str | None = None) -> RegistryAuth | None:
    """The local registry's write listener (pushes, deletes) and the project's credentials, from the file registry.sh writes.

    None when the file is absent (a registry set up before deletes needed them) or unreadable.
    """
    base = Path(cache or os.environ.get("MLDEPLOY_CACHE") or Path.home() / ".cache" / "mldeploy")
    try:
        data = json.loads((base / "registry" / "credentials.json").read_text())
        return RegistryAuth(str(data["address"]), str(data["username"]), str(data["password"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_route(repository: str, auth: RegistryAuth | None, access: RegistryAuth | None) -> tuple[str, RegistryAuth | None]:
    """Where a push or a delete goes: the local registry takes writes only on its listener with the
    project's credentials (`access`, from local_delete_access), so a repository there moves to
    that listener with them (credentials given for :5000 open nothing there); any other stays."""
    host, path = split(repository)
    if host != LOCAL_REGISTRY or access is None:
        return repository, auth
    return f"{access.server}/{path}", access


delete_route = write_route


def _delete_session(repository: str, session: requests.Session | None, auth: RegistryAuth | None) -> tuple[str, requests.Session, RegistryAuth | None]:
    """A caller's own session is used as given; without one, a local delete goes where delete_route says."""
    if session is not None:
        return repository, session, auth
    if split(repository)[0] == LOCAL_REGISTRY:
        routed, routed_auth = delete_route(repository, auth, local_delete_access())
        if routed != repository and routed_auth is not None:
            s = AuthSession(routed_auth)
            s.auth = (routed_auth.username, routed_auth.password)  # Basic at once: no 401 round trip per request
            return routed, s, routed_auth
    return repository, session_for(auth, None), auth


def delete_manifest(repository: str, digest: str, session: requests.Session | None = None, auth: RegistryAuth | None = None) -> None:
    """Idempotent: a manifest already gone counts as deleted."""
    repository, s, auth = _delete_session(repository, session, auth)
    host, path = split(repository)
    try:
        r = s.delete(f"{base_url(host)}/v2/{path}/manifests/{digest}", timeout=10)
    except requests.RequestException as exc:
        raise RegistryError(f"registry {host} did not answer: {exc}") from None
    if r.status_code not in (200, 202, 404):
        raise RegistryError(f"DELETE {path}@{digest}: {r.status_code} {r.text.strip()[:200]}")


MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
    )
)


def tags(repository: str, session: requests.Session | None = None, auth: RegistryAuth | None = None) -> list[str]:
    host, path = split(repository)
    s = session_for(auth, session)
    try:
        r = s.get(f"{base_url(host)}/v2/{path}/tags/list", timeout=10)
    except requests.RequestException as exc:
        raise RegistryError(f"registry {host} did not answer: {exc}") from None
    if r.status_code == 404:
        return []
    if r.status_code != 200:
        raise RegistryError(f"GET {path} tags: {r.status_code} {r.text.strip()[:200]}")
    return sorted(r.json().get("tags") or [])


def delete_repository(repository: str, session: requests.Session | None = None, auth: RegistryAuth | None = None) -> int:
    """Delete every tagged manifest of a repository that one resource owns; returns how many."""
    repository, s, auth = _delete_session(repository, session, auth)
    host, path = split(repository)
    deleted = 0
    for tag in tags(repository, session=s, auth=auth):
        try:
            r = s.head(f"{base_url(host)}/v2/{path}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES}, timeout=10)
        except requests.RequestException as exc:
            raise RegistryError(f"registry {host} did not answer: {exc}") from None
        digest = r.headers.get("Docker-Content-Digest") if r.status_code == 200 else None
        if digest:
            delete_manifest(repository, digest, session=s, auth=auth)
            deleted += 1
    return deleted
