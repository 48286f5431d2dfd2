"""Bad input about where a stack lives (issue 9): each stops with a message naming the
setting, and nothing is created or changed.

- a backend URL that cannot be reached (an account that does not answer, a shared folder that is missing);
- an Azurite/Blob container that does not exist (the backend's, or the registry's);
- a wrong passphrase;
- a registry path that is a file.

The checks themselves first (`mldeploy.providers.core.state_backend`, against Azurite),
then `scripts/stack.py` as an operator runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import docker
import pytest

from conftest import AZURITE_KEY, azblob_url
from mldeploy.providers.core.state_backend import (
    BackendError,
    blob_backend_problem,
    check_backend,
    file_backend_problem,
)

# ---------------------------------------------------------------- the checks


def test_file_backend_folder(tmp_path: Path) -> None:
    assert file_backend_problem(f"file://{tmp_path}") is None
    assert "does not exist (a shared mount that is not mounted?)" in file_backend_problem(f"file://{tmp_path}/gone")
    (tmp_path / "f").write_text("")
    assert "is a file, not a folder" in file_backend_problem(f"file://{tmp_path}/f")


def test_blob_backend_container(azurite: dict[str, str], blob_container: str) -> None:
    assert blob_backend_problem(azblob_url(azurite, blob_container)) is None
    missing = blob_backend_problem(azblob_url(azurite, "no-such-container"))
    assert missing and "/no-such-container does not exist; create it first" in missing


def test_blob_backend_unreachable(blob_container: str) -> None:
    problem = blob_backend_problem("azblob://state?domain=127.0.0.1:9&protocol=http&localemu=true")
    assert problem and problem.startswith("cannot reach the storage account at http://127.0.0.1:9/devstoreaccount1")


def test_blob_backend_wrong_key(azurite: dict[str, str], blob_container: str) -> None:
    env = {"AZURE_STORAGE_ACCOUNT": "devstoreaccount1", "AZURE_STORAGE_KEY": AZURITE_KEY[:-4] + "AAA="}
    problem = blob_backend_problem(azblob_url(azurite, blob_container), env)
    assert problem and "refused the credentials in AZURE_STORAGE_*" in problem


def test_check_backend_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"^PULUMI_BACKEND_URL=file://.*/gone: the folder .* does not exist.*Nothing was created or changed\.$"):
        check_backend(f"file://{tmp_path}/gone")
    check_backend("https://api.pulumi.com")  # not ours to judge


def test_wrong_passphrase_in_words() -> None:
    import stack as stack_cli

    engine = "error: getting stack configuration: get stack secrets manager: incorrect passphrase"
    said = stack_cli.explain_engine_error("ci", engine)
    assert said and "PULUMI_CONFIG_PASSPHRASE" in said and "'ci'" in said and "Nothing was created or changed" in said
    assert stack_cli.explain_engine_error("ci", "error: something else") is None


# ---------------------------------------------------------------- scripts/stack.py, as an operator runs it


def stack_py(work: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    return subprocess.run([sys.executable, str(work / "scripts" / "stack.py"), *args], cwd=work, env=full,
                          capture_output=True, text=True, timeout=600)


def containers_of(stack_name: str) -> list[str]:
    return [c.name for c in docker.from_env().containers.list(all=True, filters={"label": f"mldeploy.stack={stack_name}"})]



@pytest.mark.e2e
def test_an_unreachable_backend_stops_before_anything(workdir: Path, blob_container: str) -> None:
    name = f"t{uuid.uuid4().hex[:8]}"
    url = "azblob://state?domain=127.0.0.1:9&protocol=http&localemu=true"
    run = stack_py(workdir, "up", name, PULUMI_BACKEND_URL=url)
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"error: PULUMI_BACKEND_URL={url}: cannot reach the storage account at http://127.0.0.1:9/devstoreaccount1" in run.stderr
    assert not (workdir / "stacks" / f"Pulumi.{name}.yaml").exists()
    assert containers_of(name) == []


@pytest.mark.e2e
def test_a_missing_backend_container_or_folder_stops_before_anything(workdir: Path, azurite: dict[str, str], blob_container: str, tmp_path: Path) -> None:
    from azure.storage.blob import BlobServiceClient

    name = f"t{uuid.uuid4().hex[:8]}"
    gone = f"gone{uuid.uuid4().hex[:8]}"
    run = stack_py(workdir, "up", name, PULUMI_BACKEND_URL=azblob_url(azurite, gone))
    assert run.returncode == 1 and f"/{gone} does not exist; create it first" in run.stderr, run.stderr
    service = BlobServiceClient(azurite["service_url"], credential={"account_name": "devstoreaccount1", "account_key": AZURITE_KEY})
    assert not service.get_container_client(gone).exists()
    folder = tmp_path / "shared-mount" / "backend"
    run = stack_py(workdir, "up", name, PULUMI_BACKEND_URL=f"file://{folder}")
    assert run.returncode == 1 and f"PULUMI_BACKEND_URL=file://{folder}: the folder {folder} does not exist" in run.stderr, run.stderr
    assert not folder.exists() and not folder.parent.exists()
    assert not (workdir / "stacks" / f"Pulumi.{name}.yaml").exists()
    assert containers_of(name) == []


def _export(work: Path, name: str, passphrase: str) -> dict:
    run = subprocess.run(["pulumi", "stack", "export", "--stack", name], cwd=work, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PULUMI_CONFIG_PASSPHRASE": passphrase})
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.e2e
def test_a_wrong_passphrase_stops_naming_it(workdir: Path) -> None:
    name = f"t{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PULUMI_CONFIG_PASSPHRASE": "the-right-one"}
    for args in (["stack", "init", name], ["config", "set", "--secret", "mldeploy:note", "s3cret", "--stack", name]):
        subprocess.run(["pulumi", *args, "--non-interactive"], cwd=workdir, env=env, check=True, capture_output=True, timeout=120)
    config_file = workdir / "stacks" / f"Pulumi.{name}.yaml"
    before = (_export(workdir, name, "the-right-one"), config_file.read_text())
    try:
        for op in ("preview", "up"):
            run = stack_py(workdir, op, name, PULUMI_CONFIG_PASSPHRASE="a-wrong-one")
            assert run.returncode == 1, run.stdout + run.stderr
            assert f"error: stack '{name}': PULUMI_CONFIG_PASSPHRASE (or the file PULUMI_CONFIG_PASSPHRASE_FILE names) is not the passphrase" in run.stderr, run.stderr
        after = (_export(workdir, name, "the-right-one"), config_file.read_text())
        assert after == before
        assert containers_of(name) == []
    finally:
        subprocess.run(["pulumi", "stack", "rm", name, "--yes", "--non-interactive"], cwd=workdir, env=env, capture_output=True, timeout=120)


@pytest.mark.e2e
@pytest.mark.parametrize("setting", ["registryPath", "registry"])
def test_a_bad_registry_stops_at_preview_naming_it(workdir: Path, azurite: dict[str, str], blob_container: str, setting: str) -> None:
    """A registry path that is a file; a registry container that does not exist."""
    from conftest import train_model

    train_model(workdir / "sample" / "models" / "sklearn_regression_model.pkl")
    name = f"t{uuid.uuid4().hex[:8]}"
    (workdir / "a-file").write_text("not a folder")
    value = "a-file" if setting == "registryPath" else azblob_url(azurite, "no-such-registry")
    (workdir / "stacks" / f"Pulumi.{name}.yaml").write_text(f"config:\n  mldeploy:{setting}: {value}\n")
    try:
        run = stack_py(workdir, "up", name)
        assert run.returncode == 1, run.stdout + run.stderr
        said = run.stdout + run.stderr
        assert f"mldeploy:{setting}:" in said, said[-3000:]
        assert ("is a file, not a folder" in said) if setting == "registryPath" else ("the container does not exist" in said), said[-3000:]
        assert _export(workdir, name, os.environ["PULUMI_CONFIG_PASSPHRASE"])["deployment"].get("resources") in (None, [])
        assert containers_of(name) == []
        assert (workdir / "a-file").read_text() == "not a folder"
    finally:
        stack_py(workdir, "rm", name)
