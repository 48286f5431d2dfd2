"""A small local stand-in for the IoT Edge agent: this machine acts as the edge device.

Given a deployment manifest it does what the agent (`edge-agent/.../CreateCommand.cs`)
does with one: pulls each custom module's image from the registry, creates the
module's container from its `createOptions` (Docker's ContainerCreate body, joined
from `createOptions`, `createOptions01`, …) with the manifest's `env` appended and
labels recording the desired status and restart policy, starts the modules whose
status is `running`, and removes the modules that are no longer in the manifest.

Not done (it cannot be here): the system modules `edgeAgent` and `edgeHub` (.NET
images on mcr.microsoft.com), so no message routing and no twin sync; the
agent's own restart loop (Docker's restart policy stands in for it). Ports are
published on 127.0.0.1 only: a binding to any other address is refused.

The Docker API client is an argument, so unit tests hand in a fake.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from mldeploy.providers.targets.iotedge import edge_manifest
from mldeploy.providers.core.containers import SCORING_USER, host_config_limits

OWNER_LABEL = "net.azure-devices.edge.owner"
OWNER = "mldeploy.local-edge-agent"
EDGE_LABEL = "net.azure-devices.edge."
DEVICE_LABEL = "mldeploy.edge.device"
MODULE_LABEL = "mldeploy.edge.module"
SPEC_LABEL = "mldeploy.edge.spec"
GROUP_LABEL = "mldeploy.edge.grouped"
"""On containers made by a deployment that holds all of a device's modules (this release)."""
RESOURCE_LABEL = "mldeploy.resource"
STACK_LABELS = ("mldeploy.project", "mldeploy.stack")
LOCAL_HOST_IPS = ("127.0.0.1",)
# The agent restarts modules itself; here Docker does, as close as it can.
DOCKER_RESTART = {
    "always": {"Name": "unless-stopped"},
    "on-failure": {"Name": "on-failure"},
    "on-unhealthy": {"Name": "unless-stopped"},  # Docker cannot restart on health alone
    "never": {"Name": "no"},
}


class AgentError(RuntimeError):
    """A module could not be pulled, created or started; the message says which and why."""


@dataclass
class ModuleState:
    """What the device runs for one module."""

    name: str
    container: str | None
    """Container id, or None when the module has no container."""
    status: str
    """Docker's state ('running', 'exited', …) or 'missing'."""
    spec: str | None = None
    """The spec hash the container was created from."""
    labels: dict[str, str] = field(default_factory=dict)


def _parsed(options: str) -> Any:
    try:
        return json.loads(options or "{}")
    except json.JSONDecodeError:
        return options


