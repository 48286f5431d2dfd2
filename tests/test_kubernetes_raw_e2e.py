"""Raw `run(raw_data)` entry scripts on the real local cluster (issue 17).

Without `sample_request` the pods roll on their readiness probe, as before.
With it, a startup probe inside the scoring container sends the request
(`mldeploy.providers.gate.sample_probe`), so a pod whose model cannot answer never
becomes ready: the rolling update stops, the old pod keeps serving, and `up`
fails with the probe's report. Clients reach the service only through its
NodePort on 127.0.0.1.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from pulumi import automation as auto

from test_deploy_e2e import ScoringLoop
from test_kubernetes_e2e import kubectl
from test_raw_script_e2e import ROW, raw_project

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.k8s]


def score(uri: str, key: str) -> requests.Response:
    return requests.post(uri, json={"data": [ROW]}, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_a_raw_script_rolls_on_the_cluster_and_sample_request_refuses_a_bad_model(workdir: Path, engine_stack, k8s_cluster: str) -> None:
    from mldeploy.components import AksCluster, AksService, InferenceImage, RegisteredModel

    ns = f"raw-{workdir.parent.name[-8:].lower().replace('_', '-')}".rstrip("-")
    raw_project(workdir, 2)
    extra: dict[str, Any] = {"startup_timeout_seconds": 180}

    def program() -> None:
        import pulumi

        model = RegisteredModel("raw", model_name="raw_model", model_path="raw_model/scale.json")
        image = InferenceImage("raw", entry_script="score.py", source_directory="raw_src", conda_file="sample/env/myenv.yml")
        cluster = AksCluster("aks", cluster_purpose="DevTest")
        svc = AksService("rawsvc", cluster=cluster, models=[model], image=image, namespace=ns, num_replicas=1,
                         initial_delay_seconds=30, **extra)
        pulumi.export("uri", svc.scoring_uri)
        pulumi.export("key", svc.primary_key)

    st = engine_stack(program)
    out = {k: v.value for k, v in st.up().outputs.items()}
    uri, key = out["uri"], out["key"]
    assert uri.startswith("http://127.0.0.1:")
    r = score(uri, key)
    assert r.status_code == 200 and r.json() == [110.0], r.text
    # Issue 18, item 7: the pod runs as nobody with nothing extra, as its spec and its live status say.
    labels = kubectl(k8s_cluster, "get", "namespace", ns)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    policy = kubectl(k8s_cluster, "get", "networkpolicy", "mldeploy-deny-egress", "-n", ns)["spec"]
    assert policy["policyTypes"] == ["Egress"] and not policy.get("egress")
    pod = kubectl(k8s_cluster, "get", "pods", "-n", ns, "-l", "mldeploy.azureml.net/service=rawsvc")["items"][0]
    assert pod["spec"]["securityContext"]["runAsUser"] == 65534 and pod["spec"]["securityContext"]["runAsNonRoot"]
    for c in pod["spec"]["containers"]:
        assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert all(cs["ready"] and "running" in cs["state"] for cs in pod["status"]["containerStatuses"])

    # A new model version rolls with nothing lost.
    (workdir / "raw_model" / "scale.json").write_text(json.dumps({"scale": 3}))
    loop = ScoringLoop(uri, key)
    loop.start()
    time.sleep(1.0)
    assert st.up().summary.result == "succeeded"
    deadline = time.monotonic() + 30
    while 165.0 not in loop.answers and time.monotonic() < deadline:
        time.sleep(0.5)
    loop.finish()
    assert not loop.failures, loop.failures[:5]
    assert 165.0 in loop.answers and loop.ok >= 20, (loop.ok, loop.answers)

    # sample_request with its answer: the next pod passes its startup probe, then serves.
    extra.update(sample_request={"data": [ROW]}, sample_response=[220.0])
    (workdir / "raw_model" / "scale.json").write_text(json.dumps({"scale": 4}))
    assert st.up().summary.result == "succeeded"
    # The old pod keeps serving through its preStop drain until kube-proxy drops it: the new version
    # has taken over when 5 answers in a row are its own.
    deadline, answers = time.monotonic() + 30, []
    while answers[-5:] != [[220.0]] * 5 and time.monotonic() < deadline:
        answers.append(score(uri, key).json())
        time.sleep(0.2)
    assert answers[-5:] == [[220.0]] * 5, answers[-10:]
    cm = kubectl(k8s_cluster, "get", "configmap", "rawsvc-sample", "-n", ns)["data"]
    assert json.loads(cm["request.json"]) == {"data": [ROW]} and json.loads(cm["response.json"]) == [220.0]
    pods = kubectl(k8s_cluster, "get", "pods", "-n", ns, "-l", "mldeploy.azureml.net/service=rawsvc")["items"]
    pod = max((p for p in pods if not p["metadata"].get("deletionTimestamp")), key=lambda p: p["metadata"]["creationTimestamp"])
    scoring = next(c for c in pod["spec"]["containers"] if c["name"] == "scoring")
    assert scoring["startupProbe"]["exec"]["command"] == ["python", "/etc/mldeploy/sample/probe.py"]

    # A model that loads but cannot answer: its pod never gets traffic, up fails, the old pod serves on.
    (workdir / "raw_model" / "scale.json").write_text(json.dumps({"scale": "x"}))
    extra.update(startup_timeout_seconds=45)  # the probe ends a refused pod at once
    loop = ScoringLoop(uri, key)
    loop.start()
    with pytest.raises(auto.CommandError) as failed:
        st.up()
    loop.finish()
    message = str(failed.value) + "\n".join(st.log)
    assert "rawsvc" in message
    assert "the sample was answered 500, not 200" in message or "sample" in message.lower(), message[-6000:]
    assert not loop.failures, loop.failures[:5]
    assert loop.answers == {220.0}, loop.answers
    assert score(uri, key).json() == [220.0]
    # The refused pod's own report, as its container left it.
    pods = kubectl(k8s_cluster, "get", "pods", "-n", ns, "-l", "mldeploy.azureml.net/service=rawsvc")["items"]
    reports = [str(((cs.get("lastState") or {}).get("terminated") or {}).get("message") or "")
               for p in pods for cs in (p.get("status") or {}).get("containerStatuses") or [] if cs["name"] == "scoring"]
    assert any("problem: the sample was answered 500, not 200" in r for r in reports), reports
