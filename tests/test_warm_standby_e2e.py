"""A warm standby on the local target, applied by the real engine (issue 22: where the user waits).

The dev program with `mldeploy:warmStandby` on: after `up` a second container waits with no
model and no socket; a model-only update hands it the new version while a client scores at
20 requests a second on 127.0.0.1 (no failed request), it becomes the live backend, and a new
standby takes its place. A model that cannot load is refused as on any roll (the old backend
keeps serving), and `destroy` leaves nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import docker
import joblib
import numpy as np
import pytest
import requests
from pulumi import automation as auto

from conftest import train_model
from test_deploy_e2e import SEED_REQUEST, ScoringLoop, stack_leftovers

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


def service_outputs(st: Any) -> dict[str, Any]:
    (res,) = [r for r in st.stack.export_stack().deployment["resources"] if r["type"].endswith("mldeploy:Service")]
    return res["outputs"]


def score(out: dict[str, Any]) -> list[float]:
    r = requests.post(out["scoring_uri"], json=SEED_REQUEST, headers={"Authorization": f"Bearer {out['primary_key']}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_model_update_hands_the_new_version_to_the_waiting_standby(workdir: Path, engine_stack) -> None:
    import stack as stack_cli

    model_path = train_model(workdir / "sample" / "models" / "sklearn_regression_model.pkl", alpha=0.1)
    st = engine_stack(stack_cli.project_program(workdir))
    st.stack.set_config("mldeploy:warmStandby", auto.ConfigValue("true"))
    up = st.up()
    assert up.summary.result == "succeeded"
    out = {k: v.value for k, v in up.outputs.items()}
    assert np.allclose(score(out), joblib.load(model_path).predict(np.array(SEED_REQUEST["data"], dtype=float)))

    svc = service_outputs(st)
    standby = svc["standby"]
    dc = docker.from_env()
    waiting = dc.containers.get(standby["id"])
    assert waiting.status == "running" and waiting.labels["mldeploy.started-as"] == "standby"
    assert waiting.attrs["HostConfig"]["NetworkMode"] == "none"
    binds = {m["Destination"]: (m["Source"], m["RW"]) for m in waiting.attrs["Mounts"]}
    model_home = binds["/var/azureml-app/azureml-models/sklearn_regression_model"]
    assert not model_home[1] and Path(model_home[0]).name == "sklearn_regression_model", binds  # every version, read-only
    assert not any(d.startswith("/var/azureml-app/azureml-models/") and d != "/var/azureml-app/azureml-models/sklearn_regression_model"
                   for d in binds)
    assert not (Path(svc["backend_socket"]).parent / standby["socket"]).exists()  # no socket before it has a model
    # `up` returns once the standby is started, not once it has imported its libraries (seconds more on a
    # busy machine): wait for its line, bounded in time and count.
    for _ in range(300):
        if "modules imported" in waiting.logs().decode():
            break
        time.sleep(0.2)
    assert "modules imported" in waiting.logs().decode(), waiting.logs().decode()[-2000:]

    # A model-only update: the standby is handed version 2 and serves it; a new standby waits.
    v2 = joblib.load(train_model(model_path, alpha=5.0)).predict(np.array(SEED_REQUEST["data"], dtype=float))
    loop = ScoringLoop(out["scoring_uri"], out["primary_key"], rate=20, max_seconds=120)
    loop.start()
    try:
        up = st.up()
    finally:
        loop.finish()
    assert up.summary.result == "succeeded"
    assert loop.failures == [] and loop.ok >= 10, loop.failures[:5]
    assert any("handing" in line and "warm standby" in line for line in st.log), st.log[-30:]
    after = service_outputs(st)
    assert after["container_id"] == standby["id"], "the standby became the live backend"
    assert after["model_versions"] == {"sklearn_regression_model": 2}
    assert np.allclose(score(out), v2)
    assert after["standby"] and after["standby"]["id"] != standby["id"]
    assert dc.containers.get(after["standby"]["id"]).status == "running"
    assert len(stack_leftovers(st.name)["containers"]) == 3  # the gateway, the live backend and the new standby

    # A model that cannot load: refused as on any roll, the live backend keeps serving version 2.
    model_path.write_bytes(b"not a pickle")
    with pytest.raises(auto.CommandError):
        st.up()
    assert np.allclose(score(out), v2)

    st.destroy()
    assert stack_leftovers(st.name)["containers"] == []
