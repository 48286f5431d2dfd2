"""The stack's settings as one typed object: what every target reads, never a dict passed around.

Read from the `mldeploy:` config namespace by the components (`mldeploy.components._common.Settings.load`);
targets get this object in `service_inputs`.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_ARM_ENDPOINT = "https://management.azure.com"
"""Azure Resource Manager's public endpoint (the local fake's address replaces it in tests)."""


@dataclass(frozen=True)
class Settings:
    """Per-stack settings from the `mldeploy:` config namespace.

    Paths are as resource inputs hold them: relative to the project when inside
    it (`mldeploy.providers.core.paths.portable`), so they name no checkout's location.
    """

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
    azure_subscription_id: str = ""
    azure_resource_group: str = ""
    azure_location: str = ""
    arm_endpoint: str = DEFAULT_ARM_ENDPOINT
    azure_ml_workspace: str = ""
    """The Azure ML workspace that holds the `azureml` target's endpoints and assets."""
    acr_name: str = ""
    """An ACR whose admin credentials (listCredentials) push and pull the stack's images."""
    image_registry_username: str = ""
    preview_smoke_test: bool = False
    """`preview` loads a service's new model versions in a throwaway container and scores the sample."""
