"""Provider for an inference image: base + serving runtime + dependencies + source."""

from __future__ import annotations

from typing import Any

from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from providers.paths import local

REPLACE_ON = ("image_repo",)


def diff_image(olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
    """Rebuild only when what goes into the image changed (its build hash)."""
    replaces = [k for k in REPLACE_ON if olds.get(k) != news.get(k)]
    changed = replaces + [k for k in ("build_hash",) if olds.get(k) != news.get(k)]
    if not olds.get("present", True):
        changed.append("present")
    return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=False)


def image_name(props: dict[str, Any]) -> str:
    return f"{props['image_repo']}:{props['build_hash'].split(':')[-1][:12]}"


class ImageProvider(ResourceProvider):
    """Builds with the Docker Engine API; the model is mounted at run time, never baked in."""

    serialize_as_secret_always = False

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = [
            CheckFailure(k, f"{k} is required")
            for k in ("image_repo", "base_image", "source_directory", "entry_script", "build_hash")
            if not news.get(k)
        ]
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return diff_image(olds, news)

    def _build(self, props: dict[str, Any]) -> dict[str, Any]:
        from providers.clients.images import build_inference_image

        name = image_name(props)
        dependency_file = props.get("dependency_file")
        image_id = build_inference_image(
            name,
            props["base_image"],
            str(local(props["source_directory"])),  # relative to the project: this run's checkout
            props["entry_script"],
            str(local(dependency_file)) if dependency_file else None,
            props.get("labels") or {},
        )
        return {**props, "image_name": name, "image_id": image_id, "present": True}

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = self._build(props)
        return CreateResult(outs["image_name"], outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        outs = self._build(news)
        if olds.get("image_name") and olds["image_name"] != outs["image_name"]:
            from providers.clients.images import remove_image

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
        from providers.clients.images import remove_image

        remove_image(props["image_name"])
