"""Pure renderer and checker of IoT Edge deployment manifests (no I/O but reading the schemas).

A deployment manifest is what IoT Hub hands an edge device's agent: `$edgeAgent`
says which modules run (image, status, restart policy, Docker `createOptions`),
`$edgeHub` says how messages are routed between them. This module renders one
from plain module entries, and checks it the way Azure's own CLI does (the
SchemaStore schemas in `providers/targets/iotedge/schemas/`, with `jsonschema`), plus
the rules the schemas cannot say: `createOptions` is JSON, at most 8 parts of
512 characters; route syntax `FROM <source> [WHERE <condition>] INTO <sink>`;
the 32 KB twin limit. Every failure names its field or JSON path.

Both backends (the local agent in `mldeploy.providers.targets.iotedge.edge_agent` and IoT Hub in
`mldeploy.providers.targets.iotedge.iothub`) import this module, never the reverse.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
DEPLOYMENT_SCHEMA = "azure-iot-edge-deployment-2.0.json"
AGENT_SCHEMA = "azure-iot-edgeagent-deployment-1.1.json"
HUB_SCHEMA = "azure-iot-edgehub-deployment-1.2.json"
AGENT_SCHEMA_VERSION = "1.1"
HUB_SCHEMA_VERSION = "1.2"

EDGE_AGENT_IMAGE = "mcr.microsoft.com/azureiotedge-agent:1.5"
EDGE_HUB_IMAGE = "mcr.microsoft.com/azureiotedge-hub:1.5"
# The standard template's edgeHub ports: AMQPS, MQTTS, HTTPS.
EDGE_HUB_CREATE_OPTIONS = {
    "HostConfig": {"PortBindings": {p: [{"HostPort": p.split("/")[0]}] for p in ("5671/tcp", "8883/tcp", "443/tcp")}}
}
STORE_AND_FORWARD_TTL = 7200

MODULE_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
# Twin keys cannot hold `.`, `$`, `#` or white space (the schema's env pattern also refuses `+`).
ENV_KEY_RE = re.compile(r"^[^\+#$\s\.]+$")
ROUTE_NAME_RE = re.compile(r"^[^\.\$# ]+$")
STATUSES = ("running", "stopped")
RESTART_POLICIES = ("never", "on-failure", "on-unhealthy", "always")
IMAGE_PULL_POLICIES = ("on-create", "never")
CREATE_OPTIONS_CHUNK = 512
CREATE_OPTIONS_MAX_PARTS = 8
TWIN_MAX_BYTES = 32 * 1024
MAX_MODULES = 50

ROUTE_RE = re.compile(
    r"""^\s*FROM\s+(?P<source>/\S*)
        (?:\s+WHERE\s+(?P<condition>\S.*?))?
        \s+INTO\s+(?P<sink>\$upstream|BrokeredEndpoint\(\s*"(?P<endpoint>[^"]+)"\s*\))\s*$""",
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)
ENDPOINT_RE = re.compile(r"^/modules/[a-zA-Z0-9_-]+/inputs/[^\s/\"]+$")
SOURCE_RE = re.compile(r"^/(\*|messages(/\*|/modules/[a-zA-Z0-9_-]+(/\*|/outputs/(\*|[^\s/]+)))?|twinChangeNotifications)$")


class ManifestError(ValueError):
    """A manifest or a module entry that fails a check; `problems` are (field or JSON path, message)."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{where}: {what}" for where, what in problems))


# ---------------------------------------------------------------- module fields


def check_module_name(name: Any) -> str | None:
    if not isinstance(name, str) or not MODULE_NAME_RE.match(name):
        return f"module names match ^[a-zA-Z0-9_-]+$, got {name!r}"
    if name in ("edgeAgent", "edgeHub", "$edgeAgent", "$edgeHub"):
        return f"{name!r} is a system module's name"
    return None


def check_env(env: Mapping[str, Any]) -> list[tuple[str, str]]:
    problems = []
    for key, value in env.items():
        if not isinstance(key, str) or not ENV_KEY_RE.match(key):
            problems.append((f"env.{key}", "twin keys cannot hold '.', '$', '#', '+' or white space"))
        elif isinstance(value, bool) or not isinstance(value, (str, int, float)):
            problems.append((f"env.{key}", f"must be a string, a number or a bool, got {type(value).__name__}"))
    return problems


def parse_create_options(value: Any) -> dict[str, Any]:
    """createOptions as a dict: given as a dict, or as a JSON string of an object."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ManifestError([("create_options", f"is not JSON: {exc}")]) from None
    if not isinstance(value, dict):
        raise ManifestError([("create_options", f"must be a JSON object (Docker's ContainerCreate body), got {type(value).__name__}")])
    return value


