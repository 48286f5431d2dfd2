"""Request bodies checked against Azure's own OpenAPI definitions (tests/azure-specs).

The fake ARM uses this to answer a body that the REST specification of the
api-version sent does not allow with a 400, as ARM does, instead of trusting
our client or the SDK's models. `jsonschema` (Draft 4, the dialect Swagger 2.0
schemas are written in) checks types, `required`, `enum`, patterns and ranges,
resolving `$ref`s across the kept files; a second walk refuses members the
definition does not declare ("Could not find member ..."), which ARM's
deserializer refuses too and JSON Schema alone lets through.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

SPECS_ROOT = Path(__file__).resolve().parent / "azure-specs"
SPEC_FILES = {
    ("Microsoft.ContainerInstance", "2025-09-01"):
        "specification/containerinstance/resource-manager/Microsoft.ContainerInstance/stable/2025-09-01/containerInstance.json",
    ("Microsoft.ContainerService", "2025-10-01"):
        "specification/containerservice/resource-manager/Microsoft.ContainerService/aks/stable/2025-10-01/managedClusters.json",
    ("Microsoft.MachineLearningServices", "2024-04-01"):
        "specification/machinelearningservices/resource-manager/Microsoft.MachineLearningServices/stable/2024-04-01/mfe.json",
    # What azure-ai-ml 1.35.2 sends: online endpoints, deployments and environments, models.
    ("Microsoft.MachineLearningServices", "2022-02-01-preview"):
        "specification/machinelearningservices/resource-manager/Microsoft.MachineLearningServices/preview/2022-02-01-preview/mfe.json",
    ("Microsoft.MachineLearningServices", "2023-04-01-preview"):
        "specification/machinelearningservices/resource-manager/Microsoft.MachineLearningServices/preview/2023-04-01-preview/mfe.json",
    ("Microsoft.MachineLearningServices", "2023-08-01-preview"):
        "specification/machinelearningservices/resource-manager/Microsoft.MachineLearningServices/preview/2023-08-01-preview/mfe.json",
}


class SpecViolation(ValueError):
    """The body breaks the definition; the message names the JSON path."""


@functools.lru_cache(maxsize=1)
def _registry() -> Any:
    from referencing import Registry
    from referencing.jsonschema import DRAFT4

    return Registry().with_resources(
        (p.resolve().as_uri(), DRAFT4.create_resource(_swagger_semantics(json.loads(p.read_text(encoding="utf-8")))))
        for p in SPECS_ROOT.rglob("*.json")
    )


def _swagger_semantics(node: Any) -> Any:
    """Drop `additionalProperties: false`: in Swagger 2.0 (AutoRest) it closes an object over
    the members of its whole `allOf` chain, while JSON Schema would refuse every inherited
    member (`location` of a TrackedResource). The second walk (`_unknown`) refuses members
    that no part of the chain declares, which is what ARM does."""
    if isinstance(node, dict):
        return {k: _swagger_semantics(v) for k, v in node.items() if not (k == "additionalProperties" and v is False)}
    if isinstance(node, list):
        return [_swagger_semantics(v) for v in node]
    return node


def api_versions(namespace: str) -> list[str]:
    return sorted(v for ns, v in SPEC_FILES if ns == namespace)


def definition_uri(namespace: str, api_version: str, definition: str) -> str:
    path = SPEC_FILES.get((namespace, api_version))
    if path is None:
        raise KeyError(f"no kept specification of {namespace} for api-version {api_version}")
    return (SPECS_ROOT / path).resolve().as_uri() + f"#/definitions/{definition}"


def _path(parts: Any) -> str:
    out = "body"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def check(namespace: str, api_version: str, definition: str, body: Any) -> None:
    """Raise SpecViolation for the first problem, as ARM answers one."""
    import jsonschema
    from referencing.exceptions import Unresolvable

    uri = definition_uri(namespace, api_version, definition)
    validator = jsonschema.Draft4Validator({"$ref": uri}, registry=_registry())
    try:
        errors = sorted(validator.iter_errors(body), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    except Unresolvable as exc:
        raise SpecViolation(f"body: uses a part of {definition} whose definition is not kept in tests/azure-specs ({exc.ref})") from None
    if errors:
        e = errors[0]
        raise SpecViolation(f"{_path(e.absolute_path)}: {e.message}")
    resolver = _registry().resolver()
    resolved = resolver.lookup(uri)
    unknown = _unknown(resolved.resolver, resolved.contents, body, [])
    if unknown:
        where, owner = unknown[0]
        raise SpecViolation(f"{_path(where)}: could not find member '{where[-1]}' on object of type '{owner}' (api-version {api_version})")


def _deref(resolver: Any, schema: Any) -> tuple[Any, Any, str | None]:
    name = None
    while isinstance(schema, dict) and "$ref" in schema:
        ref = schema["$ref"]
        name = ref.rsplit("/", 1)[-1]
        resolved = resolver.lookup(ref)
        schema, resolver = resolved.contents, resolved.resolver
    return schema, resolver, name


def _members(resolver: Any, schema: dict[str, Any]) -> tuple[dict[str, tuple[Any, Any]], Any, bool]:
    """(declared properties with their resolvers, additionalProperties, whether the object is closed)."""
    props = {k: (v, resolver) for k, v in (schema.get("properties") or {}).items()}
    extra = (schema["additionalProperties"], resolver) if "additionalProperties" in schema else None
    closed = "properties" in schema or "allOf" in schema
    for part in schema.get("allOf") or []:
        sub, sub_resolver, _ = _deref(resolver, part)
        p, e, _c = _members(sub_resolver, sub)
        props = {**p, **props}
        extra = extra or e
    return props, extra, closed


def _unknown(resolver: Any, schema: Any, instance: Any, where: list[Any], owner: str = "body") -> list[tuple[list[Any], str]]:
    schema, resolver, name = _deref(resolver, schema)
    owner = name or owner
    if not isinstance(schema, dict):
        return []
    if isinstance(instance, dict):
        props, extra, closed = _members(resolver, schema)
        out: list[tuple[list[Any], str]] = []
        for key, value in instance.items():
            if key in props:
                sub, sub_resolver = props[key]
                out += _unknown(sub_resolver, sub, value, [*where, key], owner)
            elif extra is not None and isinstance(extra[0], dict):
                out += _unknown(extra[1], extra[0], value, [*where, key], owner)
            elif closed and extra is None:
                out.append(([*where, key], owner))
        return out
    if isinstance(instance, list) and isinstance(schema.get("items"), dict):
        return [u for i, item in enumerate(instance) for u in _unknown(resolver, schema["items"], item, [*where, i], owner)]
    return []
