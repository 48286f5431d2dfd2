"""What each change does on Azure ML, declared once, and the pure diff that reads it.

Three costs, in Azure's terms:
- **replace**: a new endpoint (another workspace, name or auth mode): the old one is deleted;
- **roll**: a new deployment beside the old one, gated by the sample, then traffic moves
  and the old one is deleted (blue/green, `rollout.py`);
- **patch**: the endpoint or the live deployment is changed in place (traffic settings,
  keys, instance count), nothing is redeployed.
The Target's REPLACE_ON/ROLL_ON/ROUTE_ON/INERT tuples are these lists; the diff below
and the preview's words read them too, so a rule lives in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

REPLACE_ON = ("subscription_id", "resource_group", "workspace", "location", "arm_endpoint", "endpoint_name", "auth_mode")
"""A new endpoint. `auth_mode` is treated as a new endpoint: whether Azure changes it in place was not checked here."""
ROLL_ON = ("instance_type", "request_timeout_ms", "max_concurrent_requests_per_instance", "liveness_probe",
           "readiness_probe", "environment_variables", "image_ref")
"""A new deployment (the shared rule adds `image_id` and `models`)."""
ROLL_SHARED = ("image_id", "models")
PATCH_ON = ("instance_count", "primary_key_version", "secondary_key_version")
"""In place: the live deployment's `sku.capacity`, or `regenerateKeys` of one key."""
INERT = ("traffic_steps", "mirror_percent", "cpu_cores", "memory_gb", "auth_enabled", "max_request_bytes", "live_deployment",
         "code_directory")
"""Read at the next roll (`traffic_steps`, `mirror_percent`), words only (`live_deployment`, carried
by check for the preview's sentence), or not Azure ML's to take: the
instance type sets CPU and memory, the endpoint always checks a key or token itself, and it
has no request-size limit of ours. `code_directory` is where the code is read from: its content is
in the image, whose new id rolls a new deployment already."""


@dataclass(frozen=True)
class Change:
    """What an update costs: the kind and the inputs behind it."""

    kind: str
    """"none", "patch", "roll" or "replace" (the costliest wins)."""
    fields: tuple[str, ...] = field(default_factory=tuple)

    @property
    def rolls(self) -> bool:
        return self.kind == "roll"


def _models(value: Any) -> Any:
    # A model is its name and version (versions follow content); where its files lie locally is no change.
    if not isinstance(value, list):
        return value
    return [(m.get("name"), m.get("version")) if isinstance(m, Mapping) else m for m in value]


def _differs(key: str, olds: Mapping[str, Any], news: Mapping[str, Any]) -> bool:
    if key == "models":
        return _models(olds.get(key)) != _models(news.get(key))
    return olds.get(key) != news.get(key)


def diff(olds: Mapping[str, Any], news: Mapping[str, Any]) -> Change:
    """The cost of going from `olds` to `news`. Pure: no I/O, no defaults filled in."""
    for kind, keys in (("replace", REPLACE_ON), ("roll", ROLL_SHARED + ROLL_ON), ("patch", PATCH_ON)):
        changed = tuple(k for k in keys if _differs(k, olds, news))
        if changed:
            return Change(kind, changed)
    return Change("none")
