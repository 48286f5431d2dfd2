#!/usr/bin/env python3
"""Render a stack's preview as Markdown for pull-request review.

    scripts/preview_markdown.py dev [--out preview.md]

It runs a real preview (Automation API, the real engine), reads the engine's
step events and says what changes in words a reviewer understands, per
component: "model `sklearn_regression_model` version 3 → 4", "cpu_cores 1 → 2",
and whether a resource is updated in place or replaced. Secrets never show.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Mapping

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))  # the checkout's `mldeploy` (an installed one would do too)

from mldeploy.providers.targets.service import _differs as service_input_differs  # noqa: E402 - after the path set-up
from mldeploy.providers.targets.service import path_inputs as service_path_inputs  # noqa: E402
from mldeploy.providers.targets.service import rules as service_rules  # noqa: E402
from mldeploy.providers.targets import UnknownTarget, target_for  # noqa: E402

OP_WORDS = {
    "create": "➕ create",
    "update": "✏️ update",
    "replace": "♻️ replace",
    "create-replacement": "♻️ replace",
    "delete": "🗑️ delete",
    "delete-replaced": None,  # the other half of a replacement: shown once
    "same": None,
    "read": None,
    "refresh": None,
}
KIND = {
    "pulumi-python:dynamic/mldeploy:ModelVersion": "RegisteredModel",
    "pulumi-python:dynamic/mldeploy:Image": "InferenceImage",
    "pulumi-python:dynamic/mldeploy:Service": "ContainerInstanceService",
    "pulumi-python:dynamic/mldeploy:Cluster": "AksCluster",
    "pulumi-python:dynamic/mldeploy:ManagedCluster": "AksCluster on Azure",
    "pulumi-python:dynamic/mldeploy:RegistryImage": "Image in registry",
    "pulumi-python:dynamic/mldeploy:ServiceKeys": "Service keys",
    "kubernetes:apps/v1:Deployment": "AksService",
    "pulumi-python:dynamic/mldeploy:KubernetesCanary": "AksService canary",
    "kubernetes:autoscaling/v2:HorizontalPodAutoscaler": "AksService autoscaler",
    "pulumi-python:dynamic/mldeploy:EdgeDeployment": "EdgeModule",
}
MODEL_ANNOTATION = "mldeploy.azureml.net/model."
SERVICE_WORDS = {
    "cpu_cores": "cpu_cores",
    "memory_gb": "memory_gb",
    "port": "port",
    "auth_enabled": "auth_enabled",
    "max_request_bytes": "max_request_bytes",
    "gateway_image": "gateway image",
}


# Inputs the words above describe in their own way; every other input a rule names gets the generic line.
DESCRIBED_SERVICE_INPUTS = {"service_name", "target", "models", "image_id", "primary_key_version", "secondary_key_version",
                            "environment_variables", *SERVICE_WORDS}
SECRET_SERVICE_INPUTS = {"registry_password", "ssl_certificate", "ssl_key"}


def _arrow(old: Any, new: Any) -> str:
    return f"{old} → {new}"


def _component_name(urn: str) -> str:
    """`…::aciservice-service` → `aciservice` (the component that owns the dynamic resource)."""
    name = urn.rsplit("::", 1)[-1]
    for suffix in ("-version", "-image", "-service", "-deployment", "-hpa", "-keys", "-managed-cluster", "-cluster", "-front-image"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def describe_model(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    name = new.get("model_name") or old.get("model_name")
    out = []
    if not old:
        return [f"model `{name}` version {new.get('version')} from `{new.get('model_path')}`"]
    if old.get("model_name") != new.get("model_name"):
        out.append(f"model name `{old.get('model_name')}` → `{new.get('model_name')}` (a different model: replaced)")
    if old.get("content_hash") != new.get("content_hash"):
        out.append(f"model `{name}` version {_arrow(old.get('version'), new.get('version'))} (new content)")
    if (old.get("tags") or {}) != (new.get("tags") or {}):
        out.append(f"tags {_arrow(old.get('tags') or {}, new.get('tags') or {})}")
    if (old.get("description") or "") != (new.get("description") or ""):
        out.append(f"description “{old.get('description') or ''}” → “{new.get('description') or ''}”")
    if not old.get("present", True):
        out.append(f"model `{name}` version {old.get('version')} is missing from the registry: registered again")
    return out


def describe_image(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    if not old:
        return [f"build from `{new.get('base_image')}` with entry script `{new.get('entry_script')}`"]
    out = []
    if old.get("base_image") != new.get("base_image"):
        out.append(f"base image `{old.get('base_image')}` → `{new.get('base_image')}`")
    if old.get("source_hash") != new.get("source_hash") and "source_hash" in old:
        out.append("source directory changed")
    if old.get("dependency_hash") != new.get("dependency_hash") and "dependency_hash" in old:
        out.append("dependencies changed")
    if old.get("entry_script") != new.get("entry_script"):
        out.append(f"entry script `{old.get('entry_script')}` → `{new.get('entry_script')}`")
    if old.get("build_hash") != new.get("build_hash"):
        out.append("image is rebuilt" if out else "image is rebuilt (its inputs changed)")
    if not old.get("present", True):
        out.append("image is missing: rebuilt")
    return out


def describe_service(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    if not old:
        versions = ", ".join(f"`{m.get('name')}` v{m.get('version')}" for m in new.get("models") or [] if isinstance(m, Mapping))
        created = [f"service `{new.get('service_name')}` on target `{new.get('target')}` with {versions or 'its models'}"]
        created += [new["sample_gate"]] if new.get("sample_gate") else []
        return created + ([f"preview smoke test: {new['smoke_test']}"] if new.get("smoke_test") else [])
    out = []
    for key in ("service_name", "target"):
        if old.get(key) != new.get(key):
            out.append(f"{key} `{old.get(key)}` → `{new.get(key)}` (replaced: the scoring URI changes)")
    old_models = {m.get("name"): m.get("version") for m in old.get("models") or [] if isinstance(m, Mapping)}
    new_models = {m.get("name"): m.get("version") for m in new.get("models") or [] if isinstance(m, Mapping)}
    for name in sorted(set(old_models) | set(new_models)):
        if name not in new_models:
            out.append(f"stops serving model `{name}`")
        elif name not in old_models:
            out.append(f"starts serving model `{name}` version {new_models[name]}")
        elif old_models[name] != new_models[name]:
            out.append(f"rolls to model `{name}` version {_arrow(old_models[name], new_models[name])}")
    if old.get("image_id") != new.get("image_id"):
        out.append("rolls to a new image")
    for key, words in SERVICE_WORDS.items():
        if key in new and old.get(key) != new.get(key):
            out.append(f"{words} {_arrow(old.get(key), new.get(key))}")
    for which in ("primary", "secondary"):
        if old.get(f"{which}_key_version") != new.get(f"{which}_key_version"):
            out.append(f"rotates the {which} key (version {_arrow(old.get(f'{which}_key_version'), new.get(f'{which}_key_version'))})")
    old_env, new_env = old.get("environment_variables") or {}, new.get("environment_variables") or {}
    changed_env = sorted(k for k in set(old_env) | set(new_env) if old_env.get(k) != new_env.get(k))
    if changed_env:
        out.append("environment variables changed: " + ", ".join(f"`{k}`" for k in changed_env))
    if old.get("state") not in (None, "Healthy"):
        out.append(f"found {old.get('state')} by refresh: restored")
    # Every other input a rule names, read from the provider's own rules: the review can never miss one.
    replace_on, roll_on, route_on = service_rules(new)
    paths = service_path_inputs(new)
    for key in dict.fromkeys(replace_on + roll_on + route_on):
        if key in DESCRIBED_SERVICE_INPUTS or not service_input_differs(key, old, new, paths):
            continue
        shown = "changed" if key in SECRET_SERVICE_INPUTS else _arrow(old.get(key), new.get(key))
        how = "replaced" if key in replace_on else "rolls" if key in roll_on else "in place"
        out.append(f"{key} {shown} ({how})")
    if out and new.get("sample_gate"):
        out.append(new["sample_gate"])  # what the new backend must answer before traffic moves
    if out and new.get("rollout_plan"):
        out.append(new["rollout_plan"])  # how traffic moves to it: the canary's steps and limits
    if new.get("smoke_test"):
        out.append(f"preview smoke test: {new['smoke_test']}")
    if out:
        out += _target_words(old, new)
    return out




def _target_words(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The target's own words for what the change costs (its `change_words`, beside its rules)."""
    try:
        target = target_for(new.get("target"))
    except UnknownTarget:
        return []
    replace_on, _, _ = service_rules(new)
    replaced = any(service_input_differs(k, old, new, service_path_inputs(new)) for k in replace_on if k in new)
    return target.change_words(old, new, replaced)


