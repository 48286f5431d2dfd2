"""The `mldeploy` package: one import name, in a checkout and in the wheel's layout.

No engine, no Docker: the checkout's names (mldeploy.components is components/),
what the engine's provider process unpickles, what the wheel carries (setup.py's
layout of the tree) and what it declares. tests/test_package_e2e.py builds and
installs the real wheel.
"""

from __future__ import annotations

import ast
import base64
import importlib
import importlib.metadata
import importlib.util
import json
import os
import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT, parse_python

FOLDERS = ("components", "providers", "runtime")
"""The top-level folders that are subpackages of mldeploy (never top-level packages of their own)."""
CODE_SCOPE = ("components", "providers", "scripts", "tests", "bench", "examples")


def _python(code: str, cwd: Path) -> dict:
    """Run `code` in a fresh interpreter started in `cwd` (as the engine starts `python -m
    pulumi.dynamic` in the project's folder); it prints one JSON document."""
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_in_a_checkout_mldeploy_names_the_top_level_folders_and_only_them() -> None:
    # Every module of components/ and providers/, and every target, loaded by the one name:
    # none of them pulls in a second copy under a generic top-level name.
    got = _python(
        """
import importlib, json, pkgutil, sys
import mldeploy, mldeploy.components as c
from mldeploy.providers.targets import TARGETS, target_for
loaded = []
for folder in ("components", "providers"):
    for m in pkgutil.walk_packages([folder], prefix=f"mldeploy.{folder}."):
        importlib.import_module(m.name)
        loaded.append(m.name)
for name in list(TARGETS):
    target_for(name)
print(json.dumps({
    "components": c.__file__, "loaded": loaded,
    "generic": sorted(k for k in sys.modules if k.split(".")[0] in ("components", "providers", "runtime")),
}))
""",
        ROOT,
    )
    assert got["components"] == str(ROOT / "components" / "__init__.py")
    assert len(got["loaded"]) > 20, got["loaded"]
    assert got["generic"] == [], f"imported under a generic top-level name too: {got['generic']}"


def test_code_imports_the_package_by_its_one_name() -> None:
    # A module imported as `providers.x` and as `mldeploy.providers.x` is two modules: two
    # provider classes, two locks. Everything in the repository says mldeploy.<folder>.
    offenders = []
    files = [ROOT / "__main__.py", *(p for d in CODE_SCOPE for p in (ROOT / d).rglob("*.py"))]
    for path in files:
        if "__pycache__" in path.parts:
            continue
        for node in ast.walk(parse_python(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.split(".")[0] in FOLDERS:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert offenders == [], "import these as mldeploy.<folder>...:\n" + "\n".join(offenders)


def test_providers_are_pickled_by_their_mldeploy_name_and_load_in_the_project_folder() -> None:
    # The engine keeps `__provider` (dill, by reference) in the state and unpickles it in
    # `python -m pulumi.dynamic`, started in the project's folder: there, the reference
    # must import, and by the same name whether the project is a checkout or uses the wheel.
    from pulumi.dynamic import ResourceProvider
    from pulumi.dynamic.dynamic import serialize_provider

    import mldeploy.providers

    classes = []
    for m in pkgutil.walk_packages(mldeploy.providers.__path__, prefix="mldeploy.providers."):
        module = importlib.import_module(m.name)
        classes += [
            obj for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, ResourceProvider) and obj.__module__ == m.name
        ]
    assert len(classes) >= 5, classes
    pickles = {f"{c.__module__}.{c.__qualname__}": serialize_provider(c()) for c in classes}
    for name, text in pickles.items():
        assert name.startswith("mldeploy.providers."), name
        assert name.rsplit(".", 1)[0].encode() in base64.b64decode(text), name
    got = _python(
        "import base64, json, dill\n"
        f"pickles = {json.dumps(pickles)}\n"
        "out = {n: (lambda p: f'{type(p).__module__}.{type(p).__qualname__}')(dill.loads(base64.b64decode(t))) for n, t in pickles.items()}\n"
        "print(json.dumps(out))",
        ROOT,
    )
    assert got == {name: name for name in pickles}


def _wheel_files() -> set[str]:
    """Where setup.py's layout puts each file of the tree inside the wheel."""
    spec = importlib.util.spec_from_file_location("mldeploy_setup", ROOT / "setup.py")
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)  # type: ignore[union-attr]
    packages, package_dir, package_data = setup.layout(ROOT)
    assert all(p == "mldeploy" or p.startswith("mldeploy.") for p in packages), packages
    files: set[str] = set()
    for pkg in packages:
        parts = pkg.split(".")
        base = next(ROOT / package_dir[".".join(parts[:n])] / Path(*parts[n:])
                    for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in package_dir)
        where = "/".join(parts)
        files |= {f"{where}/{p.name}" for p in base.glob("*.py")}
        files |= {f"{where}/{name}" for name in package_data.get(pkg, [])}
    return files


