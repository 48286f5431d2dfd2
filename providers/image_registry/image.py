"""Provider for an image in the stack's registry, optionally with model versions as a layer.

Targets that pull (Kubernetes nodes, edge devices, ACI) get images by digest, so
a pod template changes exactly when the bits change, and a new model version is
a new digest that rolls only the services using it.
"""

from __future__ import annotations

from typing import Any

from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from mldeploy.providers.core.paths import local
from mldeploy.providers.core.progress import say

REPLACE_ON = ("repository",)


def model_key(models: list[dict[str, Any]] | None) -> list[tuple[str, int]]:
    """What identifies the model layer: names and versions, never where a checkout keeps them."""
    return sorted((str(m["name"]), int(m["version"])) for m in models or [])


def diff_registry_image(olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
    replaces = [k for k in REPLACE_ON if olds.get(k) != news.get(k)]
    changed = list(replaces)
    if olds.get("source_image_id") != news.get("source_image_id"):
        changed.append("source_image_id")
    if model_key(olds.get("models")) != model_key(news.get("models")):
        changed.append("models")
    if olds.get("present") is False:
        changed.append("present")  # deleted from the registry behind our back: push again
    if olds.get("registry_auth") != news.get("registry_auth"):
        # Rotated credentials: kept, so that later reads and the final delete can still sign in.
        changed.append("registry_auth")
    return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=False)


def credentials_only(olds: dict[str, Any], news: dict[str, Any]) -> bool:
    """True when nothing but the registry's credentials changed: the image in the registry stays as it is."""
    same_auth = {**olds, "registry_auth": news.get("registry_auth")}
    return olds.get("registry_auth") != news.get("registry_auth") and not diff_registry_image(same_auth, news).changes


class RegistryImageProvider(ResourceProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = [CheckFailure(k, f"{k} is required") for k in ("source_image", "repository") if not news.get(k)]
        repo = str(news.get("repository") or "")
        if repo and "/" not in repo:
            failures.append(CheckFailure("repository", f"must be <registry host>/<path>, got {repo!r}"))
        if news.get("source_image") and not news.get("source_image_id"):
            # Named by tag only (the front end's nginx image): its id decides whether to push again.
            from mldeploy.providers.images import build as images

            info = images.image_info(news["source_image"])
            if info is None:
                failures.append(CheckFailure("source_image", f"image {news['source_image']!r} is not present locally"))
            else:
                news = {**news, "source_image_id": info["Id"]}
        for i, m in enumerate(news.get("models") or []):
            if not m.get("name") or int(m.get("version") or 0) < 1:
                failures.append(CheckFailure(f"models[{i}]", "needs a name and a version >= 1"))
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return diff_registry_image(olds, news)

    def _push(self, props: dict[str, Any]) -> dict[str, Any]:
        from mldeploy.providers.image_registry import oci_registry

        # A model's folder is relative to the project in the inputs: found under this run's checkout.
        models = [{**m, "model_dir": str(local(m["model_dir"]))} if m.get("model_dir") else m for m in props.get("models") or []]
        source = props.get("source_image_id") or props["source_image"]
        tag = oci_registry.model_layer_tag(source, models)
        image = source
        if models:
            versions = ", ".join(f"{m['name']} v{int(m['version'])}" for m in models)
            say(f"{props['repository']}: adding model layer ({versions}) on {props['source_image']}")
            image = oci_registry.build_model_image(
                f"{props['repository']}:{tag}", source, models, props.get("labels") or {}
            )
        say(f"{props['repository']}:{tag}: pushing")
        # A registry that wants credentials (an ACR): they travel as the secret input `registry_auth`.
        digest = oci_registry.push(image, props["repository"], tag, auth=oci_registry.auth_from(props.get("registry_auth")))
        return {**props, "tag": tag, "digest": digest, "image_ref": f"{props['repository']}@{digest}", "present": True}

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = self._push(props)
        return CreateResult(outs["image_ref"], outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        if credentials_only(olds, news):
            return UpdateResult({**olds, "registry_auth": news.get("registry_auth")})
        outs = self._push(news)
        if olds.get("tag") and (olds.get("repository"), olds["tag"]) != (outs["repository"], outs["tag"]):
            from mldeploy.providers.images import build as images

            # The local copy only: the registry keeps the old digest for the Deployment's history.
            images.remove_image(f"{olds['repository']}:{olds['tag']}")
        return UpdateResult(outs)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        from mldeploy.providers.image_registry import oci_registry

        if not props.get("digest"):
            return ReadResult(id_, props)
        try:
            present = oci_registry.manifest_exists(props["repository"], props["digest"], auth=oci_registry.auth_from(props.get("registry_auth")))
        except oci_registry.RegistryError:
            return ReadResult(id_, props)  # registry down: not drift of ours
        return ReadResult(id_, {**props, "present": present})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        from mldeploy.providers.images import build as images
        from mldeploy.providers.image_registry import oci_registry

        if props.get("tag"):
            # The model layer's image, or the registry's tag on a shared one (only the tag goes).
            images.remove_image(f"{props['repository']}:{props['tag']}")
        # The repository is this resource's alone (per stack and service): every version goes,
        # including older digests kept for the Deployment's revision history.
        try:
            n = oci_registry.delete_repository(props["repository"], auth=oci_registry.auth_from(props.get("registry_auth")))
            say(f"{props['repository']}: deleted {n} image(s) from the registry")
        except oci_registry.RegistryError as exc:
            say(f"{props['repository']}: could not delete its images: {exc}")