def spec_hash(name: str, module: Mapping[str, Any]) -> str:
    """What makes a module's container: a change to any of it recreates the container."""
    settings = module.get("settings") or {}
    key = {
        "name": name,
        "image": settings.get("image"),
        "createOptions": _parsed(edge_manifest.join_create_options(settings)),
        "env": module.get("env") or {},
        "status": module.get("status"),
        "restartPolicy": module.get("restartPolicy"),
        "version": module.get("version"),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def check_bindings(name: str, body: Mapping[str, Any]) -> None:
    """127.0.0.1 only: this device must not publish a module beyond the machine."""
    host = body.get("HostConfig") or {}
    if str(host.get("NetworkMode") or "") == "host":
        raise AgentError(f"module {name}: createOptions HostConfig.NetworkMode 'host' is refused on the local device")
    if str(host.get("NetworkMode") or "").startswith("container:"):
        raise AgentError(f"module {name}: createOptions HostConfig.NetworkMode {host['NetworkMode']!r} (another container's "
                         "network) is refused on the local device")
    if host.get("PublishAllPorts"):
        raise AgentError(f"module {name}: createOptions HostConfig.PublishAllPorts publishes on every address; "
                         "the local device publishes on 127.0.0.1 only: give PortBindings with HostIp 127.0.0.1")
    for port, bindings in (host.get("PortBindings") or {}).items():
        for b in bindings or []:
            ip = (b or {}).get("HostIp") or ""
            if ip not in LOCAL_HOST_IPS:
                raise AgentError(
                    f"module {name}: createOptions HostConfig.PortBindings {port} binds {ip or 'every address'}; "
                    "the local device publishes on 127.0.0.1 only"
                )


def container_body(name: str, module: Mapping[str, Any], labels: Mapping[str, str]) -> dict[str, Any]:
    """Docker's ContainerCreate body for one module, as the agent makes it."""
    settings = module["settings"]
    body = json.loads(edge_manifest.join_create_options(settings) or "{}")
    image = settings["image"]
    if "@" not in image and ":" not in image.rsplit("/", 1)[-1]:
        image += ":latest"
    body["Image"] = image
    env = [f"{k}={v.get('value')}" for k, v in sorted((module.get("env") or {}).items())]
    body["Env"] = list(body.get("Env") or []) + env + [f"IOTEDGE_MODULEID={name}"]
    if not any(e.startswith("HOME=") for e in body["Env"]):
        body["Env"].append("HOME=/tmp")  # nobody's own home does not exist; /tmp is the module's tmpfs
    # As the scoring containers: nobody, no capabilities, no privilege escalation, unless createOptions
    # say otherwise (IoT Edge passes them to Docker as they are). Not in spec_hash, as the limits below.
    body.setdefault("User", SCORING_USER)
    body["Labels"] = {
        **(body.get("Labels") or {}),
        **labels,
        OWNER_LABEL: OWNER,
        MODULE_LABEL: name,
        SPEC_LABEL: spec_hash(name, module),
        EDGE_LABEL + "version": str(module.get("version") or ""),
        EDGE_LABEL + "restartPolicy": str(module.get("restartPolicy") or "always"),
        EDGE_LABEL + "desiredStatus": str(module.get("status") or "running"),
    }
    host = dict(body.get("HostConfig") or {})
    host.setdefault("RestartPolicy", DOCKER_RESTART.get(module.get("restartPolicy") or "always", {"Name": "no"}))
    # Log rotation, a process cap and a small /tmp, unless the user's createOptions say otherwise
    # (IoT Edge lets createOptions set any of them). Not in spec_hash: running modules stay as they are.
    for key, value in host_config_limits().items():
        host.setdefault(key, value)
    host.setdefault("CapDrop", ["ALL"])
    host.setdefault("SecurityOpt", ["no-new-privileges"])
    body["HostConfig"] = host
    check_bindings(name, body)
    return body


def _api() -> Any:
    import docker

    return docker.APIClient(version="auto", timeout=300)


class LocalAgent:
    """Applies manifests to this machine's Docker engine, for one device of one stack.

    `grouped` (this release): the agent owns every module container of its stack on the
    device, made by it (GROUP_LABEL) or by the previous release's deployment of the same
    resource; a container of the stack made by another resource of the previous release
    is left to that resource's delete, or replaced once when this manifest names its module.
    Not grouped (a deployment of the previous release, being deleted or read): only its
    own resource's containers that no grouped deployment made.
    """

    def __init__(
        self,
        device_id: str,
        labels: Mapping[str, str],
        name_prefix: str,
        api: Any | None = None,
        on_log: Callable[[str], None] | None = None,
        grouped: bool = False,
    ):
        self.device_id = device_id
        self.grouped = grouped
        self.labels = {**labels, DEVICE_LABEL: device_id, **({GROUP_LABEL: "true"} if grouped else {})}
        self.prefix = name_prefix
        self.api = api if api is not None else _api()
        self.log = on_log or (lambda _m: None)

    def container_name(self, module: str) -> str:
        return f"{self.prefix}{module}"

    def _filters(self) -> dict[str, Any]:
        """This stack's module containers on this device, whichever resource made them."""
        return {"label": [f"{k}={v}" for k, v in self.labels.items() if k not in (RESOURCE_LABEL, GROUP_LABEL)]}

    def _owns(self, labels: Mapping[str, str]) -> bool:
        same_resource = labels.get(RESOURCE_LABEL) == self.labels.get(RESOURCE_LABEL)
        if self.grouped:
            return GROUP_LABEL in labels or same_resource
        return same_resource and GROUP_LABEL not in labels

    def _all(self) -> dict[str, ModuleState]:
        out: dict[str, ModuleState] = {}
        for c in self.api.containers(all=True, filters=self._filters()):
            labels = c.get("Labels") or {}
            name = labels.get(MODULE_LABEL)
            if name:
                out[name] = ModuleState(name, c["Id"], c.get("State") or "unknown", labels.get(SPEC_LABEL), labels)
        return out

    def states(self) -> dict[str, ModuleState]:
        """Every module container of this device that this agent owns, by module name."""
        return {n: st for n, st in self._all().items() if self._owns(st.labels)}

    def foreign(self) -> list[str]:
        """Modules on this device made by a local agent for another stack (or project)."""
        filters = {"label": [f"{OWNER_LABEL}={OWNER}", f"{DEVICE_LABEL}={self.device_id}"]}
        mine = {k: self.labels.get(k) for k in STACK_LABELS}
        out = set()
        for c in self.api.containers(all=True, filters=filters):
            labels = c.get("Labels") or {}
            if labels.get(MODULE_LABEL) and any(labels.get(k) != v for k, v in mine.items()):
                out.add(labels[MODULE_LABEL])
        return sorted(out)

    def drift(self, manifest: Mapping[str, Any]) -> dict[str, str]:
        """Modules whose container differs from the manifest: {module: what the device has}."""
        have = self.states()
        found: dict[str, str] = {}
        for name, module in edge_manifest.modules_of(manifest).items():
            st = have.get(name)
            if st is None:
                found[name] = "missing"
            elif st.spec != spec_hash(name, module):
                found[name] = "other configuration"
            elif (module.get("status") == "running") != (st.status == "running"):
                found[name] = st.status
        for name in set(have) - set(edge_manifest.modules_of(manifest)):
            found[name] = "not in the manifest"
        return found

    def _pull(self, image: str) -> None:
        from docker.utils import parse_repository_tag

        repo, tag = parse_repository_tag(image)
        try:
            for chunk in self.api.pull(repo, tag=tag or "latest", stream=True, decode=True):
                if "error" in chunk:
                    raise AgentError(f"pull of {image} failed: {chunk['error'].strip()}")
        except AgentError:
            raise
        except Exception as exc:  # noqa: BLE001 - the engine's own words
            raise AgentError(f"pull of {image} failed: {exc}") from None

    def _remove(self, container_id: str) -> None:
        try:
            self.api.stop(container_id, timeout=10)
        except Exception:  # noqa: BLE001 - stopped or gone already
            pass
        try:
            self.api.remove_container(container_id, force=True)
        except Exception as exc:  # noqa: BLE001
            if "No such container" not in str(exc) and "404" not in str(exc):
                raise

    def apply(self, manifest: Mapping[str, Any]) -> dict[str, str]:
        """Make the device run the manifest; returns {module: container id} of running modules."""
        edge_manifest.check(manifest)
        desired = edge_manifest.modules_of(manifest)
        have = self.states()
        for name, st in self._all().items():
            if name in desired and name not in have:
                # Made by another resource of the previous release: its name is the one this module needs.
                self.log(f"module {name}: made by this stack's previous deployment {st.labels.get(RESOURCE_LABEL)}, replacing its container")
                self._remove(st.container or "")
        for name in sorted(set(have) - set(desired)):
            self.log(f"module {name}: not in the manifest, removing")
            self._remove(have[name].container or "")
        started: dict[str, str] = {}
        for name, module in sorted(desired.items(), key=lambda kv: (kv[1].get("startupOrder", 4294967295), kv[0])):
            st = have.get(name)
            want_running = module.get("status") == "running"
            if st and st.spec == spec_hash(name, module):
                if want_running and st.status != "running":
                    self.log(f"module {name}: {st.status}, starting")
                    self.api.start(st.container)
                elif not want_running and st.status == "running":
                    self.log(f"module {name}: stopping (desired status stopped)")
                    self.api.stop(st.container, timeout=10)
                if want_running:
                    started[name] = st.container or ""
                continue
            body = container_body(name, module, self.labels)
            if st:
                self.log(f"module {name}: configuration changed, replacing its container")
                self._remove(st.container or "")
            if module.get("imagePullPolicy", "on-create") != "never":
                self.log(f"module {name}: pulling {body['Image']}")
                self._pull(body["Image"])
            cid = self.api.create_container_from_config(body, name=self.container_name(name))["Id"]
            if want_running:
                try:
                    self.api.start(cid)
                except Exception as exc:  # noqa: BLE001
                    self._remove(cid)
                    raise AgentError(f"module {name}: could not start: {exc}") from None
                started[name] = cid
            self.log(f"module {name}: created ({'running' if want_running else 'stopped'})")
        return started

    def remove_all(self) -> list[str]:
        """Remove every module container of this device; returns their module names. Idempotent."""
        have = self.states()
        for st in have.values():
            self._remove(st.container or "")
        return sorted(have)

    def remove_image(self, image: str) -> None:
        """The device's copy of a module image, with its tags in the same repository.

        On this machine the device's copy is also the one that was built and pushed, so
        a tag left by the push would keep it. Gone, or still used, counts as done.
        """
        repo = image.split("@", 1)[0]
        try:
            tags = self.api.inspect_image(image).get("RepoTags") or []
        except Exception:  # noqa: BLE001 - gone already
            return
        for ref in [t for t in tags if t.rsplit(":", 1)[0] == repo] + [image]:
            try:
                self.api.remove_image(ref)
            except Exception:  # noqa: BLE001
                pass
