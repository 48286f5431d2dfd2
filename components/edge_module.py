"""EdgeModule: a model packaged as an IoT Edge module and deployed to an edge device.

As Azure ML did for IoT Edge: one image per deployment with the model inside (a
device has no model store to mount), pushed to the stack's registry, and a
deployment manifest that tells the device's agent to run it. What the target
knows (arguments, rules, the module's manifest entry) lives in
`mldeploy.providers.targets.iotedge`; the manifest renderer in `mldeploy.providers.edge_manifest`;
the backends (this machine as the device, or IoT Hub) in `mldeploy.providers.edge_device`.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import Resource

from mldeploy.components._common import PACKAGE, ArgsError, Settings, slug, validate
from mldeploy.components.inference_image import InferenceImage
from mldeploy.components.registered_model import RegisteredModel
from mldeploy.components.registry_image import RegistryImage
from mldeploy.providers import edge_manifest
from mldeploy.providers.edge_device import AtScaleArgs, EdgeDeploymentProvider
from mldeploy.providers.targets import iotedge as target

OUTPUTS = ("scoring_uri", "swagger_uri", "module_name", "module_version", "image_ref", "manifest", "model_versions", "device_id",
           "configuration_id")


class EdgeDevice:
    """Where a module goes: this machine acting as the device (`local`) or a device behind IoT Hub (`iothub`).

    Not a resource: a device is registered in the hub by its owner. `policy_key` is
    the shared access policy's key (give a Pulumi secret); `endpoint` replaces
    `https://<hub_host>` (a test's fake hub).

    With `target_condition` (iothub only) the manifest goes to every device the hub's
    query matches, as an at-scale deployment (an IoT Hub configuration), and `device_id`
    is not used; `priority` (>= 0, 0 when omitted) decides between two deployments that
    target the same device, the higher winning.
    """

    def __init__(
        self,
        device_id: str = "local-device",
        backend: str = "local",
        hub_host: str | None = None,
        policy_name: str = "iothubowner",
        policy_key: pulumi.Input[str] | None = None,
        endpoint: str | None = None,
        api_version: str = "2021-04-12",
        target_condition: str | None = None,
        priority: int | None = None,
    ):
        given = {"device_id": device_id, "backend": backend, "hub_host": hub_host, "policy_name": policy_name,
                 "endpoint": endpoint, "api_version": api_version}
        self.args = validate(target.EdgeDeviceArgs, "EdgeDevice", device_id, given)
        self.at_scale = validate(AtScaleArgs, "EdgeDevice", device_id,
                                 {"backend": self.args.backend, "target_condition": target_condition, "priority": priority})
        if self.args.backend == "iothub" and policy_key is None:
            raise ArgsError(f"EdgeDevice '{device_id}': invalid arguments: policy_key: the iothub backend needs a shared access policy's key")
        self.policy_key = policy_key


class EdgeDeployment(Resource, module=PACKAGE, name="EdgeDeployment"):
    """A device's deployment manifest, applied by the local agent or IoT Hub (dynamic resource)."""

    manifest: pulumi.Output[dict[str, Any]]
    module_versions: pulumi.Output[dict[str, int]]
    scoring_uri: pulumi.Output[str]
    swagger_uri: pulumi.Output[str]
    state: pulumi.Output[str]
    configuration_id: pulumi.Output[str | None]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        outs = ("manifest", "module_versions", "scoring_uri", "swagger_uri", "state", "drift", "configuration_id",
                "configuration_labels", "configuration_etag")
        super().__init__(EdgeDeploymentProvider(), name, {**props, **{k: None for k in outs}}, opts)


class EdgeModule(pulumi.ComponentResource):
    """Packages models with an inference image as an edge module, pushes it, and deploys it to a device."""

    scoring_uri: pulumi.Output[str]
    swagger_uri: pulumi.Output[str]
    module_name: pulumi.Output[str]
    module_version: pulumi.Output[int]
    image_ref: pulumi.Output[str]
    manifest: pulumi.Output[dict[str, Any]]
    model_versions: pulumi.Output[dict[str, int]]
    device_id: pulumi.Output[str]
    configuration_id: pulumi.Output[str]
    """The at-scale deployment's IoT Hub configuration id (new with each manifest); "" for one device."""

    def __init__(
        self,
        resource_name: str,
        models: list[RegisteredModel],
        image: InferenceImage,
        device: EdgeDevice,
        module_name: str | None = None,
        env: dict[str, Any] | None = None,
        create_options: dict[str, Any] | str | None = None,
        routes: dict[str, Any] | None = None,
        restart_policy: str = "always",
        status: str = "running",
        port: int | None = None,
        image_pull_policy: str = "on-create",
        registry_username: str | None = None,
        registry_password: pulumi.Input[str] | None = None,
        startup_timeout_seconds: int = 300,
        opts: pulumi.ResourceOptions | None = None,
    ):
        kind = f"EdgeModule '{resource_name}'"
        given = {
            "module_name": module_name or resource_name, "env": env or {}, "create_options": create_options,
            "routes": routes or {}, "restart_policy": restart_policy, "status": status, "port": port,
            "image_pull_policy": image_pull_policy,
        }
        args = validate(target.EdgeModuleArgs, "EdgeModule", resource_name, given)
        if not isinstance(device, EdgeDevice):
            raise ArgsError(f"{kind}: invalid arguments: device: must be an EdgeDevice, got {type(device).__name__}")
        if not models or not all(isinstance(m, RegisteredModel) for m in models):
            raise ArgsError(f"{kind}: invalid arguments: models: must be one or more RegisteredModel resources")
        names = [m.args.model_name for m in models]
        if len(set(names)) != len(names):
            raise ArgsError(f"{kind}: invalid arguments: models: distinct model names needed, got {names}")
        if not isinstance(image, InferenceImage):
            raise ArgsError(f"{kind}: invalid arguments: image: must be an InferenceImage, got {type(image).__name__}")
        if int(startup_timeout_seconds) <= 0:
            raise ArgsError(f"{kind}: invalid arguments: startup_timeout_seconds: must be > 0")
        settings = Settings.load()
        local = device.args.backend == "local"
        if local:
            port = args.port or target.default_port(settings.project, settings.stack, args.module_name)
        else:
            port = args.port
        problems = target.check_local(args, target.create_options(args, port)) if local else []
        # The whole manifest against the schemas, with a stand-in image: bad input fails here, before any push.
        problems += edge_manifest.validate(target.trial_manifest(args, port))
        if problems:
            raise ArgsError(f"{kind}: invalid arguments: " + "; ".join(f"{f}: {m}" for f, m in problems))
        super().__init__(f"{PACKAGE}:index:EdgeModule", resource_name, None, opts)
        self.args, self.device = args, device

        entries = [m.service_entry() for m in models]
        model_image = RegistryImage(
            f"{resource_name}-image",
            {
                "source_image": image.image_name,
                "source_image_id": image.image_id,
                "repository": f"{settings.image_registry}/mldeploy-{slug(settings.project)}-{slug(settings.stack)}/{slug(args.module_name)}",
                "models": entries,
                "labels": {"mldeploy.managed": "true", "mldeploy.project": settings.project, "mldeploy.stack": settings.stack},
            },
            pulumi.ResourceOptions(parent=self, depends_on=[m._version for m in models] + [image._image]),
        )
        # Planned versions at preview (so the manifest's words name them), registered ones at up.
        planned = pulumi.Output.all(*entries).apply(lambda es: {e["name"]: int(e["version"]) for e in es})
        spec = target.module_spec(args, "", "", port)
        module = {**{k: v for k, v in spec.items() if k not in ("image", "version")},
                  "image": model_image.image_ref, "source_image_id": image.image_id, "models": planned}
        host = settings.image_registry.split("/")[0]
        props = {
            "device": device.args.model_dump(),
            "policy_key": pulumi.Output.secret(device.policy_key) if device.policy_key is not None else "",
            "modules": [module],
            "routes": dict(args.routes),
            "registry": {"name": "mldeploy", "address": host, "username": registry_username},
            "registry_password": pulumi.Output.secret(registry_password) if registry_password is not None else "",
            "port": port,
            "startup_timeout_seconds": int(startup_timeout_seconds),
            "project": settings.project,
            "stack": settings.stack,
            "resource": resource_name,
        }
        if device.at_scale.target_condition is not None:
            props.update(target_condition=device.at_scale.target_condition, priority=device.at_scale.priority or 0)
        deployment = EdgeDeployment(
            f"{resource_name}-deployment",
            props,
            pulumi.ResourceOptions(parent=self, additional_secret_outputs=["policy_key", "registry_password"]),
        )
        self._deployment, self._image = deployment, model_image
        self.scoring_uri = deployment.scoring_uri
        self.swagger_uri = deployment.swagger_uri
        self.module_name = pulumi.Output.from_input(args.module_name)
        self.module_version = deployment.module_versions.apply(lambda v: int((v or {}).get(args.module_name, 0)))
        self.image_ref = model_image.image_ref
        self.manifest = deployment.manifest
        self.model_versions = planned
        self.device_id = pulumi.Output.from_input(device.args.device_id)
        self.configuration_id = deployment.configuration_id.apply(lambda c: c or "")
        self.register_outputs({k: getattr(self, k) for k in OUTPUTS})
