"""The components as a library: another Pulumi project installs the built wheel and deploys.

Builds the wheel from a copy of this checkout, installs it into a fresh virtual
environment of a temporary project (its own Pulumi.yaml, __main__.py, model and
entry script, another project name), then runs the real `pulumi` CLI there:
preview, up, a score on 127.0.0.1, a preview that expects no changes, destroy.
Nothing of the checkout is importable in that project: the wheel and its declared
dependencies are all it has.

Needs the package index (through pip's ordinary client and cache): the wheel's
build backend (setuptools, in pip's isolated build environment) and the wheel's
dependencies, pinned to requirements.lock's versions, are installed from it into
the temporary environment, never into the project's.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import docker
import joblib
import numpy as np
import pytest
import requests

from conftest import COPY_IGNORE, ROOT, train_model

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

PROJECT = "scoring-app"
"""Another project's name: the components read the `mldeploy:` config namespace whatever it is."""
SEED_REQUEST = {"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]]}

MAIN = '''"""A project of its own that uses the mldeploy components from the installed wheel."""
import pulumi
from mldeploy.components import ContainerInstanceService, InferenceImage, RegisteredModel

model = RegisteredModel("ridge", model_name="ridge_model", model_path="models/sklearn_regression_model.pkl",
                        description="Ridge regression over 10 features")
image = InferenceImage("scoring", entry_script="score.py", source_directory="src", conda_file="env/myenv.yml")
service = ContainerInstanceService("scorer", models=[model], image=image, cpu_cores=0.5, memory_gb=0.5,
                                   auth_enabled=True)
pulumi.export("model_version", model.version)
pulumi.export("scoring_uri", service.scoring_uri)
pulumi.export("primary_key", service.primary_key)
'''

PULUMI_YAML = f"""name: {PROJECT}
description: A project that installs mldeploy as a library.
runtime:
  name: python
  options:
    toolchain: pip
    virtualenv: .venv
"""

PROBE = """
import importlib.util, json, sys, sysconfig
import mldeploy, mldeploy.components as c
from mldeploy.providers.targets.iotedge import edge_manifest
from mldeploy.providers.front import gateway_config
from mldeploy.providers.images import build as images
print(json.dumps({
    "mldeploy": mldeploy.__file__, "path": list(mldeploy.__path__), "components": c.__file__,
    "purelib": sysconfig.get_paths()["purelib"],
    "generic": {n: importlib.util.find_spec(n) is not None for n in ("components", "providers", "runtime")},
    "files": {str(p): p.is_dir() and any(p.iterdir()) for p in (
        images.RUNTIME_DIR, gateway_config.TEMPLATE_DIR, edge_manifest.SCHEMA_DIR)},
}))
"""


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def build_wheel(tmp_path: Path) -> Path:
    """The wheel, built from a copy of the checkout (as a fresh clone has it)."""
    src = tmp_path / "src"
    build_output = shutil.ignore_patterns("build", "dist", "*.egg-info")
    shutil.copytree(ROOT, src, ignore=lambda d, names: set(COPY_IGNORE(d, names)) | set(build_output(d, names)))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(tmp_path / "dist"), str(src)], tmp_path, env)
    wheels = list((tmp_path / "dist").glob("mldeploy-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def consumer_env(tmp_path: Path) -> dict[str, str]:
    """A machine with the engine and Docker but no checkout: nothing points at this repository."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith("MLDEPLOY_") and k not in ("PYTHONPATH", "VIRTUAL_ENV", "PULUMI_CONFIG_PASSPHRASE_FILE")
    }
    if os.environ.get("MLDEPLOY_CACHE"):  # the machine's caches (the images' wheelhouse)
        env["MLDEPLOY_CACHE"] = os.environ["MLDEPLOY_CACHE"]
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and not p.startswith(str(ROOT)))
    env["PULUMI_BACKEND_URL"] = f"file://{tmp_path / 'backend'}"
    env["PULUMI_CONFIG_PASSPHRASE"] = "mldeploy-package-test"
    (tmp_path / "backend").mkdir()
    return env


def test_the_wheel_is_one_package_that_another_project_deploys_and_scores_with(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    name, version = wheel.name.split("-")[:2]
    assert {n.split("/")[0] for n in names} == {"mldeploy", f"{name}-{version}.dist-info"}, "one top-level package"
    for needed in ("mldeploy/__init__.py", "mldeploy/components/__init__.py", "mldeploy/providers/model_registry/provider.py",
                   "mldeploy/runtime/nginx/service.conf.tmpl", "mldeploy/providers/targets/iotedge/schemas/LICENSE"):
        assert needed in names, needed
    for folder in ("components", "providers", "runtime"):  # every file of the folders travels
        tree = {f"mldeploy/{p.relative_to(ROOT).as_posix()}" for p in (ROOT / folder).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
        assert tree <= set(names), sorted(tree - set(names))
    assert "Requires-Dist: pulumi" in metadata

    # The other project, with its own virtual environment: the wheel and its dependencies.
    project = tmp_path / "app"
    (project / "src").mkdir(parents=True)
    (project / "env").mkdir()
    shutil.copy2(ROOT / "sample" / "src" / "score.py", project / "src" / "score.py")
    shutil.copy2(ROOT / "sample" / "env" / "myenv.yml", project / "env" / "myenv.yml")
    model = joblib.load(train_model(project / "models" / "sklearn_regression_model.pkl", alpha=0.1))
    (project / "Pulumi.yaml").write_text(PULUMI_YAML)
    (project / "__main__.py").write_text(MAIN)
    env = consumer_env(tmp_path)
    _run([sys.executable, "-m", "venv", str(project / ".venv")], project, env)
    py = str(project / ".venv" / "bin" / "python")
    # The lock's versions as constraints; its hashes stay out, since pip would then want one for the wheel
    # just built too (hashes in a constraints file turn --require-hashes on for everything).
    pins = [ln.split(";")[0].split("\\")[0].strip() for ln in (ROOT / "requirements.lock").read_text().splitlines()
            if "==" in ln and not ln.lstrip().startswith(("#", "--"))]
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    # --no-compile: the interpreter compiles what the project imports when it imports it, rather than pip every
    # module of every dependency up front (the same files are installed).
    _run([py, "-m", "pip", "install", "--quiet", "--no-compile", "--constraint", str(constraints), str(wheel)], project, env)
    _run([py, "-m", "pip", "check"], project, env)

    probe = json.loads(_run([py, "-c", PROBE], project, env).stdout)
    site = Path(probe["purelib"])
    assert Path(probe["mldeploy"]) == site / "mldeploy" / "__init__.py"
    assert probe["path"] == [str(site / "mldeploy")], "the installed package must not reach for a checkout"
    assert probe["generic"] == {"components": False, "providers": False, "runtime": False}
    assert all(probe["files"].values()), probe["files"]
    assert all(Path(d).is_relative_to(site / "mldeploy") for d in probe["files"]), probe["files"]
    assert not {"components", "providers", "runtime"} & {p.name for p in site.iterdir()}

    stack = f"p{uuid.uuid4().hex[:8]}"
    pulumi = ["pulumi", "--non-interactive", "--color", "never"]
    _run([*pulumi, "stack", "init", stack], project, env, timeout=120)
    try:
        # The components' settings come from the `mldeploy:` namespace, in a project named otherwise.
        _run([*pulumi, "config", "set", "mldeploy:stateDir", "state", "--stack", stack], project, env, timeout=120)
        pre = _run([*pulumi, "preview", "--stack", stack], project, env)
        assert "mldeploy:index:ContainerInstanceService" in pre.stdout and "create" in pre.stdout, pre.stdout[-3000:]
        up = _run([*pulumi, "up", "--yes", "--skip-preview", "--stack", stack], project, env)
        assert "error" not in up.stdout.lower().split("outputs:")[0][-2000:], up.stdout[-3000:]
        out = json.loads(_run([*pulumi, "stack", "output", "--json", "--show-secrets", "--stack", stack], project, env, timeout=120).stdout)
        assert out["model_version"] == 1
        assert out["scoring_uri"].startswith("http://127.0.0.1:")
        assert (project / "state" / "registry").is_dir(), "mldeploy:stateDir from the stack's config"

        r = requests.post(out["scoring_uri"], json=SEED_REQUEST, headers={"Authorization": f"Bearer {out['primary_key']}"}, timeout=60)
        assert r.status_code == 200, r.text[:500]
        assert np.allclose(r.json(), model.predict(np.array(SEED_REQUEST["data"])))
        assert requests.post(out["scoring_uri"], json=SEED_REQUEST, timeout=60).status_code == 401

        # The state names the providers by the package's name, and a second preview is stable.
        # The pickles are secrets (the SDK's default, issue 18): read them decrypted.
        state = json.loads(_run([*pulumi, "stack", "export", "--show-secrets", "--stack", stack], project, env, timeout=120).stdout)

        def pickle_of(value: object) -> bytes:
            return base64.b64decode(json.loads(value["plaintext"]) if isinstance(value, dict) else value)

        pickled = [pickle_of(r["inputs"]["__provider"]) for r in state["deployment"]["resources"]
                   if "__provider" in r.get("inputs", {})]
        assert pickled and all(b"mldeploy.providers." in p for p in pickled), pickled
        _run([*pulumi, "preview", "--expect-no-changes", "--stack", stack], project, env)
    finally:
        down = subprocess.run([*pulumi, "destroy", "--yes", "--skip-preview", "--stack", stack], cwd=project, env=env,
                              capture_output=True, text=True, timeout=900)
        subprocess.run([*pulumi, "stack", "rm", "--yes", "--stack", stack], cwd=project, env=env,
                       capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stdout[-3000:] + down.stderr[-3000:]
    dc = docker.from_env()
    try:
        assert dc.containers.list(all=True, filters={"label": [f"mldeploy.stack={stack}"]}) == []
    finally:
        dc.close()
