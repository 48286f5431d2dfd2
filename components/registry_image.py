"""RegistryImage: an image in the stack's registry, for targets that pull (Kubernetes, IoT Edge, ACI)."""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import Resource

from mldeploy.components._common import PACKAGE
from mldeploy.providers.image_registry.image import RegistryImageProvider


class RegistryImage(Resource, module=PACKAGE, name="RegistryImage"):
    """An image pushed to the stack's registry, referenced by digest (dynamic resource)."""

    image_ref: pulumi.Output[str]
    digest: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        outs = ("tag", "digest", "image_ref", "present")
        super().__init__(RegistryImageProvider(), name, {**props, **{k: None for k in outs}}, opts)
