"""Readers for the `az ml model deploy` files: inferenceconfig.json and deploymentconfig.json.

Users migrating from the CLI keep their files unchanged: the keys are the CLI's
(camelCase, `extraDockerFileSteps` as the seed spells it or `extraDockerfileSteps`),
a trailing comma is accepted (the seed's own example has one), and paths are
relative to the file's folder. A bad file, key or value names the file and the key.
Reading is pure: nothing is created until the component is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from mldeploy.components._common import ArgsError


def loads_lenient(text: str) -> Any:
    """JSON, plus what the CLI's files often have: a comma before `}` or `]`."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    out: list[str] = []
    i, in_string = 0, False
    while i < len(text):
        ch = text[i]
        if in_string:
            out.append(ch)
            if ch == "\\" and i + 1 < len(text):
                out.append(text[i + 1])
                i += 1
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
            out.append(ch)
        elif ch == ",":
            j = i + 1
            while j < len(text) and text[j] in " \t\r\n":
                j += 1
            if j >= len(text) or text[j] not in "}]":
                out.append(ch)
        else:
            out.append(ch)
        i += 1
    return json.loads("".join(out))


def _load(kind: str, path: str | Path) -> tuple[Path, dict[str, Any]]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ArgsError(f"{kind} {p}: cannot read the file: {exc.strerror}") from None
    try:
        doc = loads_lenient(text)
    except ValueError as exc:
        raise ArgsError(f"{kind} {p}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ArgsError(f"{kind} {p}: expected a JSON object at the top")
    return p, doc


def _problems(exc: ValidationError) -> str:
    out = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err["loc"]) or "(file)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "not a key of this file"
        out.append(f"{where}: {msg}")
    return "; ".join(out)


# --- inferenceconfig.json ----------------------------------------------------------

class _RegistryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str
    username: str
    password: str


class _InferenceFile(BaseModel):
    """The CLI's keys (seed, "CLI example of InferenceConfig")."""

    model_config = ConfigDict(extra="forbid", populate_by_name=False)

    entryScript: str
    runtime: str = "python"
    condaFile: str | None = None
    extraDockerFileSteps: str | None = None
    extraDockerfileSteps: str | None = None
    sourceDirectory: str | None = None
    enableGpu: StrictBool = False
    baseImage: str | None = None
    baseImageRegistry: _RegistryFile | None = None
    cudaVersion: str | None = None
    description: str | None = None


INFERENCE_KEYS = {
    "entry_script": "entryScript",
    "runtime": "runtime",
    "conda_file": "condaFile",
    "extra_docker_file_steps": "extraDockerFileSteps",
    "source_directory": "sourceDirectory",
    "enable_gpu": "enableGpu",
    "base_image_registry": "baseImageRegistry",
    "base_image": "baseImage",
    "cuda_version": "cudaVersion",
}


@dataclass
class InferenceConfigFile:
    """What `read_inference_config` found: the component's keyword arguments and where they came from."""

    path: Path
    folder: Path
    """Relative paths in the file are relative to this folder."""
    kwargs: dict[str, Any] = field(default_factory=dict)

    def explain(self, message: str) -> str:
        """A component error, told with the file's name and the file's keys."""
        for arg, key in sorted(INFERENCE_KEYS.items(), key=lambda kv: -len(kv[0])):
            message = re.sub(rf"(?<![A-Za-z_]){arg}(?=[.:])", key, message)
        head, sep, rest = message.partition(": ")
        return f"{head}: {self.path}{sep}{rest}" if sep else f"{self.path}: {message}"


def read_inference_config(resource_name: str, path: str | Path) -> InferenceConfigFile:
    """Read an inferenceconfig.json into `InferenceImage` arguments (no I/O beyond the file)."""
    p, doc = _load(f"InferenceImage '{resource_name}': inference config", path)
    try:
        raw = _InferenceFile.model_validate(doc)
    except ValidationError as exc:
        raise ArgsError(f"InferenceImage '{resource_name}': {p}: {_problems(exc)}") from None
    if raw.extraDockerFileSteps and raw.extraDockerfileSteps:
        raise ArgsError(f"InferenceImage '{resource_name}': {p}: extraDockerFileSteps and extraDockerfileSteps "
                        "are both set; keep one")
    folder = p.resolve().parent
    steps = raw.extraDockerFileSteps or raw.extraDockerfileSteps
    if raw.sourceDirectory:
        # As Azure ML's InferenceConfig: with a source directory, the entry script, the conda
        # file and the extra steps are relative to it.
        source_directory, entry_script = raw.sourceDirectory, raw.entryScript
        conda = str(Path(source_directory) / raw.condaFile) if raw.condaFile else None
        steps = str(Path(source_directory) / steps) if steps else None
    else:
        # No source directory: the entry script's folder is the source.
        script = Path(raw.entryScript)
        source_directory, entry_script, conda = str(script.parent), script.name, raw.condaFile
    kwargs: dict[str, Any] = {
        "entry_script": entry_script,
        "source_directory": source_directory,
        "conda_file": conda,
        "runtime": raw.runtime,
        "extra_docker_file_steps": steps,
        "enable_gpu": raw.enableGpu,
        "cuda_version": raw.cudaVersion,
        "base_image": raw.baseImage,
    }
    if raw.baseImageRegistry:
        import pulumi

        reg = raw.baseImageRegistry
        kwargs["base_image_registry"] = {"address": reg.address, "username": reg.username,
                                         "password": pulumi.Output.secret(reg.password)}
    return InferenceConfigFile(p, folder, kwargs)


# --- deploymentconfig.json ---------------------------------------------------------

class _Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cpu: float | None = None
    memoryInGB: float | None = None
    cpu_limit: float | None = Field(default=None, alias="cpuLimit")
    memory_limit: float | None = Field(default=None, alias="memoryInGBLimit")


