"""Provider for an inference image: base + serving runtime + dependencies + source."""

from __future__ import annotations

import hashlib
from typing import Any

from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from mldeploy.providers.core.paths import local

REPLACE_ON = ("image_repo",)
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
"""What the engine sends for a value not known at preview."""


def diff_image(olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
    """Rebuild only when what goes into the image changed: its build hash, or a private base's id."""
    replaces = [k for k in REPLACE_ON if olds.get(k) != news.get(k)]
    changed = replaces + [k for k in ("build_hash", "base_image_id") if olds.get(k) != news.get(k)]
    if not olds.get("present", True):
        changed.append("present")
    return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=False)


def image_name(props: dict[str, Any]) -> str:
    """`<repo>:<12 hex>` from the build hash; with a private base, from its pulled id too."""
    digest = props["build_hash"].split(":")[-1]
    if props.get("base_image_id"):
        digest = hashlib.sha256(f"{props['build_hash']}|{props['base_image_id']}".encode()).hexdigest()
    return f"{props['image_repo']}:{digest[:12]}"


def check_registry(registry: Any) -> list[CheckFailure]:
    """base_image_registry must say where (address) and who (username, password)."""
    if not registry:
        return []
    if not isinstance(registry, dict):
        return [CheckFailure("base_image_registry", "base_image_registry must be a mapping of address, username, password")]
    missing = [k for k in ("address", "username", "password") if not registry.get(k)]
    if missing:
        return [CheckFailure("base_image_registry", f"base_image_registry needs {', '.join(missing)}")]
    return []


def build_labels(props: dict[str, Any]) -> dict[str, str]:
    """The image's labels: who owns it, and the GPU request recorded (nothing here runs CUDA)."""
    labels = dict(props.get("labels") or {})
    if props.get("enable_gpu"):
        labels["mldeploy.enable_gpu"] = "true"
        labels["mldeploy.cuda_version"] = str(props.get("cuda_version") or "")
    return labels


class ImageProvider(ResourceProvider):
    """Builds with the Docker Engine API; the model is mounted at run time, never baked in."""

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = [
            CheckFailure(k, f"{k} is required")
            for k in ("image_repo", "base_image", "source_directory", "entry_script", "build_hash")
            if not news.get(k)
        ]
        registry = news.get("base_image_registry")
        failures += check_registry(registry)
        if registry and not failures and UNKNOWN not in str(registry):
            # A private base: its id comes from the registry (pulled now when missing), so a
            # base rebuilt and pushed again rebuilds the image, as a local base does.
            from mldeploy.providers.images.build import ImageBuildError, pull_base_image

            try:
                news = {**news, "base_image_id": pull_base_image(news["base_image"], registry)}
            except ImageBuildError as exc:
                failures.append(CheckFailure("base_image_registry", str(exc)))
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return diff_image(olds, news)

    def _build(self, props: dict[str, Any]) -> dict[str, Any]:
        from mldeploy.providers.images.build import build_inference_image, pull_base_image

        name = image_name(props)
        if props.get("base_image_registry"):
            pull_base_image(props["base_image"], props["base_image_registry"])  # removed since the preview
        dependency_file = props.get("dependency_file")
        steps_file = props.get("extra_docker_file_steps")
        image_id = build_inference_image(
            name,
            props["base_image"],
            str(local(props["source_directory"])),  # relative to the project: this run's checkout
            props["entry_script"],
            str(local(dependency_file)) if dependency_file else None,
            build_labels(props),
            extra_steps=local(steps_file).read_text() if steps_file else None,
            only_binary=props.get("only_binary", True),
        )
        return {**props, "image_name": name, "image_id": image_id, "present": True}

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = self._build(props)
        return CreateResult(outs["image_name"], outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        outs = self._build(news)
        if olds.get("image_name") and olds["image_name"] != outs["image_name"]:
            from mldeploy.providers.images.build import remove_image

            remove_image(olds["image_name"])  # left in place while a service still runs on it
        return UpdateResult(outs)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        import docker
        import docker.errors

        try:
            image = docker.from_env().images.get(props["image_name"])
            present = image.id == props.get("image_id")
        except docker.errors.ImageNotFound:
            present = False
        return ReadResult(id_, {**props, "present": present})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        """Removes the stack's image only; the environment image it was built on stays in the machine's cache."""
        from mldeploy.providers.images.build import remove_image

        remove_image(props["image_name"])
