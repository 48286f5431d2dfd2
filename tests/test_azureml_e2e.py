"""A Service with `target="azureml"` through the real Pulumi engine, against the local fake of
Azure ML (tests/fake_azureml.py). The fake is not Azure; nothing here deploys to Azure.

The first test's program declares the `Service` resource as `ContainerInstanceService` does
(its shared inputs plus the target's own from stack config), and the fake's deployments answer
with the test's scorer (failures on demand, no Docker). The second is the program a user writes
(`RegisteredModel`, `InferenceImage`, `OnlineEndpointService`): the image is pushed to the local
registry, the source folder goes up as the code asset, and each deployment is a container of the
pushed image with the real model, fetched back from the datastore. While a roll runs, a client
scores through the endpoint's URI at 20 requests a second and must see no failed request.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pulumi
import pytest
import requests
from pulumi import automation as auto

from fake_azureml import FakeAzureML

pytestmark = [pytest.mark.e2e]

SUB = "00000000-1111-2222-3333-444444444444"
SWAGGER = {"swagger": "2.0", "definitions": {
    "ServiceInput": {"type": "object", "example": {"data": [[1, 2, 3]]}},
    "ServiceOutput": {"type": "array", "items": {"type": "number"}},
}}


class Scorer:
    """Deployments named in `bad` answer 500; the others a prediction."""

    def __init__(self) -> None:
        self.bad: set[str] = set()

    def __call__(self, deployment: str, method: str, path: str, body: bytes) -> tuple[int, str]:
        if path == "/swagger.json":
            return 200, json.dumps(SWAGGER)
        if deployment in self.bad:
            return 500, f"{deployment}: the model did not load"
        return 200, json.dumps([1.5])


@pytest.fixture
def fake_ml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, azurite: dict[str, str], blob_container: str):
    """Asked for before a stack, so it still serves when the stack is destroyed at teardown.
    Its default datastore is a container of this test in Azurite (the local storage emulator)."""
    blob = {"service_url": azurite["service_url"], "account": azurite["AZURE_STORAGE_ACCOUNT"],
            "key": azurite["AZURE_STORAGE_KEY"], "container": blob_container}
    fake = FakeAzureML(tmp_path / "azureml", scorer=Scorer(), op_seconds=0.1, retry_after=0, blob=blob)
    for k, v in {**fake.env(), "MLDEPLOY_ARM_POLL_SECONDS": "0.2", "MLDEPLOY_BLOB_ACCOUNT_URL": azurite["service_url"]}.items():
        monkeypatch.setenv(k, v)
    yield fake
    fake.close()


def program_for(version: dict[str, int], image: tuple[str, str] = ("mldeploy/scoring:e2e", "sha256:" + "a" * 64)):
    def program() -> None:
        from mldeploy.components._common import Settings
        from mldeploy.components.container_instance_service import Service
        from mldeploy.providers.targets import target_for

        settings = Settings.load()
        own = target_for("azureml").service_inputs({}, service_name="churn", resource_name="churn", settings=settings)
        svc = Service("churn-service", {
            **own,
            "service_name": "churn", "target": "azureml", "project": settings.project, "stack": settings.stack,
            "image_name": image[0], "image_id": image[1],
            "models": [{"name": "ridge", "version": version["model"], "model_dir": f"reg/ridge/{version['model']}"}],
            "cpu_cores": 1.0, "memory_gb": 1.0, "auth_enabled": True, "environment_variables": {},
            "primary_key_version": version.get("key", 1), "secondary_key_version": 1, "max_request_bytes": 1048576,
            "startup_timeout_seconds": 180, "entry_script": "sample/src/score.py",
        }, pulumi.ResourceOptions(additional_secret_outputs=["primary_key", "secondary_key"]), target_outputs=("deployment", "endpoint_id"))
        for k in ("scoring_uri", "primary_key", "deployment", "state", "model_versions"):
            pulumi.export(k, getattr(svc, k))
    return program


class Load:
    """A client at 20 requests a second through the endpoint (no deployment header: the traffic map decides)."""

    def __init__(self, uri: str, key: str, ca: str, body: Any = None):
        self.uri, self.key, self.ca = uri, key, ca
        self.body = body if body is not None else {"data": [[1, 2, 3]]}
        self.answers: list[tuple[str, Any]] = []  # (deployment, JSON answer) of each 200
        self.results: list[tuple[int, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                r = requests.post(self.uri, json=self.body, headers={"Authorization": f"Bearer {self.key}"},
                                  verify=self.ca, timeout=5)
                self.results.append((r.status_code, r.headers.get("azureml-model-deployment", "")))
                if r.status_code == 200:
                    self.answers.append((r.headers.get("azureml-model-deployment", ""), r.json()))
            except requests.RequestException as exc:
                self.results.append((0, str(exc)))
            self.stop.wait(max(0.0, 0.05 - (time.monotonic() - t0)))

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(10)


def outputs(result: Any) -> dict[str, Any]:
    return {k: v.value for k, v in result.outputs.items()}


def test_azureml_target_creates_rolls_under_load_refuses_a_bad_sample_and_converges(
    fake_ml: FakeAzureML, workdir: Path, engine_stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in (1, 2, 3):  # the model versions' folders, as the model registry holds them
        folder = workdir / "reg" / "ridge" / str(n)
        folder.mkdir(parents=True)
        (folder / "model.pkl").write_bytes(f"model {n}".encode())
    version = {"model": 1}
    st = engine_stack(program_for(version))
    st.configure({"target": "azureml", "azureSubscriptionId": SUB, "azureResourceGroup": "rg-ml", "azureMlWorkspace": "ws-ml",
                  "azureLocation": "westeurope", "armEndpoint": fake_ml.url})
    endpoint = f"{st.name}-churn"

    up = st.up()
    assert up.summary.result == "succeeded", st.log[-40:]
    out = outputs(up)
    assert out["deployment"] == "v01" and out["state"] == "Healthy" and out["model_versions"] == {"ridge": 1}
    assert out["scoring_uri"] == f"{fake_ml.url}/inference/{endpoint}/score"
    assert up.outputs["primary_key"].secret and out["primary_key"] == fake_ml.endpoint(endpoint).keys["primaryKey"]
    # Through Azure ML's SDK (azure-ai-ml): its api-versions reached the fake, each body checked against that version's specification.
    sent = {(method, path.split("?api-version=")[-1]) for method, path, _ in fake_ml.requests if "/onlineEndpoints/" in path or "/models/" in path}
    assert {("PUT", "2022-02-01-preview"), ("PUT", "2023-04-01-preview"), ("PUT", "2023-08-01-preview")} <= sent, sorted(sent)

    # Nothing changed: nothing to do, nothing registered again.
    puts = len(fake_ml.asset_puts)
    assert st.preview().change_summary.get("update", 0) == 0
    assert len(fake_ml.asset_puts) == puts

    # A new model version: the preview says the roll in Azure's words; up rolls blue/green under load.
    version["model"] = 2
    preview = st.preview(diff=True)
    assert preview.change_summary.get("update") == 1
    said = (f"endpoint `{endpoint}`: deployment `v02` created at 0 %, sample checked, "
            f"traffic v01 100 % → v02 100 %, v01 deleted")
    assert said in preview.stdout, preview.stdout[-3000:]  # the engine's own preview shows the roll's sentence
    with Load(out["scoring_uri"], out["primary_key"], str(fake_ml.ca_path)) as load:
        time.sleep(0.5)
        up = st.up()
        time.sleep(0.5)
    assert up.summary.result == "succeeded", st.log[-40:]
    assert outputs(up)["deployment"] == "v02"
    failed = [r for r in load.results if r[0] != 200]
    assert len(load.results) >= 10 and not failed, failed[:5]
    assert {d for _, d in load.results} <= {"v01", "v02"} and load.results[-1][1] == "v02"
    assert fake_ml.asset_puts[puts:] == [("models", "ridge", "2")]  # the environment and the code did not change

    # The sample gate refuses v03: up fails naming the step, the request and the answer; traffic stays on v02.
    fake_ml.scorer.bad.add("v03")
    version["model"] = 3
    with pytest.raises(auto.CommandError):
        st.up()
    said = "\n".join(st.log[-80:])
    assert "sample checked' failed" in said and "azureml-model-deployment: v03" in said and "the model did not load" in said
    e = fake_ml.endpoint(endpoint)
    assert e.body["properties"]["traffic"] == {"v02": 100} and sorted(e.deployments) == ["v02"]
    # Fixed: the next up converges to v03.
    fake_ml.scorer.bad.clear()
    up = st.up()
    assert up.summary.result == "succeeded" and outputs(up)["deployment"] == "v03"

    # An expired ARM token: up fails in ARM's words and changes nothing; a fresh token converges.
    good = os.environ["MLDEPLOY_ARM_TOKEN"]
    monkeypatch.setenv("MLDEPLOY_ARM_TOKEN", fake_ml.issue_token(ttl=-60))
    version["model"] = 1
    with pytest.raises(auto.CommandError) as expired:
        st.up()
    # The engine's stderr holds the provider's error even when its progress output ends first.
    assert "401 ExpiredAuthenticationToken" in str(expired.value) + "\n".join(st.log[-60:]), st.log[-60:]
    assert fake_ml.endpoint(endpoint).body["properties"]["traffic"] == {"v03": 100}
    monkeypatch.setenv("MLDEPLOY_ARM_TOKEN", good)
    up = st.up()
    assert up.summary.result == "succeeded" and outputs(up)["deployment"] == "v04" and outputs(up)["model_versions"] == {"ridge": 1}

    # Deleted behind our back: refresh says Missing, up makes it again.
    fake_ml.endpoints.clear()
    st.refresh()
    up = st.up()
    assert up.summary.result == "succeeded" and outputs(up)["state"] == "Healthy"
    assert fake_ml.endpoint(endpoint).body["properties"]["traffic"] == {outputs(up)["deployment"]: 100}

    st.destroy()
    assert fake_ml.endpoint(endpoint) is None


SEED_REQUEST = {"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]]}


@pytest.mark.docker
def test_azureml_components_push_the_image_upload_the_code_folder_and_the_fake_runs_the_real_model(
    tmp_path: Path, workdir: Path, engine_stack, monkeypatch: pytest.MonkeyPatch, azurite: dict[str, str], blob_container: str,
    local_registry: str,
):
    """The program a user writes (RegisteredModel, InferenceImage, OnlineEndpointService) against the
    fake, whose data plane runs each deployment as a container of the environment's image, pulled by
    its registry reference, with the model asset's files: the image is pushed to the registry, the
    code asset is the image's source folder, predictions are real, and a blue/green roll under
    20 req/s fails no request, every answer the model of the deployment that sent it."""
    import subprocess
    import sys

    import joblib
    import numpy as np
    from azure.storage.blob import ContainerClient

    from fake_azureml import DockerDeployments
    from mldeploy.providers.core import containers as core_containers

    blob = {"service_url": azurite["service_url"], "account": azurite["AZURE_STORAGE_ACCOUNT"],
            "key": azurite["AZURE_STORAGE_KEY"], "container": blob_container}
    label = {"mldeploy.fake": tmp_path.name}
    docker_deployments = DockerDeployments(tmp_path / "deployments", labels=label, startup_timeout=180)
    fake_ml = FakeAzureML(tmp_path / "azureml", op_seconds=0.1, retry_after=0, blob=blob, containers=docker_deployments)
    for k, v in {**fake_ml.env(), "MLDEPLOY_ARM_POLL_SECONDS": "0.2", "MLDEPLOY_BLOB_ACCOUNT_URL": azurite["service_url"]}.items():
        monkeypatch.setenv(k, v)

    def program() -> None:
        from mldeploy.components import InferenceImage, OnlineEndpointService, RegisteredModel

        model = RegisteredModel("ridge", model_name="ridge", model_path="models/ridge/sklearn_regression_model.pkl")
        image = InferenceImage("scoring", entry_script="score.py", source_directory="sample/src", conda_file="sample/env/myenv.yml")
        svc = OnlineEndpointService("churn", models=[model], image=image)
        for k in ("scoring_uri", "primary_key", "model_versions"):
            pulumi.export(k, getattr(svc, k))

    pkl = workdir / "models" / "ridge" / "sklearn_regression_model.pkl"
    pkl.parent.mkdir(parents=True, exist_ok=True)

    def train(alpha: float, seed: int) -> Any:  # two real models that predict differently
        subprocess.run([sys.executable, str(workdir / "sample" / "train.py"), "--out", str(pkl), "--alpha", str(alpha), "--seed", str(seed)],
                       check=True, capture_output=True)
        return joblib.load(pkl).predict(np.array(SEED_REQUEST["data"], dtype=float))

    try:
        models = {1: train(0.1, 1)}
        st = engine_stack(program)
        st.configure({"azureSubscriptionId": SUB, "azureResourceGroup": "rg-ml", "azureMlWorkspace": "ws-ml",
                      "azureLocation": "westeurope", "armEndpoint": fake_ml.url, "imageRegistry": local_registry})
        up = st.up()
        assert up.summary.result == "succeeded", st.log[-40:]
        out = outputs(up)
        headers = {"Authorization": f"Bearer {out['primary_key']}"}
        r = requests.post(out["scoring_uri"], json=SEED_REQUEST, headers=headers, verify=str(fake_ml.ca_path), timeout=30)
        assert r.status_code == 200 and r.headers["azureml-model-deployment"] == "v01", r.text
        assert np.allclose(r.json(), models[1])  # the model's own prediction, from the container

        # The environment names the image in the registry, by digest, and the registry has it.
        env = next(a for a in fake_ml.assets.values() if "/environments/" in str(a["id"]))
        ref = env["properties"]["image"]
        repo, digest = ref.split("@", 1)
        assert repo.startswith(f"{local_registry}/") and digest.startswith("sha256:"), ref
        manifest = requests.head(f"http://{local_registry}/v2/{repo.split('/', 1)[1]}/manifests/{digest}", timeout=10,
                                 headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"})
        assert manifest.status_code == 200, (ref, manifest.status_code)
        # The code asset is the image's whole source folder; the deployment runs score.py from it.
        code = next(a for a in fake_ml.assets.values() if "/codes/" in str(a["id"]))
        prefix = code["properties"]["codeUri"].split("/paths/", 1)[1]
        uploaded = {b.name[len(prefix):] for b in ContainerClient(blob["service_url"], blob["container"], credential={
            "account_name": blob["account"], "account_key": blob["key"]}).list_blobs(name_starts_with=prefix)}
        source = {p.relative_to(workdir / "sample" / "src").as_posix() for p in (workdir / "sample" / "src").rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts}
        assert uploaded == source and "score.py" in uploaded, (uploaded, source)
        deployment = fake_ml.endpoint(f"{st.name}-churn").deployments["v01"]
        assert deployment["body"]["properties"]["codeConfiguration"]["scoringScript"] == "score.py"

        models[2] = train(5.0, 2)
        assert not np.allclose(models[1], models[2])
        puts = len(fake_ml.asset_puts)
        with Load(out["scoring_uri"], out["primary_key"], str(fake_ml.ca_path), body=SEED_REQUEST) as load:
            time.sleep(0.5)
            up = st.up()
            time.sleep(0.5)
        assert up.summary.result == "succeeded", st.log[-40:]
        assert [kind for kind, _, _ in fake_ml.asset_puts[puts:]] == ["models"]  # image and code unchanged: not registered again
        failed = [x for x in load.results if x[0] != 200]
        assert len(load.results) >= 10 and not failed, failed[:5]
        for name, answer in load.answers:
            assert np.allclose(answer, models[1 if name == "v01" else 2]), (name, answer)
        assert load.answers[-1][0] == "v02"
        assert [k for k in docker_deployments.running] == [(f"{st.name}-churn", "v02")]  # v01's container is gone with v01
        st.destroy()
        assert not docker_deployments.running
    finally:
        fake_ml.close()
    assert core_containers.find(label) == []
