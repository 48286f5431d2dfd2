"""RegistryCredentials: the credentials of the stack's image registry, when it wants some (an ACR)."""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import Resource

from mldeploy.components._common import PACKAGE, ArgsError, Settings
from mldeploy.providers.image_registry.credentials import RegistryCredentialsProvider


class RegistryCredentials(Resource, module=PACKAGE, name="RegistryCredentials"):
    """Server, username and password (a secret) for pushes and pulls (dynamic resource)."""

    server: pulumi.Output[str]
    username: pulumi.Output[str]
    password: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["password"]))
        super().__init__(RegistryCredentialsProvider(), name, {"server": None, "username": None, "password": None, **props}, opts)


def registry_credentials_for(settings: Settings, name: str, parent: pulumi.Resource) -> RegistryCredentials | None:
    """From stack config: `mldeploy:acrName` (listCredentials through ARM at up), or
    `mldeploy:imageRegistryUsername` with the secret `mldeploy:imageRegistryPassword`; None when neither is set."""
    opts = pulumi.ResourceOptions(parent=parent)
    if settings.acr_name:
        return RegistryCredentials(name, {
            "source": "acr",
            "subscription_id": settings.azure_subscription_id,
            "resource_group": settings.azure_resource_group,
            "registry_name": settings.acr_name,
            "arm_endpoint": settings.arm_endpoint,
        }, opts)
    if settings.image_registry_username:
        password = pulumi.Config(PACKAGE).get_secret("imageRegistryPassword")
        if password is None:
            raise ArgsError(f"stack config stacks/Pulumi.{settings.stack}.yaml: mldeploy:imageRegistryPassword: "
                            "missing (set it with --secret) while mldeploy:imageRegistryUsername is set")
        return RegistryCredentials(name, {
            "source": "given",
            "server": settings.image_registry.split("/", 1)[0],
            "username": settings.image_registry_username,
            "password": password,
        }, opts)
    return None
