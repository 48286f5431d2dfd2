"""A stack survives a new checkout: one made by an earlier release, from a checkout at
one path, previews no replacement from a checkout of this release at another path,
and its next `up` migrates it without a replace.

The earlier release is main as it was before resource inputs held paths relative
to the project (issue 9); it runs from `git archive` of that commit, with this
project's sample and serving runtime (but its own gateway templates, which its own
renderer fills), so that only the code differs.

Its service rolls once: its backend was published on a TCP port on Docker's bridge,
which anything on the machine could reach without the key; this release's backends
have no network (issue 11), so the next `up` replaces that backend (a zero-downtime
roll, same scoring URI). Its image is rebuilt once, in place (same repository): the
earlier release's image held a layer of deleted wheels, this release's is built on
the cached environment image (issue 11, part 3).

Its dynamic providers were pickled in plain text under their names of that
release (`providers.service.ServiceProvider`, before the `mldeploy` package);
this release stores them encrypted and its provider host loads only its own
provider classes (issue 18, item 4): a preview that refreshes reads every
resource through those old pickles, and after `up` the state holds every pickle
encrypted.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import docker
import pytest
import requests

from conftest import ROOT, train_model
from test_deploy_e2e import SEED_REQUEST, stack_leftovers

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

# main before issue 9: absolute checkout paths in model_path, registry_root, state_dir,
# model_dir, source_directory and dependency_file.
EARLIER_RELEASE = "c1fb50aded5dabff1201b22ad0dfed48000bbe44"
MODEL = Path("sample") / "models" / "sklearn_regression_model.pkl"


def checkout_of(commit: str, dest: Path) -> Path:
    """The files of `commit`, as a fresh clone at `dest` would have them."""
    run = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit], capture_output=True, timeout=120)
    if run.returncode != 0:
        pytest.fail(f"this test needs the repository's history (commit {commit[:12]}): {run.stderr.decode()[-500:]}")
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(run.stdout)) as tar:
        # The "data" filter where this Python has it (3.11.4+); git's own archive otherwise.
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)
    return dest


def earlier_pickles(resources: list[dict]) -> list[str]:
    """The plain-text `__provider` pickles that name a provider as the earlier release did (`providers.…`)."""
    found = []
    for r in resources:
        value = (r.get("outputs") or {}).get("__provider")
        if isinstance(value, str):
            data = base64.b64decode(value)
            if b"providers." in data and b"mldeploy" not in data:
                found.append(value)
    return found


def service_containers(stack_name: str) -> list[str]:
    flt = {"label": [f"mldeploy.stack={stack_name}", "mldeploy.kind=service"]}
    return sorted(c.id for c in docker.from_env().containers.list(all=True, filters=flt))


def test_a_stack_of_the_earlier_release_previews_no_changes_from_another_checkout(
    workdir: Path, engine_stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stack as stack_cli

    # Checkout A, elsewhere, with the earlier release's code and this project's content.
    first = checkout_of(EARLIER_RELEASE, tmp_path / "ana" / "src" / "mldeploy")
    shutil.rmtree(first / "sample")
    shutil.copytree(ROOT / "sample", first / "sample", ignore=shutil.ignore_patterns("models", "__pycache__"))
    # This release's runtime files over that release's: it keeps its own nginx templates (its
    # renderer fills them) and the files it reads that this release dropped (Dockerfile.inference).
    shutil.copytree(ROOT / "runtime", first / "runtime", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("nginx", "__pycache__"))
    train_model(first / MODEL)
    (workdir / MODEL).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(first / MODEL, workdir / MODEL)  # the same model file in both checkouts
    backend = first / ".pulumi-state" / "backend"
    backend.mkdir(parents=True)
    name = f"t{uuid.uuid4().hex[:8]}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLDEPLOY_")},
        "MLDEPLOY_PROJECT_DIR": str(first),
        "MLDEPLOY_STATE_DIR": str(first / ".pulumi-state"),  # what that release's scripts/env.sh set
        "PULUMI_BACKEND_URL": f"file://{backend}",
    }
    # The engine's stack (the state and this stack's config file) belongs to the test
    # from here on: the engine_stack fixture destroys and removes it, whatever happens.
    monkeypatch.setenv("PULUMI_BACKEND_URL", f"file://{backend}")
    up = subprocess.run([sys.executable, str(first / "scripts" / "stack.py"), "up", name], cwd=first, env=env,
                        capture_output=True, text=True, timeout=900)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    state = json.loads(subprocess.run(["pulumi", "stack", "export", "--stack", name], cwd=first, env=env,
                                      capture_output=True, text=True, check=True).stdout)
    old_inputs = json.dumps([r.get("inputs") for r in state["deployment"]["resources"]])
    assert str(first) in old_inputs, "the earlier release wrote its checkout's paths into the inputs"
    old_pickles = earlier_pickles(state["deployment"]["resources"])
    assert len(old_pickles) >= 3, "the earlier release kept its providers' pickles in plain text, by their old names"
    before = service_containers(name)
    assert len(before) == 1

    # Checkout B (this release) at another path, with the same backend and the stack's
    # committed config file; its own state folder, as its scripts/env.sh sets.
    shutil.copy2(first / "stacks" / f"Pulumi.{name}.yaml", workdir / "stacks" / f"Pulumi.{name}.yaml")
    st = engine_stack(stack_cli.project_program(workdir), name=name)
    # A preview that refreshes reads every resource through the earlier release's plain pickles:
    # this release's provider host takes them (its own classes, by their old names) and changes nothing.
    refreshed = st.preview(refresh=True)
    assert "refused a dynamic provider" not in refreshed.text
    assert not any("delete" in k or "replace" in k for k in refreshed.change_summary), refreshed.change_summary
    pre = st.preview(diff=True)
    # Only the service (its exposed backend rolls) and the image change; nothing is replaced. The
    # image is rebuilt once, in place, on the cached environment image: the earlier release's held
    # a layer of deleted wheels (issue 11, part 3).
    assert pre.change_summary == {"same": pre.change_summary.get("same"), "update": 2}, (pre.change_summary, pre.text[-4000:])

    # The roll mounts the model from this checkout's registry, and nothing registers it there
    # again (the model did not change, and refresh reads the registry the old inputs name):
    # the team's registry content is shared; here, a copy of checkout A's.
    shutil.copytree(first / ".pulumi-state" / "registry", workdir / ".pulumi-state" / "registry", dirs_exist_ok=True)
    # The next up migrates the inputs: nothing replaced; the service rolls to a backend with no network.
    up = st.up()
    ops = {k: v for k, v in (up.summary.resource_changes or {}).items() if k != "same"}
    assert set(ops) == {"update"} and ops["update"] in (1, 2), (up.summary.resource_changes, up.text[-4000:])
    after = service_containers(name)
    assert len(after) == 1 and after != before, "the exposed backend must be rolled"
    attrs = docker.from_env().containers.get(after[0]).attrs
    assert attrs["HostConfig"]["NetworkMode"] == "none" and not attrs["NetworkSettings"].get("Ports")
    resources = st.stack.export_stack().deployment["resources"]
    new_inputs = json.dumps([r.get("inputs") for r in resources])
    assert str(first) not in new_inputs and str(workdir) not in new_inputs, "inputs must name no checkout"
    image = next(r for r in resources if r["type"].endswith("mldeploy:Image"))
    assert image["inputs"]["source_directory"] == "sample/src"
    out = {k: v.value for k, v in up.outputs.items()}
    r = requests.post(out["scoring_uri"], json=SEED_REQUEST, headers={"Authorization": f"Bearer {out['primary_key']}"}, timeout=30)
    assert r.status_code == 200, r.text

    # And from this checkout, a second look finds nothing to do either.
    assert set(st.preview().change_summary) == {"same"}
    # The state file now holds every provider's pickle encrypted, and none by its old name.
    state_file = next(backend.rglob(f"{name}.json"))
    written = json.loads(state_file.read_text())["checkpoint"]["latest"]["resources"]
    stored = {r["urn"].rsplit("::", 1)[-1]: type((r.get("outputs") or {}).get("__provider")).__name__
              for r in written if r["type"].startswith("pulumi-python:dynamic/")}
    assert stored and set(stored.values()) == {"dict"}, stored
    assert "ciphertext" in state_file.read_text() and not earlier_pickles(written)

    down = st.destroy()
    assert down.summary.result == "succeeded"
    assert stack_leftovers(name) == {"containers": [], "images": []}
    assert not any((first / ".pulumi-state" / "registry").glob("*/*.json")), "the registry entries are released"
