"""The pull-request preview with a read-only state credential (issue 18, item 2), on Azurite.

A stack is deployed with the account key, its state and registry in one container. Then
a fresh runner (its own HOME and checkout, as in test_shared_state_e2e) runs the
workflow's preview step as examples/pull-request-preview/preview.yml gives it: the
backend URL, the passphrase, the account name and a container SAS that can only read and
list. The preview shows `version 1 → 2`, and the container is exactly as it was: every
blob keeps its ETag and no lock appears. `up` with the same token stops at the lock.
"""

from __future__ import annotations

import datetime
import os
import uuid
from pathlib import Path

import pytest

from conftest import AZURITE_ACCOUNT, AZURITE_KEY, azblob_url, train_model
from test_portability_e2e import MODEL
from test_shared_state_e2e import fresh_runner

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


def blob_etags(azurite: dict[str, str], container: str) -> dict[str, str]:
    from azure.storage.blob import ContainerClient

    client = ContainerClient(azurite["service_url"], container, credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY})
    return {b.name: b.etag for b in client.list_blobs()}


def read_list_sas(container: str) -> str:
    """A container SAS with read and list only, as the example's README makes it."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    return generate_container_sas(
        AZURITE_ACCOUNT, container, account_key=AZURITE_KEY, permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2),
    )


def run_in(clone: Path, env: dict[str, str], command: str, timeout: float = 900):
    import subprocess

    return subprocess.run(["bash", "-c", f"source scripts/env.sh && {command}"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_a_read_only_sas_previews_and_writes_nothing(
    azurite: dict[str, str], blob_container: str, workdir: Path, engine_stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import stack as stack_cli

    backend = azblob_url(azurite, blob_container)
    monkeypatch.setenv("PULUMI_BACKEND_URL", backend)
    name = f"t{uuid.uuid4().hex[:8]}"
    stack_file = workdir / "stacks" / f"Pulumi.{name}.yaml"
    stack_file.write_text(f"config:\n  mldeploy:registry: {azblob_url(azurite, blob_container, 'models')}\n")
    train_model(workdir / MODEL, alpha=0.1)
    st = engine_stack(stack_cli.project_program(workdir), name=name)
    out = {k: v.value for k, v in st.up().outputs.items()}
    assert out["model_version"] == 1

    before = blob_etags(azurite, blob_container)
    assert f".pulumi/stacks/mldeploy/{name}.json" in before and "models/sklearn_regression_model/versions/1.json" in before
    clone, env = fresh_runner(tmp_path, stack_file, {
        "PULUMI_BACKEND_URL": backend,
        "PULUMI_CONFIG_PASSPHRASE": os.environ["PULUMI_CONFIG_PASSPHRASE"],
        "AZURE_STORAGE_ACCOUNT": AZURITE_ACCOUNT,
        "AZURE_STORAGE_SAS_TOKEN": read_list_sas(blob_container),
    })
    assert "AZURE_STORAGE_KEY" not in env
    train = run_in(clone, env, f"python sample/train.py --out {MODEL} --alpha 0.5")  # the pull request's retrain
    assert train.returncode == 0, train.stderr[-2000:]

    review = run_in(clone, env, f"python scripts/preview_markdown.py {name} --out preview.md")
    assert review.returncode == 0, f"{review.stdout[-3000:]}\n{review.stderr[-3000:]}"
    assert "model `sklearn_regression_model` version 1 → 2" in review.stdout, review.stdout
    assert blob_etags(azurite, blob_container) == before, "the preview wrote to the state container"

    refused = run_in(clone, env, f"python scripts/stack.py up {name}")
    assert refused.returncode != 0, refused.stdout[-2000:]
    said = refused.stdout + refused.stderr
    # The engine stops at the stack lock, the first thing `up` writes. v3.259.0 does not say 403: gocloud's
    # azblob writer panics on the refused write (a nil pipe in writer.Close), inside diyBackend.Lock.
    assert "not authorized" in said or "diyBackend).Lock" in said, said[-3000:]
    assert blob_etags(azurite, blob_container) == before, "up with a read-only token changed the state container"
    assert not [b for b in blob_etags(azurite, blob_container) if b.startswith(".pulumi/locks/")]
