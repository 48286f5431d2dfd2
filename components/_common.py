"""What every component shares: project settings, path rules, error reporting."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pulumi
from pydantic import BaseModel, ValidationError

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

    @staticmethod
    def load() -> "Settings":
        cfg = pulumi.Config(PACKAGE)
        root = project_root()
        state_dir = resolve(os.environ.get("MLDEPLOY_STATE_DIR") or cfg.get("stateDir") or ".pulumi-state", root)
        registry = cfg.get("registryPath") or os.environ.get("MLDEPLOY_REGISTRY_PATH") or ""
        return Settings(
            project=pulumi.get_project(),
            stack=pulumi.get_stack(),
            state_dir=str(state_dir),
            registry_root=str(resolve(registry, root) if registry else state_dir / "registry"),
            base_image=os.environ.get("MLDEPLOY_BASE_IMAGE") or cfg.get("baseImage") or DEFAULT_BASE_IMAGE,
            gateway_image=os.environ.get("MLDEPLOY_GATEWAY_IMAGE") or cfg.get("gatewayImage") or DEFAULT_BASE_IMAGE,
            target=cfg.get("target") or "local",
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
