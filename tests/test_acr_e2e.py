"""`target="aci"` with an ACR in stack config, through the real engine, against the local fakes.

The "ACR" is a docker-registry with token auth of this test's own (tests/fake_acr.py);
ARM is the local fake (tests/fake_arm.py), whose listCredentials hands out that
registry's credentials and whose container groups pull with the
`imageRegistryCredentials` they are given. Neither is Azure.
"""

from __future__ import annotations

import json
from pathlib import Path

import pulumi
import pytest
import requests

from conftest import train_model
from fake_acr import TokenRegistry
from fake_arm import FakeArm
from test_aci_e2e import IMAGE_ARGS, SEED_REQUEST, local_uri

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

SUB = "00000000-1111-2222-3333-444444444444"


def blobs(reg_dir: Path) -> set[str]:
    return {p.parent.name for p in (reg_dir / "storage").rglob("data") if "blobs" in p.parts}


@pytest.fixture
def acr(tmp_path):
    reg = TokenRegistry(tmp_path / "acr")
    yield reg
    reg.close()


def test_images_go_to_the_acr_with_its_credentials_and_a_model_update_adds_one_layer(
    fake: FakeArm, acr: TokenRegistry, tmp_path: Path, workdir: Path, engine_stack
) -> None:
    from mldeploy.components import ContainerInstanceService, InferenceImage, RegisteredModel

    fake.add_registry(SUB, "rg-ml", "mldeployacr", acr.address, acr.username, acr.password)
    model_path = train_model(workdir / "models" / "ridge" / "sklearn_regression_model.pkl", alpha=0.1)

    def program() -> None:
        model = RegisteredModel("ridge", model_name="ridge", model_path="models/ridge/sklearn_regression_model.pkl")
        image = InferenceImage("scoring", **IMAGE_ARGS)
        svc = ContainerInstanceService("aciservice", models=[model], image=image, target="aci",
                                       cpu_cores=0.5, memory_gb=1, auth_enabled=True)
        for k in ("scoring_uri", "primary_key", "model_versions"):
            pulumi.export(k, getattr(svc, k))

    st = engine_stack(program)
    st.configure({"azureSubscriptionId": SUB, "azureResourceGroup": "rg-ml", "azureLocation": "westeurope",
                  "armEndpoint": fake.url, "imageRegistry": acr.address, "acrName": "mldeployacr"})
    group = f"mldeploy-{st.name}-aciservice"

    up = st.up()
    assert up.summary.result == "succeeded", st.log[-40:]
    key = up.outputs["primary_key"].value
    uri = local_uri(fake, group, up.outputs["scoring_uri"].value)
    r = requests.post(uri, json=SEED_REQUEST, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200, r.text
    # The group was given the registry's credentials, and ARM does not return the password.
    sent = fake.group(group).body["properties"]["imageRegistryCredentials"]
    assert sent == [{"server": acr.address, "username": acr.username, "password": acr.password}]
    assert acr.password not in json.dumps(fake.view(fake.group(group)))
    assert acr.tokens_issued and acr.refused == 0
    # Pulumi's state holds the password only encrypted.
    state_files = list((workdir / ".pulumi-state" / "backend").rglob("*.json"))
    assert state_files
    for f in state_files:
        text = f.read_text()
        assert acr.password not in text and key not in text, f

    before = blobs(tmp_path / "acr")
    train_model(model_path, alpha=50.0)
    up = st.up()
    assert up.summary.result == "succeeded", st.log[-40:]
    assert up.outputs["model_versions"].value == {"ridge": 2}
    added = blobs(tmp_path / "acr") - before
    # A model-only update: one new layer, plus the new image's config and manifest. Nothing else is pushed.
    assert len(added) == 3, sorted(added)
    r = requests.post(local_uri(fake, group, up.outputs["scoring_uri"].value), json=SEED_REQUEST,
                      headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200, r.text

    assert st.destroy().summary.result == "succeeded"
    assert fake.group(group) is None
