"""The deployment graph on the local target, applied by the real engine.

Register, build, deploy, score, roll on a new model version with traffic
flowing, destroy: everything really runs (Docker containers, the nginx
gateway, the Azure ML scoring server), on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import docker
import joblib
import numpy as np
import pytest
import requests

from conftest import train_model

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

SEED_REQUEST = {"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]]}


def stack_leftovers(stack_name: str) -> dict[str, list[str]]:
    dc = docker.from_env()
    flt = {"label": [f"mldeploy.stack={stack_name}"]}
    return {
        "containers": [c.name for c in dc.containers.list(all=True, filters=flt)],
        "images": [t for i in dc.images.list(filters=flt) for t in (i.tags or [i.id])],
    }


class ScoringLoop(threading.Thread):
    """A client scoring at a steady rate; bounded in count and time."""

    def __init__(self, uri: str, key: str, rate: float = 20, max_seconds: float = 240, max_requests: int = 5000):
        super().__init__(daemon=True)
        self.uri, self.key, self.period = uri, key, 1 / rate
        self.max_seconds, self.max_requests = max_seconds, max_requests
        self.stop_event = threading.Event()
        self.ok, self.failures, self.answers = 0, [], set()

    def run(self) -> None:
        start = time.monotonic()
        session = requests.Session()
        for _ in range(self.max_requests):
            if self.stop_event.is_set() or time.monotonic() - start > self.max_seconds:
                break
            try:
                r = session.post(self.uri, json={"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]},
                                 headers={"Authorization": f"Bearer {self.key}"}, timeout=10)
                if r.status_code == 200:
                    self.ok += 1
                    self.answers.add(round(r.json()[0], 6))
                else:
                    self.failures.append(f"{r.status_code} {r.text[:200]}")
            except requests.RequestException as exc:
                self.failures.append(f"{time.monotonic() - start:.2f}s {exc!r}"[:300])
            time.sleep(self.period)

    def finish(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)


def test_sample_model_deploy_score_roll_destroy(workdir: Path, engine_stack) -> None:
    import stack as stack_cli

    model_path = train_model(workdir / "sample" / "models" / "sklearn_regression_model.pkl", alpha=0.1)
    local_v1 = joblib.load(model_path)
    st = engine_stack(stack_cli.project_program(workdir))

    up = st.up()
    assert up.summary.result == "succeeded"
    out = {k: v.value for k, v in up.outputs.items()}
    assert up.outputs["primary_key"].secret
    assert out["model_version"] == 1
    uri, key = out["scoring_uri"], out["primary_key"]
    assert uri.startswith("http://127.0.0.1:") and uri.endswith("/api/v1/service/aciservice/score")

    # Score with the key: the predictions are the model's.
    r = requests.post(uri, json=SEED_REQUEST, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert np.allclose(r.json(), local_v1.predict(np.array(SEED_REQUEST["data"])))
    # Without a key, or with a wrong one: 401.
    assert requests.post(uri, json=SEED_REQUEST, timeout=30).status_code == 401
    assert requests.post(uri, json=SEED_REQUEST, headers={"Authorization": "Bearer " + "x" * 43}, timeout=30).status_code == 401
    # The Swagger document describes the `data` input from the entry script's sample.
    swagger = requests.get(out["swagger_uri"], timeout=30).json()
    body = json.dumps(swagger)
    assert "data" in body and "/score" in body

    # A new model file: preview names the version change and touches no image.
    image_before = out["image_name"]
    train_model(model_path, alpha=50.0)
    local_v2 = joblib.load(model_path)
    pre = st.preview(diff=True)
    assert "version" in pre.text and "1 => 2" in pre.text
    assert pre.change_summary.get("update") == 2  # the model version and the service
    assert "replace" not in pre.change_summary
    import preview_markdown

    steps, summary = preview_markdown.preview_steps(st.stack)
    review = preview_markdown.render(st.name, steps, summary)
    assert "| ✏️ update | RegisteredModel `ridge` | model `sklearn_regression_model` version 1 → 2 (new content) |" in review
    assert "rolls to model `sklearn_regression_model` version 1 → 2" in review
    assert "InferenceImage" not in review, "the image is not rebuilt for a new model"

    # Roll with traffic flowing: no request may fail.
    loop = ScoringLoop(uri, key)
    loop.start()
    time.sleep(1.0)
    up = st.up()
    time.sleep(1.0)
    loop.finish()
    assert up.summary.result == "succeeded"
    assert not loop.failures, (len(loop.failures), loop.ok, loop.failures[:3], loop.failures[-1:], st.log[-60:])
    assert loop.ok > 20
    out2 = {k: v.value for k, v in up.outputs.items()}
    assert out2["model_version"] == 2
    assert out2["scoring_uri"] == uri, "the scoring URI must survive the roll"
    assert out2["primary_key"] == key, "keys are stable across updates"
    assert out2["image_name"] == image_before, "a new model version must not rebuild the image"
    r = requests.post(uri, json=SEED_REQUEST, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert np.allclose(r.json(), local_v2.predict(np.array(SEED_REQUEST["data"])))
    assert not np.allclose(local_v1.predict(np.array(SEED_REQUEST["data"])), r.json())
    assert len(loop.answers) >= 2, "the client saw the old and then the new model"
    # Exactly one scoring container and the gateway remain.
    assert len(stack_leftovers(st.name)["containers"]) == 2

    down = st.destroy()
    assert down.summary.result == "succeeded"
    assert stack_leftovers(st.name) == {"containers": [], "images": []}
    assert not (workdir / ".pulumi-state" / "registry" / "sklearn_regression_model").exists()
    with pytest.raises(requests.ConnectionError):
        requests.post(uri, json=SEED_REQUEST, timeout=5)


def test_two_models_folder_model_pandas_input_and_failed_update(workdir: Path, engine_stack) -> None:
    import pulumi

    from mldeploy.components import ContainerInstanceService, InferenceImage, RegisteredModel

    ridge = train_model(workdir / "models" / "ridge" / "sklearn_regression_model.pkl")
    calib = workdir / "models" / "calibration"
    calib.mkdir(parents=True)
    (calib / "offset.json").write_text(json.dumps({"offset": 1000.0}))
    (calib / "README.txt").write_text("a folder model: every file is registered")
    src = workdir / "multi_src"
    src.mkdir()
    fixtures = Path(__file__).parent / "fixtures" / "multi"
    (src / "score.py").write_text((fixtures / "score.py").read_text())
    env: dict[str, str] = {}

    def program() -> None:
        m1 = RegisteredModel("ridge", model_name="ridge_model", model_path=str(ridge))
        m2 = RegisteredModel("calib", model_name="calibration", model_path="models/calibration")
        image = InferenceImage("multi", entry_script="score.py", source_directory="multi_src",
                               conda_file=str(fixtures / "requirements.txt"))
        svc = ContainerInstanceService("multi", models=[m1, m2], image=image, auth_enabled=False,
                                       environment_variables=dict(env))
        pulumi.export("scoring_uri", svc.scoring_uri)
        pulumi.export("swagger_uri", svc.swagger_uri)
        pulumi.export("model_versions", svc.model_versions)

    st = engine_stack(program)
    up = st.up()
    out = {k: v.value for k, v in up.outputs.items()}
    assert out["model_versions"] == {"ridge_model": 1, "calibration": 1}
    rows = [{f"f{i}": float(v) for i, v in enumerate(row)} for row in SEED_REQUEST["data"]]
    r = requests.post(out["scoring_uri"], json={"data": rows}, timeout=30)
    assert r.status_code == 200, r.text
    expected = joblib.load(ridge).predict(np.array(SEED_REQUEST["data"], dtype=float)) + 1000.0
    assert np.allclose(r.json(), expected)
    swagger = requests.get(out["swagger_uri"], timeout=30).json()
    assert "f0" in json.dumps(swagger), "the DataFrame's columns are in the Swagger document"

    # An update whose init() raises fails with the container's log; the old version keeps serving.
    env["FAIL_INIT"] = "1"
    from pulumi import automation as auto

    with pytest.raises(auto.CommandError) as failed:
        st.up()
    assert "init failed on purpose" in str(failed.value) + "\n".join(st.log)
    r = requests.post(out["scoring_uri"], json={"data": rows}, timeout=30)
    assert r.status_code == 200 and np.allclose(r.json(), expected)
    assert len(stack_leftovers(st.name)["containers"]) == 2, "the failed container was removed"

    env.pop("FAIL_INIT")
    st.destroy()
    assert stack_leftovers(st.name) == {"containers": [], "images": []}
    assert not any((workdir / ".pulumi-state" / "registry").glob("*/*.json"))
