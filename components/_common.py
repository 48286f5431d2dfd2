"""What every component shares: project settings, path rules, error reporting."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pulumi
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PACKAGE = "mldeploy"
DEFAULT_BASE_IMAGE = "mldeploy/base:bookworm-py3.11"

M = TypeVar("M", bound=BaseModel)


class ArgsError(pulumi.RunError):
    """Bad component arguments; raised at preview, before anything changes."""


def project_root() -> Path:
    """Relative paths in args are relative to the Pulumi project (where Pulumi.yaml is)."""
    root = os.environ.get("MLDEPLOY_PROJECT_DIR") or pulumi.get_root_directory() or os.getcwd()
    return Path(root).resolve()


def resolve(path: str, root: Path | None = None) -> Path:
    p = Path(path).expanduser()
    return (p if p.is_absolute() else (root or project_root()) / p).resolve()


class StackConfig(BaseModel):
    """The `mldeploy:` keys of a stack file, checked before anything is declared."""

    model_config = ConfigDict(extra="ignore")

    target: str = "local"
    baseImage: str = Field(default=DEFAULT_BASE_IMAGE, min_length=1)
    gatewayImage: str = Field(default=DEFAULT_BASE_IMAGE, min_length=1)
    stateDir: str = Field(default=".pulumi-state", min_length=1)
    registryPath: str = ""
    imageRegistry: str = Field(default="127.0.0.1:5000", pattern=r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[a-z0-9._/-]+)?$")

    @field_validator("target")
    @classmethod
    def _known_target(cls, value: str) -> str:
        from providers.targets import TARGETS

        if value not in TARGETS:
            raise ValueError(f"unknown target {value!r}; known: {', '.join(TARGETS)}")
        return value


@dataclass(frozen=True)
class Settings:
    """Per-stack settings from the `mldeploy:` config namespace."""

    project: str
    stack: str
    state_dir: str
    registry_root: str
    base_image: str
    gateway_image: str
    """The gateway runs nginx from our own base image, whatever base users pick for models."""
    target: str
    image_registry: str = "127.0.0.1:5000"
    """Where targets that pull (Kubernetes, IoT Edge, ACI) get their images: ACR's stand-in locally."""

    @staticmethod
    def load() -> "Settings":
        cfg = pulumi.Config(PACKAGE)
        root = project_root()
        stack = pulumi.get_stack()
        raw = {k: cfg.get(k) for k in StackConfig.model_fields if cfg.get(k) is not None}
        try:
            conf = StackConfig.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{PACKAGE}:{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            )
            raise ArgsError(f"stack config stacks/Pulumi.{stack}.yaml: {problems}") from None
        state_dir = resolve(os.environ.get("MLDEPLOY_STATE_DIR") or conf.stateDir, root)
        registry = os.environ.get("MLDEPLOY_REGISTRY_PATH") or conf.registryPath
        return Settings(
            project=pulumi.get_project(),
            stack=stack,
            state_dir=str(state_dir),
            registry_root=str(resolve(registry, root) if registry else state_dir / "registry"),
            base_image=os.environ.get("MLDEPLOY_BASE_IMAGE") or conf.baseImage,
            gateway_image=os.environ.get("MLDEPLOY_GATEWAY_IMAGE") or conf.gatewayImage,
            target=conf.target,
            image_registry=conf.imageRegistry,
        )


def validate(model: type[M], kind: str, name: str, data: dict[str, Any], **context: Any) -> M:
    """Validate args with pydantic; fail with the resource and the field named."""
    try:
        return model.model_validate(data, context={"root": project_root(), **context})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "(args)"
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{field}: {msg}")
        raise ArgsError(f"{kind} '{name}': invalid arguments: " + "; ".join(problems)) from None


def slug(value: str) -> str:
    """Lowercase name safe for Docker repositories and container names."""
    return re.sub(r"[^a-z0-9_.-]+", "-", value.lower()).strip("-.") or "x"
