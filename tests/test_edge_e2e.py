"""The IoT Edge target on the local device, applied by the real engine.

This machine acts as the edge device: the module image (inference image + model
layer) is pushed to the local registry (127.0.0.1:5000, ACR's stand-in), and the
local agent pulls it and runs the module from the rendered, schema-checked
manifest. Scoring goes to 127.0.0.1 only.
"""

from __future__ import annotations

import time
from pathlib import Path

import docker
import joblib
import numpy as np
import pytest
import requests
from pulumi import automation as auto

from conftest import train_model
from test_deploy_e2e import SEED_REQUEST

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


def modules_of(stack_name: str) -> list:
    dc = docker.from_env()
    return dc.containers.list(all=True, filters={"label": [f"mldeploy.stack={stack_name}", "mldeploy.edge.module"]})


def score(uri: str) -> requests.Response:
    return requests.post(uri, json=SEED_REQUEST, timeout=30)


def test_edge_module_deploy_score_bump_drift_destroy(workdir: Path, engine_stack, local_registry: str) -> None:
    import preview_markdown
    import stack as stack_cli
    from mldeploy.providers.clients import oci_registry

    model_path = train_model(workdir / "sample" / "models" / "sklearn_regression_model.pkl", alpha=0.1)
    v1 = joblib.load(model_path)
    st = engine_stack(stack_cli.project_program(workdir))
    st.stack.set_config("mldeploy:target", auto.ConfigValue("iotedge"))
    times: dict[str, float] = {}

    t = time.monotonic()
    up = st.up()
    times["first up"] = time.monotonic() - t
    assert up.summary.result == "succeeded"
    out = {k: v.value for k, v in up.outputs.items()}
    assert "primary_key" not in out, "an edge module has no key, as in Azure ML"
    uri = out["scoring_uri"]
    assert uri.startswith("http://127.0.0.1:") and uri.endswith("/score")
    assert out["module_version"] == 1 and out["model_version"] == 1
    r = score(uri)
    assert r.status_code == 200, r.text
    assert np.allclose(r.json(), v1.predict(np.array(SEED_REQUEST["data"])))

    # The module's container, as the agent makes it: labels with desired status and restart policy, 127.0.0.1 only.
    (c,) = modules_of(st.name)
    assert c.labels["net.azure-devices.edge.desiredStatus"] == "running"
    assert c.labels["net.azure-devices.edge.restartPolicy"] == "always"
    assert c.labels["net.azure-devices.edge.version"] == "1"
    ports = c.attrs["HostConfig"]["PortBindings"]
    assert all(b["HostIp"] == "127.0.0.1" for bs in ports.values() for b in bs)
    ref1 = out["image_ref"]
    assert ref1.startswith(f"{local_registry}/") and c.attrs["Config"]["Image"] == ref1
    assert oci_registry.manifest_exists(*ref1.split("@"))

    # A new model version: a new module image and a new manifest, said in words.
    train_model(model_path, alpha=50.0)
    v2 = joblib.load(model_path)
    steps, summary = preview_markdown.preview_steps(st.stack)
    review = preview_markdown.render(st.name, steps, summary)
    assert "module `scorer` image → v2; model `sklearn_regression_model` version 1 → 2" in review, review
    assert "InferenceImage" not in review, "the inference image is not rebuilt for a new model"
    t = time.monotonic()
    up = st.up()
    times["up with model v2"] = time.monotonic() - t
    out2 = {k: v.value for k, v in up.outputs.items()}
    assert out2["module_version"] == 2 and out2["scoring_uri"] == uri
    ref2 = out2["image_ref"]
    assert ref2 != ref1
    r = score(uri)
    assert r.status_code == 200 and np.allclose(r.json(), v2.predict(np.array(SEED_REQUEST["data"])))
    (c2,) = modules_of(st.name)
    assert c2.id != c.id and c2.attrs["Config"]["Image"] == ref2
    assert not oci_registry.manifest_exists(*ref1.split("@")), "the device no longer runs v1: its image left the registry"

    # Stopped by hand: refresh finds the drift, up restores the module.
    c2.stop(timeout=5)
    t = time.monotonic()
    st.refresh()
    times["refresh"] = time.monotonic() - t
    steps, summary = preview_markdown.preview_steps(st.stack)
    review = preview_markdown.render(st.name, steps, summary)
    assert "found by refresh: module `scorer` exited: restored" in review, review
    t = time.monotonic()
    up = st.up()
    times["up restoring"] = time.monotonic() - t
    assert up.summary.result == "succeeded"
    (c3,) = modules_of(st.name)
    assert c3.status == "running"
    assert score(uri).status_code == 200

    t = time.monotonic()
    down = st.destroy()
    times["destroy"] = time.monotonic() - t
    assert down.summary.result == "succeeded"
    assert modules_of(st.name) == []
    dc = docker.from_env()
    assert dc.containers.list(all=True, filters={"label": [f"mldeploy.stack={st.name}"]}) == []
    assert dc.images.list(filters={"label": [f"mldeploy.stack={st.name}"]}) == []
    assert not oci_registry.manifest_exists(*ref2.split("@"))
    assert not (workdir / ".pulumi-state" / "registry" / "sklearn_regression_model").exists()
    with pytest.raises(requests.ConnectionError):
        score(uri)
    print("timings:", {k: round(v, 1) for k, v in times.items()})
