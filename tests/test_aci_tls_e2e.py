"""A TLS container group through the real engine and the local fake ARM (issue 18, item 3).

The fake runs the group's containers in Docker on 127.0.0.1 and mounts its secret
volume's files as ACI does. The front end answers HTTPS on the group's 443, as
the fake publishes it on 127.0.0.1, with the test's own CA; plain HTTP there gets
a 400; ARM never returns the key, and a secret environment variable travels as a
`secureValue`.
"""

from __future__ import annotations

from pathlib import Path

import pulumi
import pytest
import requests

from conftest import train_model
from fake_arm import FakeArm
from test_aci_e2e import IMAGE_ARGS, SEED_REQUEST, SUB
from tls_certs import make_ca_and_cert

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


def test_an_aci_group_with_tls_answers_https_only(fake: FakeArm, local_registry: str, workdir: Path, engine_stack) -> None:
    from mldeploy.components import ContainerInstanceService, InferenceImage, RegisteredModel

    pem = make_ca_and_cert(workdir / "tls")
    train_model(workdir / "models" / "ridge" / "sklearn_regression_model.pkl", alpha=0.1)

    def program() -> None:
        model = RegisteredModel("ridge", model_name="ridge", model_path="models/ridge/sklearn_regression_model.pkl")
        image = InferenceImage("scoring", **IMAGE_ARGS)
        svc = ContainerInstanceService("aciservice", models=[model], image=image, target="aci", cpu_cores=0.5, memory_gb=1,
                                       auth_enabled=True, environment_variables={"TOKEN": pulumi.Output.secret("t0ps3cret")},
                                       ssl_enabled=True, ssl_cert_pem_file=str(pem["cert"]), ssl_key_pem_file=str(pem["key"]),
                                       ssl_cname="localhost")
        for k in ("scoring_uri", "primary_key"):
            pulumi.export(k, getattr(svc, k))

    st = engine_stack(program)
    st.configure({"azureSubscriptionId": SUB, "azureResourceGroup": "rg-ml", "azureLocation": "westeurope",
                  "armEndpoint": fake.url})
    group = f"mldeploy-{st.name}-aciservice"
    up = st.up()
    assert up.summary.result == "succeeded", st.log[-40:]
    out = {k: v.value for k, v in up.outputs.items()}
    assert out["scoring_uri"] == "https://localhost/api/v1/service/aciservice/score"
    port = fake.host_port(group, 443)
    uri = f"https://localhost:{port}/api/v1/service/aciservice/score"
    auth = {"Authorization": f"Bearer {out['primary_key']}"}
    r = requests.post(uri, json=SEED_REQUEST, headers=auth, timeout=30, verify=str(pem["ca"]))
    assert r.status_code == 200 and len(r.json()) == 2, r.text
    plain = requests.post(f"http://127.0.0.1:{port}/api/v1/service/aciservice/score", json=SEED_REQUEST, headers=auth, timeout=30)
    assert plain.status_code == 400, plain.text[:300]
    seen = fake.view(fake.group(group))
    assert seen["properties"]["volumes"] == [{"name": "front-tls", "secret": {}}], "ARM never returns a secret volume"
    env = seen["properties"]["containers"][0]["properties"]["environmentVariables"]
    assert {"name": "TOKEN"} in env and "t0ps3cret" not in str(seen)
    # No plain-HTTP warning for a group that serves TLS.
    assert not [line for line in st.log if "travel over plain HTTP" in line]
