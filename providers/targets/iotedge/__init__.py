"""The IoT Edge target: a model as a module of an edge device's deployment manifest.

Deployed by the `EdgeModule` component, never by the Service provider: the
component pushes a module image (inference image + model layer) with
`RegistryImage` and hands the rendered manifest to the `EdgeDeployment`
resource (`mldeploy.providers.targets.iotedge.device`), whose backend is this machine (`local`) or
IoT Hub (`iothub`). This module keeps what the target knows and does no I/O:
the arguments and their rules (each failure names its field), what a change
does, and the module's entry for the manifest renderer (`mldeploy.providers.targets.iotedge.edge_manifest`).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal, Mapping

from pulumi.dynamic import CheckFailure
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mldeploy.providers.targets.iotedge import edge_manifest
from mldeploy.providers.targets import Target

SCORING_PORT = 5001
"""azmlinfsrv's port inside the image (azureml-core's DOCKER_IMAGE_HTTP_PORT)."""
PORT_RANGE = (15000, 19999)
"""Below the kernel's ephemeral range (32768-60999) and the local target's (20000-29999)."""
DEVICE_ID_RE = r"^[A-Za-z0-9\-.%_*?!(),:=@$']{1,128}$"
LOCAL_DEVICE_ID_RE = r"^[A-Za-z0-9_.-]{1,64}$"
HUB_HOST_RE = r"^[A-Za-z0-9-]{3,50}\.azure-devices\.net$"
PREVIEW_IMAGE = "registry.invalid/preview@sha256:" + "0" * 64
"""Stands in for the module image while its digest is not known (checks at program time)."""


class EdgeDeviceArgs(BaseModel):
    """The device a manifest goes to, and the backend that sends it there."""

    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(pattern=DEVICE_ID_RE)
    backend: Literal["local", "iothub"] = "local"
    hub_host: str | None = Field(default=None, pattern=HUB_HOST_RE)
    """`<hub>.azure-devices.net`; what the SAS token is made for (iothub only)."""
    policy_name: str = Field(default="iothubowner", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    endpoint: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    """Where requests go instead of `https://<hub_host>` (a test's fake hub)."""
    api_version: str = Field(default="2021-04-12", pattern=r"^\d{4}-\d{2}-\d{2}(-preview)?$")

    @model_validator(mode="after")
    def _backend_fields(self) -> "EdgeDeviceArgs":
        if self.backend == "iothub" and not self.hub_host:
            raise ValueError("hub_host is required with backend 'iothub'")
        if self.backend == "local" and not re.match(LOCAL_DEVICE_ID_RE, self.device_id):
            raise ValueError(f"device_id of the local device matches {LOCAL_DEVICE_ID_RE}, got {self.device_id!r}")
        return self


class EdgeModuleArgs(BaseModel):
    """`EdgeModule`'s own arguments, checked at preview by the manifest's rules."""

    model_config = ConfigDict(extra="forbid")

    module_name: str
    env: dict[str, str | int | float | bool] = Field(default_factory=dict)
    create_options: dict[str, Any] | str | None = None
    routes: dict[str, str | dict[str, Any]] = Field(default_factory=dict)
    restart_policy: str = "always"
    status: str = "running"
    image_pull_policy: str = "on-create"
    port: int | None = Field(default=None, ge=1024, le=65535)
    """The scoring server's port on 127.0.0.1 (local device); derived from the names when omitted."""

    @field_validator("module_name")
    @classmethod
    def _name(cls, v: str) -> str:
        why = edge_manifest.check_module_name(v)
        if why:
            raise ValueError(why)
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, Any]) -> dict[str, Any]:
        problems = edge_manifest.check_env(v)
        if problems:
            raise ValueError("; ".join(f"{k}: {m}" for k, m in problems))
        return v

    @field_validator("restart_policy")
    @classmethod
    def _restart(cls, v: str) -> str:
        if v not in edge_manifest.RESTART_POLICIES:
            raise ValueError(f"must be one of {', '.join(edge_manifest.RESTART_POLICIES)}, got {v!r}")
        return v

    @field_validator("status")
    @classmethod
    def _status(cls, v: str) -> str:
        if v not in edge_manifest.STATUSES:
            raise ValueError(f"must be one of {', '.join(edge_manifest.STATUSES)}, got {v!r}")
        return v

    @field_validator("image_pull_policy")
    @classmethod
    def _pull(cls, v: str) -> str:
        if v not in edge_manifest.IMAGE_PULL_POLICIES:
            raise ValueError(f"must be one of {', '.join(edge_manifest.IMAGE_PULL_POLICIES)}, got {v!r}")
        return v

    @field_validator("create_options")
    @classmethod
    def _create_options(cls, v: Any) -> dict[str, Any]:
        try:
            opts = edge_manifest.parse_create_options(v)
            edge_manifest.split_create_options(opts)
        except edge_manifest.ManifestError as exc:
            raise ValueError("; ".join(m for _, m in exc.problems)) from None
        return opts

    @field_validator("routes")
    @classmethod
    def _routes(cls, v: dict[str, Any]) -> dict[str, Any]:
        problems = edge_manifest.check_routes(v)
        if problems:
            raise ValueError("; ".join(f"{k}: {m}" for k, m in problems))
        return v


