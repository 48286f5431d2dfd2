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
    from mldeploy.providers.image_registry import oci_registry

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


def test_two_modules_on_one_device_are_one_manifest_and_one_leaving_leaves_the_other_untouched(
    workdir: Path, engine_stack, local_registry: str
) -> None:
    """Issue 17, part 2: both modules run and score; removing one keeps the other's container (same id, no restart)."""
    import pulumi
    import preview_markdown
    from mldeploy.components import EdgeDevice, EdgeModule, InferenceImage, RegisteredModel
    from test_kubernetes_e2e import IMAGE_ARGS

    paths = {n: workdir / "models" / n / "sklearn_regression_model.pkl" for n in ("first", "second")}
    fitted = {n: joblib.load(train_model(p, alpha=a)) for (n, p), a in zip(paths.items(), (0.1, 50.0))}
    names = ["first", "second"]

    def program() -> None:
        image = InferenceImage("scoring", **IMAGE_ARGS)
        device = EdgeDevice("two-modules")
        for n in names:
            model = RegisteredModel(f"model-{n}", model_name=f"model_{n}", model_path=f"models/{n}/sklearn_regression_model.pkl")
            module = EdgeModule(n, models=[model], image=image, device=device)
            pulumi.export(f"{n}_uri", module.scoring_uri)
            pulumi.export(f"{n}_version", module.module_version)

    st = engine_stack(program)
    preview = st.preview()
    assert "device two-modules: will run modules first, second" in preview.text, preview.text[-3000:]
    up = st.up()
    assert up.summary.result == "succeeded", st.log[-40:]
    out = {k: v.value for k, v in up.outputs.items()}
    assert out["first_uri"] != out["second_uri"]
    for n in names:
        assert out[f"{n}_uri"].startswith("http://127.0.0.1:") and out[f"{n}_version"] == 1
        r = score(out[f"{n}_uri"])
        assert r.status_code == 200, r.text
        assert np.allclose(r.json(), fitted[n].predict(np.array(SEED_REQUEST["data"]))), n
    running = {c.labels["mldeploy.edge.module"]: c for c in modules_of(st.name)}
    assert sorted(running) == names
    first = running["first"]
    started_at = first.attrs["State"]["StartedAt"]

    names.remove("second")
    review = preview_markdown.render(st.name, *preview_markdown.preview_steps(st.stack))
    assert "module `second` leaves the manifest" in review, review
    up = st.up()
    assert up.summary.result == "succeeded", st.log[-40:]
    (left,) = modules_of(st.name)
    left.reload()
    assert left.id == first.id and left.attrs["State"]["StartedAt"] == started_at, "the module that stays is not restarted"
    assert score(up.outputs["first_uri"].value).status_code == 200
    with pytest.raises(requests.ConnectionError):
        score(out["second_uri"])

    assert st.destroy().summary.result == "succeeded"
    assert modules_of(st.name) == []
