"""InferenceImage: entry script + dependencies + serving runtime, as one Docker image."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.dynamic import Resource
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from components._common import PACKAGE, ArgsError, Settings, resolve, slug, validate
from providers.clients.registry import content_hash
from providers.image import ImageProvider
from providers.paths import portable

RUNTIME_DIR = Path(__file__).resolve().parents[1] / "runtime"


class InferenceImageArgs(BaseModel):
    """Arguments of `InferenceImage`, as Azure ML's InferenceConfig takes them."""

    model_config = ConfigDict(extra="forbid")

    source_directory: str
    entry_script: str
    """Relative to `source_directory`, which must contain it."""
    conda_file: str | None = None
    """A conda environment YAML, or a pip requirements file (.txt)."""
    base_image: str | None = None

    @field_validator("source_directory")
    @classmethod
    def _source_dir(cls, value: str, info: ValidationInfo) -> str:
        path = resolve(value, info.context["root"] if info.context else None)
        if not path.is_dir():
            raise ValueError(f"source directory does not exist: {path}")
        return str(path)

    @field_validator("conda_file")
    @classmethod
    def _conda_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        path = resolve(value, info.context["root"] if info.context else None)
        if not path.is_file():
            raise ValueError(f"dependency file does not exist: {path}")
        if path.suffix in (".yml", ".yaml"):
            try:
                doc = yaml.safe_load(path.read_text())
            except yaml.YAMLError as exc:
                raise ValueError(f"{path} is not valid YAML: {exc}".replace("\n", " ")) from None
            if not isinstance(doc, dict) or not isinstance(doc.get("dependencies", []), list):
                raise ValueError(f"{path} is not a conda environment file (a mapping with a `dependencies` list)")
        return str(path)

    @field_validator("entry_script")
    @classmethod
    def _entry_script(cls, value: str, info: ValidationInfo) -> str:
        if "source_directory" not in info.data:
            return value  # the source directory's own error says what is wrong
        src = Path(info.data["source_directory"])
        script = (src / value).resolve()
        if not script.is_relative_to(src):
            raise ValueError(f"{value!r} must be inside source_directory {src}")
        if not script.is_file():
            raise ValueError(f"{value!r} is not in source_directory {src}")
        try:
            tree = ast.parse(script.read_text(), filename=str(script))
        except SyntaxError as exc:
            raise ValueError(f"{script} does not parse: {exc}") from None
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        missing = [f for f in ("init", "run") if f not in defined]
        if missing:
            raise ValueError(f"{script} must define init() and run(); missing: {', '.join(missing)}")
        return value


def build_hash(args: InferenceImageArgs, base_image: str) -> str:
    """Everything that goes into the image; the model is not part of it."""
    h = hashlib.sha256()
    for part in (
        base_image,
        _image_id(base_image),
        args.entry_script,
        content_hash(args.source_directory),
        content_hash(args.conda_file) if args.conda_file else "",
        content_hash(RUNTIME_DIR / "Dockerfile.inference"),
        content_hash(RUNTIME_DIR / "requirements.txt"),
        content_hash(RUNTIME_DIR / "mldeploy_serving.py"),
    ):
        h.update(part.encode() + b"\0")
    return "sha256:" + h.hexdigest()


DOCKER_TIMEOUT = 30
"""Seconds to wait for Docker's answer about the base image (a busy daemon is slow, not gone)."""


class BaseImageError(Exception):
    """Docker could not say the base image's id; the preview stops rather than guess."""


def _image_id(ref: str) -> str:
    """The base image's id, so a rebuilt base rebuilds its images.

    Raises `BaseImageError` when Docker does not answer or has no such image: an
    id left out would change `build_hash`, and the image would be rebuilt (and its
    services rolled) for nothing.
    """
    import docker
    import docker.errors

    try:
        client = docker.from_env(timeout=DOCKER_TIMEOUT)
    except docker.errors.DockerException as exc:
        raise BaseImageError(f"cannot reach Docker to read the id of base image {ref!r}: {exc}") from None
    try:
        return client.images.get(ref).id
    except docker.errors.ImageNotFound:
        raise BaseImageError(
            f"base image {ref!r} is not present in Docker; build it with scripts/base-image.sh "
            "(scripts/setup.sh does), or name another one with mldeploy:baseImage"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any other failure: say what Docker said
        raise BaseImageError(
            f"Docker did not say the id of base image {ref!r} ({type(exc).__name__}: {exc}); "
            "check that Docker runs (scripts/docker.sh) and preview again"
        ) from None
    finally:
        client.close()


class Image(Resource, module=PACKAGE, name="Image"):
    """A built image (dynamic resource)."""

    image_name: pulumi.Output[str]
    image_id: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(ImageProvider(), name, {**props, "image_name": None, "image_id": None, "present": None}, opts)


class InferenceImage(pulumi.ComponentResource):
    """Rebuilt only when its base, dependencies or source change, never for a new model."""

    image_name: pulumi.Output[str]
    image_id: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        entry_script: str,
        source_directory: str,
        conda_file: str | None = None,
        base_image: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        settings = Settings.load()
        args = validate(
            InferenceImageArgs,
            "InferenceImage",
            resource_name,
            {
                "entry_script": entry_script,
                "source_directory": source_directory,
                "conda_file": conda_file,
                "base_image": base_image,
            },
        )
        base = args.base_image or settings.base_image
        try:
            digest = build_hash(args, base)
        except BaseImageError as exc:
            raise ArgsError(f"InferenceImage '{resource_name}': base_image: {exc}") from None
        super().__init__(f"{PACKAGE}:index:InferenceImage", resource_name, None, opts)
        self._image = Image(
            f"{resource_name}-image",
            {
                "image_repo": f"mldeploy-{slug(settings.project)}-{slug(settings.stack)}/{slug(resource_name)}",
                "base_image": base,
                # Relative to the project, so no checkout's path is part of the image's inputs.
                "source_directory": portable(args.source_directory),
                "entry_script": args.entry_script,
                "dependency_file": portable(args.conda_file) if args.conda_file else "",
                "build_hash": digest,
                # Not diffed (build_hash covers them); they tell a reviewer what changed.
                "source_hash": content_hash(args.source_directory),
                "dependency_hash": content_hash(args.conda_file) if args.conda_file else "",
                "labels": {
                    "mldeploy.managed": "true",
                    "mldeploy.project": settings.project,
                    "mldeploy.stack": settings.stack,
                    "mldeploy.resource": resource_name,
                },
            },
            pulumi.ResourceOptions(parent=self),
        )
        self.image_name = self._image.image_name
        self.image_id = self._image.image_id
        self.register_outputs({"image_name": self.image_name, "image_id": self.image_id})
