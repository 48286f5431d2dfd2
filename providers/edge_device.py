"""Provider of an edge device's deployment: renders, checks and applies an IoT Edge manifest.

Two backends behind one resource:
- `local`: this machine is the device; `mldeploy.providers.clients.edge_agent` does what
  the IoT Edge agent does with the manifest (pull, create from createOptions,
  status and restart policy, remove what left the manifest).
- `iothub`: `mldeploy.providers.clients.iothub` sends the manifest to the device through
  IoT Hub's `applyConfigurationContent`, signed with a SAS token made from the
  policy key (a Pulumi secret). Never run against Azure.

`check` renders the manifest and validates it against the schemas, so a bad one
fails at preview naming its JSON path; it also gives each module a version that
goes up exactly when its image changes (a new model version or a new inference
image). `diff_edge_deployment` is pure. `read` finds a module container stopped
or removed by hand (local) as drift, which the next `up` repairs.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult
from pulumi.runtime import rpc
from pydantic import ValidationError

from mldeploy.providers import edge_manifest
from mldeploy.providers.progress import say

SECRET_PLACEHOLDER = "[secret]"
DEVICE_IDENTITY = ("device_id", "backend", "hub_host")


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
    old_dev, new_dev = olds.get("device") or {}, news.get("device") or {}
    replaces = ["device"] if any(old_dev.get(k) != new_dev.get(k) for k in DEVICE_IDENTITY) else []
    changed = list(replaces)
    for key in ("manifest", "device", "port", "policy_key", "registry_password", "startup_timeout_seconds"):
        if key not in changed and (olds.get(key) != news.get(key) or _unknown(news.get(key))):
            changed.append(key)
    if olds.get("drift"):
        changed.append("drift")  # found by refresh: apply again
    return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=True)


def container_prefix(props: Mapping[str, Any]) -> str:
    """`<project>-<stack>-<device>-`: module containers of two stacks never share a name."""
    import re

    raw = f"{props['project']}-{props['stack']}-{props['device']['device_id']}-"
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", raw)


def labels(props: Mapping[str, Any]) -> dict[str, str]:
    from mldeploy.providers.clients import containers

    return containers.labels_for(props["project"], props["stack"], props["resource"])


def scoring_uris(props: Mapping[str, Any]) -> dict[str, str]:
    if (props.get("device") or {}).get("backend") != "local" or not props.get("port"):
        return {"scoring_uri": "", "swagger_uri": ""}
    origin = f"http://127.0.0.1:{int(props['port'])}"
    return {"scoring_uri": f"{origin}/score", "swagger_uri": f"{origin}/swagger.json"}


class EdgeDeploymentProvider(ResourceProvider):
    serialize_as_secret_always = False

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
        for i, m in enumerate(news.get("modules") or []):
            spec = {**m, "image": PREVIEW_IMAGE if _unknown(m.get("image")) else m.get("image")}
            failures += [CheckFailure(f"modules[{i}].{f}", why) for f, why in edge_manifest.module_problems(spec)]
        failures += [CheckFailure(f, why) for f, why in edge_manifest.check_routes(news.get("routes") or {})]
        if failures:
            return CheckResult(news, failures)
        news = {**news, "module_versions": module_versions(olds, news)}
        if _unknown(news.get("modules")) or _unknown(news.get("routes")) or _unknown(news.get("registry")):
            news["manifest"] = rpc.UNKNOWN  # the module image is pushed first; its digest is not known yet
            return CheckResult(news, [])
        manifest = render(news)
        problems = edge_manifest.validate(manifest)
        failures += [CheckFailure("manifest", f"{path}: {why}") for path, why in problems]
        news["manifest"] = manifest
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return diff_edge_deployment(olds, _sentinels(news))

    # ------------------------------------------------------------ backends

    def _agent(self, props: Mapping[str, Any]) -> Any:
        from mldeploy.providers.clients.edge_agent import LocalAgent

        return LocalAgent(props["device"]["device_id"], labels(props), container_prefix(props), on_log=say)

    def _hub(self, props: Mapping[str, Any]) -> Any:
        from mldeploy.providers.clients.iothub import IoTHubClient

        d = props["device"]
        return IoTHubClient(d["hub_host"], d.get("policy_name") or "iothubowner", props["policy_key"],
                            base_url=d.get("endpoint"), api_version=d.get("api_version") or "2021-04-12")

    def _apply(self, props: dict[str, Any]) -> dict[str, Any]:
        manifest = render(props, props.get("registry_password"))
        device = props["device"]
        if device["backend"] == "local":
            from mldeploy.providers.clients import containers

            started = self._agent(props).apply(manifest)
            port = props.get("port")
            for name, cid in started.items():
                if port and name == (props.get("modules") or [{}])[0].get("name"):
                    rc = containers.RunningContainer(cid, container_prefix(props) + name, int(port))
                    containers.wait_healthy(rc, timeout=float(props.get("startup_timeout_seconds") or 300))
        else:
            say(f"IoT Hub {device['hub_host']}: applying the manifest to device {device['device_id']}")
            self._hub(props).apply_configuration_content(device["device_id"], manifest)
        return {**props, **scoring_uris(props), "state": "Applied", "drift": {}}

    def _drop_images(self, props: Mapping[str, Any], keep: set[str]) -> None:
        """Module images the device no longer runs: out of the registry (and the local device's cache)."""
        from mldeploy.providers.clients import oci_registry

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
        outs = self._apply(news)
        self._drop_images(olds, keep={m.get("image") for m in news.get("modules") or []})
        return UpdateResult(outs)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        if (props.get("device") or {}).get("backend") != "local" or not isinstance(props.get("manifest"), Mapping):
            return ReadResult(id_, props)  # the hub's view of a device is not read back (yet)
        drift = self._agent(props).drift(props["manifest"])
        outs = {**props, "drift": drift, "state": "Drifted" if drift else "Applied"}
        # The drift as an input too, so the next preview can say it in words; never when the
        # inputs hold a secret (returned inputs would lose their secret marking).
        secretless = not props.get("policy_key") and not props.get("registry_password")
        return ReadResult(id_, outs, inputs=outs if secretless else None)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        device = props.get("device") or {}
        if device.get("backend") == "local":
            removed = self._agent(props).remove_all()
            say(f"device {device.get('device_id')}: removed modules {', '.join(removed) or '(none)'}")
            for m in props.get("modules") or []:
                if isinstance(m.get("image"), str):
                    self._agent(props).remove_image(m["image"])
            return
        from mldeploy.providers.clients.iothub import IoTHubError

        # What is left on the device: the system modules only (gone already counts as deleted).
        empty = render({**props, "modules": [], "routes": {}}, props.get("registry_password"))
        try:
            self._hub(props).apply_configuration_content(device["device_id"], empty)
        except IoTHubError as exc:
            if exc.status != 404:
                raise


def manifest_json(props: Mapping[str, Any]) -> str:
    """The manifest as `az iot edge set-modules --content` takes it (the password left out)."""
    return json.dumps(render(props), indent=2)