def describe_cluster(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    where = "the local cluster" if new.get("source") == "local" else "the cluster its kubeconfig names"
    if not old:
        return [f"attaches {where} as `{new.get('cluster_purpose')}`"]
    out = []
    if old.get("kubeconfig_sha") != new.get("kubeconfig_sha"):
        out.append("its kubeconfig changed (new credentials or a new cluster)")
    if old.get("cluster_purpose") != new.get("cluster_purpose"):
        out.append(f"cluster_purpose {_arrow(old.get('cluster_purpose'), new.get('cluster_purpose'))}")
    return out


def describe_managed_cluster(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """An AKS cluster created or attached through ARM, in the words of what Azure does."""
    purpose = f"`{new.get('cluster_purpose')}`"
    if not old:
        if new.get("mode") == "attach":
            return [f"attaches the AKS cluster `{new.get('resource_id')}` as {purpose}"]
        return [f"creates AKS cluster `{new.get('cluster_name')}` in {new.get('location')}: "
                f"{new.get('agent_count')} x {new.get('vm_size')} as {purpose}"]
    out = []
    if old.get("present") is False:
        out.append("deleted outside Pulumi (found by refresh): created again")
    for key in ("vm_size", "location", "dns_prefix", "cluster_name"):
        if old.get(key) != new.get(key):
            out.append(f"{key} {_arrow(old.get(key), new.get(key))}: AKS cannot change this in place, so the cluster "
                       "is deleted and created again, with every service on it")
    if old.get("agent_count") != new.get("agent_count"):
        out.append(f"agent_count {_arrow(old.get('agent_count'), new.get('agent_count'))}: the same cluster is scaled")
    if old.get("cluster_purpose") != new.get("cluster_purpose"):
        out.append(f"cluster_purpose {_arrow(old.get('cluster_purpose'), new.get('cluster_purpose'))}")
    return out


def describe_registry_image(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    new_models = {m.get("name"): m.get("version") for m in new.get("models") or [] if isinstance(m, Mapping)}
    old_models = {m.get("name"): m.get("version") for m in old.get("models") or [] if isinstance(m, Mapping)}
    repo = new.get("repository") or old.get("repository")
    if not old:
        layer = ", ".join(f"`{n}` v{v}" for n, v in sorted(new_models.items()))
        return [f"pushes `{repo}`" + (f" with a model layer ({layer})" if layer else "")]
    out = [f"model layer: `{n}` version {_arrow(old_models.get(n), v)}" for n, v in sorted(new_models.items()) if old_models.get(n) != v]
    if old.get("source_image_id") != new.get("source_image_id"):
        out.append("new inference image")
    if out:
        out.append(f"pushes a new digest of `{repo}`")
    elif old.get("repository") != new.get("repository"):
        out.append(f"pushes `{repo}` (was `{old.get('repository')}`)")
    elif old.get("present") is False:
        out.append(f"missing from the registry (found by refresh): pushes `{repo}` again")
    else:
        # Nothing of the image changed: only the registry's credentials (a rotated password).
        out.append(CREDENTIALS_ONLY)
    return out


def _template(inputs: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = inputs.get("spec") if isinstance(inputs.get("spec"), Mapping) else {}
    tmpl = spec.get("template") if isinstance(spec.get("template"), Mapping) else {}
    return tmpl


def _annotations(inputs: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = _template(inputs).get("metadata")
    ann = meta.get("annotations") if isinstance(meta, Mapping) else None
    return ann if isinstance(ann, Mapping) else {}


UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"  # how the engine shows a value known only at up


def _same_where_known(old: Any, new: Any) -> bool:
    """True when `new` differs from `old` only in values that are not known yet."""
    if new == UNKNOWN:
        return True
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return set(old) == set(new) and all(_same_where_known(old[k], new[k]) for k in old)
    if isinstance(old, list) and isinstance(new, list):
        return len(old) == len(new) and all(_same_where_known(o, n) for o, n in zip(old, new))
    return old == new


CREDENTIALS_ONLY = "new registry credentials, kept for later reads and deletes; nothing is pushed"


def describe_deployment(old: Mapping[str, Any], new: Mapping[str, Any], images_change: bool = True) -> list[str]:
    """`images_change` False: every image in the registry that changes keeps its digest (new credentials only)."""
    spec = new.get("spec") if isinstance(new.get("spec"), Mapping) else {}
    meta = new.get("metadata") if isinstance(new.get("metadata"), Mapping) else {}
    where = f"`{meta.get('namespace', 'default')}/{meta.get('name', '?')}`"
    if not old:
        replicas = spec.get("replicas")
        count = f"{replicas} replica(s)" if replicas is not None else "autoscaled replicas"
        return [f"Deployment {where} with {count}, rolling with maxUnavailable 0"]
    out = []
    old_ann, new_ann = _annotations(old), _annotations(new)
    for key in sorted(k for k in set(old_ann) | set(new_ann) if str(k).startswith(MODEL_ANNOTATION)):
        if old_ann.get(key) != new_ann.get(key):
            out.append(f"model `{key[len(MODEL_ANNOTATION):]}` version {_arrow(old_ann.get(key), new_ann.get(key))}")
    if old_ann.get("mldeploy.azureml.net/config-checksum") != new_ann.get("mldeploy.azureml.net/config-checksum"):
        out.append("front end configuration (keys or limits) changed")
    out += _pod_words(_template(old), _template(new), old_ann, new_ann)
    if not images_change and _template(old) != _template(new) and _same_where_known(_template(old), _template(new)):
        # An image in the registry updates without a new digest (new credentials): up decides.
        out.insert(0, f"{where}: image references are known only at up; the pods roll only if a digest changes")
    elif _template(old) != _template(new):
        out.insert(0, f"rolls {where}: a new ReplicaSet, pods replaced one at a time (maxUnavailable 0); the scoring URI stays")
    old_spec = old.get("spec") if isinstance(old.get("spec"), Mapping) else {}
    if old_spec.get("replicas") != spec.get("replicas"):
        out.append(f"replicas {_arrow(old_spec.get('replicas'), spec.get('replicas'))}")
    return out


TLS_ANNOTATION = "mldeploy.azureml.net/tls-checksum"


def _pod_words(old_t: Mapping[str, Any], new_t: Mapping[str, Any], old_ann: Mapping[str, Any], new_ann: Mapping[str, Any]) -> list[str]:
    """Why the pods roll when no model or key changed: their security settings, or TLS at the front end."""
    out = []
    old_pod = old_t.get("spec") if isinstance(old_t.get("spec"), Mapping) else {}
    new_pod = new_t.get("spec") if isinstance(new_t.get("spec"), Mapping) else {}

    def security(pod: Mapping[str, Any]) -> list[Any]:
        containers = pod.get("containers") if isinstance(pod.get("containers"), list) else []
        return [pod.get("securityContext")] + [c.get("securityContext") for c in containers if isinstance(c, Mapping)]

    if old_pod and security(old_pod) != security(new_pod):
        ctx = new_pod.get("securityContext") if isinstance(new_pod.get("securityContext"), Mapping) else {}
        who = f"as uid {ctx['runAsUser']}" if "runAsUser" in ctx else "with new settings"
        out.append(f"the pods' security settings change (they run {who}, with no capabilities and a read-only root): "
                   "every pod of this service is replaced once, one at a time")
    if TLS_ANNOTATION in new_ann and TLS_ANNOTATION not in old_ann:
        out.append("the front end starts serving HTTPS (ssl_enabled): clients must switch to the https:// scoring URI")
    elif TLS_ANNOTATION in old_ann and TLS_ANNOTATION not in new_ann:
        out.append("the front end stops serving HTTPS: keys and requests travel over plain HTTP")
    elif old_ann.get(TLS_ANNOTATION) != new_ann.get(TLS_ANNOTATION):
        out.append("new TLS certificate or key")
    return out


def describe_hpa(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    def facts(inputs: Mapping[str, Any]) -> str:
        spec = inputs.get("spec") if isinstance(inputs.get("spec"), Mapping) else {}
        metrics = spec.get("metrics") or [{}]
        target = ((metrics[0].get("resource") or {}).get("target") or {}).get("averageUtilization") if isinstance(metrics[0], Mapping) else None
        return f"{spec.get('minReplicas')}–{spec.get('maxReplicas')} replicas at {target}% CPU"

    if not old:
        return [f"autoscale {facts(new)}"]
    return [f"autoscale {_arrow(facts(old), facts(new))}"] if facts(old) != facts(new) else []


def describe_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    if not old:
        return ["makes a primary and a secondary key"]
    return [
        f"rotates the {w} key (version {_arrow(old.get(f'{w}_key_version'), new.get(f'{w}_key_version'))})"
        for w in ("primary", "secondary")
        if old.get(f"{w}_key_version") != new.get(f"{w}_key_version")
    ]


CONFIGURATION_DRIFT = ("configuration", "target_condition", "priority")
"""What refresh can find changed in an at-scale configuration (not module names)."""


def describe_edge_deployment(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """An edge device's manifest: "module `scorer` image → v4; model `x` version 3 → 4"."""
    device = new.get("device") or old.get("device") or {}
    where = f"device `{device.get('device_id')}` ({device.get('backend')})"
    condition = new.get("target_condition")
    if condition:  # an at-scale deployment: an IoT Hub configuration for every device the condition selects
        where = f"the devices where `{condition}` (an at-scale configuration, priority {new.get('priority') or 0})"
    new_versions = new.get("module_versions") if isinstance(new.get("module_versions"), Mapping) else {}
    old_versions = old.get("module_versions") if isinstance(old.get("module_versions"), Mapping) else {}
    old_modules = {m.get("name"): m for m in old.get("modules") or [] if isinstance(m, Mapping)}
    out = []
    for m in new.get("modules") or []:
        if not isinstance(m, Mapping):
            continue
        name, models = m.get("name"), m.get("models") if isinstance(m.get("models"), Mapping) else {}
        was = old_modules.get(name)
        if not old or was is None:
            with_models = ", ".join(f"`{n}` v{v}" for n, v in sorted(models.items()))
            out.append(f"module `{name}` v{new_versions.get(name, 1)} on {where}" + (f" with {with_models}" if with_models else ""))
            continue
        parts = []
        if old_versions.get(name) != new_versions.get(name):
            parts.append(f"module `{name}` image → v{new_versions.get(name)}")
        old_models = was.get("models") if isinstance(was.get("models"), Mapping) else {}
        parts += [f"model `{n}` version {_arrow(old_models.get(n), v)}" for n, v in sorted(models.items()) if old_models.get(n) != v]
        for key in ("status", "restart_policy"):
            if was.get(key) != m.get(key):
                parts.append(f"{key} {_arrow(was.get(key), m.get(key))}")
        old_env, new_env = was.get("env") or {}, m.get("env") or {}
        changed_env = sorted(k for k in set(old_env) | set(new_env) if old_env.get(k) != new_env.get(k))
        if changed_env:
            parts.append("env changed: " + ", ".join(f"`{k}`" for k in changed_env))
        if was.get("create_options") != m.get("create_options"):
            parts.append("createOptions changed")
        if parts:
            out.append("; ".join(parts))
    if not old:
        return out
    for name in sorted(set(old_modules) - {m.get("name") for m in new.get("modules") or [] if isinstance(m, Mapping)}):
        out.append(f"module `{name}` leaves the manifest")
    old_routes, new_routes = old.get("routes") or {}, new.get("routes") or {}
    changed_routes = sorted(k for k in set(old_routes) | set(new_routes) if old_routes.get(k) != new_routes.get(k))
    if changed_routes:
        out.append("routes changed: " + ", ".join(f"`{k}`" for k in changed_routes))
    if out and condition:
        # A configuration's content cannot change: a new manifest is a new configuration.
        out.append(f"a new configuration for {where} replaces the old one, which is deleted")
    elif out:
        out.append(f"a new manifest is applied to {where}")
    if condition and old.get("target_condition") != condition:
        out.append(f"target condition {_arrow(old.get('target_condition'), condition)}")
    if condition and (old.get("priority") or 0) != (new.get("priority") or 0) and old.get("target_condition"):
        out.append(f"priority {_arrow(old.get('priority') or 0, new.get('priority') or 0)}")
    if condition and out and not any(w.startswith("a new configuration") for w in out):
        out.append("the same configuration is updated in place")
    drift = old.get("drift") if isinstance(old.get("drift"), Mapping) else {}
    if drift:
        found = [f"{k} {v}" if k in CONFIGURATION_DRIFT else f"module `{k}` {v}" for k, v in sorted(drift.items())]
        out.append("found by refresh: " + ", ".join(found) + ": restored")
    return out


def describe_canary(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """An AksService's canary: its steps and limits when a roll runs it, or why this roll is a plain one."""
    return [new["rollout_plan"]] if new.get("rollout_plan") else []


DESCRIBE = {
    "RegisteredModel": describe_model,
    "InferenceImage": describe_image,
    "ContainerInstanceService": describe_service,
    "AksCluster": describe_cluster,
    "AksCluster on Azure": describe_managed_cluster,
    "Image in registry": describe_registry_image,
    "Service keys": describe_keys,
    "AksService": describe_deployment,
    "AksService autoscaler": describe_hpa,
    "AksService canary": describe_canary,
    "EdgeModule": describe_edge_deployment,
}


def render(stack_name: str, steps: list[dict[str, Any]], summary: Mapping[str, int], warnings: list[str] | tuple[str, ...] = ()) -> str:
    """Markdown for a list of steps: {op, type, urn, old, new} (inputs of old and new), and the program's warnings."""
    rows = []
    # A Deployment whose image references are unknown at preview rolls unless every registry image keeps its digest.
    images_change = any(
        OP_WORDS.get(st["op"]) is not None and describe_registry_image(st.get("old") or {}, st.get("new") or {}) != [CREDENTIALS_ONLY]
        for st in steps if KIND.get(st["type"]) == "Image in registry"
    )
    for step in steps:
        words = OP_WORDS.get(step["op"], step["op"])
        kind = KIND.get(step["type"])
        if words is None or kind is None:
            continue
        if kind == "AksService":
            details = describe_deployment(step.get("old") or {}, step.get("new") or {}, images_change)
        else:
            details = DESCRIBE[kind](step.get("old") or {}, step.get("new") or {})
        if step["op"] == "delete":
            details = details[:0] or ["removed with everything it started"]
        rows.append(f"| {words} | {kind} `{_component_name(step['urn'])}` | {'<br>'.join(details) or '—'} |")
    counts = ", ".join(f"{n} to {op}" for op, n in sorted(summary.items()) if op != "same" and n)
    unchanged = summary.get("same", 0)
    lines = [f"### Pulumi preview of stack `{stack_name}`", ""]
    if rows:
        lines += ["| change | resource | what changes |", "|---|---|---|", *rows, ""]
    else:
        lines += ["No changes.", ""]
    lines.append(f"**{counts or 'nothing to change'}**; {unchanged} unchanged.")
    if warnings:
        # The program's own warnings (keys over plain HTTP, wheels-only off): a reviewer must see them too.
        lines += ["", "**Warnings**", "", *(f"- ⚠️ {' '.join(str(w).split())}" for w in dict.fromkeys(warnings))]
    return "\n".join(lines) + "\n"


def preview_steps(stack, warnings: list[str] | None = None) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Run a real preview and collect its steps from the engine's events (and, into `warnings`, its warnings)."""
    steps: list[dict[str, Any]] = []

    def on_event(event) -> None:
        diag = getattr(event, "diagnostic_event", None)
        if diag is not None and warnings is not None and str(getattr(diag, "severity", "")) == "warning":
            warnings.append(str(diag.message).strip())
        pre = event.resource_pre_event
        if pre is None:
            return
        md = pre.metadata
        op = md.op.value if hasattr(md.op, "value") else str(md.op)
        old = dict(md.old.inputs or {}) if md.old else {}
        drift = (md.old.outputs or {}).get("drift") if md.old else None
        if drift and "drift" not in old:
            old["drift"] = drift  # what refresh found, kept in outputs only when the inputs hold secrets
        steps.append({
            "op": op,
            "type": md.type,
            "urn": md.urn,
            "old": old,
            "new": dict(md.new.inputs or {}) if md.new else {},
        })

    result = stack.preview(on_event=on_event, color="never")
    summary = {(k.value if hasattr(k, "value") else str(k)): v for k, v in (result.change_summary or {}).items()}
    return steps, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stack", nargs="?", default="dev")
    parser.add_argument("--out", help="also write the Markdown to this file")
    args = parser.parse_args(argv)
    import stack as stack_cli

    try:
        st = stack_cli.select_stack(args.stack)
    except Exception as exc:  # noqa: BLE001 - BackendError is matched by name: its module may not be importable yet
        if not isinstance(exc, stack_cli.PassphraseMissing) and type(exc).__name__ != "BackendError":
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    warnings: list[str] = []
    steps, summary = preview_steps(st, warnings)
    markdown = render(args.stack, steps, summary, warnings)
    if args.out:
        Path(args.out).write_text(markdown)
    print(markdown, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
