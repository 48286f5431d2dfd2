"""The ARM request bodies and resource ids of Azure ML v2 (api-version 2024-04-01). Pure.

Bodies follow the REST specification's definitions (OnlineEndpointTrackedResource,
OnlineDeploymentTrackedResource with ManagedOnlineDeployment, ModelVersionResource,
EnvironmentVersionResource, CodeVersionResource); the tests check them against the
kept extracts of that specification.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

from mldeploy.providers.targets.azureml.args import timeout_iso

PROVIDER = "Microsoft.MachineLearningServices"
DATASTORE = "workspaceblobstore"
"""The workspace's default datastore, where model and code files are referenced from."""


def workspace_id(p: Mapping[str, Any]) -> str:
    return (f"/subscriptions/{p['subscription_id']}/resourceGroups/{p['resource_group']}"
            f"/providers/{PROVIDER}/workspaces/{p['workspace']}")


def asset_id(p: Mapping[str, Any], kind: str, name: str, version: str) -> str:
    """`kind`: models, environments or codes."""
    return f"{workspace_id(p)}/{kind}/{name}/versions/{version}"


def endpoint_id(p: Mapping[str, Any]) -> str:
    return f"{workspace_id(p)}/onlineEndpoints/{p['endpoint_name']}"


def tags(p: Mapping[str, Any]) -> dict[str, str]:
    return {"mldeploy.project": str(p["project"]), "mldeploy.stack": str(p["stack"]), "mldeploy.service": str(p["service_name"])}


def short_digest(text: str, n: int = 12) -> str:
    """A version string that follows content: the first `n` hex digits of sha256 (or of the digest given)."""
    hexpart = text.split(":", 1)[1] if text.startswith("sha256:") else hashlib.sha256(text.encode()).hexdigest()
    return hexpart[:n]


def model_path(name: str, version: str) -> str:
    """Where a model version's files lie in the default datastore."""
    return f"mldeploy/models/{name}/{version}"


def code_path(name: str, version: str) -> str:
    return f"mldeploy/code/{name}/{version}"


def model_asset(p: Mapping[str, Any], model: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(name, version, body): our version is already content's, so the asset keeps it."""
    name, version = str(model["name"]), str(int(model["version"]))
    body = {"properties": {
        "modelType": "custom_model",
        "modelUri": f"azureml://datastores/{DATASTORE}/paths/{model_path(name, version)}/",
        "description": f"registered by mldeploy for {p['service_name']}",
        "tags": tags(p),
        "properties": {"mldeploy.content": str(model.get("content_hash") or "")} if model.get("content_hash") else {},
    }}
    return name, version, body


def environment_asset(p: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(name, version, body): the inference image, versioned by its registry reference (which holds the
    pushed manifest's digest), or by the local image's id when it was not pushed."""
    name = f"{p['service_name']}-env"
    version = short_digest(str(p.get("image_ref") or p["image_id"]))
    body = {"properties": {"image": str(p.get("image_ref") or p.get("image_name") or ""), "osType": "Linux",
                           "description": "the scoring image built by mldeploy", "tags": tags(p)}}
    return name, version, body


def code_asset(p: Mapping[str, Any], version: str) -> tuple[str, str, dict[str, Any]]:
    """(name, version, body): the code folder, versioned by its content (`code.code_folder`)."""
    name = f"{p['service_name']}-code"
    body = {"properties": {"codeUri": f"azureml://datastores/{DATASTORE}/paths/{code_path(name, version)}/",
                           "tags": tags(p)}}
    return name, version, body


def endpoint_body(p: Mapping[str, Any], traffic: Mapping[str, int], mirror: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The endpoint with its traffic map (names only existing deployments; sums to 0 or 100)."""
    props: dict[str, Any] = {
        "authMode": "Key" if p.get("auth_mode", "key") == "key" else "AMLToken",
        "description": f"{p['service_name']} (mldeploy)",
        "traffic": {k: int(v) for k, v in traffic.items()},
    }
    if mirror:
        props["mirrorTraffic"] = {k: int(v) for k, v in mirror.items()}
    # A system-assigned identity, as the Azure ML SDK and CLI create endpoints by default (it pulls the
    # environment's image and reads the model's files).
    return {"location": p["location"], "tags": tags(p), "identity": {"type": "SystemAssigned"}, "properties": props}


def _probe(probe: Mapping[str, Any]) -> dict[str, Any]:
    return {"initialDelay": f"PT{int(probe['initial_delay'])}S", "period": f"PT{int(probe['period'])}S",
            "timeout": f"PT{int(probe['timeout'])}S", "failureThreshold": int(probe["failure_threshold"]),
            "successThreshold": int(probe["success_threshold"])}


def deployment_body(p: Mapping[str, Any], model_id: str, environment_id: str, code_id: str | None, scoring_script: str | None) -> dict[str, Any]:
    """A managed online deployment of one model, its environment and its entry script."""
    props: dict[str, Any] = {
        "endpointComputeType": "Managed",
        "model": model_id,
        "environmentId": environment_id,
        "instanceType": p["instance_type"],
        "scaleSettings": {"scaleType": "Default"},
        "requestSettings": {"requestTimeout": timeout_iso(int(p["request_timeout_ms"])),
                            "maxConcurrentRequestsPerInstance": int(p["max_concurrent_requests_per_instance"])},
        "livenessProbe": _probe(p["liveness_probe"]),
        "readinessProbe": _probe(p["readiness_probe"]),
        "environmentVariables": {str(k): str(v) for k, v in sorted((p.get("environment_variables") or {}).items())},
    }
    if code_id and scoring_script:
        props["codeConfiguration"] = {"codeId": code_id, "scoringScript": scoring_script}
    return {"location": p["location"], "tags": tags(p), "sku": {"name": "Default", "capacity": int(p["instance_count"])},
            "properties": props}


