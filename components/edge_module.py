"""EdgeModule: a model packaged as an IoT Edge module and deployed to an edge device.

As Azure ML did for IoT Edge: one image per deployment with the model inside (a
device has no model store to mount), pushed to the stack's registry, and a
deployment manifest that tells the device's agent to run it. What the target
knows (arguments, rules, the module's manifest entry) lives in
`mldeploy.providers.targets.iotedge`; the manifest renderer in `mldeploy.providers.targets.iotedge.edge_manifest`;
the backends (this machine as the device, or IoT Hub) in `mldeploy.providers.targets.iotedge.device`.

A device's manifest holds all of its modules and applying one replaces the whole set,
so the EdgeModules of one program that go to the same device (backend, hub and device
id; at scale, hub and target condition) share ONE `EdgeDeployment`, named after the
device (`edge-device-<id>`), applied once: each module keeps its own image, version and
outputs. The list is known only when the program's top-level code has run: the
modules input is an Output over a future that a callback resolves; the callback is
scheduled with `loop.call_soon` at the first module, and the SDK runs the program
synchronously inside its task before it awaits anything (pulumi/runtime/stack.py,
`run_in_stack`), so the callback sees every module declared at top level. A module
declared after that (inside an apply or after an await) fails naming `device`.
Chosen over per-module resources that merge into the device's current manifest
because the preview then lists every module the device will run, and nothing has to
lock the device between two resources. A stack of the previous release (one module,
`<module>-deployment` under the module) is the same resource by an alias: no replace.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pulumi
from pulumi.dynamic import Resource

from mldeploy.components._common import PACKAGE, ArgsError, Settings, args_class, slug, takes_args, validate
from mldeploy.components.inference_image import InferenceImage
from mldeploy.components.registered_model import RegisteredModel
from mldeploy.components.registry_image import RegistryImage
from mldeploy.providers.targets.iotedge import edge_manifest
from mldeploy.providers.targets.iotedge.device import AtScaleArgs, EdgeDeploymentProvider
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

    `foreign_modules`: what to do with modules the device runs that this stack does not
    own (another stack's, or set by hand), read at preview from the device (the local
    device's containers; the hub's `$edgeAgent` twin): `"fail"` (default) fails the
    preview naming them; `"keep"` keeps them beside this stack's modules.
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
        foreign_modules: str = "fail",
    ):
        given = {"device_id": device_id, "backend": backend, "hub_host": hub_host, "policy_name": policy_name,
                 "endpoint": endpoint, "api_version": api_version}
        if foreign_modules not in target.FOREIGN_POLICIES:
            raise ArgsError(f"EdgeDevice '{device_id}': invalid arguments: foreign_modules: must be 'fail' or 'keep', got {foreign_modules!r}")
        self.foreign_modules = foreign_modules
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


_devices: contextvars.ContextVar[dict[Any, Any] | None] = contextvars.ContextVar("mldeploy_edge_devices", default=None)
"""The devices of this program run; the Automation API runs each program in a fresh context, loop and monitor."""


class _Device:
    """The EdgeModules of one program run that go to one device, and their one EdgeDeployment."""

    def __init__(self, key: tuple[str, ...], loop: asyncio.AbstractEventLoop):
        self.key = key
        self.members: list[dict[str, Any]] = []
        self.sealed = False
        self.future: asyncio.Future[list[dict[str, Any]]] = loop.create_future()
        self.deployment: EdgeDeployment | None = None
        loop.call_soon(self._seal)  # runs once the program's top-level code has returned

    def _seal(self) -> None:
        self.sealed = True
        if not self.future.done():
            self.future.set_result(list(self.members))

    def all(self) -> pulumi.Output[list[dict[str, Any]]]:
        async def value(v: bool) -> bool:
            return v

        return pulumi.Output(set(), self.future, value(True), value(False))


def _device_for(key: tuple[str, ...]) -> _Device:
    loop = asyncio.get_event_loop()
    run = (loop, pulumi.runtime.settings.get_monitor())  # one program run: its loop and its engine connection
    devices = _devices.get()
    if devices is None or devices.get("run") != run:
        devices = {"run": run}
        _devices.set(devices)
    if key not in devices:
        devices[key] = _Device(key, loop)
    return devices[key]


def _routes(members: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in members:
        out.update(m["routes"])
    return out


def _password(members: list[dict[str, Any]]) -> Any:
    given = next((m["registry_password"] for m in members if m["registry_password"] is not None), None)
    return pulumi.Output.secret(given) if given is not None else ""


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

    @takes_args
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
        key = target.device_key(device.args.model_dump(), device.at_scale.target_condition)
        group = _device_for(key)
        shared = {"policy_name": device.args.policy_name, "endpoint": device.args.endpoint, "api_version": device.args.api_version,
                  "priority": device.at_scale.priority, "foreign_modules": device.foreign_modules}
        member = {"resource": resource_name, "module_name": args.module_name, "port": port, "routes": dict(args.routes),
                  "registry_username": registry_username, "registry_password": registry_password, "device": shared,
                  "timeout": int(startup_timeout_seconds)}
        if group.sealed:
            raise ArgsError(f"{kind}: invalid arguments: device: the modules of device {key[-1]} were gathered when the program's "
                            "top-level code ended; declare every EdgeModule in the top-level code (not inside an apply or after an await)")
        problems = target.join_problems(group.members, member)
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
        member["module"] = module
        group.members.append(member)
        if group.deployment is None:
            group.deployment = self._device_deployment(group, device, settings, resource_name, port, registry_username)
        deployment = group.deployment
        self._deployment, self._image = deployment, model_image
        uris = edge_device_uris(device.args.backend, port)
        self.scoring_uri = deployment.state.apply(lambda _s: uris["scoring_uri"])
        self.swagger_uri = deployment.state.apply(lambda _s: uris["swagger_uri"])
        self.module_name = pulumi.Output.from_input(args.module_name)
        self.module_version = deployment.module_versions.apply(lambda v: int((v or {}).get(args.module_name, 0)))
        self.image_ref = model_image.image_ref
        self.manifest = deployment.manifest
        self.model_versions = planned
        self.device_id = pulumi.Output.from_input(device.args.device_id)
        self.configuration_id = deployment.configuration_id.apply(lambda c: c or "")
        self.register_outputs({k: getattr(self, k) for k in OUTPUTS})

    def _device_deployment(self, group: _Device, device: EdgeDevice, settings: Settings, resource_name: str, port: int | None,
                           registry_username: str | None) -> EdgeDeployment:
        """The device's one deployment, made with its first module; the others join it until the list is sealed.

        With one module its inputs are the previous release's (`<module>-deployment` was its name, the
        module its parent; the alias keeps its URN), so a stack deployed before shows no change.
        """
        members = group.all()
        host = settings.image_registry.split("/")[0]
        props: dict[str, Any] = {
            "device": device.args.model_dump(),
            "policy_key": pulumi.Output.secret(device.policy_key) if device.policy_key is not None else "",
            # A list of entries, each with its own Outputs: at preview a module's unknown image leaves its name known.
            "modules": members.apply(lambda ms: [m["module"] for m in ms]),
            "routes": members.apply(_routes),
            "registry": members.apply(lambda ms: {"name": "mldeploy", "address": host,
                                                  "username": next((m["registry_username"] for m in ms if m["registry_username"]), None)}),
            "registry_password": members.apply(_password),
            "port": port,
            "ports": members.apply(lambda ms: {m["module_name"]: m["port"] for m in ms if m["port"] is not None}),
            "owners": members.apply(lambda ms: {m["module_name"]: m["resource"] for m in ms}),
            "startup_timeout_seconds": members.apply(lambda ms: max(m["timeout"] for m in ms)),
            "foreign_modules": device.foreign_modules,
            "project": settings.project,
            "stack": settings.stack,
            "resource": resource_name,
        }
        if device.at_scale.target_condition is not None:
            props.update(target_condition=device.at_scale.target_condition, priority=device.at_scale.priority or 0)
        return EdgeDeployment(
            target.deployment_name(group.key),
            props,
            pulumi.ResourceOptions(aliases=[pulumi.Alias(name=f"{resource_name}-deployment", parent=self)],
                                   additional_secret_outputs=["policy_key", "registry_password"]),
        )


def edge_device_uris(backend: str, port: int | None) -> dict[str, str]:
    """A module's scoring and Swagger URIs: on 127.0.0.1 for the local device, none through a hub."""
    if backend != "local" or not port:
        return {"scoring_uri": "", "swagger_uri": ""}
    return {"scoring_uri": f"http://127.0.0.1:{int(port)}/score", "swagger_uri": f"http://127.0.0.1:{int(port)}/swagger.json"}


EdgeModuleArgs = args_class(EdgeModule, "The arguments of `EdgeModule` as one object.")
