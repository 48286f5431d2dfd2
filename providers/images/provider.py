"""Provider for an inference image: base + serving runtime + dependencies + source."""

from __future__ import annotations

import hashlib
import re
from typing import Any, Callable

from pulumi.runtime.rpc import UNKNOWN  # what the engine sends for a value not known at preview
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from mldeploy.providers.core.paths import local

REPLACE_ON = ("image_repo",)
BASE_ID_AT = 1
"""Where the base image's id sits among the hashed parts (the order of every release so far)."""
DOCKER_TIMEOUT = 30
"""Seconds to wait for Docker's answer about the base image (a busy daemon is slow, not gone)."""
START_DOCKER = "start Docker (scripts/docker.sh starts dockerd here) and preview again"


def diff_image(olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
    """Rebuild only when what goes into the image changed: its build hash, or a private base's id."""
    replaces = [k for k in REPLACE_ON if olds.get(k) != news.get(k)]
    changed = replaces + [k for k in ("build_hash", "base_image_id") if olds.get(k) != news.get(k)]
    if not olds.get("present", True):
        changed.append("present")
    return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=False)


class BaseImageError(Exception):
    """Docker could not say the base image's id; the preview stops rather than guess."""


def build_hash(parts: list[str], base_image_id: str) -> str:
    """The image's identity: the component's parts (sources, dependencies, runtime) and the base's id.

    A base rebuilt under the same tag has a new id, so its images rebuild too.
    """
    h = hashlib.sha256()
    for part in [*parts[:BASE_ID_AT], base_image_id, *parts[BASE_ID_AT:]]:
        h.update(str(part).encode() + b"\0")
    return "sha256:" + h.hexdigest()


def _docker() -> Any:
    import docker
    import docker.errors

    try:
        return docker.from_env(timeout=DOCKER_TIMEOUT)
    except docker.errors.DockerException as exc:
        raise BaseImageError(f"cannot reach Docker ({exc}); {START_DOCKER}") from None


def base_image_id(ref: str) -> str:
    """The base image's id from Docker; `BaseImageError` names Docker and what to do.

    No guess when Docker does not answer: an id left out would change `build_hash`, and
    the image would be rebuilt (and its services rolled) for nothing.
    """
    import docker.errors

    client = _docker()
    try:
        return client.images.get(ref).id
    except docker.errors.ImageNotFound:
        raise BaseImageError(
            f"base image {ref!r} is not present in Docker; build it with scripts/base-image.sh "
            "(scripts/setup.sh does), or name another one with mldeploy:baseImage"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any other failure: say what Docker said
        raise BaseImageError(
            f"Docker did not say the id of base image {ref!r} ({type(exc).__name__}: {exc}); {START_DOCKER}"
        ) from None
    finally:
        client.close()


def python_in_tag(ref: str) -> str | None:
    """The base image's Python (major.minor) when its tag says it (`…-py3.11`)."""
    m = re.search(r"py(\d+\.\d+)", ref.rsplit("/", 1)[-1])
    return m.group(1) if m else None


def base_python(ref: str) -> str | None:
    """The base image's Python (major.minor) from Docker's record of it; None when nothing says."""
    from mldeploy.providers.images.build import python_of_image

    client = _docker()
    try:
        return python_of_image(client.images.get(ref).attrs, ref)
    except Exception:  # noqa: BLE001 - not found or unreadable: the pin is not checked
        return None
    finally:
        client.close()


def check_python_pin(conda_file: str | None, base_image: str, base_python: str | None) -> str | None:
    """Why the conda file's `python` pin cannot be met by the base image, or None."""
    from mldeploy.providers.images.build import pin_allows, python_pin

    if not conda_file or not base_python:
        return None
    pin = python_pin(conda_file)
    if pin is None:
        return None
    try:
        if pin_allows(pin, base_python):
            return None
    except ValueError as exc:
        return f"{conda_file}: {exc}"
    return (f"{conda_file} pins python {pin}, which base image {base_image!r} cannot meet: it has Python "
            f"{base_python}; change the pin or name another base_image")


def complete(news: dict[str, Any], image_id: Callable[[str], str] | None = None,
             python_of: Callable[[str], str | None] | None = None) -> tuple[dict[str, Any], list[CheckFailure]]:
    """The component's `build_parts` and Docker's answers become `build_hash` (what the state keeps).

    `image_id`/`python_of` default to asking Docker; tests pass their own.
    """
    parts = news.get("build_parts")
    if parts is None or UNKNOWN in str(parts):
        return news, []
    news = {k: v for k, v in news.items() if k != "build_parts"}
    failures: list[CheckFailure] = []
    base = news.get("base_image") or ""
    private = bool(news.get("base_image_registry"))
    dependency_file = news.get("dependency_file")
    if dependency_file and base and not private and python_in_tag(base) is None:
        # The tag does not say the base's Python (the component checked the pin when it does): Docker's record may.
        try:
            problem = check_python_pin(str(local(dependency_file)), base, (python_of or base_python)(base))
        except BaseImageError:
            problem = None  # the id below says Docker is missing
        if problem:
            failures.append(CheckFailure("conda_file", problem))
    try:
        base_id = "" if private else (image_id or base_image_id)(base)
    except BaseImageError as exc:
        return news, [CheckFailure("base_image", str(exc))]
    news["build_hash"] = build_hash(list(parts), base_id)
    return news, failures


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
            for k in ("image_repo", "base_image", "source_directory", "entry_script")
            if not news.get(k)
        ]
        news, found = complete(news)
        failures += found
        if not found and not news.get("build_hash"):
            failures.append(CheckFailure("build_hash", "build_hash is required (the component's build_parts make it)"))
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
