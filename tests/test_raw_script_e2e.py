"""Raw `run(raw_data)` entry scripts on the local target (issue 17), real engine and Docker.

Such a script declares no sample: azmlinfsrv's Swagger carries a generic
placeholder, which the gate must not send (it used to, got the script's
KeyError as a 500, and refused every first `up`). Without `sample_request` the
roll is gated on health only, and says so; with it, a model that cannot answer
is refused while a client at 20 req/s never notices.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from pulumi import automation as auto

from test_deploy_e2e import ScoringLoop, stack_leftovers

pytestmark = [pytest.mark.e2e, pytest.mark.docker]
FIXTURES = Path(__file__).parent / "fixtures"
ROW = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
NO_SAMPLE = "the entry script declares no input sample; the roll is gated on health only"


def raw_project(work: Path, scale: Any) -> None:
    (work / "raw_src").mkdir(exist_ok=True)
    (work / "raw_src" / "score.py").write_text((FIXTURES / "raw" / "score.py").read_text())
    (work / "raw_model").mkdir(exist_ok=True)
    (work / "raw_model" / "scale.json").write_text(json.dumps({"scale": scale}))


def raw_program(sample: dict[str, Any]):
    def program() -> None:
        import pulumi

        from mldeploy.components import ContainerInstanceService, InferenceImage, RegisteredModel

        model = RegisteredModel("raw", model_name="raw_model", model_path="raw_model/scale.json")
        image = InferenceImage("raw", entry_script="score.py", source_directory="raw_src", conda_file="sample/env/myenv.yml")
        svc = ContainerInstanceService("rawservice", models=[model], image=image, auth_enabled=True, **sample)
        pulumi.export("scoring_uri", svc.scoring_uri)
        pulumi.export("primary_key", svc.primary_key)

    return program


def score(uri: str, key: str) -> requests.Response:
    return requests.post(uri, json={"data": [ROW]}, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_a_raw_script_deploys_rolls_on_health_and_sample_request_gates_it(workdir: Path, engine_stack) -> None:
    raw_project(workdir, 2)
    sample: dict[str, Any] = {}
    st = engine_stack(raw_program(sample))
    up = st.up()
    assert up.summary.result == "succeeded"
    assert f"rawservice: {NO_SAMPLE}" in up.text, up.text[-3000:]
    out = {k: v.value for k, v in up.outputs.items()}
    uri, key = out["scoring_uri"], out["primary_key"]
    r = score(uri, key)
    assert r.status_code == 200 and r.json() == [110.0], r.text

    # A new model version: the preview says what gates the roll, and the roll loses nothing.
    (workdir / "raw_model" / "scale.json").write_text(json.dumps({"scale": 3}))
    pre = st.preview(diff=True)
    assert NO_SAMPLE in pre.text, pre.text[-3000:]
    loop = ScoringLoop(uri, key)
    loop.start()
    time.sleep(1.0)
    up = st.up()
    deadline = time.monotonic() + 20
    while 165.0 not in loop.answers and time.monotonic() < deadline:
        time.sleep(0.5)
    loop.finish()
    assert up.summary.result == "succeeded"
    assert not loop.failures, loop.failures[:5]
    assert loop.ok >= 20 and 165.0 in loop.answers, (loop.ok, loop.answers)

    # sample_request with its expected answer: the next version must give it before traffic moves.
    sample.update(sample_request={"data": [ROW]}, sample_response=[220.0])
    (workdir / "raw_model" / "scale.json").write_text(json.dumps({"scale": 4}))
    pre = st.preview(diff=True)
    gated = [line for line in pre.text.splitlines() if "the roll is gated on sample_request: POST /score" in line]
    assert gated and "must answer the expected answer (sample_response)" in gated[0], pre.text[-3000:]
    up = st.up()
    assert "rawservice: mldeploy-" in up.text and "answered sample_request: 200 in" in up.text, up.text[-3000:]
    assert score(uri, key).json() == [220.0]

    # A model that loads but cannot answer: refused, with the request and the answer; nobody notices.
    (workdir / "raw_model" / "scale.json").write_text(json.dumps({"scale": "x"}))
    sample["sample_response"] = None
    loop = ScoringLoop(uri, key)
    loop.start()
    time.sleep(1.0)
    with pytest.raises(auto.CommandError) as failed:
        st.up()
    time.sleep(1.0)
    loop.finish()
    message = str(failed.value)
    assert "started but failed sample_request, so no traffic moved to it and it was removed" in message, message[-3000:]
    assert 'sample request: POST /score {"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]}' in message, message[message.find("started but"):][:3000]
    assert "the sample was answered 500, not 200" in message
    assert "could not convert string to float" in message, "the script's own error, from its log"
    assert not loop.failures, loop.failures[:5]
    assert loop.ok > 20 and loop.answers == {220.0}, loop.answers
    assert len(stack_leftovers(st.name)["containers"]) == 2, "the old backend and the gateway, nothing else"
    assert score(uri, key).json() == [220.0]
