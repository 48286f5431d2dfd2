"""What the engine does between a program and the mocks: a dynamic provider's `check`.

Pulumi's mocks receive the program's inputs as they are. The image provider's
check turns the component's `build_parts` and Docker's answer into `build_hash`,
so mocks that stand in for the engine run that same code, with a fixed base id.
"""

from __future__ import annotations

from typing import Any

from mldeploy.providers.images.provider import complete

BASE_IMAGE_ID = "sha256:" + "ba5e" * 16


def image_checked(inputs: dict[str, Any], base_id: str = BASE_IMAGE_ID) -> dict[str, Any]:
    """The Image resource's inputs as its provider's check leaves them (no Docker asked)."""
    news, failures = complete(dict(inputs), image_id=lambda ref: base_id, python_of=lambda ref: None)
    if failures:
        raise ValueError("; ".join(f"{f.property}: {f.reason}" for f in failures))
    return news


def model_checked(inputs: dict[str, Any]) -> dict[str, Any]:
    """The ModelVersion resource's inputs as its provider's check leaves them: the version planned from the registry."""
    from mldeploy.providers.model_registry.provider import plan

    news, failures = plan({k: v for k, v in inputs.items() if v is not None})
    if failures:
        raise ValueError("; ".join(f"{f.property}: {f.reason}" for f in failures))
    return news


def stack_settings(**given: Any) -> Any:
    """The typed settings a target's `service_inputs` gets, with placeholders for what a test leaves out."""
    from mldeploy.providers.core.settings import Settings

    base = {"project": "proj", "stack": "dev", "state_dir": "/proj/.pulumi-state", "registry_root": "/proj/.pulumi-state/registry",
            "base_image": "mldeploy/base:bookworm-py3.11", "gateway_image": "mldeploy/base:bookworm-py3.11", "target": "local"}
    return Settings(**{**base, **given})
