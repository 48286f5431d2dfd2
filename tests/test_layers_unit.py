"""The layout's directions (issue 19, item 6): no import circles, no upward imports.

Every `import` in components/, providers/ and runtime/ is read with `ast`,
including imports inside functions (a lazy import is still a dependency). The
layers, lowest first, are the table below; a module may import its own layer or
lower ones, and a target package never imports another target. A circle is
found on the module graph whatever the layers say.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import parse_python

from mldeploy.providers.targets import TARGETS

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"components": "mldeploy.components", "providers": "mldeploy.providers", "runtime": "mldeploy.runtime"}

# Lowest first. A module's layer is the longest prefix of its name found here.
LAYERS: list[tuple[str, ...]] = [
    ("mldeploy.runtime",),
    ("mldeploy.providers.core",),
    # what targets share: the front end, the gates, the model registry, images, and the rollout engine
    ("mldeploy.providers.front", "mldeploy.providers.gate", "mldeploy.providers.model_registry", "mldeploy.providers.images",
     "mldeploy.providers.rollouts"),
    # the image registry, and what the Azure targets share (ARM, AKS on Azure): ACR is both
    ("mldeploy.providers.image_registry", "mldeploy.providers.targets.azure"),
    ("mldeploy.providers.targets",),  # the seam: targets/__init__.py
    # every registered target's package (a new target needs no line here)
    tuple(sorted({entry if isinstance(entry, str) else type(entry).__module__ for entry in TARGETS.values()})),
    ("mldeploy.providers.targets.service",),
    # one-line shims where earlier releases pickled a provider, and the provider host
    ("mldeploy.providers",),
    ("mldeploy.components",),
]
TARGET_PACKAGES = set(LAYERS[5])


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    parts[0] = FOLDERS[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                found[module_name(path)] = path
    return found


MODULES = modules()


def resolve(name: str) -> str | None:
    """The module of ours that an imported name lands in (a name imported from a package may be a module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(mod: str, path: Path) -> set[str]:
    out: set[str] = set()
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    for node in ast.walk(parse_python(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            for alias in node.names:
                for candidate in (f"{base}.{alias.name}", base):
                    found = resolve(candidate) if candidate.startswith("mldeploy.") else None
                    if found:
                        out.add(found)
                        break
        elif isinstance(node, ast.Import):
            for alias in node.names:
                found = resolve(alias.name) if alias.name.startswith("mldeploy.") else None
                if found:
                    out.add(found)
    out.discard(mod)
    return out


GRAPH = {mod: imports_of(mod, path) for mod, path in MODULES.items()}


def layer_of(mod: str) -> int:
    best, best_len = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best >= 0, f"{mod} is in no layer: add its package to LAYERS"
    return best


def package_of(mod: str) -> str | None:
    return next((p for p in TARGET_PACKAGES | {"mldeploy.providers.targets.azure"} if mod == p or mod.startswith(p + ".")), None)


def test_every_module_has_a_layer() -> None:
    assert len(MODULES) > 50
    for mod in MODULES:
        layer_of(mod)


def test_no_import_goes_up_a_layer() -> None:
    upward = sorted(f"{m} (layer {layer_of(m)}) imports {i} (layer {layer_of(i)})"
                    for m, deps in GRAPH.items() for i in deps if layer_of(i) > layer_of(m))
    assert not upward, "\n".join(upward)


def test_targets_never_import_each_other() -> None:
    crossing = sorted(f"{m} imports {i}" for m, deps in GRAPH.items() for i in deps
                      if package_of(m) in TARGET_PACKAGES and package_of(i) in TARGET_PACKAGES and package_of(m) != package_of(i))
    assert not crossing, "\n".join(crossing)


def test_runtime_imports_nothing_of_the_providers() -> None:
    assert not {i for m, deps in GRAPH.items() if m.startswith("mldeploy.runtime") for i in deps if not i.startswith("mldeploy.runtime")}


def test_no_import_circle() -> None:
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(GRAPH.get(m, ())):
            if state.get(d) == 1:
                circles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
    assert not circles, "\n".join(" -> ".join(c) for c in circles)


def test_the_walk_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The test would pass on a tree it cannot read; show it reads both kinds."""
    assert "mldeploy.providers.targets.kubernetes.kube" in GRAPH["mldeploy.providers.targets.kubernetes.cluster"]
    assert "mldeploy.providers.core.containers" in GRAPH["mldeploy.providers.gate.smoke_test"]
