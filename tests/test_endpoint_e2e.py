"""Endpoint behaviour under bad requests: always a 4xx with a clear message, never a 5xx."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from conftest import train_model

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


def program() -> None:
    import pulumi

    from mldeploy.components import ContainerInstanceService, InferenceImage, RegisteredModel

    model = RegisteredModel("ridge", model_name="sklearn_regression_model",
                            model_path="sample/models/sklearn_regression_model.pkl")
    image = InferenceImage("scoring", entry_script="score.py", source_directory="sample/src",
                           conda_file="sample/env/myenv.yml")
    svc = ContainerInstanceService("api", models=[model], image=image, auth_enabled=True, max_request_bytes=64 * 1024)
    pulumi.export("scoring_uri", svc.scoring_uri)
    pulumi.export("swagger_uri", svc.swagger_uri)
    pulumi.export("primary_key", svc.primary_key)


def test_bad_requests_get_4xx_and_the_swagger_holds_under_property_based_testing(workdir: Path, engine_stack, tmp_path: Path) -> None:
    train_model(workdir / "sample" / "models" / "sklearn_regression_model.pkl")
    st = engine_stack(program)
    out = {k: v.value for k, v in st.up().outputs.items()}
    uri, key = out["scoring_uri"], out["primary_key"]
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    cases = {
        "malformed JSON": ("{not json", 400, "could not be decoded as JSON"),
        "wrong shape": (json.dumps({"data": [[1, 2, 3]]}), 400, "Invalid input"),
        "wrong type": (json.dumps({"data": [["a"] * 10]}), 400, "Invalid input"),
        "too large a number": (json.dumps({"data": [[2**63] * 10]}), 400, "Invalid input"),
        "no data field": (json.dumps({"rows": [[1] * 10]}), 400, "'data'"),
        "not an object": (json.dumps([1, 2]), 400, "JSON dictionary"),
        "empty body": ("", 400, "empty"),
        "over the size limit": (json.dumps({"data": [[1.5] * 10] * 5000}), 413, "too large"),
    }
    for name, (body, status, message) in cases.items():
        r = requests.post(uri, data=body, headers=auth, timeout=30)
        assert r.status_code == status, (name, r.status_code, r.text)
        assert message in r.json()["message"], (name, r.text)
    r = requests.post(uri, data="{}", headers={"Authorization": f"Bearer {key}", "Content-Type": "text/plain"}, timeout=30)
    assert r.status_code == 415, r.text

    # The service's own Swagger document drives a bounded property-based run.
    base = "{0.scheme}://{0.netloc}".format(urlsplit(uri))
    schemathesis = Path(sys.executable).parent / "schemathesis"
    run = subprocess.run(
        [str(schemathesis), "run", out["swagger_uri"], "--url", base, "-H", f"Authorization: Bearer {key}",
         "--checks", "not_a_server_error", "--max-examples", "60", "--seed", "20261124",
         "--request-timeout", "10", "--no-color"],
        capture_output=True, text=True, timeout=400, cwd=tmp_path,
    )
    report = run.stdout[-4000:] + run.stderr[-2000:]
    assert key not in run.stdout + run.stderr
    assert run.returncode == 0, report
    assert "generated" in run.stdout and "ST101" not in run.stdout, report
