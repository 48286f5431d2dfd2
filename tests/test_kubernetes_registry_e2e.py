"""Services on the real local cluster pull from a registry that wants credentials, as from a private ACR.

The registry is a docker-registry with token auth of this test's own
(tests/fake_acr.py), not ACR. The cluster's containerd is told only that it
speaks plain HTTP (a `hosts.toml`, as for the shared registry); the credentials
reach it the Kubernetes way, through the pods' `imagePullSecrets`.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Iterator

import pulumi
import pytest
from pulumi import automation as auto

from conftest import train_model
from fake_acr import TokenRegistry
from test_kubernetes_e2e import IMAGE_ARGS, KUBECTL, kubectl, objects_in, score

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.k8s]


@pytest.fixture
def private_registry(tmp_path: Path, k8s_cluster: str) -> Iterator[TokenRegistry]:
    """The registry, and containerd's plain-HTTP setting for its address (removed afterwards)."""
    from mldeploy.providers.targets.kubernetes import local_cluster as cluster

    reg = TokenRegistry(tmp_path / "acr")
    hosts = cluster.run_dir() / "conf" / "certs.d" / reg.address
    hosts.mkdir(parents=True)
    (hosts / "hosts.toml").write_text(
        f'server = "http://{reg.address}"\n\n[host."http://{reg.address}"]\n  capabilities = ["pull", "resolve"]\n'
    )
    yield reg
    (hosts / "hosts.toml").unlink()
    hosts.rmdir()
    reg.close()


def test_pods_pull_with_the_registry_credentials_and_a_rotated_password_rolls_nothing(
    workdir: Path, engine_stack, k8s_cluster: str, private_registry: TokenRegistry
) -> None:
    from mldeploy.components import AksCluster, AksService, InferenceImage, RegisteredModel

    reg = private_registry
    ns = f"p-{workdir.parent.name[-8:].lower().replace('_', '-')}".rstrip("-")
    train_model(workdir / "models" / "a" / "sklearn_regression_model.pkl", alpha=0.1)

    def program() -> None:
        model = RegisteredModel("model-a", model_name="model_a", model_path="models/a/sklearn_regression_model.pkl")
        image = InferenceImage("scoring", **IMAGE_ARGS)
        cluster = AksCluster("aks", cluster_purpose="DevTest")
        svc = AksService("svc", cluster=cluster, models=[model], image=image, namespace=ns, num_replicas=1,
                         startup_timeout_seconds=180, initial_delay_seconds=30)
        pulumi.export("uri", svc.scoring_uri)
        pulumi.export("key", svc.primary_key)

    st = engine_stack(program)
    st.stack.set_config("mldeploy:imageRegistry", auto.ConfigValue(reg.address))
    st.stack.set_config("mldeploy:imageRegistryUsername", auto.ConfigValue(reg.username))
    st.stack.set_config("mldeploy:imageRegistryPassword", auto.ConfigValue(reg.password, secret=True))

    up = st.up()
    assert up.summary.result == "succeeded", st.log[-40:]
    uri, key = up.outputs["uri"].value, up.outputs["key"].value
    assert score(uri, key).status_code == 200
    assert score(uri, None).status_code == 401

    # The pod names the namespace's pull secret, and its images came from the private registry.
    pod = kubectl(k8s_cluster, "get", "pods", "-n", ns, "-l", "mldeploy.azureml.net/service=svc")["items"][0]
    assert pod["spec"]["imagePullSecrets"] == [{"name": "mldeploy-registry"}]
    assert all(c["image"].startswith(f"{reg.address}/") for c in pod["spec"]["containers"])
    secret = kubectl(k8s_cluster, "get", "secret", "mldeploy-registry", "-n", ns)
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    auths = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))["auths"]
    assert auths[reg.address]["username"] == reg.username
    # containerd itself asked the token server, with those credentials, for pull-only access.
    pulls = [t for t in reg.tokens_issued if "containerd" in t["agent"].lower()]
    assert pulls, [t["agent"] for t in reg.tokens_issued]
    assert all(t["account"] == reg.username and all(a["actions"] == ["pull"] for a in t["access"]) for t in pulls)

    # Rotate the password: the Secret changes, the Deployment does not, so no pod restarts.
    old_password = reg.password
    reg.password = "rotated-" + old_password[:16]
    st.stack.set_config("mldeploy:imageRegistryPassword", auto.ConfigValue(reg.password, secret=True))
    import preview_markdown

    steps, summary = preview_markdown.preview_steps(st.stack)
    review = preview_markdown.render(st.name, steps, summary)
    assert "new registry credentials, kept for later reads and deletes; nothing is pushed" in review, review
    assert "the pods roll only if a digest changes" in review and "rolls `" not in review, review
    before = pod["metadata"]["uid"]
    generation = kubectl(k8s_cluster, "get", "deployment", "svc", "-n", ns)["metadata"]["generation"]
    up = st.up()
    assert up.summary.result == "succeeded", st.log[-40:]
    secret = kubectl(k8s_cluster, "get", "secret", "mldeploy-registry", "-n", ns)
    auths = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))["auths"]
    assert auths[reg.address]["password"] == reg.password
    assert kubectl(k8s_cluster, "get", "deployment", "svc", "-n", ns)["metadata"]["generation"] == generation
    pods = kubectl(k8s_cluster, "get", "pods", "-n", ns, "-l", "mldeploy.azureml.net/service=svc")["items"]
    assert [p["metadata"]["uid"] for p in pods] == [before], "a rotated password restarts nothing"
    assert score(uri, key).status_code == 200
    # Neither password is in Pulumi's state in plain text.
    for f in (workdir / ".pulumi-state" / "backend").rglob("*.json"):
        text = f.read_text()
        assert old_password not in text and reg.password not in text, f

    st.destroy()
    gone = subprocess.run([KUBECTL, "--kubeconfig", k8s_cluster, "get", "namespace", ns], capture_output=True, text=True)
    if gone.returncode == 0:
        assert objects_in(k8s_cluster, ns) == []
    else:
        assert "NotFound" in gone.stderr
    # Every image is gone from the private registry: destroy used the rotated password.
    from mldeploy.providers.image_registry import oci_registry

    auth = oci_registry.auth_from({"server": reg.address, "username": reg.username, "password": reg.password})
    prefix = f"{reg.address}/mldeploy-mldeploy-{st.name.lower()}"
    for repo in ("svc", "front"):
        assert oci_registry.tags(f"{prefix}/{repo}", auth=auth) == [], repo
    assert not any("could not delete" in line for line in st.log), [l for l in st.log if "could not" in l]
