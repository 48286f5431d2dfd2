"""`ContainerInstanceService(target="aci")` through the real engine, against the local fake ARM.

The fake ARM (tests/fake_arm.py) serves HTTPS on 127.0.0.1 and runs the group's
containers in Docker on 127.0.0.1. It is a test double, not Azure: the scoring
URI it leads to (`<label>.<location>.azurecontainer.io`) does not resolve here,
so the test calls the group's port as the fake publishes it on 127.0.0.1.
"""

from __future__ import annotations

import time
from pathlib import Path

import joblib
import numpy as np
import pulumi
import pytest
import requests

from conftest import train_model
from fake_arm import FakeArm

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

SUB = "00000000-1111-2222-3333-444444444444"
SEED_REQUEST = {"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]]}
IMAGE_ARGS = {"entry_script": "score.py", "source_directory": "sample/src", "conda_file": "sample/env/myenv.yml"}


def local_uri(fake: FakeArm, group: str, uri: str) -> str:
    """The Azure-shaped URI's path on the port the fake publishes on 127.0.0.1."""
    path = uri.split(".azurecontainer.io", 1)[1]
    return f"http://127.0.0.1:{fake.host_port(group)}{path}"


def test_aci_target_scores_rolls_drifts_and_cleans_up(fake: FakeArm, local_registry: str, workdir: Path, engine_stack) -> None:
    """The fake ARM pulls the group's images from the local registry, as ACI pulls from ACR."""
    from mldeploy.components import ContainerInstanceService, InferenceImage, RegisteredModel

    model_path = train_model(workdir / "models" / "ridge" / "sklearn_regression_model.pkl", alpha=0.1)

    def program() -> None:
        model = RegisteredModel("ridge", model_name="ridge", model_path="models/ridge/sklearn_regression_model.pkl")
        image = InferenceImage("scoring", **IMAGE_ARGS)
        svc = ContainerInstanceService("aciservice", models=[model], image=image, target="aci",
                                       cpu_cores=0.5, memory_gb=1, auth_enabled=True)
        for k in ("scoring_uri", "swagger_uri", "primary_key", "model_versions", "state"):
            pulumi.export(k, getattr(svc, k))

    st = engine_stack(program)
    st.configure({"azureSubscriptionId": SUB, "azureResourceGroup": "rg-ml", "azureLocation": "westeurope",
                  "armEndpoint": fake.url})
    group = f"mldeploy-{st.name}-aciservice"

    t0 = time.monotonic()
    up = st.up()
    first_up = time.monotonic() - t0
    assert up.summary.result == "succeeded", st.log[-40:]
    out = {k: v.value for k, v in up.outputs.items()}
    assert out["scoring_uri"] == f"http://{st.name}-aciservice.westeurope.azurecontainer.io/api/v1/service/aciservice/score"
    assert up.outputs["primary_key"].secret and out["model_versions"] == {"ridge": 1}
    uri, key = local_uri(fake, group, out["scoring_uri"]), out["primary_key"]
    v1 = joblib.load(model_path)
    r = requests.post(uri, json=SEED_REQUEST, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert np.allclose(r.json(), v1.predict(np.array(SEED_REQUEST["data"])))
    assert requests.post(uri, json=SEED_REQUEST, timeout=30).status_code == 401
    # The key never comes back from ARM: it travels as a secureValue.
    seen = fake.view(fake.group(group))
    assert key not in str(seen)

    # A new model version: an in-place redeploy of the same group (ACI restarts it).
    train_model(model_path, alpha=50.0)
    pre = st.preview(diff=True)
    assert "1 => 2" in pre.text and "replace" not in pre.change_summary, pre.text[-2000:]
    t0 = time.monotonic()
    up = st.up()
    bump_up = time.monotonic() - t0
    assert up.summary.result == "succeeded", st.log[-40:]
    assert up.outputs["model_versions"].value == {"ridge": 2} and up.outputs["primary_key"].value == key
    v2 = joblib.load(model_path)
    r = requests.post(local_uri(fake, group, out["scoring_uri"]), json=SEED_REQUEST,
                      headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200 and np.allclose(r.json(), v2.predict(np.array(SEED_REQUEST["data"])))

    # Stopped behind our back: refresh sees it, the next up restores it.
    fake.stop_behind_back(group)
    st.refresh()
    pre = st.preview()
    assert pre.change_summary.get("update") == 1, pre.change_summary
    assert st.up().summary.result == "succeeded"
    assert fake.group(group).provisioning == "Succeeded"
    # Deleted behind our back: the same.
    fake.delete_behind_back(group)
    st.refresh()
    assert st.up().summary.result == "succeeded"
    assert requests.post(local_uri(fake, group, out["scoring_uri"]), json=SEED_REQUEST,
                         headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code == 200

    assert st.destroy().summary.result == "succeeded"
    assert fake.group(group) is None
    print(f"aci e2e: first up {first_up:.0f} s, model bump up {bump_up:.0f} s")


def test_credentials_that_cannot_get_a_token_fail_up_in_the_chains_words_then_up_converges(
    fake: FakeArm, local_registry: str, workdir: Path, engine_stack, monkeypatch
) -> None:
    from mldeploy.components import ContainerInstanceService, InferenceImage, RegisteredModel

    train_model(workdir / "models" / "ridge" / "sklearn_regression_model.pkl", alpha=0.1)

    def program() -> None:
        model = RegisteredModel("ridge", model_name="ridge", model_path="models/ridge/sklearn_regression_model.pkl")
        image = InferenceImage("scoring", **IMAGE_ARGS)
        ContainerInstanceService("aciservice", models=[model], image=image, target="aci", cpu_cores=0.5, memory_gb=1)

    st = engine_stack(program)
    st.configure({"azureSubscriptionId": SUB, "azureResourceGroup": "rg-ml", "azureLocation": "westeurope",
                  "armEndpoint": fake.url})
    token = fake.env()["MLDEPLOY_ARM_TOKEN"]
    monkeypatch.delenv("MLDEPLOY_ARM_TOKEN")
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "EnvironmentCredential")  # the chain without network sources
    for k in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_USERNAME"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(pulumi.automation.errors.CommandError) as err:
        st.up()
    text = str(err.value) + "\n".join(st.log)
    assert "could not get an Azure token: DefaultAzureCredential failed to retrieve a token" in text, text[-3000:]
    assert "Traceback" not in text and 'File "' not in text, text[-3000:]
    assert not fake.groups and not [r for r in fake.requests if r[0] in ("PUT", "DELETE")]

    monkeypatch.setenv("MLDEPLOY_ARM_TOKEN", token)  # the next up, with a token, converges
    assert st.up().summary.result == "succeeded", st.log[-40:]
    assert fake.group(f"mldeploy-{st.name}-aciservice").provisioning == "Succeeded"
    assert st.destroy().summary.result == "succeeded"