def default_port(project: str, stack: str, module_name: str) -> int:
    """Stable across runs and machines, so the scoring URI does not move."""
    digest = int(hashlib.sha256(f"edge/{project}/{stack}/{module_name}".encode()).hexdigest(), 16)
    lo, hi = PORT_RANGE
    return lo + digest % (hi - lo + 1)


def create_options(args: EdgeModuleArgs, port: int | None) -> dict[str, Any]:
    """The user's createOptions plus, when a port is given, the scoring port published on 127.0.0.1."""
    opts = dict(args.create_options or {})
    if port is None:
        return opts
    key = f"{SCORING_PORT}/tcp"
    host = dict(opts.get("HostConfig") or {})
    bindings = dict(host.get("PortBindings") or {})
    bindings.setdefault(key, [{"HostIp": "127.0.0.1", "HostPort": str(port)}])
    host["PortBindings"] = bindings
    opts["HostConfig"] = host
    exposed = dict(opts.get("ExposedPorts") or {})
    exposed.setdefault(key, {})
    opts["ExposedPorts"] = exposed
    return opts


def check_local(args: EdgeModuleArgs, opts: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The local device publishes on 127.0.0.1 only."""
    host = opts.get("HostConfig") or {}
    problems = []
    if str(host.get("NetworkMode") or "") == "host":
        problems.append(("create_options", "HostConfig.NetworkMode 'host' is refused on the local device"))
    if str(host.get("NetworkMode") or "").startswith("container:"):
        problems.append(("create_options", f"HostConfig.NetworkMode {host['NetworkMode']!r} (another container's network) "
                                           "is refused on the local device"))
    if host.get("PublishAllPorts"):
        problems.append(("create_options", "HostConfig.PublishAllPorts publishes on every address: the local device "
                                           "publishes on 127.0.0.1 only (give PortBindings with HostIp 127.0.0.1)"))
    for port, bindings in (host.get("PortBindings") or {}).items():
        for b in bindings or []:
            if ((b or {}).get("HostIp") or "") != "127.0.0.1":
                problems.append(("create_options", f"HostConfig.PortBindings {port}: the local device publishes on 127.0.0.1 only"))
    return problems


def module_spec(args: EdgeModuleArgs, image: str, version: str, port: int | None) -> dict[str, Any]:
    """The module's entry as `edge_manifest.render` takes it."""
    return {
        "name": args.module_name,
        "image": image,
        "version": version,
        "env": dict(args.env),
        "create_options": create_options(args, port),
        "status": args.status,
        "restart_policy": args.restart_policy,
        "image_pull_policy": args.image_pull_policy,
    }


def trial_manifest(args: EdgeModuleArgs, port: int | None) -> dict[str, Any]:
    """The manifest with a stand-in image: what the schemas say of it is known at program time."""
    return edge_manifest.render([module_spec(args, PREVIEW_IMAGE, "1", port)], args.routes)


# ---------------------------------------------------------------- modules that share a device (issue 17)

FOREIGN_POLICIES = ("fail", "keep")
SHARED_DEVICE_FIELDS = ("policy_name", "endpoint", "api_version", "priority", "foreign_modules")
"""What every EdgeModule of one device must agree on: they become one deployment."""


def device_key(device: Mapping[str, Any], target_condition: str | None) -> tuple[str, ...]:
    """Which deployment a module joins: the same backend, hub and device id; at scale the same hub and condition."""
    if target_condition:
        return ("iothub", str(device.get("hub_host") or ""), "where", target_condition)
    return (str(device.get("backend") or "local"), str(device.get("hub_host") or ""), "device", str(device["device_id"]))


def deployment_name(key: tuple[str, ...]) -> str:
    """The device's deployment resource: `edge-device-<id>` (`@<hub>` for a hub device), or one per hub and condition."""
    backend, hub, kind, what = key
    if kind == "where":
        return f"edge-devices-{hashlib.sha256(what.encode()).hexdigest()[:12]}@{hub}"
    return f"edge-device-{what}" + (f"@{hub}" if backend == "iothub" else "")


def join_problems(members: list[Mapping[str, Any]], new: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Why `new` cannot join the modules already on its device, by field (pure).

    A member: {resource, module_name, port, routes, registry_username, device: {...SHARED_DEVICE_FIELDS}}.
    """
    problems: list[tuple[str, str]] = []
    for m in members:
        other = f"EdgeModule '{m['resource']}'"
        if m["module_name"] == new["module_name"]:
            problems.append(("module_name", f"{new['module_name']!r} is already a module of this device ({other}); one device's module names are distinct"))
        if new.get("port") is not None and m.get("port") == new["port"]:
            problems.append(("port", f"{new['port']} is already the scoring port of {other} on this device"))
        for rname, route in (new.get("routes") or {}).items():
            if rname in (m.get("routes") or {}) and m["routes"][rname] != route:
                problems.append((f"routes.{rname}", f"{other} gives this device another route by that name; route names of one device are distinct"))
        if new.get("registry_username") and m.get("registry_username") and new["registry_username"] != m["registry_username"]:
            problems.append(("registry_username", f"{other} gives {m['registry_username']!r}; one device's manifest has one login for the registry"))
        for f in SHARED_DEVICE_FIELDS:
            if (m.get("device") or {}).get(f) != (new.get("device") or {}).get(f):
                problems.append((f"device.{f}", f"{other} goes to the same device with {f}={m['device'].get(f)!r}, this one {new['device'].get(f)!r}; "
                                 "the modules of one device are one deployment and must agree"))
        if problems:
            break
    return problems


REPLACE_ON = ("device", "target_condition")
"""Another device (its `DEVICE_IDENTITY` in `device.py`; its other fields are an update), or a device's
manifest to an at-scale configuration or back (within at scale, a new condition is an update)."""
ROLL_ON = ("manifest", "port", "policy_key", "registry_password", "startup_timeout_seconds", "configuration_id",
           "priority", "configuration_labels")
"""A new manifest (every module's image, model versions, env, createOptions, status, restart policy,
routes), applied; the rest is how it is applied. The EdgeDeployment provider's diff reads both."""


class IotEdgeTarget(Target):
    """Deployed by `EdgeModule` (a module image plus an `EdgeDeployment`), never by the Service provider."""

    name = "iotedge"
    Args = EdgeModuleArgs
    deployed_by = "EdgeModule"
    REPLACE_ON = REPLACE_ON
    ROLL_ON = ROLL_ON

    def check_args(self, args: EdgeModuleArgs) -> list[CheckFailure]:  # type: ignore[override]
        return [CheckFailure(f, m) for f, m in edge_manifest.module_problems(module_spec(args, PREVIEW_IMAGE, "1", args.port))]


TARGET = IotEdgeTarget()