def test_the_wheel_layout_carries_every_file_of_the_folders() -> None:
    files = _wheel_files()
    for folder in FOLDERS:
        for p in (ROOT / folder).rglob("*"):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
                assert f"mldeploy/{p.relative_to(ROOT).as_posix()}" in files, p
    # Folders that code finds from __file__ sit at the same place relative to it as in the checkout.
    for folder in ("mldeploy/runtime/nginx/", "mldeploy/providers/targets/iotedge/schemas/"):
        assert any(f.startswith(folder) for f in files), folder
    assert "mldeploy/__init__.py" in files
    assert {f.split("/")[0] for f in files} == {"mldeploy"}


def _declared() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {}
    for req in project["dependencies"]:
        name = re.match(r"[A-Za-z0-9._-]+", req).group(0)
        out[_norm(name)] = req
    return out


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_third_party_import_of_the_package_is_a_declared_dependency() -> None:
    imports: list[tuple[str, str, str]] = []  # (module, the file it is loaded from, the importing file)
    for folder in ("components", "providers"):  # runtime/ runs inside the images
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(parse_python(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in (*FOLDERS, "mldeploy", "__future__"):
                        continue
                    spec = importlib.util.find_spec(name)
                    assert spec is not None and spec.origin, f"{path.relative_to(ROOT)} imports {name}, which is not installed"
                    imports.append((name, str(Path(spec.origin).resolve()), str(path.relative_to(ROOT))))
    # Which distribution installed each of those files. Only files named like one of them are resolved:
    # resolving every installed file took 17 s of the unit suite.
    wanted = {Path(origin).name for _, origin, _ in imports}
    owner: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        for f in dist.files or []:
            if f.name in wanted:
                owner[str(Path(dist.locate_file(f)).resolve())] = _norm(dist.metadata["Name"])
    declared = _declared()
    missing = set()
    for name, origin, where in imports:
        dist = owner.get(origin)
        if dist not in declared:
            missing.add(f"{name} ({dist}) in {where}")
    assert not missing, "add to pyproject.toml's dependencies:\n" + "\n".join(sorted(missing))


def test_the_locked_environment_satisfies_the_declared_dependencies() -> None:
    from packaging.requirements import Requirement  # in requirements.lock

    for name, req in _declared().items():
        installed = importlib.metadata.version(name)
        assert Requirement(req.split("#")[0].strip()).specifier.contains(installed, prereleases=True), (req, installed)


def test_an_installed_package_says_what_the_local_cluster_needs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The wheel has no scripts/ beside it: the local cluster's scripts come from a checkout.
    from mldeploy.providers.targets.kubernetes import cluster as cluster_provider
    from mldeploy.providers.targets.kubernetes import local_cluster as cluster

    monkeypatch.setattr(cluster, "CLUSTER_SH", tmp_path / "site-packages" / "scripts" / "k8s" / "cluster.sh")
    monkeypatch.delenv("MLDEPLOY_ROOT", raising=False)
    with pytest.raises(cluster.ClusterScriptsMissing) as caught:
        cluster.ensure_up()
    assert "MLDEPLOY_ROOT is not set" in str(caught.value)
    assert "mldeploy:kubeconfig" in str(caught.value)
    result = cluster_provider.ClusterProvider().check({}, {"source": "local", "cluster_purpose": "DevTest"})
    assert [f.property for f in result.failures] == ["kubeconfig"]
    assert "scripts/k8s/cluster.sh, which the installed package does not include" in result.failures[0].reason

    monkeypatch.setenv("MLDEPLOY_ROOT", str(tmp_path))
    with pytest.raises(cluster.ClusterScriptsMissing, match="has no scripts/k8s/cluster.sh"):
        cluster.is_up()
    monkeypatch.setenv("MLDEPLOY_ROOT", str(ROOT))
    assert cluster.cluster_script() == ROOT / "scripts" / "k8s" / "cluster.sh"
