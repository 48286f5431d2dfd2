"""Team use (issue 9, part 2): state and registry together in Azure Blob Storage (Azurite).

A stack whose Pulumi state is on the engine's `azblob://` backend and whose model
registry is `mldeploy:registry: azblob://…` in the same container. A second
clone, standing in for a fresh CI runner (its own HOME, its own checkout path,
no state folder, nothing local but the backend URL, the passphrase and the
storage account's credentials; the tools on PATH as a runner image has them),
retrains the model, previews `version 1 → 2` in the Markdown review, runs `up`,
and the first clone's next preview shows no changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from conftest import AZURITE_ACCOUNT, AZURITE_KEY, COPY_IGNORE, ROOT, azblob_url, train_model
from test_deploy_e2e import SEED_REQUEST, stack_leftovers
from test_portability_e2e import MODEL, service_containers

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


def container_blobs(azurite: dict[str, str], container: str) -> list[str]:
    from azure.storage.blob import ContainerClient

    client = ContainerClient(azurite["service_url"], container, credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY})
    return sorted(b.name for b in client.list_blobs())


def score(uri: str, key: str) -> list[float]:
    r = requests.post(uri, json=SEED_REQUEST, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def fresh_runner(tmp_path: Path, stack_file: Path, env_base: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """A clone at a path of its own, with a HOME of its own and only what a CI runner is given."""
    home = tmp_path / "runner-home"
    home.mkdir()
    clone = tmp_path / "runner" / "_work" / "mldeploy" / "mldeploy"
    shutil.copytree(ROOT, clone, ignore=COPY_IGNORE)
    for f in (clone / "stacks").glob("Pulumi.*.yaml"):
        if f.name != "Pulumi.dev.yaml":
            f.unlink()
    shutil.copy2(stack_file, clone / "stacks" / stack_file.name)  # the stack's committed config
    tools = os.pathsep.join([str(Path(shutil.which("pulumi") or "pulumi").parent), str(Path(sys.executable).parent), "/usr/sbin:/usr/bin:/sbin:/bin"])
    env = {"HOME": str(home), "PATH": tools, "LANG": "C.UTF-8", **env_base}
    return clone, env


def in_runner(clone: Path, env: dict[str, str], command: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """A step of the runner's job: the project's scripts, as its CI config would call them."""
    run = subprocess.run(["bash", "-c", f"source scripts/env.sh && {command}"], cwd=clone, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, f"{command}\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    return run


@pytest.mark.parametrize("state", ["azblob", "shared-file"])
def test_a_fresh_runner_retrains_and_applies_and_the_first_clone_sees_no_changes(
    azurite: dict[str, str], blob_container: str, workdir: Path, engine_stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    state: str,
) -> None:
    """`azblob`: state and registry in one container. `shared-file`: the fallback the issue asks for
    should the engine's azblob backend fail (it does not, with v3.259.0 and Azurite 3.37.0): the
    state on a file backend in a folder both clones share (a mount), the registry still on Azurite.

    (The container is asked for first, so that it outlives engine_stack's clean-up.)
    """
    import stack as stack_cli

    timings: dict[str, float] = {}  # printed with -s: measured, never asserted
    if state == "azblob":
        backend = azblob_url(azurite, blob_container)
    else:
        mount = tmp_path / "team-mount" / "pulumi"
        mount.mkdir(parents=True)
        backend = f"file://{mount}"
    registry = azblob_url(azurite, blob_container, "models")  # the same container: state and registry together
    monkeypatch.setenv("PULUMI_BACKEND_URL", backend)
    name = f"t{uuid.uuid4().hex[:8]}"
    stack_file = workdir / "stacks" / f"Pulumi.{name}.yaml"
    stack_file.write_text(f"config:\n  mldeploy:registry: {registry}\n")

    # The first clone deploys version 1.
    train_model(workdir / MODEL, alpha=0.1)
    st = engine_stack(stack_cli.project_program(workdir), name=name)
    t0 = time.monotonic()
    up = st.up()
    timings["first clone: up (image build, version 1)"] = time.monotonic() - t0
    out = {k: v.value for k, v in up.outputs.items()}
    assert out["model_version"] == 1, up.text[-3000:]
    v1_answer = score(out["scoring_uri"], out["primary_key"])
    blobs = container_blobs(azurite, blob_container)
    if state == "azblob":
        assert f".pulumi/stacks/mldeploy/{name}.json" in blobs, blobs
    else:
        assert (mount / ".pulumi" / "stacks" / "mldeploy" / f"{name}.json").is_file()
    assert "models/sklearn_regression_model/versions/1.json" in blobs, blobs
    assert not [p for p in (workdir / ".pulumi-state" / "backend").rglob("*") if p.is_file()], "no state on local disk"
    assert not (workdir / ".pulumi-state" / "registry").exists(), "no local registry"
    before = service_containers(name)

    # A fresh runner: its own HOME and checkout, the backend URL, the passphrase and the account's credentials.
    clone, env = fresh_runner(tmp_path, stack_file, {
        "PULUMI_BACKEND_URL": backend,
        "PULUMI_CONFIG_PASSPHRASE": os.environ["PULUMI_CONFIG_PASSPHRASE"],
        "AZURE_STORAGE_ACCOUNT": AZURITE_ACCOUNT,
        "AZURE_STORAGE_KEY": AZURITE_KEY,
    })
    assert not (clone / ".pulumi-state").exists() and not (Path(env["HOME"]) / ".cache").exists()
    in_runner(clone, env, f"python sample/train.py --out {MODEL} --alpha 0.5")  # the retrain the pull request makes
    t0 = time.monotonic()
    review = in_runner(clone, env, f"python scripts/preview_markdown.py {name} --out preview.md").stdout
    timings["runner: Markdown preview"] = time.monotonic() - t0
    assert "model `sklearn_regression_model` version 1 → 2" in review, review
    assert (clone / "preview.md").read_text() == review
    t0 = time.monotonic()
    in_runner(clone, env, f"python scripts/stack.py up {name}")
    timings["runner: up (version 2, roll)"] = time.monotonic() - t0
    runner_out = json.loads(in_runner(clone, env, f"python scripts/stack.py outputs {name} --show-secrets").stdout)
    assert runner_out["model_version"] == 2 and runner_out["scoring_uri"] == out["scoring_uri"]
    v2_answer = score(runner_out["scoring_uri"], runner_out["primary_key"])
    assert v2_answer != v1_answer, "the service answers with the retrained model"
    assert service_containers(name) != before, "the service rolled to version 2"
    assert not (clone / ".pulumi-state" / "backend").exists() and not (clone / ".pulumi-state" / "registry").exists()
    blobs = container_blobs(azurite, blob_container)
    assert "models/sklearn_regression_model/versions/2.json" in blobs and "models/sklearn_regression_model/2/sklearn_regression_model.pkl" in blobs

    # The first clone pulls the change (the same training, the same bytes) and previews: nothing to do.
    train_model(workdir / MODEL, alpha=0.5)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(workdir / MODEL) == digest(clone / MODEL)
    t0 = time.monotonic()
    pre = st.preview(diff=True)
    timings["first clone: preview after the runner's up"] = time.monotonic() - t0
    assert set(pre.change_summary) == {"same"}, (pre.change_summary, pre.text[-4000:])

    # The runner that applied last destroys: the local target's gateway files are in the state folder of
    # the checkout that last applied (mldeploy:stateDir is per machine). Both versions leave the registry.
    in_runner(clone, env, f"python scripts/stack.py destroy {name}")
    assert stack_leftovers(name) == {"containers": [], "images": []}
    assert not [b for b in container_blobs(azurite, blob_container) if b.startswith("models/")]
    for what, seconds in timings.items():
        print(f"[timing] {state}: {what}: {seconds:.1f} s")
