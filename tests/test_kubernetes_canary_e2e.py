"""A canary on the real local cluster (issue 20): AksService(rollout=Canary(...)) under live traffic.

The cluster, the engine, the pulumi-kubernetes provider and the scoring server all run for real; a
client scores at 20 req/s on the NodePort on 127.0.0.1 only. The current pods' front ends split
requests with a candidate Deployment and judge it on their own split log.

1. A version whose run() raises for every third request (tests/fixtures/canary_run.py, switched on by
   an environment variable) answers the sample, is rolled back at step 1 on its error rate: `up` fails
   naming the metric, the candidate's objects are gone, the service's Deployment was never changed,
   and the clients saw only the candidate's own failures during that step.
2. A version whose every fourth run() takes 1.5 s is rolled back on p99, with no failed request.
3. A good new model is promoted: 0 failed requests, the new model answers, the candidate is removed
   once the Deployment has rolled, and `scripts/stack.py rollout` shows the steps and the decision.
4. A held split (`traffic=`): a newer model answers beside the current one, the Deployment unchanged.
5. The split dropped: the held version takes all traffic and the Deployment rolls to it.
6. A mirror (`mirror_percent=`) to a failing version: clients get only live answers; the candidate's
   errors are recorded, and `scripts/stack.py rollout` shows them from the pods' split logs.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import joblib
import numpy as np
import pulumi
import pytest
from pulumi import automation as auto

from conftest import train_model
from test_deploy_e2e import ScoringLoop

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.k8s]

FIXTURES = Path(__file__).resolve().parent / "fixtures"
KUBECTL = os.path.join(os.environ.get("MLDEPLOY_K8S_HOME", ""), "bin", "kubectl")
CANDIDATE_KINDS = "deployments,services,networkpolicies"


def candidate_objects(kubeconfig: str, ns: str) -> str:
    out = subprocess.run([KUBECTL, "--kubeconfig", kubeconfig, "get", CANDIDATE_KINDS, "-n", ns, "-o", "name",
                          "-l", "mldeploy.azureml.net/role=candidate"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def generation(kubeconfig: str, ns: str, name: str) -> str:
    out = subprocess.run([KUBECTL, "--kubeconfig", kubeconfig, "get", "deployment", name, "-n", ns, "-o",
                          "jsonpath={.metadata.generation}"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_failing_version_is_rolled_back_and_a_good_one_promoted(workdir: Path, engine_stack, k8s_cluster: str) -> None:
    from mldeploy.components import AksCluster, AksService, Canary, InferenceImage, RegisteredModel

    ns = f"c-{workdir.parent.name[-8:].lower().replace('_', '-')}".rstrip("-")
    src = workdir / "canary_src"
    src.mkdir()
    (src / "score.py").write_text((workdir / "sample" / "src" / "score.py").read_text() + "\n\n" + (FIXTURES / "canary_run.py").read_text())
    model_path = train_model(workdir / "models" / "m" / "sklearn_regression_model.pkl", alpha=0.1)
    env: dict[str, str] = {}
    canary = Canary(steps=[50, 100], step_seconds=3, min_requests=10, max_error_rate=0.05, max_p99_ms=1000, max_wait_seconds=30)
    split: dict = {"rollout": canary}

    def program() -> None:
        model = RegisteredModel("model-m", model_name="model_m", model_path="models/m/sklearn_regression_model.pkl")
        image = InferenceImage("scoring", entry_script="score.py", source_directory="canary_src", conda_file="sample/env/myenv.yml")
        cluster = AksCluster("aks", cluster_purpose="DevTest")
        svc = AksService("svc", cluster=cluster, models=[model], image=image, namespace=ns, num_replicas=1,
                         environment_variables=dict(env), startup_timeout_seconds=120, initial_delay_seconds=30, **split)
        pulumi.export("uri", svc.scoring_uri)
        pulumi.export("key", svc.primary_key)

    st = engine_stack(program)
    started = time.monotonic()
    up = st.up()
    assert up.summary.result == "succeeded", st.log[-40:]
    uri, key = up.outputs["uri"].value, up.outputs["key"].value
    first = generation(k8s_cluster, ns, "svc")
    v1 = round(float(joblib.load(model_path).predict(np.array([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]))[0]), 6)
    print(f"first up: {time.monotonic() - started:.0f} s")

    # 1. A failing version: rolled back at step 1; the Deployment never changed.
    env["CANARY_FAIL_EVERY"] = "3"
    loop = ScoringLoop(uri, key, rate=20, max_seconds=150)
    loop.start()
    started = time.monotonic()
    with pytest.raises(auto.CommandError) as failed:
        st.up()
    loop.finish()
    print(f"rollback up: {time.monotonic() - started:.0f} s, {loop.ok} ok, {len(loop.failures)} failed")
    message = str(failed.value) + "\n".join(st.log)
    assert "canary: 50 % → 100 %, 3 s a step; promote if error rate ≤ 5 % and p99 ≤ 1000 ms over ≥ 10 requests" in message
    assert "canary rolled back at step 1 (50 %): error rate" in message, message[-4000:]
    assert "canary step 1: 50 % current / 50 % candidate" in message
    assert generation(k8s_cluster, ns, "svc") == first, "the service's Deployment was never changed"
    assert candidate_objects(k8s_cluster, ns) == ""
    # Only the candidate's own answers failed (500s from its run()), during its one step: about a third of
    # half of 3-4 s at 20 req/s; nothing from the current version.
    assert all(f.startswith("500") for f in loop.failures), loop.failures[:5]
    assert 1 <= len(loop.failures) <= 30, loop.failures
    assert loop.answers == {v1}

    # 2. A slow version (every fourth run() takes 1.5 s): rolled back on p99; no client request fails.
    env.clear()
    env["CANARY_SLOW_EVERY"] = "4"
    loop = ScoringLoop(uri, key, rate=20, max_seconds=150)
    loop.start()
    started = time.monotonic()
    with pytest.raises(auto.CommandError) as failed:
        st.up()
    loop.finish()
    print(f"slow rollback up: {time.monotonic() - started:.0f} s, {loop.ok} ok, {len(loop.failures)} failed")
    message = str(failed.value) + "\n".join(st.log)
    assert "canary rolled back at step 1 (50 %): p99" in message and "is over its limit 1000 ms" in message, message[-4000:]
    assert loop.failures == [], loop.failures[:5]
    assert generation(k8s_cluster, ns, "svc") == first
    assert candidate_objects(k8s_cluster, ns) == ""

    # 3. A good new model: promoted, no failed request, the candidate removed after the roll.
    env.clear()
    train_model(model_path, alpha=50.0)
    v2 = round(float(joblib.load(model_path).predict(np.array([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]))[0]), 6)
    loop = ScoringLoop(uri, key, rate=20, max_seconds=150)
    loop.start()
    started = time.monotonic()
    up = st.up()
    took = time.monotonic() - started
    time.sleep(1.0)
    loop.finish()
    print(f"promoting up: {took:.0f} s, {loop.ok} ok, {len(loop.failures)} failed")
    assert up.summary.result == "succeeded"
    assert loop.failures == [], loop.failures[:5]
    assert v2 in loop.answers, loop.answers
    log = "\n".join(st.log)
    assert "canary step 2: 0 % current / 100 % candidate" in log and "canary: promoted after 2 steps" in log, log[-4000:]
    assert generation(k8s_cluster, ns, "svc") != first
    assert candidate_objects(k8s_cluster, ns) == ""

    out = subprocess.run(["python", str(workdir / "scripts" / "stack.py"), "rollout", st.name, "svc"],
                         capture_output=True, text=True, timeout=120, cwd=workdir)
    assert out.returncode == 0, out.stderr
    assert "step 2: 0 % current / 100 % candidate" in out.stdout and "decision: promoted after 2 steps" in out.stdout, out.stdout

    # 4. A held split: a newer model serves half the requests beside the current one; the Deployment stays.
    promoted = generation(k8s_cluster, ns, "svc")
    split.clear()
    split["traffic"] = {"current": 50, "candidate": 50}
    train_model(model_path, alpha=1.0)
    v3 = round(float(joblib.load(model_path).predict(np.array([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]))[0]), 6)
    loop = ScoringLoop(uri, key, rate=20, max_seconds=150)
    loop.start()
    started = time.monotonic()
    up = st.up()
    print(f"holding up: {time.monotonic() - started:.0f} s")
    deadline = time.monotonic() + 20
    while {v2, v3} - loop.answers and time.monotonic() < deadline:
        time.sleep(0.5)
    loop.finish()
    assert up.summary.result == "succeeded"
    assert loop.failures == [], loop.failures[:5]
    assert {v2, v3} <= loop.answers, loop.answers
    assert "traffic held at 50 % current / 50 % candidate" in "\n".join(st.log)
    assert generation(k8s_cluster, ns, "svc") == promoted, "a held split leaves the Deployment on the current version"
    assert len(candidate_objects(k8s_cluster, ns).splitlines()) == 3

    # 5. Dropped: the held version takes all traffic, the Deployment rolls to it, the candidate goes.
    split.clear()
    split["rollout"] = canary
    loop = ScoringLoop(uri, key, rate=20, max_seconds=150)
    loop.start()
    started = time.monotonic()
    up = st.up()
    print(f"releasing up: {time.monotonic() - started:.0f} s")
    loop.answers.clear()
    time.sleep(2.0)
    loop.finish()
    assert up.summary.result == "succeeded"
    assert loop.failures == [], loop.failures[:5]
    assert loop.answers == {v3}, loop.answers
    assert generation(k8s_cluster, ns, "svc") != promoted
    assert candidate_objects(k8s_cluster, ns) == ""

    # 6. A mirror to a version failing every other request: clients only ever get the live answers; the
    # candidate's errors are in the front end's split log as mirrored lines.
    split.clear()
    split["mirror_percent"] = 50
    env["CANARY_FAIL_EVERY"] = "2"
    loop = ScoringLoop(uri, key, rate=20, max_seconds=150)
    loop.start()
    started = time.monotonic()
    up = st.up()
    time.sleep(3.0)
    loop.finish()
    print(f"mirroring up: {time.monotonic() - started:.0f} s, {loop.ok} ok, {len(loop.failures)} failed")
    assert up.summary.result == "succeeded"
    assert loop.failures == [], loop.failures[:5]
    assert loop.answers == {v3}, loop.answers
    assert "50 % of requests mirrored to the candidate; its answers are discarded" in "\n".join(st.log)
    out = subprocess.run(["python", str(workdir / "scripts" / "stack.py"), "rollout", st.name, "svc"],
                         capture_output=True, text=True, timeout=120, cwd=workdir)
    assert out.returncode == 0, out.stderr
    shown = dict(line.split(": ", 1) for line in out.stdout.splitlines() if line.startswith(("current:", "candidate:", "mirror:")))
    assert shown["candidate"].startswith("0 requests"), out.stdout  # no live request went to the candidate
    mirrored, failed_copies = (int(shown["mirror"].split()[i]) for i in (0, 2))
    assert mirrored > 0 and 0 < failed_copies < mirrored, out.stdout  # the candidate's errors, recorded
    assert out.stdout.startswith("held: 50 % of requests mirrored to the candidate"), out.stdout
    st.destroy()
