"""InferenceImage: entry script + dependencies + serving runtime, as one Docker image."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, Literal

import pulumi
import yaml
from pulumi.dynamic import Resource
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from mldeploy.components._common import PACKAGE, ArgsError, Settings, args_class, resolve, slug, takes_args, validate
from mldeploy.providers.model_registry.registry import content_hash
from mldeploy.providers.images.provider import ImageProvider, check_python_pin, python_in_tag
from mldeploy.providers.core.paths import portable

RUNTIME_DIR = Path(__file__).resolve().parents[1] / "runtime"
DOCKERFILE = Path(__file__).resolve().parents[1] / "providers" / "images" / "inference.Dockerfile"
CUDA_VERSIONS = ("9.0", "9.1", "10.0")
"""The CUDA versions the seed's InferenceConfig supports; 9.1 when enable_gpu is set without one."""


class BaseImageRegistry(BaseModel):
    """Where a private base image lives and who may pull it (Azure ML's ContainerRegistry)."""

    model_config = ConfigDict(extra="forbid")

    address: str = Field(min_length=1, pattern=r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
    username: str = Field(min_length=1)
    password: Any = Field(default=None, validate_default=True)
    """A string or a Pulumi secret; it reaches the state only as a secret."""

    @field_validator("password")
    @classmethod
    def _password(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value):
            raise ValueError("a password is required")
        if not isinstance(value, (str, pulumi.Output)):
            raise ValueError("must be a string or a pulumi.Output (a secret)")
        return value


class InferenceImageSpec(BaseModel):
    """Arguments of `InferenceImage`, as Azure ML's InferenceConfig takes them."""

    model_config = ConfigDict(extra="forbid")

    source_directory: str
    entry_script: str
    """Relative to `source_directory`, which must contain it."""
    conda_file: str | None = None
    """A conda environment YAML, or a pip requirements file (.txt)."""
    base_image: str | None = None
    runtime: Literal["python"] = "python"
    """The seed's `runtime`: only `python` is built here (`spark-py` is not)."""
    extra_docker_file_steps: str | None = None
    """A file of Dockerfile steps, run after the environment is installed."""
    base_image_registry: BaseImageRegistry | None = None
    enable_gpu: bool = False
    cuda_version: str | None = Field(default=None, validate_default=True)
    """Recorded on the image; nothing here has a GPU, so no CUDA is installed or run."""
    only_binary: bool = True
    """Wheels only (pip's `--only-binary=:all:`). False lets pip build sdists, which runs
    their setup code on the machine that applies: the preview warns."""

    @field_validator("runtime", mode="before")
    @classmethod
    def _runtime(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lower() == "spark-py":
            raise ValueError("'spark-py' is not supported here; use 'python'")
        return value.lower() if isinstance(value, str) else value

    @field_validator("extra_docker_file_steps")
    @classmethod
    def _extra_steps(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        from mldeploy.providers.images.build import render_extra_steps

        path = resolve(value, info.context["root"] if info.context else None)
        if not path.is_file():
            raise ValueError(f"file does not exist: {path}")
        try:
            render_extra_steps(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: {exc}") from None
        return str(path)

    @field_validator("cuda_version")
    @classmethod
    def _cuda(cls, value: str | None, info: ValidationInfo) -> str | None:
        gpu = info.data.get("enable_gpu", False)
        if value is not None and not gpu:
            raise ValueError("cuda_version is set but enable_gpu is not")
        if not gpu:
            return None
        if value is None:
            return "9.1"  # the seed's default when enable_gpu is set
        if value not in CUDA_VERSIONS:
            raise ValueError(f"{value!r} is not supported; supported: {', '.join(CUDA_VERSIONS)}")
        return value

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
        from mldeploy.providers.images.build import parse_dependency_file

        parse_dependency_file(path)  # a pip option or a URL in it fails here, naming the line
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


def build_parts(args: InferenceImageSpec, base_image: str) -> list[str]:
    """Everything that goes into the image but the base image's id (the model is not part of it).

    The id needs Docker, so the image provider's check adds it (`mldeploy.providers.images.provider.build_hash`):
    the program runs to completion with Docker stopped. A private base (base_image_registry) may
    not be here yet: its id is added by the same check, which pulls it with the credentials.
    """
    parts = [
        base_image,
        args.entry_script,
        content_hash(args.source_directory),
        content_hash(args.conda_file) if args.conda_file else "",
        content_hash(DOCKERFILE),
        content_hash(RUNTIME_DIR / "requirements.txt"),
        content_hash(RUNTIME_DIR / "mldeploy_serving.py"),
    ]
    # Only when set, so images of stacks that use none of these keep their hash.
    if args.extra_docker_file_steps:
        parts.append("extra:" + content_hash(args.extra_docker_file_steps))
    if args.enable_gpu:
        parts.append(f"gpu:cuda{args.cuda_version}")
    if args.base_image_registry:
        parts.append("registry:" + args.base_image_registry.address)
    return parts


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

    @takes_args
    def __init__(
        self,
        resource_name: str,
        entry_script: str,
        source_directory: str,
        conda_file: str | None = None,
        base_image: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
        *,
        runtime: str = "python",
        extra_docker_file_steps: str | None = None,
        base_image_registry: BaseImageRegistry | dict[str, Any] | None = None,
        enable_gpu: bool = False,
        cuda_version: str | None = None,
        only_binary: bool = True,
        _root: Path | None = None,
    ):
        settings = Settings.load()
        if isinstance(base_image_registry, BaseImageRegistry):
            base_image_registry = base_image_registry.model_dump()
        args = validate(
            InferenceImageSpec,
            "InferenceImage",
            resource_name,
            {
                "entry_script": entry_script,
                "source_directory": source_directory,
                "conda_file": conda_file,
                "base_image": base_image,
                "runtime": runtime,
                "extra_docker_file_steps": extra_docker_file_steps,
                "base_image_registry": base_image_registry,
                "enable_gpu": enable_gpu,
                "cuda_version": cuda_version,
                "only_binary": only_binary,
            },
            **({"root": _root} if _root is not None else {}),
        )
        base = args.base_image or settings.base_image
        if args.base_image_registry and not base.startswith(args.base_image_registry.address + "/"):
            raise ArgsError(
                f"InferenceImage '{resource_name}': base_image_registry: base image {base!r} is not in registry "
                f"{args.base_image_registry.address!r}; name it as {args.base_image_registry.address}/<repository>:<tag>"
            )
        # A pin the tag already says cannot be met fails here; one Docker must answer for, in the provider's check.
        pin_problem = check_python_pin(args.conda_file, base, python_in_tag(base))
        if pin_problem:
            raise ArgsError(f"InferenceImage '{resource_name}': conda_file: {pin_problem}")
        parts = build_parts(args, base)
        super().__init__(f"{PACKAGE}:index:InferenceImage", resource_name, None, opts)
        # Services read it at preview to say whether run() declares an input sample.
        self.entry_script_path = portable(Path(args.source_directory) / args.entry_script)
        # The azureml target uploads this folder whole as the deployment's code.
        self.source_directory_path = portable(args.source_directory)
        self._image = Image(
            f"{resource_name}-image",
            {
                "image_repo": f"mldeploy-{slug(settings.project)}-{slug(settings.stack)}/{slug(resource_name)}",
                "base_image": base,
                # Relative to the project, so no checkout's path is part of the image's inputs.
                "source_directory": portable(args.source_directory),
                "entry_script": args.entry_script,
                "dependency_file": portable(args.conda_file) if args.conda_file else "",
                # The provider's check turns these and the base image's id into `build_hash`.
                "build_parts": parts,
                # Not diffed (build_hash covers them); they tell a reviewer what changed.
                "source_hash": content_hash(args.source_directory),
                "dependency_hash": content_hash(args.conda_file) if args.conda_file else "",
                **self._extra_props(args),
                "labels": {
                    "mldeploy.managed": "true",
                    "mldeploy.project": settings.project,
                    "mldeploy.stack": settings.stack,
                    "mldeploy.resource": resource_name,
                },
            },
            pulumi.ResourceOptions(parent=self, additional_secret_outputs=["base_image_registry"]),
        )
        if not args.only_binary:
            pulumi.log.warn(
                f"InferenceImage '{resource_name}': only_binary=False: pip may build packages from source, "
                "running their setup code on the machine that applies (with a clean environment, but as "
                "that user and with its network); prefer wheels",
                resource=self,
            )
        self.image_name = self._image.image_name
        self.image_id = self._image.image_id
        self.register_outputs({"image_name": self.image_name, "image_id": self.image_id})

    @staticmethod
    def _extra_props(args: InferenceImageSpec) -> dict[str, Any]:
        """The seed's other InferenceConfig fields, only when set (older stacks' inputs stay as they were)."""
        props: dict[str, Any] = {}
        if args.extra_docker_file_steps:
            props["extra_docker_file_steps"] = portable(args.extra_docker_file_steps)
        if not args.only_binary:
            props["only_binary"] = False  # not in build_hash: the wheels' digests key the environment
        if args.enable_gpu:
            props["enable_gpu"] = True
            props["cuda_version"] = args.cuda_version
        if args.base_image_registry:
            reg = args.base_image_registry
            # The whole mapping is a secret in the state; the engine keeps it one in the outputs.
            props["base_image_registry"] = pulumi.Output.secret(
                pulumi.Output.from_input({"address": reg.address, "username": reg.username, "password": reg.password})
            )
        return props

    @classmethod
    def from_config(cls, path: str | Path, resource_name: str | None = None,
                    opts: pulumi.ResourceOptions | None = None) -> "InferenceImage":
        """An image from an `az ml` inferenceconfig.json, unchanged (the seed's keys, its trailing comma).

        `resource_name` defaults to the file's stem (`inferenceconfig`). Paths in the file
        are relative to the file's folder. A bad key or value fails at preview, naming the
        file and the key.
        """
        from mldeploy.components.azureml_config import read_inference_config

        resource_name = resource_name or Path(path).stem
        config = read_inference_config(resource_name, path)
        try:
            return cls(resource_name, opts=opts, _root=config.folder, **config.kwargs)
        except ArgsError as exc:
            raise ArgsError(config.explain(str(exc))) from None


InferenceImageArgs = args_class(InferenceImage, "The arguments of `InferenceImage` as one object: Azure ML's InferenceConfig.")