class _AutoScaler(BaseModel):
    model_config = ConfigDict(extra="forbid")

    autoscaleEnabled: StrictBool | None = None
    minReplicas: int | None = None
    maxReplicas: int | None = None
    refreshPeriodInSeconds: int | None = None
    targetUtilization: int | None = None


class _Liveness(BaseModel):
    model_config = ConfigDict(extra="forbid")

    periodSeconds: int | None = None
    initialDelaySeconds: int | None = None
    timeoutSeconds: int | None = None
    failureThreshold: int | None = None
    successThreshold: int | None = None


class _DeploymentFile(BaseModel):
    """The CLI's deployment configuration keys for the local, ACI and AKS targets."""

    model_config = ConfigDict(extra="forbid")

    computeType: Literal["local", "aci", "aks", "LOCAL", "ACI", "AKS", "Local", "Aci", "Aks"]
    port: int | None = None
    containerResourceRequirements: _Resources | None = None
    authEnabled: StrictBool | None = None
    autoScaler: _AutoScaler | None = None
    numReplicas: int | None = None
    scoringTimeoutMs: int | None = None
    maxConcurrentRequestsPerContainer: int | None = None
    maxQueueWaitMs: int | None = None
    namespace: str | None = None
    livenessProbeRequirements: _Liveness | None = None
    sslEnabled: StrictBool = False
    appInsightsEnabled: StrictBool = False
    tags: dict[str, str] | None = None
    properties: dict[str, str] | None = None
    description: str | None = None


# (JSON path, keyword of the component), per compute type; a key outside its type's list is refused.
DEPLOYMENT_KEYS: dict[str, list[tuple[str, str]]] = {
    "local": [("port", "port"), ("containerResourceRequirements.cpu", "cpu_cores"),
              ("containerResourceRequirements.memoryInGB", "memory_gb"), ("authEnabled", "auth_enabled")],
    "aci": [("containerResourceRequirements.cpu", "cpu_cores"),
            ("containerResourceRequirements.memoryInGB", "memory_gb"), ("authEnabled", "auth_enabled")],
    "aks": [("containerResourceRequirements.cpu", "cpu_cores"),
            ("containerResourceRequirements.memoryInGB", "memory_gb"),
            ("containerResourceRequirements.cpuLimit", "cpu_cores_limit"),
            ("containerResourceRequirements.memoryInGBLimit", "memory_gb_limit"),
            ("autoScaler.autoscaleEnabled", "autoscale_enabled"),
            ("autoScaler.minReplicas", "autoscale_min_replicas"),
            ("autoScaler.maxReplicas", "autoscale_max_replicas"),
            ("autoScaler.refreshPeriodInSeconds", "autoscale_refresh_seconds"),
            ("autoScaler.targetUtilization", "autoscale_target_utilization"),
            ("numReplicas", "num_replicas"), ("scoringTimeoutMs", "scoring_timeout_ms"),
            ("maxConcurrentRequestsPerContainer", "replica_max_concurrent_requests"),
            ("maxQueueWaitMs", "max_request_wait_time"), ("namespace", "namespace"),
            ("livenessProbeRequirements.periodSeconds", "period_seconds"),
            ("livenessProbeRequirements.initialDelaySeconds", "initial_delay_seconds"),
            ("livenessProbeRequirements.timeoutSeconds", "timeout_seconds"),
            ("livenessProbeRequirements.failureThreshold", "failure_threshold"),
            ("livenessProbeRequirements.successThreshold", "success_threshold"),
            ("authEnabled", "auth_enabled")],
}
COMPONENT = {"local": "ContainerInstanceService", "aci": "ContainerInstanceService", "aks": "AksService"}
"""Which component takes the arguments."""


@dataclass
class DeploymentConfigFile:
    """A deploymentconfig.json read: `component(name, models=…, image=…, **config.kwargs)`."""

    path: Path
    compute_type: str
    """`local`, `aci` or `aks`."""
    component: str
    """`ContainerInstanceService` (local, aci) or `AksService` (aks)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""


def _flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict) and key not in ("tags", "properties"):
            out.update(_flatten(value, f"{prefix}{key}."))
        elif value is not None:
            out[f"{prefix}{key}"] = value
    return out


def read_deployment_config(path: str | Path) -> DeploymentConfigFile:
    """Read a deploymentconfig.json into the keyword arguments of the component for its computeType."""
    p, doc = _load("deployment config", path)
    try:
        raw = _DeploymentFile.model_validate(doc)
    except ValidationError as exc:
        raise ArgsError(f"deployment config {p}: {_problems(exc)}") from None
    compute = raw.computeType.lower()
    for key in ("sslEnabled", "appInsightsEnabled"):
        if getattr(raw, key):
            raise ArgsError(f"deployment config {p}: {key}: true is not supported here (no TLS or Application "
                            "Insights on these targets); remove it or set false")
    given = {k: v for k, v in _flatten(raw.model_dump(by_alias=True, exclude_none=True)).items()
             if k.split(".")[0] not in ("computeType", "sslEnabled", "appInsightsEnabled", "tags", "properties",
                                        "description")}
    mapping = dict(DEPLOYMENT_KEYS[compute])
    refused = sorted(k for k in given if k not in mapping)
    if refused:
        raise ArgsError(f"deployment config {p}: {', '.join(refused)}: not a setting of computeType {compute!r} "
                        f"(its settings: {', '.join(mapping)})")
    kwargs = {mapping[k]: v for k, v in given.items()}
    if compute in ("local", "aci"):
        kwargs["target"] = compute
    return DeploymentConfigFile(p, compute, COMPONENT[compute], kwargs, dict(raw.tags or {}), raw.description or "")
