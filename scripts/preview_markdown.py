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
}
SERVICE_WORDS = {
    "cpu_cores": "cpu_cores",
    "memory_gb": "memory_gb",
    "port": "port",
    "auth_enabled": "auth_enabled",
    "max_request_bytes": "max_request_bytes",
    "gateway_image": "gateway image",
}


def _arrow(old: Any, new: Any) -> str:
    return f"{old} → {new}"


def _component_name(urn: str) -> str:
    """`…::aciservice-service` → `aciservice` (the component that owns the dynamic resource)."""
    name = urn.rsplit("::", 1)[-1]
    for suffix in ("-version", "-image", "-service"):
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
        return [f"service `{new.get('service_name')}` on target `{new.get('target')}` with {versions or 'its models'}"]
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
    return out


DESCRIBE = {"RegisteredModel": describe_model, "InferenceImage": describe_image, "ContainerInstanceService": describe_service}


def render(stack_name: str, steps: list[dict[str, Any]], summary: Mapping[str, int]) -> str:
    """Markdown for a list of steps: {op, type, urn, old, new} (inputs of old and new)."""
    rows = []
    for step in steps:
        words = OP_WORDS.get(step["op"], step["op"])
        kind = KIND.get(step["type"])
        if words is None or kind is None:
            continue
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
    return "\n".join(lines) + "\n"


def preview_steps(stack) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Run a real preview and collect its steps from the engine's events."""
    steps: list[dict[str, Any]] = []

    def on_event(event) -> None:
        pre = event.resource_pre_event
        if pre is None:
            return
        md = pre.metadata
        op = md.op.value if hasattr(md.op, "value") else str(md.op)
        steps.append({
            "op": op,
            "type": md.type,
            "urn": md.urn,
            "old": dict(md.old.inputs or {}) if md.old else {},
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

    st = stack_cli.select_stack(args.stack)
    steps, summary = preview_steps(st)
    markdown = render(args.stack, steps, summary)
    if args.out:
        Path(args.out).write_text(markdown)
    print(markdown, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
