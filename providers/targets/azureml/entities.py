"""Our bodies (ARM's words, `bodies.py`) as azure-ai-ml entities, and its entities back in ARM's words. Pure.

Why two vocabularies: the plan, the preview and the rules read ARM's names (`traffic`,
`provisioningState`, `scoringUri`), which are also what Azure's REST specification and the
docs use; azure-ai-ml (`MLClient`) takes its own entities and sends them at its own
api-versions. This module is the one place the two meet, so each field is mapped once.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

AUTH_MODES = {"Key": "key", "AMLToken": "aml_token", "AADToken": "aad_token"}


def seconds(iso: str) -> float:
    """`PT10S` / `PT0.5S` (what `bodies.py` writes) as seconds."""
    m = re.fullmatch(r"PT(?:(\d+)M)?(\d+(?:\.\d+)?)S", str(iso))
    if not m:
        raise ValueError(f"not an ISO 8601 duration in seconds: {iso!r}")
    return int(m.group(1) or 0) * 60 + float(m.group(2))


def endpoint(name: str, body: Mapping[str, Any]) -> Any:
    from azure.ai.ml.entities import IdentityConfiguration, ManagedOnlineEndpoint

    props = body.get("properties") or {}
    identity = (body.get("identity") or {}).get("type")
    return ManagedOnlineEndpoint(
        name=name,
        location=body.get("location"),
        tags=dict(body.get("tags") or {}),
        description=props.get("description"),
        auth_mode=AUTH_MODES[props.get("authMode") or "Key"],
        identity=IdentityConfiguration(type="system_assigned") if identity == "SystemAssigned" else None,
        traffic={k: int(v) for k, v in (props.get("traffic") or {}).items()},
        mirror_traffic={k: int(v) for k, v in (props.get("mirrorTraffic") or {}).items()},
    )


def endpoint_view(ep: Any) -> dict[str, Any]:
    auth = {v: k for k, v in AUTH_MODES.items()}.get(str(getattr(ep, "auth_mode", "") or "").lower(), "Key")
    return {
        "id": getattr(ep, "id", None),
        "name": ep.name,
        "location": getattr(ep, "location", None),
        "tags": dict(getattr(ep, "tags", None) or {}),
        "properties": {
            "authMode": auth,
            "traffic": dict(getattr(ep, "traffic", None) or {}),
            "mirrorTraffic": dict(getattr(ep, "mirror_traffic", None) or {}),
            "scoringUri": getattr(ep, "scoring_uri", None),
            "swaggerUri": getattr(ep, "openapi_uri", None),
            "provisioningState": getattr(ep, "provisioning_state", None),
        },
    }


def _probe(p: Mapping[str, Any] | None) -> Any:
    from azure.ai.ml.entities import ProbeSettings

    if not p:
        return None
    return ProbeSettings(initial_delay=int(seconds(p["initialDelay"])), period=int(seconds(p["period"])),
                         timeout=int(seconds(p["timeout"])), failure_threshold=int(p["failureThreshold"]),
                         success_threshold=int(p["successThreshold"]))


def deployment(endpoint_name: str, name: str, body: Mapping[str, Any]) -> Any:
    from azure.ai.ml.entities import CodeConfiguration, ManagedOnlineDeployment, OnlineRequestSettings

    props = body.get("properties") or {}
    code = props.get("codeConfiguration")
    request = props.get("requestSettings") or {}
    return ManagedOnlineDeployment(
        name=name,
        endpoint_name=endpoint_name,
        tags=dict(body.get("tags") or {}),
        model=props.get("model"),
        environment=props.get("environmentId"),
        code_configuration=CodeConfiguration(code=code["codeId"], scoring_script=code["scoringScript"]) if code else None,
        instance_type=props.get("instanceType"),
        instance_count=int((body.get("sku") or {}).get("capacity") or 1),
        request_settings=OnlineRequestSettings(
            request_timeout_ms=int(round(seconds(request["requestTimeout"]) * 1000)) if request.get("requestTimeout") else None,
            max_concurrent_requests_per_instance=request.get("maxConcurrentRequestsPerInstance"),
        ),
        liveness_probe=_probe(props.get("livenessProbe")),
        readiness_probe=_probe(props.get("readinessProbe")),
        environment_variables=dict(props.get("environmentVariables") or {}),
    )


def deployment_view(d: Any) -> dict[str, Any]:
    return {
        "id": getattr(d, "id", None),
        "name": d.name,
        "tags": dict(getattr(d, "tags", None) or {}),
        "sku": {"name": "Default", "capacity": getattr(d, "instance_count", None)},
        "properties": {
            "provisioningState": getattr(d, "provisioning_state", None),
            "model": getattr(d, "model", None),
            "environmentId": getattr(d, "environment", None),
            "instanceType": getattr(d, "instance_type", None),
        },
    }


def model(name: str, version: str, body: Mapping[str, Any]) -> Any:
    from azure.ai.ml.entities import Model

    props = body.get("properties") or {}
    return Model(name=name, version=version, path=props["modelUri"], type=props.get("modelType") or "custom_model",
                 description=props.get("description"), tags=dict(props.get("tags") or {}),
                 properties=dict(props.get("properties") or {}))


def environment(name: str, version: str, body: Mapping[str, Any]) -> Any:
    from azure.ai.ml.entities import Environment

    props = body.get("properties") or {}
    return Environment(name=name, version=version, image=props["image"], description=props.get("description"),
                       tags=dict(props.get("tags") or {}))