def minify(options: Mapping[str, Any]) -> str:
    """Keys sorted: the same options give the same manifest, whatever order they travelled in."""
    return json.dumps(options, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def split_create_options(options: Mapping[str, Any], field: str = "create_options") -> dict[str, str]:
    """`createOptions`, `createOptions01`, … of at most 512 characters each, at most 8 of them."""
    text = minify(options)
    parts = [text[i : i + CREATE_OPTIONS_CHUNK] for i in range(0, len(text), CREATE_OPTIONS_CHUNK)] or ["{}"]
    if len(parts) > CREATE_OPTIONS_MAX_PARTS:
        limit = CREATE_OPTIONS_CHUNK * CREATE_OPTIONS_MAX_PARTS
        raise ManifestError([(field, f"is {len(text)} characters minified, more than {CREATE_OPTIONS_MAX_PARTS} parts of {CREATE_OPTIONS_CHUNK} ({limit})")])
    return {("createOptions" if i == 0 else f"createOptions{i:02d}"): p for i, p in enumerate(parts)}


def join_create_options(settings: Mapping[str, Any]) -> str:
    """What the agent does: `createOptions` then `createOptions01`, `02`, … joined in order."""
    keys = [k for k in settings if re.match(r"^(createoptions|createOptions)[0-9]*$", k)]
    keys.sort(key=lambda k: int(k[len("createOptions") :] or 0))
    return "".join(str(settings[k]) for k in keys)


def parse_route(route: Any) -> dict[str, str]:
    """`FROM <source> [WHERE <condition>] INTO <sink>` as its parts, or ManifestError naming what is wrong."""
    text = route.get("route") if isinstance(route, Mapping) else route
    if not isinstance(text, str):
        raise ManifestError([("route", f"must be a string, got {type(text).__name__}")])
    m = ROUTE_RE.match(text)
    if not m:
        raise ManifestError([("route", f"does not parse as FROM <source> [WHERE <condition>] INTO <sink>: {text!r}")])
    parts = {k: v for k, v in m.groupdict().items() if v is not None}
    if not SOURCE_RE.match(parts["source"]):
        raise ManifestError([("route", f"unknown source {parts['source']!r} (/*, /messages/*, /messages/modules/<m>/outputs/<o>, /twinChangeNotifications)")])
    if "endpoint" in parts and not ENDPOINT_RE.match(parts["endpoint"]):
        raise ManifestError([("route", f"BrokeredEndpoint must be \"/modules/<module>/inputs/<input>\", got {parts['endpoint']!r}")])
    if parts.get("condition") is not None and parts["condition"].strip().upper().startswith("INTO"):
        raise ManifestError([("route", f"WHERE needs a condition: {text!r}")])
    return parts


def check_routes(routes: Mapping[str, Any]) -> list[tuple[str, str]]:
    problems = []
    for name, route in routes.items():
        if not isinstance(name, str) or not ROUTE_NAME_RE.match(name):
            problems.append((f"routes.{name}", "route names cannot hold '.', '$', '#' or a space"))
            continue
        if isinstance(route, Mapping):
            extra = set(route) - {"route", "priority", "timeToLiveSecs"}
            if extra:
                problems.append((f"routes.{name}", f"unknown keys {sorted(extra)}; a route is a string or {{route, priority, timeToLiveSecs}}"))
                continue
            prio = route.get("priority", 0)
            if isinstance(prio, bool) or not isinstance(prio, int) or not 0 <= prio <= 9:
                problems.append((f"routes.{name}.priority", f"must be an integer 0-9, got {prio!r}"))
        try:
            parse_route(route)
        except ManifestError as exc:
            problems += [(f"routes.{name}", what) for _, what in exc.problems]
    return problems


def module_problems(module: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every rule for one module entry, by field (module_name, env.KEY, create_options, status, restart_policy)."""
    problems: list[tuple[str, str]] = []
    if (why := check_module_name(module.get("name"))) is not None:
        problems.append(("module_name", why))
    problems += check_env(module.get("env") or {})
    if module.get("status", "running") not in STATUSES:
        problems.append(("status", f"must be one of {', '.join(STATUSES)}, got {module.get('status')!r}"))
    if module.get("restart_policy", "always") not in RESTART_POLICIES:
        problems.append(("restart_policy", f"must be one of {', '.join(RESTART_POLICIES)}, got {module.get('restart_policy')!r}"))
    if module.get("image_pull_policy", "on-create") not in IMAGE_PULL_POLICIES:
        problems.append(("image_pull_policy", f"must be one of {', '.join(IMAGE_PULL_POLICIES)}, got {module.get('image_pull_policy')!r}"))
    try:
        split_create_options(parse_create_options(module.get("create_options")))
    except ManifestError as exc:
        problems += exc.problems
    return problems


# ---------------------------------------------------------------- render


def module_entry(module: Mapping[str, Any]) -> dict[str, Any]:
    """One `$edgeAgent` module: version, type, status, restartPolicy, image, createOptions, env."""
    entry: dict[str, Any] = {
        "version": str(module.get("version") or "1.0"),
        "type": "docker",
        "status": module.get("status", "running"),
        "restartPolicy": module.get("restart_policy", "always"),
        "settings": {"image": module["image"], **split_create_options(parse_create_options(module.get("create_options")))},
    }
    if module.get("image_pull_policy"):
        entry["imagePullPolicy"] = module["image_pull_policy"]
    if module.get("startup_order") is not None:
        entry["startupOrder"] = int(module["startup_order"])
    if module.get("env"):
        entry["env"] = {k: {"value": v} for k, v in sorted(module["env"].items())}
    return entry


def render(
    modules: Iterable[Mapping[str, Any]],
    routes: Mapping[str, Any] | None = None,
    registry_credentials: Mapping[str, Mapping[str, str]] | None = None,
    store_and_forward_ttl: int = STORE_AND_FORWARD_TTL,
) -> dict[str, Any]:
    """The deployment manifest (`{"modulesContent": …}`) for these modules and routes.

    `registry_credentials`: {name: {username, password, address}}; the password is
    whatever the caller passes (a placeholder when the manifest is only shown).
    """
    modules = list(modules)
    runtime_settings: dict[str, Any] = {"minDockerVersion": "v1.25", "loggingOptions": ""}
    if registry_credentials:
        runtime_settings["registryCredentials"] = {k: dict(v) for k, v in registry_credentials.items()}
    agent = {
        "schemaVersion": AGENT_SCHEMA_VERSION,
        "runtime": {"type": "docker", "settings": runtime_settings},
        "systemModules": {
            "edgeAgent": {"type": "docker", "settings": {"image": EDGE_AGENT_IMAGE, "createOptions": "{}"}},
            "edgeHub": {
                "type": "docker",
                "status": "running",
                "restartPolicy": "always",
                "settings": {"image": EDGE_HUB_IMAGE, **split_create_options(EDGE_HUB_CREATE_OPTIONS)},
            },
        },
        "modules": {m["name"]: module_entry(m) for m in modules},
    }
    hub = {
        "schemaVersion": HUB_SCHEMA_VERSION,
        "routes": {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in (routes or {}).items()},
        "storeAndForwardConfiguration": {"timeToLiveSecs": int(store_and_forward_ttl)},
    }
    content: dict[str, Any] = {"$edgeAgent": {"properties.desired": agent}, "$edgeHub": {"properties.desired": hub}}
    for m in modules:
        content[m["name"]] = {"properties.desired": {}}
    return {"modulesContent": content}


def modules_of(manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The custom modules of a manifest, by name (what an agent runs)."""
    return dict(manifest["modulesContent"]["$edgeAgent"]["properties.desired"].get("modules") or {})


# ---------------------------------------------------------------- check


@lru_cache(maxsize=None)
def schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / name).read_text())


