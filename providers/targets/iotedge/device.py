"""Provider of an edge device's deployment: renders, checks and applies an IoT Edge manifest.

Two backends behind one resource:
- `local`: this machine is the device; `mldeploy.providers.targets.iotedge.edge_agent` does what
  the IoT Edge agent does with the manifest (pull, create from createOptions,
  status and restart policy, remove what left the manifest).
- `iothub`: `mldeploy.providers.targets.iotedge.iothub` sends the manifest to the device through
  IoT Hub's `applyConfigurationContent`, signed with a SAS token made from the
  policy key (a Pulumi secret). With a `target_condition` the deployment is at scale
  instead: an IoT Hub configuration (`PUT /configurations/{id}`) that every device
  matching the condition takes, by `priority`. Never run against Azure.

A configuration's id and content cannot change on the hub, so the id carries a
short hash of the content: a new manifest is a new configuration, created before
the old one is deleted; a new target condition, priority or labels updates the
same configuration in place (`configuration_change` says which, purely).

One resource per device and stack (issue 17): every `EdgeModule` of a program that
goes to the same device (backend, hub and device id; at scale, hub and target
condition) is one entry of `modules`, so the device gets one manifest, applied once.
Modules this stack does not own (`foreign_names`: on the device, in neither the old
nor the new inputs) fail the preview by default, naming them; with
`foreign_modules="keep"` the hub's copy of them is merged into what is applied
(`merge_foreign`), and on the local device they are left alone. A deployment made by
the previous release (one module, no `owners`) deletes only its own module, and
leaves a hub device that runs others untouched.

`check` renders the manifest and validates it against the schemas, so a bad one
fails at preview naming its JSON path; it also gives each module a version that
goes up exactly when its image changes (a new model version or a new inference
image). `diff_edge_deployment` is pure. `read` finds a module container stopped
or removed by hand (local) as drift, which the next `up` repairs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any, Literal, Mapping

from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult
from pulumi.runtime import rpc
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from mldeploy.providers.targets.iotedge import REPLACE_ON, ROLL_ON, edge_manifest
from mldeploy.providers.core.progress import say

SECRET_PLACEHOLDER = "[secret]"
DEVICE_IDENTITY = ("device_id", "backend", "hub_host")
CONFIGURATION_ID_MAX = 128
CONFIGURATION_ID_BAD_CHARS = re.compile(r"[^a-z0-9\-:+%_#*?!(),=@;']")
"""IoT Hub configuration ids: lowercase, at most 128 characters, of these."""
LABEL_BAD_CHARS = re.compile(r"[^A-Za-z0-9\-:.+%_#*?!(),=@;']")
MODULE_CONDITION_RE = re.compile(r"^from\s+devices\.modules\s+where\s+\S", re.IGNORECASE)
PRIORITY_MAX = 2**31 - 1
FOREIGN_POLICIES = ("fail", "keep")
AT_SCALE_MUTABLE = ("target_condition", "priority", "configuration_labels")
"""What the hub lets a configuration change in place (besides metrics, which are not used)."""


class AtScaleArgs(BaseModel):
    """An at-scale deployment's own settings, checked at program time and at preview.

    Kept apart from `EdgeDeviceArgs` (the target's, shared with other code) so that a
    deployment made before these existed reads back unchanged.
    """

    model_config = ConfigDict(extra="forbid")

    backend: Literal["local", "iothub"] = "local"
    target_condition: str | None = None
    """An IoT Hub query over device twins (`tags.environment='prod'`), or module twins
    (`from devices.modules where …`); taken as written, not parsed."""
    priority: int | None = Field(default=None, ge=0, le=PRIORITY_MAX)
    """Which configuration wins on a device two of them target (the higher); 0 when omitted."""

    @field_validator("target_condition")
    @classmethod
    def _condition(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        if info.data.get("backend") != "iothub":
            raise ValueError("an at-scale deployment goes through IoT Hub; give backend='iothub' (the local device takes no target condition)")
        if not v.strip():
            raise ValueError("must not be empty: an IoT Hub query such as tags.environment='prod'")
        if v.strip().lower().startswith("from") and not MODULE_CONDITION_RE.match(v.strip()):
            raise ValueError(f"a module twin condition starts with 'from devices.modules where', got {v!r}")
        return v

    @field_validator("priority", mode="before")
    @classmethod
    def _whole(cls, v: Any) -> Any:
        # pydantic would take True as 1 and "3" as 3; the engine gives numbers back as floats (3.0 is fine).
        if isinstance(v, (bool, str)):
            raise ValueError(f"must be a whole number >= 0, got {v!r}")
        return v

    @field_validator("priority")
    @classmethod
    def _needs_condition(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is None:
            return v
        if info.data.get("backend") != "iothub":
            raise ValueError("applies to at-scale deployments through IoT Hub only; the local device takes none")
        if "target_condition" in info.data and info.data.get("target_condition") is None:
            raise ValueError("applies to at-scale deployments only; give target_condition too")
        return v


def at_scale(props: Mapping[str, Any]) -> bool:
    """An IoT Hub configuration (by target condition), not one device's manifest."""
    return bool(props.get("target_condition"))


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def configuration_id(props: Mapping[str, Any], password: str | None = None, salt: str | None = None) -> str:
    """`<project>-<stack>-<resource>-<12 hex of the content>`: a new manifest is a new id.

    The registry password is in the content the hub gets, so a rotated one must give a
    new id too; it enters the hash as an HMAC keyed with the deployment's own random salt
    (kept in the state, never rotated), so the id (not a secret) cannot be used to test
    guesses of the password, and a rotated policy key changes nothing.
    """
    material = canonical(render(props))
    if password:
        material += "\n" + hmac.new((salt or "").encode(), password.encode(), hashlib.sha256).hexdigest()
    digest = hashlib.sha256(material.encode()).hexdigest()[:12]
    prefix = CONFIGURATION_ID_BAD_CHARS.sub("-", f"{props['project']}-{props['stack']}-{props['resource']}".lower()).strip("-")
    return f"{prefix[: CONFIGURATION_ID_MAX - len(digest) - 1]}-{digest}"


def configuration_labels(props: Mapping[str, Any]) -> dict[str, str]:
    """Who made the configuration, for `az iot edge deployment list` and the portal.

    Label values are at most 128 ASCII letters, digits and `-:.+%_#*?!(),=@;'`
    (azure-iot-sdk-node's `Configuration.labels`); anything else becomes `-`.
    """
    def clean(v: Any) -> str:
        return LABEL_BAD_CHARS.sub("-", str(v))[:128] or "-"

    return {"mldeployProject": clean(props["project"]), "mldeployStack": clean(props["stack"]), "mldeployResource": clean(props["resource"])}


def configuration_change(olds: Mapping[str, Any], news: Mapping[str, Any]) -> str:
    """What an update does to the hub's configuration: `""` (not at scale), `"create"`
    (from one device's manifest), `"replace"` (new content: a new id is created, then
    the old one deleted), `"update"` (only target condition, priority or labels: the same
    id in place), or `"none"`."""
    if not at_scale(news):
        return ""
    if not at_scale(olds) or not olds.get("configuration_id"):
        return "create"
    new_id = news.get("configuration_id")
    if _unknown(new_id) or new_id != olds.get("configuration_id"):
        return "replace"
    if any(_unknown(news.get(k)) or olds.get(k) != news.get(k) for k in AT_SCALE_MUTABLE):
        return "update"
    return "none"


def configuration_drift(props: Mapping[str, Any], have: Mapping[str, Any] | None) -> dict[str, str]:
    """How the hub's copy of our configuration (None: gone) differs from what we applied. Pure."""
    if have is None:
        return {"configuration": "deleted on the hub"}
    drift = {}
    if (have.get("targetCondition") or "") != (props.get("target_condition") or ""):
        drift["target_condition"] = f"changed on the hub to {have.get('targetCondition')!r}"
    if int(have.get("priority") or 0) != int(props.get("priority") or 0):
        drift["priority"] = f"changed on the hub to {have.get('priority')}"
    return drift


def _sentinels(value: Any) -> Any:
    """Unknown values (`pulumi.output.Unknown`) as the engine's unknown sentinel, at any depth."""
    from pulumi.output import Unknown

    if isinstance(value, Unknown):
        return rpc.UNKNOWN
    if isinstance(value, Mapping):
        return {k: _sentinels(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_sentinels(v) for v in value]
    return value


def _unknown(value: Any) -> bool:
    if isinstance(value, str) and value == rpc.UNKNOWN:
        return True
    if isinstance(value, Mapping):
        return any(_unknown(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_unknown(v) for v in value)
    return False


def image_key(module: Mapping[str, Any]) -> Any:
    """What the module image is made of: the inference image and the model versions."""
    models = module.get("models") or {}
    return [module.get("source_image_id"), sorted((str(k), int(v)) for k, v in models.items()) if not _unknown(models) else rpc.UNKNOWN]


def module_versions(olds: Mapping[str, Any], news: Mapping[str, Any]) -> dict[str, int]:
    """Each module's version: kept while its image is made of the same things, else one more."""
    old_versions = olds.get("module_versions") or {}
    old_keys = {m.get("name"): image_key(m) for m in olds.get("modules") or [] if isinstance(m, Mapping)}
    out = {}
    for m in news.get("modules") or []:
        name, key = m.get("name"), image_key(m)
        old = int(old_versions.get(name) or 0)
        out[name] = int(old if old and old_keys.get(name) == key and not _unknown(key) else old + 1)
    return out


def module_ports(props: Mapping[str, Any]) -> dict[str, int]:
    """Each module's scoring port on 127.0.0.1; a deployment of the previous release has one module and `port`."""
    ports = props.get("ports")
    if isinstance(ports, Mapping):
        return {str(k): int(v) for k, v in ports.items() if v}
    first = (props.get("modules") or [{}])[0]
    return {first["name"]: int(props["port"])} if props.get("port") and isinstance(first, Mapping) and first.get("name") else {}


def module_names(props: Mapping[str, Any]) -> set[str]:
    return {m.get("name") for m in props.get("modules") or [] if isinstance(m, Mapping) and isinstance(m.get("name"), str)}


def foreign_names(current: Mapping[str, Any] | list[str], olds: Mapping[str, Any], news: Mapping[str, Any]) -> list[str]:
    """Modules the device runs that this stack does not own: in neither the old nor the new inputs (pure).

    A module the old inputs name and the new ones do not is ours leaving, not foreign.
    """
    return sorted(set(current) - module_names(olds) - module_names(news))


def twin_desired(twin: Mapping[str, Any] | None) -> dict[str, Any]:
    """A module twin's desired properties without the hub's own `$metadata` and `$version`."""
    desired = ((twin or {}).get("properties") or {}).get("desired") or {}
    return {k: v for k, v in desired.items() if not k.startswith("$")}


def merge_foreign(manifest: Mapping[str, Any], agent: Mapping[str, Any], hub: Mapping[str, Any], keep: list[str],
                  own_routes: set[str]) -> dict[str, Any]:
    """Our manifest plus the foreign modules `keep` as the device's twins hold them (pure).

    Their `$edgeAgent` entries, the registry credentials we do not set, and the routes we
    do not name come along; their own module twins are not in the manifest, so the hub
    leaves them as they are.
    """
    out = json.loads(json.dumps(manifest))
    desired = out["modulesContent"]["$edgeAgent"]["properties.desired"]
    for name in keep:
        entry = (agent.get("modules") or {}).get(name)
        if isinstance(entry, Mapping):
            desired.setdefault("modules", {})[name] = dict(entry)
    theirs = ((agent.get("runtime") or {}).get("settings") or {}).get("registryCredentials") or {}
    settings = desired["runtime"]["settings"]
    for cname, cred in theirs.items():
        if cname not in (settings.get("registryCredentials") or {}) and keep:
            settings.setdefault("registryCredentials", {})[cname] = cred
    routes = out["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]
    for rname, route in (hub.get("routes") or {}).items():
        if rname not in routes and rname not in own_routes and keep:
            routes[rname] = route
    return out


def render(props: Mapping[str, Any], password: str | None = None) -> dict[str, Any]:
    """The manifest for these inputs; the registry password as given (a placeholder in the state)."""
    versions = props.get("module_versions") or {}
    modules = [{**m, "version": str(int(versions.get(m["name"]) or 1))} for m in props.get("modules") or []]
    creds = None
    reg = props.get("registry") or {}
    if reg.get("username"):
        creds = {reg.get("name") or "registry": {"username": reg["username"], "password": password or SECRET_PLACEHOLDER, "address": reg["address"]}}
    return edge_manifest.render(modules, props.get("routes") or {}, creds)


def diff_edge_deployment(olds: Mapping[str, Any], news: Mapping[str, Any]) -> DiffResult:
    """One device to another, or one device's manifest to an at-scale configuration (or
    back), replaces; anything else is an update (for a configuration, `configuration_change`)."""
    old_dev, new_dev = olds.get("device") or {}, news.get("device") or {}
    # At scale the configuration names no device: a new device_id there changes nothing.
    identity = [k for k in DEVICE_IDENTITY if not (k == "device_id" and at_scale(olds) and at_scale(news))]
    replaces = ["device"] if any(old_dev.get(k) != new_dev.get(k) for k in identity) else []
    if at_scale(olds) != at_scale(news):
        replaces.append("target_condition")
    changed = list(replaces)
    for key in (*REPLACE_ON, *ROLL_ON):
        if key not in changed and (olds.get(key) != news.get(key) or _unknown(news.get(key))):
            changed.append(key)
    if "port" not in changed and module_ports(olds) != module_ports(news):
        changed.append("ports")
    if olds.get("drift"):
        changed.append("drift")  # found by refresh: apply again
    return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=True)


def image_refs(props: Mapping[str, Any]) -> set[str]:
    """The module images (by digest) these props deploy."""
    return {m["image"] for m in props.get("modules") or [] if isinstance(m.get("image"), str) and "@" in m["image"]}


def container_prefix(props: Mapping[str, Any]) -> str:
    """`<project>-<stack>-<device>-`: module containers of two stacks never share a name."""
    import re

    raw = f"{props['project']}-{props['stack']}-{props['device']['device_id']}-"
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", raw)


def labels(props: Mapping[str, Any]) -> dict[str, str]:
    from mldeploy.providers.core import containers

    return containers.labels_for(props["project"], props["stack"], props["resource"])


def grouped(props: Mapping[str, Any]) -> bool:
    """Made by this release (one resource for all of a device's modules), not by the previous one."""
    return isinstance(props.get("owners"), Mapping)


def scoring_uris(props: Mapping[str, Any]) -> dict[str, str]:
    if (props.get("device") or {}).get("backend") != "local" or not props.get("port"):
        return {"scoring_uri": "", "swagger_uri": ""}
    origin = f"http://127.0.0.1:{int(props['port'])}"
    return {"scoring_uri": f"{origin}/score", "swagger_uri": f"{origin}/swagger.json"}


class EdgeDeploymentProvider(ResourceProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        from mldeploy.providers.targets.iotedge import PREVIEW_IMAGE, EdgeDeviceArgs

        failures: list[CheckFailure] = []
        news = _sentinels(news)
        device = news.get("device") or {}
        if not _unknown(device):
            try:
                EdgeDeviceArgs.model_validate(device)
            except ValidationError as exc:
                for e in exc.errors():
                    where = ".".join(str(p) for p in e["loc"])
                    failures.append(CheckFailure(f"device{'.' + where if where else ''}", e["msg"].removeprefix("Value error, ")))
            if device.get("backend") == "iothub" and not news.get("policy_key"):
                failures.append(CheckFailure("policy_key", "the iothub backend signs with a shared access policy's key; none given"))
            scale = {"backend": device.get("backend") or "local", "target_condition": news.get("target_condition"), "priority": news.get("priority")}
            try:
                if scale["backend"] in ("local", "iothub"):  # else EdgeDeviceArgs has said so
                    AtScaleArgs.model_validate(scale)
            except ValidationError as exc:
                for e in exc.errors():
                    failures.append(CheckFailure(".".join(str(p) for p in e["loc"]) or "target_condition", e["msg"].removeprefix("Value error, ")))
        for i, m in enumerate(news.get("modules") or []):
            spec = {**m, "image": PREVIEW_IMAGE if _unknown(m.get("image")) else m.get("image")}
            failures += [CheckFailure(f"modules[{i}].{f}", why) for f, why in edge_manifest.module_problems(spec)]
        failures += [CheckFailure(f, why) for f, why in edge_manifest.check_routes(news.get("routes") or {})]
        if failures:
            return CheckResult(news, failures)
        news = {**news, "module_versions": module_versions(olds, news)}
        if _unknown(news.get("modules")) or _unknown(news.get("routes")) or _unknown(news.get("registry")):
            news["manifest"] = rpc.UNKNOWN  # the module image is pushed first; its digest is not known yet
            return CheckResult(self._at_scale(news, olds), self._check_foreign(olds, news))
        manifest = render(news)
        problems = edge_manifest.validate(manifest)
        failures += [CheckFailure("manifest", f"{path}: {why}") for path, why in problems]
        news["manifest"] = manifest
        if not failures:
            failures += self._check_foreign(olds, news)
        return CheckResult(self._at_scale(news, olds), failures)

    def _check_foreign(self, olds: Mapping[str, Any], news: Mapping[str, Any]) -> list[CheckFailure]:
        """Say which modules the device will run; a module this stack does not own fails unless kept."""
        where = news["device"].get("device_id")
        if at_scale(news):
            where = f"devices where {news['target_condition']}"
        names = sorted(module_names(news))
        try:
            foreign = [] if at_scale(news) else self.foreign(olds, news)
        except Exception as exc:  # noqa: BLE001 - an unreadable device is said, not fatal: apply reads it again
            say(f"device {where}: could not read the modules it runs now ({exc}); checked again when applied")
            foreign = []
        keep = news.get("foreign_modules") == "keep"
        tail = f"; keeps modules it runs that this stack does not own: {', '.join(foreign)}" if foreign and keep else ""
        say(f"device {where}: will run modules {', '.join(names) or '(none)'}" + tail)
        if foreign and not keep:
            return [CheckFailure("foreign_modules", foreign_words(news, foreign))]
        return []

    def foreign(self, olds: Mapping[str, Any], news: Mapping[str, Any]) -> list[str]:
        """The device's modules this stack does not own (one device only; at scale there is no one device to read)."""
        device = news.get("device") or {}
        if device.get("backend") == "local":
            return self._agent(news).foreign()
        if not news.get("policy_key") or _unknown(news.get("policy_key")):
            return []
        agent = twin_desired(self._hub(news).get_module_twin(device["device_id"], "$edgeAgent"))
        return foreign_names(agent.get("modules") or {}, olds, news)

    def _current(self, props: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The device's `$edgeAgent` and `$edgeHub` desired properties, as its twins hold them (iothub)."""
        hub, device_id = self._hub(props), props["device"]["device_id"]
        return twin_desired(hub.get_module_twin(device_id, "$edgeAgent")), twin_desired(hub.get_module_twin(device_id, "$edgeHub"))

    @staticmethod
    def _at_scale(news: dict[str, Any], olds: Mapping[str, Any]) -> dict[str, Any]:
        """An at-scale deployment's id, labels and priority, known at preview when its content is."""
        if not at_scale(news):
            return {**news, "configuration_id": None, "configuration_labels": None}
        import secrets

        salt = olds.get("configuration_salt") or news.get("configuration_salt") or secrets.token_hex(16)
        news = {**news, "priority": int(news.get("priority") or 0), "configuration_labels": configuration_labels(news),
                "configuration_salt": salt}
        if _unknown(news.get("manifest")) or _unknown(news.get("registry_password")):
            return {**news, "configuration_id": rpc.UNKNOWN}
        return {**news, "configuration_id": configuration_id(news, news.get("registry_password"), salt)}

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return diff_edge_deployment(olds, _sentinels(news))

    # ------------------------------------------------------------ backends

    def _agent(self, props: Mapping[str, Any]) -> Any:
        from mldeploy.providers.targets.iotedge.edge_agent import LocalAgent

        return LocalAgent(props["device"]["device_id"], labels(props), container_prefix(props), on_log=say, grouped=grouped(props))

    def _hub(self, props: Mapping[str, Any]) -> Any:
        from mldeploy.providers.targets.iotedge.iothub import IoTHubClient

        d = props["device"]
        return IoTHubClient(d["hub_host"], d.get("policy_name") or "iothubowner", props["policy_key"],
                            base_url=d.get("endpoint"), api_version=d.get("api_version") or "2021-04-12")

    def _with_foreign(self, olds: Mapping[str, Any], props: Mapping[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
        """Read the device again before applying: foreign modules found now fail, or are kept, as at preview."""
        if not grouped(props):
            return manifest
        agent, hub = self._current(props)
        foreign = foreign_names(agent.get("modules") or {}, olds, props)
        if not foreign:
            return manifest
        if props.get("foreign_modules") != "keep":
            raise RuntimeError(foreign_words(props, foreign))
        say(f"device {props['device']['device_id']}: keeping modules this stack does not own: {', '.join(foreign)}")
        return merge_foreign(manifest, agent, hub, foreign, set(props.get("routes") or {}) | set(olds.get("routes") or {}))

    def _apply(self, props: dict[str, Any], etag: str | None = None, olds: Mapping[str, Any] | None = None) -> dict[str, Any]:
        manifest = render(props, props.get("registry_password"))
        device = props["device"]
        if device["backend"] == "local":
            from mldeploy.providers.core import containers

            agent = self._agent(props)
            foreign = agent.foreign()
            if foreign and props.get("foreign_modules") != "keep" and grouped(props):
                raise RuntimeError(foreign_words(props, foreign))
            started = agent.apply(manifest)
            ports = module_ports(props)
            for name, cid in started.items():
                if ports.get(name):
                    rc = containers.RunningContainer(cid, container_prefix(props) + name, int(ports[name]))
                    containers.wait_healthy(rc, timeout=float(props.get("startup_timeout_seconds") or 300))
        elif at_scale(props):
            return self._put_configuration(props, manifest, etag)
        else:
            manifest = self._with_foreign(olds or {}, props, manifest)
            names = sorted(edge_manifest.modules_of(manifest))
            say(f"IoT Hub {device['hub_host']}: applying the manifest to device {device['device_id']} (modules {', '.join(names) or '(none)'})")
            self._hub(props).apply_configuration_content(device["device_id"], manifest)
        return {**props, **scoring_uris(props), "state": "Applied", "drift": {}}

    def _put_configuration(self, props: dict[str, Any], manifest: Mapping[str, Any], etag: str | None) -> dict[str, Any]:
        """Create the configuration (`etag` None) or update it in place (its etag, or `*`).

        A create that finds the id taken adopts it when the hub holds the same content
        (an earlier `up` that stopped before its state was saved); otherwise the hub's
        refusal stands.
        """
        from mldeploy.providers.targets.iotedge.iothub import IoTHubError, configuration_body

        hub, cid = self._hub(props), props["configuration_id"]
        body = configuration_body(cid, manifest, props["target_condition"], int(props.get("priority") or 0), props.get("configuration_labels"))
        verb = "updating" if etag else "creating"
        say(f"IoT Hub {props['device']['hub_host']}: {verb} configuration {cid} for devices where {props['target_condition']}")
        try:
            got = hub.put_configuration(body, if_match=etag)
        except IoTHubError as exc:
            if etag or exc.status != 409:
                raise
            have = hub.get_configuration(cid)
            if not have or canonical(have.get("content", {}).get("modulesContent")) != canonical(body["content"]["modulesContent"]):
                raise
            got = hub.put_configuration(body, if_match=have.get("etag") or "*")
        return {**props, **scoring_uris(props), "state": "Applied", "drift": {}, "configuration_etag": got.get("etag") or "*"}

    def _drop_images(self, props: Mapping[str, Any], keep: set[str]) -> None:
        """Module images the device no longer runs: out of the registry (and the local device's cache)."""
        from mldeploy.providers.image_registry import oci_registry

        for m in props.get("modules") or []:
            image = m.get("image")
            if not isinstance(image, str) or "@" not in image or image in keep:
                continue
            repo, digest = image.split("@", 1)
            try:
                oci_registry.delete_manifest(repo, digest)
            except oci_registry.RegistryError as exc:
                say(f"{repo}: could not delete {digest}: {exc}")
            if (props.get("device") or {}).get("backend") == "local":
                self._agent(props).remove_image(image)

    def create(self, props: dict[str, Any]) -> CreateResult:
        try:
            outs = self._apply(props)
        except Exception:
            if props["device"]["backend"] == "local":
                self._agent(props).remove_all()  # a failed create leaves no module behind: no state will name it
            raise
        return CreateResult(f"{props['device']['device_id']}/{props['resource']}", outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        change = configuration_change(olds, news)
        deleted_on_hub = "configuration" in (olds.get("drift") or {})
        if change in ("update", "none") and not deleted_on_hub:
            outs = self._apply(news, etag=olds.get("configuration_etag") or "*", olds=olds)
        else:
            outs = self._apply(news, olds=olds)  # a create: no If-Match
        if change == "replace":
            # Only now: no device is left without a deployment (of equal priority the newer wins).
            # The same hub (its host is the device's identity), signed as the new inputs sign: the old key may be revoked.
            self._delete_configuration({**olds, "device": news["device"], "policy_key": news["policy_key"]})
        keep = {m.get("image") for m in news.get("modules") or []}
        if at_scale(news):
            # The hub updates device twins on its own schedule: a device may still pull the previous
            # image for a while, so it stays until the next update (destroy removes the repository).
            self._drop_images({**olds, "modules": [{"image": i} for i in olds.get("previous_images") or []]}, keep)
            outs["previous_images"] = sorted(i for i in image_refs(olds) if i not in keep)
        else:
            self._drop_images(olds, keep=keep)
        return UpdateResult(outs)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        if at_scale(props) and props.get("configuration_id"):
            return ReadResult(id_, self._read_configuration(props))
        if (props.get("device") or {}).get("backend") != "local" or not isinstance(props.get("manifest"), Mapping):
            return ReadResult(id_, props)  # one device's manifest is not read back from the hub
        drift = self._agent(props).drift(props["manifest"])
        outs = {**props, "drift": drift, "state": "Drifted" if drift else "Applied"}
        # The drift as an input too, so the next preview can say it in words; never when the
        # inputs hold a secret (returned inputs would lose their secret marking).
        secretless = not props.get("policy_key") and not props.get("registry_password")
        return ReadResult(id_, outs, inputs=outs if secretless else None)

    def _read_configuration(self, props: dict[str, Any]) -> dict[str, Any]:
        """The hub's copy of our configuration: gone, or a condition or priority changed there, is drift."""
        from mldeploy.providers.targets.iotedge.iothub import IoTHubError

        try:
            have = self._hub(props).get_configuration(props["configuration_id"])
        except (IoTHubError, OSError) as exc:
            if isinstance(exc, IoTHubError) and exc.status in (401, 403):
                raise IoTHubError(exc.status, f"policy_key: {exc}") from None  # a wrong or revoked key is the user's to fix
            if isinstance(exc, IoTHubError) and 0 < exc.status < 500:
                raise
            # No answer, or the hub's own failure: not drift of ours.
            say(f"IoT Hub {props['device'].get('hub_host')}: could not read configuration {props['configuration_id']}: {exc}")
            return props
        drift = configuration_drift(props, have)
        # A configuration deleted on the hub is created again (no If-Match); a changed one updated with its new etag.
        etag = (have or {}).get("etag") or "*"
        return {**props, "drift": drift, "state": "Drifted" if drift else "Applied", "configuration_etag": etag}

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        device = props.get("device") or {}
        if device.get("backend") == "local":
            removed = self._agent(props).remove_all()
            say(f"device {device.get('device_id')}: removed modules {', '.join(removed) or '(none)'}")
            for m in props.get("modules") or []:
                if isinstance(m.get("image"), str):
                    self._agent(props).remove_image(m["image"])
            return
        if at_scale(props):
            self._delete_configuration(props)
            return
        from mldeploy.providers.targets.iotedge.iothub import IoTHubError

        # What is left on the device: the system modules, and the modules this stack does not own
        # (gone already counts as deleted).
        empty = render({**props, "modules": [], "routes": {}}, props.get("registry_password"))
        try:
            agent, hub = self._current(props)
            others = foreign_names(agent.get("modules") or {}, props, props)
            if others and not grouped(props):
                # Made by the previous release: the device may now run this stack's new deployment.
                say(f"device {device['device_id']}: runs modules {', '.join(others)} besides this deployment's; left as it is")
                return
            if others:
                say(f"device {device['device_id']}: keeping modules this stack does not own: {', '.join(others)}")
                empty = merge_foreign(empty, agent, hub, others, set(props.get("routes") or {}))
            self._hub(props).apply_configuration_content(device["device_id"], empty)
        except IoTHubError as exc:
            if exc.status != 404:
                raise

    def _delete_configuration(self, props: Mapping[str, Any]) -> None:
        """`DELETE /configurations/{id}` with `If-Match: *`; one the hub no longer has counts as deleted."""
        cid = props.get("configuration_id")
        if not cid or _unknown(cid):
            return
        gone = not self._hub(props).delete_configuration(cid)
        say(f"IoT Hub {props['device']['hub_host']}: configuration {cid} " + ("was gone already" if gone else "deleted"))


def foreign_words(props: Mapping[str, Any], foreign: list[str]) -> str:
    """The refusal when a device runs modules this stack does not own."""
    device = props.get("device") or {}
    return (f"device {device.get('device_id')} ({device.get('backend')}) runs modules this stack does not own: "
            f"{', '.join(foreign)}; applying this stack's manifest would remove them. Give the EdgeDevice "
            "foreign_modules='keep' to keep them beside this stack's modules, or remove them from the device")


def manifest_json(props: Mapping[str, Any]) -> str:
    """The manifest as `az iot edge set-modules --content` takes it (the password left out)."""
    return json.dumps(render(props), indent=2)
