"""The Kubernetes target on the real local cluster, applied by the real engine.

Everything really runs: the cluster built from Kubernetes' Go modules, the
pulumi-kubernetes provider built from its Go module, images pulled by the
cluster's containerd from the local registry, the Azure ML scoring server in
pods behind the key-checking front end. Clients reach services only through
NodePorts on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pulumi
import pytest
import requests
from pulumi import automation as auto

from conftest import train_model
from test_deploy_e2e import SEED_REQUEST, ScoringLoop

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.k8s]

# The kubectl built with the cluster (scripts/k8s/build.sh), never another one on PATH.
KUBECTL = os.path.join(os.environ.get("MLDEPLOY_K8S_HOME", ""), "bin", "kubectl")
IMAGE_ARGS = {"entry_script": "score.py", "source_directory": "sample/src", "conda_file": "sample/env/myenv.yml"}


def kubectl(kubeconfig: str, *args: str) -> Any:
    out = subprocess.run(
        [KUBECTL, "--kubeconfig", kubeconfig, *args, "-o", "json"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def replicasets(kubeconfig: str, ns: str, service: str) -> dict[str, int]:
    items = kubectl(kubeconfig, "get", "replicasets", "-n", ns, "-l", f"mldeploy.azureml.net/service={service}")["items"]
    return {rs["metadata"]["name"]: int(rs["status"].get("replicas") or 0) for rs in items}


def objects_in(kubeconfig: str, ns: str) -> list[str]:
    kinds = "deployments,replicasets,pods,services,secrets,configmaps,horizontalpodautoscalers,poddisruptionbudgets"
    items = kubectl(kubeconfig, "get", kinds, "-n", ns)["items"]
    # Every namespace gets these from Kubernetes itself.
    return [f"{i['kind']}/{i['metadata']['name']}" for i in items if i["metadata"]["name"] != "kube-root-ca.crt"]


def score(uri: str, key: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(uri, json=SEED_REQUEST, headers=headers, timeout=30)


def test_two_services_score_roll_fail_safely_and_clean_up(workdir: Path, engine_stack, k8s_cluster: str) -> None:
    from mldeploy.components import AksCluster, AksService, InferenceImage, RegisteredModel

    ns = f"t-{workdir.parent.name[-8:].lower().replace('_', '-')}".rstrip("-")
    path_a = train_model(workdir / "models" / "a" / "sklearn_regression_model.pkl", alpha=0.1)
    path_b = train_model(workdir / "models" / "b" / "sklearn_regression_model.pkl", alpha=5.0)

    timeout = [180]  # the first rollout pulls the image; a failing one need not wait as long

    def program() -> None:
        a = RegisteredModel("model-a", model_name="model_a", model_path="models/a/sklearn_regression_model.pkl")
        b = RegisteredModel("model-b", model_name="model_b", model_path="models/b/sklearn_regression_model.pkl")
        image = InferenceImage("scoring", **IMAGE_ARGS)
        cluster = AksCluster("aks", cluster_purpose="DevTest")
        common = {"namespace": ns, "startup_timeout_seconds": timeout[0], "initial_delay_seconds": 30}
        svc_a = AksService("svc-a", cluster=cluster, models=[a], image=image, autoscale_max_replicas=3,
                           autoscale_target_utilization=60, **common)
        svc_b = AksService("svc-b", cluster=cluster, models=[b], image=image, num_replicas=2, **common)
        for name, svc in (("a", svc_a), ("b", svc_b)):
            pulumi.export(f"{name}_uri", svc.scoring_uri)
            pulumi.export(f"{name}_swagger", svc.swagger_uri)
            pulumi.export(f"{name}_key", svc.primary_key)
            pulumi.export(f"{name}_versions", svc.model_versions)
        pulumi.export("kubernetes_version", cluster.kubernetes_version)
        pulumi.export("vcpus", cluster.allocatable_vcpus)

    st = engine_stack(program)
    up = st.up()
    assert up.summary.result == "succeeded"
    out = {k: v.value for k, v in up.outputs.items()}
    assert up.outputs["a_key"].secret and up.outputs["b_key"].secret
    assert out["kubernetes_version"] == "v1.37.2"
    assert out["a_versions"] == {"model_a": 1} and out["b_versions"] == {"model_b": 1}

    # Both services score with their key, on 127.0.0.1, with their own model; no key or a wrong one: 401.
    for name, path in (("a", path_a), ("b", path_b)):
        uri, key = out[f"{name}_uri"], out[f"{name}_key"]
        assert uri.startswith("http://127.0.0.1:") and uri.endswith(f"/api/v1/service/svc-{name}/score")
        r = score(uri, key)
        assert r.status_code == 200, r.text
        assert np.allclose(r.json(), joblib.load(path).predict(np.array(SEED_REQUEST["data"])))
        assert score(uri, None).status_code == 401
        assert score(uri, "x" * 43).status_code == 401
        assert score(uri, out["b_key" if name == "a" else "a_key"]).status_code == 401, "one service's key opens only it"
        assert "data" in json.dumps(requests.get(out[f"{name}_swagger"], timeout=30).json())

    # The HPA and the PDB follow the deploy configuration.
    hpa = kubectl(k8s_cluster, "get", "hpa", "svc-a", "-n", ns)["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 3)
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    assert kubectl(k8s_cluster, "get", "pdb", "svc-b", "-n", ns)["spec"]["maxUnavailable"] == 1
    assert kubectl(k8s_cluster, "get", "deployment", "svc-b", "-n", ns)["status"]["readyReplicas"] == 2
    # The scoring server listens on the pod's loopback only: the front end is the pod's one port.
    pod = kubectl(k8s_cluster, "get", "pods", "-n", ns, "-l", "mldeploy.azureml.net/service=svc-a")["items"][0]
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    assert "ports" not in containers["scoring"]
    assert {e["name"]: e["value"] for e in containers["scoring"]["env"]}["MLDEPLOY_BIND_HOST"] == "127.0.0.1"
    assert containers["scoring"]["image"].startswith("127.0.0.1:5000/")
    svc = kubectl(k8s_cluster, "get", "service", "svc-a", "-n", ns)["spec"]
    assert svc["type"] == "NodePort" and svc["ports"][0]["targetPort"] == 8080

    # A new version of model a: the preview says what rolls, in words.
    rs_a, rs_b = replicasets(k8s_cluster, ns, "svc-a"), replicasets(k8s_cluster, ns, "svc-b")
    train_model(path_a, alpha=50.0)
    import preview_markdown

    steps, summary = preview_markdown.preview_steps(st.stack)
    review = preview_markdown.render(st.name, steps, summary)
    assert "model `model_a` version 1 → 2 (new content)" in review
    assert "model layer: `model_a` version 1 → 2" in review
    assert "| ✏️ update | AksService `svc-a` | rolls `" + ns + "/svc-a`: a new ReplicaSet" in review
    assert "model `model_a` version 1 → 2<br>" in review or "model `model_a` version 1 → 2 |" in review
    assert "svc-b" not in review, "the other service is untouched"

    # The roll, with a client at 20 req/s: no request fails, and the new model answers.
    loop = ScoringLoop(out["a_uri"], out["a_key"])
    loop.start()
    time.sleep(1.0)
    up = st.up()
    # Old pods drain for a few seconds after the rollout (preStop), and a keep-alive
    # connection stays with its pod until then: wait, bounded, for the new answer.
    v2 = round(float(joblib.load(path_a).predict(np.array([SEED_REQUEST["data"][0]]))[0]), 6)
    deadline = time.monotonic() + 30
    while v2 not in loop.answers and time.monotonic() < deadline:
        time.sleep(0.5)
    loop.finish()
    assert up.summary.result == "succeeded"
    assert loop.failures == [], loop.failures[:5]
    assert loop.ok >= 40
    assert v2 in loop.answers, loop.answers
    assert {k: v.value for k, v in up.outputs.items()}["a_uri"] == out["a_uri"], "the scoring URI is stable"
    new_rs_a = replicasets(k8s_cluster, ns, "svc-a")
    assert set(new_rs_a) - set(rs_a), "svc-a rolled to a new ReplicaSet"
    assert all(n == 0 for name, n in new_rs_a.items() if name in rs_a), "the old ReplicaSet is scaled to 0"
    assert replicasets(k8s_cluster, ns, "svc-b") == rs_b, "svc-b was not touched"

    # A version whose init() fails: up fails with the pod's log; the old pods keep serving.
    path_a.write_bytes(b"this is not a pickle")
    timeout[0] = 40  # the old pods keep serving; the failure is known well before this (issue 22: a shorter wait)
    good = score(out["a_uri"], out["a_key"]).json()
    loop = ScoringLoop(out["a_uri"], out["a_key"])
    loop.start()
    # pulumi-kubernetes alone sometimes called this update done (providers/targets/kubernetes/rollout.py says
    # why); the service's rollout check refuses it every time, with the pod's own traceback.
    with pytest.raises(auto.CommandError) as failed:
        st.up()
    message = str(failed.value) + "\n".join(st.log)
    assert "svc-a" in message
    assert "UnpicklingError" in message or "invalid load key" in message or "pickle" in message.lower(), message[-6000:]
    loop.finish()
    assert loop.failures == [], loop.failures[:5]
    r = score(out["a_uri"], out["a_key"])
    assert r.status_code == 200 and r.json() == good

    # Back to a good model, then destroy: nothing is left in the namespace, and the namespace goes.
    train_model(path_a, alpha=1.0)
    assert st.up().summary.result == "succeeded"
    st.destroy()
    gone = subprocess.run([KUBECTL, "--kubeconfig", k8s_cluster, "get", "namespace", ns], capture_output=True, text=True)
    if gone.returncode == 0:  # still terminating: it must hold nothing of ours
        assert objects_in(k8s_cluster, ns) == []
    else:
        assert "NotFound" in gone.stderr
    # No image is left in the registry (every version of each repository) or in Docker.
    from mldeploy.providers.image_registry import oci_registry

    prefix = f"127.0.0.1:5000/mldeploy-mldeploy-{st.name.lower()}"
    for repo in ("svc-a", "svc-b", "front"):
        assert oci_registry.tags(f"{prefix}/{repo}") == [], repo
    import docker

    assert [t for i in docker.from_env().images.list() for t in i.tags if t.startswith(prefix)] == []


def test_bad_cluster_input_fails_at_preview(workdir: Path, engine_stack, k8s_cluster: str) -> None:
    from mldeploy.components import AksCluster, AksService, InferenceImage, RegisteredModel

    train_model(workdir / "models" / "a" / "sklearn_regression_model.pkl")
    cfg: dict[str, Any] = {"purpose": "FastProd", "kubeconfig": None}

    def program() -> None:
        m = RegisteredModel("model-a", model_name="model_a", model_path="models/a/sklearn_regression_model.pkl")
        image = InferenceImage("scoring", **IMAGE_ARGS)
        cluster = AksCluster("aks", cluster_purpose=cfg["purpose"], kubeconfig=cfg["kubeconfig"])
        AksService("svc", cluster=cluster, models=[m], image=image, namespace="bad-input")

    st = engine_stack(program)
    # The local node has 2 vCPUs: FastProd (12 needed) fails at preview, naming the field and the count.
    with pytest.raises(auto.CommandError) as failed:
        st.preview()
    text = str(failed.value) + "\n".join(st.log)
    assert "cluster_purpose" in text and "12" in text and "DevTest" in text
    # A kubeconfig whose API server does not answer: the error is the client's own, on `kubeconfig`.
    cfg.update(purpose="DevTest", kubeconfig=Path(k8s_cluster).read_text().replace("127.0.0.1:6443", "127.0.0.1:9"))
    with pytest.raises(auto.CommandError) as failed:
        st.preview()
    text = str(failed.value) + "\n".join(st.log)
    assert "kubeconfig" in text and "127.0.0.1:9" in text
    # Credentials the API server refuses: its own 401.
    import yaml

    doc = yaml.safe_load(Path(k8s_cluster).read_text())
    for user in doc["users"]:
        user["user"] = {"token": "wrong"}
    cfg.update(kubeconfig=yaml.safe_dump(doc))
    with pytest.raises(auto.CommandError) as failed:
        st.preview()
    text = str(failed.value) + "\n".join(st.log)
    assert "kubeconfig" in text and ("401" in text or "Unauthorized" in text)
    assert st.stack.export_stack().deployment.get("resources") in (None, []), "nothing was applied"
