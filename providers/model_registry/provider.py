"""Provider for a registered model version, in the folder registry or the shared one (Blob Storage)."""

from __future__ import annotations

from typing import Any

from pulumi.runtime.rpc import UNKNOWN  # what the engine sends for a value not known at preview
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from mldeploy.providers.model_registry.registry import RegistryError, is_remote, materialize, open_registry
from mldeploy.providers.core.paths import local, same_place

REPLACE_ON = ("model_name", "registry_root", "owner")
PATHS = ("registry_root",)
"""Inputs that hold a path: compared as places (`mldeploy.providers.core.paths.same_place`)."""


def version_dir(registry_root: str, name: str, version: int) -> str:
    """A version's folder, written as the registry input is (relative to the project, or absolute)."""
    return f"{registry_root.rstrip('/')}/{name}/{int(version)}"


def model_folder(registry_root: str, name: str, version: int, content_hash: str = "", cache_dir: str = "") -> str:
    """The folder a service mounts for a version.

    The folder registry's own version folder; with the shared registry, this
    machine's copy of the content under `cache_dir`, named by its hash (the
    version number is only known once the claim succeeds, the content before).
    """
    if is_remote(registry_root):
        return f"{cache_dir.rstrip('/')}/{name}/{content_hash.split(':')[-1][:32]}"
    return version_dir(registry_root, name, version)


def _differs(key: str, olds: dict[str, Any], news: dict[str, Any]) -> bool:
    if key in PATHS:
        return not same_place(olds.get(key), news.get(key))
    return olds.get(key) != news.get(key)


def diff_model(olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
    """New content means a new version (an update); a new name or registry is another model."""
    replaces = [k for k in REPLACE_ON if _differs(k, olds, news)]
    changed = list(replaces)
    if olds.get("content_hash") != news.get("content_hash"):
        changed.append("content_hash")
    if (olds.get("tags") or {}) != (news.get("tags") or {}):
        changed.append("tags")
    if (olds.get("description") or "") != (news.get("description") or ""):
        changed.append("description")
    if not olds.get("present", True):
        changed.append("present")  # deleted by hand: the next up registers it again
    return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=False)


def _outs(inputs: dict[str, Any], mv: Any) -> dict[str, Any]:
    return {
        **inputs,
        "version": mv.version,
        "content_hash": mv.content_hash,
        "model_dir": model_folder(inputs["registry_root"], mv.name, mv.version, mv.content_hash, inputs.get("cache_dir") or ""),
        "model_id": f"{mv.name}:{mv.version}",
        "present": True,
    }


REGISTRY_SETTING = {False: "mldeploy:registryPath", True: "mldeploy:registry"}
"""The stack setting that names each kind of registry, for errors."""


def plan(news: dict[str, Any]) -> tuple[dict[str, Any], list[CheckFailure]]:
    """The version this content gets, read from the registry without writing anything (preview says "N => N+1").

    A preview writes nothing.
    """
    if any(news.get(k) == UNKNOWN for k in ("model_name", "model_path", "content_hash", "registry_root", "owner")):
        return news, []
    root = news["registry_root"]
    try:
        planned = open_registry(root).planned_version(news["model_name"], news["content_hash"], news["owner"])
    except RegistryError as exc:
        # An unreachable account or a missing container stops the preview, before anything changes.
        return news, [CheckFailure("registry_root", f"{REGISTRY_SETTING[is_remote(root)]}: {exc}")]
    return {**news, "version": planned}, []


class ModelVersionProvider(ResourceProvider):
    """Registers content; a changed file or folder becomes version N+1."""

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        for key in ("model_name", "model_path", "registry_root", "owner"):
            if not news.get(key):
                failures.append(CheckFailure(key, f"{key} is required"))
        if is_remote(news.get("registry_root")) and not news.get("cache_dir"):
            failures.append(CheckFailure("cache_dir", "cache_dir is required with a shared registry"))
        if not failures:
            news, failures = plan(news)
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return diff_model(olds, news)

    @staticmethod
    def _register(props: dict[str, Any]) -> Any:
        # Paths in the inputs are relative to the project: found under this run's checkout.
        registry = open_registry(props["registry_root"])
        mv = registry.register(
            props["model_name"],
            local(props["model_path"]),
            props["owner"],
            props.get("tags") or {},
            props.get("description") or "",
        )
        if is_remote(props["registry_root"]):
            # This machine's services mount a local copy of the content.
            folder = model_folder(props["registry_root"], mv.name, mv.version, mv.content_hash, props["cache_dir"])
            materialize(local(props["model_path"]), local(folder), mv.content_hash)
        return mv

    def create(self, props: dict[str, Any]) -> CreateResult:
        mv = self._register(props)
        return CreateResult(f"{mv.name}:{mv.version}", _outs(props, mv))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        # Older versions stay: a running service may still mount one until it rolls.
        return UpdateResult(_outs(news, self._register(news)))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        registry = open_registry(props["registry_root"])
        mv = registry.get(props["model_name"], int(props["version"]))
        if mv is None or mv.content_hash != props.get("content_hash"):
            return ReadResult(id_, {**props, "present": False})
        return ReadResult(id_, _outs(props, mv))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        open_registry(props["registry_root"]).release(props["model_name"], props["owner"])