def json_path(parts: Iterable[Any]) -> str:
    """`$.modulesContent['$edgeAgent']['properties.desired'].modules.scorer.status`."""
    out = "$"
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", str(p)):
            out += f".{p}"
        else:
            out += "['" + str(p).replace("'", "\\'") + "']"
    return out


def _schema_problems(doc: Any, name: str, prefix: tuple[Any, ...] = ()) -> list[tuple[str, str]]:
    from jsonschema import Draft4Validator

    validator = Draft4Validator(schema(name))
    errors = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    return [(json_path(prefix + tuple(e.absolute_path)), f"{e.message} (schema {name})") for e in errors]


def validate(manifest: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Problems of a manifest as (JSON path, message); empty when it passes.

    The whole manifest against the deployment schema, `$edgeAgent` and `$edgeHub`
    against the schemas of their schemaVersion (as `az iot edge set-modules`
    does), then what no schema says: createOptions parts, routes, twin size.
    """
    problems = _schema_problems(manifest, DEPLOYMENT_SCHEMA)
    content = manifest.get("modulesContent") if isinstance(manifest, Mapping) else None
    if not isinstance(content, Mapping):
        return problems
    base = ("modulesContent",)
    agent, hub = content.get("$edgeAgent"), content.get("$edgeHub")
    if isinstance(agent, Mapping):
        if (agent.get("properties.desired") or {}).get("schemaVersion") == AGENT_SCHEMA_VERSION:
            problems += _schema_problems({"$edgeAgent": agent}, AGENT_SCHEMA, base)
        desired = agent.get("properties.desired") or {}
        where = base + ("$edgeAgent", "properties.desired")
        for group in ("systemModules", "modules"):
            for name, mod in (desired.get(group) or {}).items():
                settings = mod.get("settings") if isinstance(mod, Mapping) else None
                if not isinstance(settings, Mapping):
                    continue
                path = json_path(where + (group, name, "settings"))
                keys = [k for k in settings if k.lower().startswith("createoptions")]
                for k in keys:
                    if isinstance(settings[k], str) and len(settings[k]) > CREATE_OPTIONS_CHUNK:
                        problems.append((f"{path}.{k}", f"is {len(settings[k])} characters, more than {CREATE_OPTIONS_CHUNK}"))
                if len(keys) > CREATE_OPTIONS_MAX_PARTS:
                    problems.append((path, f"has {len(keys)} createOptions parts, more than {CREATE_OPTIONS_MAX_PARTS}"))
                if keys:
                    try:
                        if not isinstance(json.loads(join_create_options(settings)), dict):
                            problems.append((f"{path}.createOptions", "joined, is not a JSON object"))
                    except json.JSONDecodeError as exc:
                        problems.append((f"{path}.createOptions", f"joined, is not JSON: {exc}"))
        if len(desired.get("modules") or {}) > MAX_MODULES:
            problems.append((json_path(where + ("modules",)), f"more than {MAX_MODULES} modules in one deployment"))
        size = len(json.dumps(desired, separators=(",", ":")))
        if size > TWIN_MAX_BYTES:
            problems.append((json_path(where), f"is {size} bytes, more than the module twin's {TWIN_MAX_BYTES}"))
    if isinstance(hub, Mapping):
        desired = hub.get("properties.desired") or {}
        if desired.get("schemaVersion") == HUB_SCHEMA_VERSION:
            problems += _schema_problems({"$edgeHub": hub}, HUB_SCHEMA, base)
        for name, route in (desired.get("routes") or {}).items():
            try:
                parse_route(route)
            except ManifestError as exc:
                path = json_path(base + ("$edgeHub", "properties.desired", "routes", name))
                problems += [(path, what) for _, what in exc.problems]
    # The same error found by two schemas is said once.
    seen: dict[tuple[str, str], tuple[str, str]] = {}
    for where, what in problems:
        seen.setdefault((where, what.split(" (schema ")[0]), (where, what))
    return list(seen.values())


def check(manifest: Mapping[str, Any]) -> None:
    """Raise ManifestError naming each JSON path that fails."""
    problems = validate(manifest)
    if problems:
        raise ManifestError(problems)
