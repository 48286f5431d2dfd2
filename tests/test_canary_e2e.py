"""Canary rollouts on the local target, applied by the real engine with live traffic (issue 20).

A client scores at 20 requests a second on 127.0.0.1 while `up` rolls a
service declared with `rollout=Canary(...)`:
- a new version that answers well takes 25 % of the requests, then all of
  them, and is promoted: no client request fails, and the record names each
  step with the requests the gateway saw;
- a version that fails one request in three is rolled back at its first step:
  `up` fails naming the metric, its value, its limit and the step, the old
  backend never stopped serving, and the next preview shows the same change;
- a version that takes 1.5 s for one request in four is rolled back on p99.
The entry script is the sample's plus tests/fixtures/canary_run.py, whose
switches (environment variables) make run() fail or slow down, so turning one
on rolls the service without rebuilding the image.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from conftest import train_model
from mldeploy.providers.rollouts.records import load_record
from test_deploy_e2e import SEED_REQUEST, ScoringLoop, stack_leftovers

pytestmark = [pytest.mark.e2e, pytest.mark.docker]
FIXTURES = Path(__file__).resolve().parent / "fixtures"



def rollout_file(workdir: Path, stack: str) -> Path:
    """The service's rollout record (`scripts/stack.py rollout` reads the same file)."""
    (path,) = (workdir / ".pulumi-state" / "rollouts").glob(f"*-{stack}/canary.json")
    return path


def make_program(workdir: Path, env: dict[str, str]):
    def program() -> None:
        import pulumi

        from mldeploy.components import Canary, ContainerInstanceService, InferenceImage, RegisteredModel

        model = RegisteredModel("ridge", model_name="ridge", model_path="sample/models/sklearn_regression_model.pkl")
        image = InferenceImage("scoring", entry_script="score.py", source_directory="canary_src",
                               conda_file="sample/env/myenv.yml")
        svc = ContainerInstanceService(
            "canary", models=[model], image=image, auth_enabled=True, environment_variables=env, worker_count=1,
            rollout=Canary(steps=[25, 100], step_seconds=3, min_requests=15, max_error_rate=0.05, max_p99_ms=1000,
                           max_wait_seconds=40),
        )
        pulumi.export("scoring_uri", svc.scoring_uri)
        pulumi.export("primary_key", svc.primary_key)
        pulumi.export("model_versions", svc.model_versions)

    return program


def test_a_good_version_is_promoted_and_a_failing_one_rolled_back_under_live_traffic(workdir: Path, engine_stack) -> None:
    src = workdir / "canary_src"
    src.mkdir()
    (src / "score.py").write_text((workdir / "sample" / "src" / "score.py").read_text() + "\n\n" + (FIXTURES / "canary_run.py").read_text())
    model_path = train_model(workdir / "sample" / "models" / "sklearn_regression_model.pkl", alpha=0.1)
    st = engine_stack(make_program(workdir, {}))
    up = st.up()
    assert up.summary.result == "succeeded", st.log[-40:]
    uri, key = up.outputs["scoring_uri"].value, up.outputs["primary_key"].value
    assert requests.post(uri, json=SEED_REQUEST, headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code == 200
    service = next(c for c in stack_leftovers(st.name)["containers"] if "-canary-" in c)

    # A failing version: every third run() raises. Rolled back at step 1, the old backend serving throughout.
    failing = make_program(workdir, {"CANARY_FAIL_EVERY": "3"})
    pre = st.preview(diff=True, program=failing)
    assert "canary: 25 % → 100 %, 3 s a step" in pre.text, pre.text[-3000:]
    loop = ScoringLoop(uri, key, rate=20, max_seconds=120)
    loop.start()
    with pytest.raises(Exception) as failed:
        st.up(program=failing)
    loop.finish()
    message = str(failed.value)
    assert "canary rolled back at step 1 (25 %): error rate" in message and "is over its limit 5.00 %" in message, message[-3000:]
    # Only requests the split sent to the candidate can have failed: about 25 % × 1/3 of them.
    assert loop.ok > 40 and all(f.startswith("500") for f in loop.failures), [f for f in loop.failures if not f.startswith("500")][:5]
    assert len(loop.failures) < 0.2 * (loop.ok + len(loop.failures)), (len(loop.failures), loop.ok)
    left = stack_leftovers(st.name)["containers"]
    assert service in left and not [c for c in left if "-canary-" in c and c != service], left
    for _ in range(20):  # the route is the plain one again: every request answers
        assert requests.post(uri, json=SEED_REQUEST, headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code == 200
    assert st.preview(diff=True, program=failing).change_summary.get("update") == 1, "the state stayed on the old version"
    record = rollout_file(workdir, st.name)
    found = load_record(record)
    assert found is not None and found[0].decision.startswith("canary rolled back at step 1"), found
    assert found[0].steps[0].requests >= 15 and found[0].steps[0].error_rate > 0.05, found[0].steps

    # A slow version: every fourth run() takes 1.5 s. Rolled back on p99, the old backend serving throughout.
    loop = ScoringLoop(uri, key, rate=20, max_seconds=120)
    loop.start()
    with pytest.raises(Exception) as failed:
        st.up(program=make_program(workdir, {"CANARY_SLOW_EVERY": "4"}))
    loop.finish()
    message = str(failed.value)
    assert "canary rolled back at step 1 (25 %): p99" in message and "is over its limit 1000 ms" in message, message[-3000:]
    assert service in stack_leftovers(st.name)["containers"] and loop.ok > 40

    # A good version (a new model, the switch off): promoted after both steps, no client request failed.
    train_model(model_path, alpha=50.0)
    good = make_program(workdir, {})
    loop = ScoringLoop(uri, key, rate=20, max_seconds=120)
    loop.start()
    time.sleep(1)
    up = st.up(program=good)
    time.sleep(1)
    loop.finish()
    assert up.summary.result == "succeeded", st.log[-40:]
    assert not loop.failures, loop.failures[:5]
    assert up.outputs["model_versions"].value == {"ridge": 2}
    assert len(loop.answers) >= 2, "the client saw both versions"
    log = "\n".join(st.log)
    assert "canary step 1: 75 % current / 25 % candidate" in log and "canary step 2: 0 % current / 100 % candidate" in log, log[-3000:]
    assert "canary: promoted after 2 steps" in log
    found = load_record(rollout_file(workdir, st.name))
    assert found is not None and found[0].decision == "promoted after 2 steps"
    assert [s.percent for s in found[0].steps] == [25, 100] and all(s.requests >= 15 for s in found[0].steps)
    left = stack_leftovers(st.name)["containers"]
    assert service not in left and len([c for c in left if "-canary-" in c]) == 1, left

    assert st.destroy().summary.result == "succeeded"
    assert stack_leftovers(st.name)["containers"] == []


def held_program(traffic: dict[str, int] | None = None, mirror_percent: int | None = None):
    def program() -> None:
        import pulumi

        from mldeploy.components import ContainerInstanceService, InferenceImage, RegisteredModel

        model = RegisteredModel("ridge", model_name="ridge", model_path="sample/models/sklearn_regression_model.pkl")
        image = InferenceImage("scoring", entry_script="score.py", source_directory="sample/src", conda_file="sample/env/myenv.yml")
        svc = ContainerInstanceService("held", models=[model], image=image, auth_enabled=True, worker_count=1,
                                       traffic=traffic, mirror_percent=mirror_percent)
        pulumi.export("scoring_uri", svc.scoring_uri)
        pulumi.export("primary_key", svc.primary_key)
        pulumi.export("model_versions", svc.model_versions)

    return program


def rollout_command(work: Path, stack_name: str, monkeypatch: pytest.MonkeyPatch, capsys) -> str:
    import stack as stack_cli

    monkeypatch.setattr(stack_cli, "ROOT", work)
    real_select = stack_cli.select_stack
    monkeypatch.setattr(stack_cli, "select_stack", lambda name, **kw: real_select(name, program=stack_cli.project_program(work), root=work))
    capsys.readouterr()
    assert stack_cli.main(["rollout", stack_name, "held"]) == 0
    return capsys.readouterr().out


def test_a_mirror_then_a_held_split_then_promotion(workdir: Path, engine_stack, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """mirror_percent: clients only ever get the live version's answers while the candidate's are recorded;
    traffic: both versions answer; dropping both: the held version takes everything, the old one goes."""
    model_path = train_model(workdir / "sample" / "models" / "sklearn_regression_model.pkl", alpha=0.1)
    st = engine_stack(held_program())
    up = st.up()
    assert up.summary.result == "succeeded", st.log[-40:]
    uri, key = up.outputs["scoring_uri"].value, up.outputs["primary_key"].value
    first = next(c for c in stack_leftovers(st.name)["containers"] if "-held-" in c)

    train_model(model_path, alpha=50.0)  # version 2, mirrored at 50 %
    pre = st.preview(diff=True, program=held_program(mirror_percent=50))
    assert "50 % of requests mirrored to the candidate; its answers are discarded" in pre.text, pre.text[-3000:]
    up = st.up(program=held_program(mirror_percent=50))
    assert up.summary.result == "succeeded", st.log[-40:]
    assert up.outputs["model_versions"].value == {"ridge": 1}, "the current version still answers"
    loop = ScoringLoop(uri, key, rate=20, max_seconds=60, max_requests=100)
    loop.start()
    loop.join(timeout=90)
    assert loop.ok == 100 and not loop.failures and len(loop.answers) == 1, (loop.ok, loop.failures[:3], loop.answers)
    shown = rollout_command(workdir, st.name, monkeypatch, capsys)
    counts = {line.split(":")[0]: int(line.split(": ")[1].split()[0]) for line in shown.splitlines()
              if line.startswith(("current:", "candidate:", "mirror:"))}
    assert counts["current"] >= 100 and counts["candidate"] == 0, shown
    assert 25 <= counts["mirror"] <= 75, shown  # about half of 100 copies, recorded, never answered to a client
    assert "mirror: " in shown and "0 not 2xx" in shown.split("mirror:")[1], shown

    # A held split at 50/50: no new backend (same version), both answer now.
    up = st.up(program=held_program(traffic={"current": 50, "candidate": 50}))
    assert up.summary.result == "succeeded" and up.summary.resource_changes.get("update") == 1, st.log[-40:]
    loop = ScoringLoop(uri, key, rate=20, max_seconds=60, max_requests=60)
    loop.start()
    loop.join(timeout=90)
    assert not loop.failures and len(loop.answers) == 2, (loop.failures[:3], loop.answers)

    # Dropped: the held version takes every request and the first backend goes.
    up = st.up(program=held_program())
    assert up.summary.result == "succeeded", st.log[-40:]
    assert up.outputs["model_versions"].value == {"ridge": 2}
    loop = ScoringLoop(uri, key, rate=20, max_seconds=60, max_requests=40)
    loop.start()
    loop.join(timeout=90)
    assert not loop.failures and len(loop.answers) == 1, (loop.failures[:3], loop.answers)
    left = [c for c in stack_leftovers(st.name)["containers"] if "-held-" in c]
    assert first not in left and len(left) == 1, left
    assert set(st.preview(diff=True, program=held_program()).change_summary) == {"same"}
    assert st.destroy().summary.result == "succeeded"


def test_a_canary_interrupted_twice_converges_on_the_next_up(workdir: Path) -> None:
    """Ctrl-C twice mid-step: the engine stops hard with the split live; the next up runs the rollout again
    and leaves one backend, a plain route, no candidate link and no provider process."""
    import os
    import signal

    import stack as stack_cli
    from test_operations_e2e import _multi_inputs, _service_containers, _stack_process

    _multi_inputs(workdir)
    name = f"cint{os.getpid() % 10000}{int(time.time()) % 1000}"
    route = workdir / ".pulumi-state" / "gateway"
    try:
        first = _stack_process(workdir, name, "up", "0")
        log, _ = first.communicate(timeout=540)
        assert first.returncode == 0, log[-3000:]

        proc = subprocess.Popen(
            [sys.executable, str(FIXTURES / "run_stack.py"), str(workdir), name, "up", "1", "canary-slow"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        deadline = time.monotonic() + 180
        split_live = False
        while time.monotonic() < deadline and not split_live:
            split_live = any("split_clients" in f.read_text() for f in route.glob(f"*-{name}/services/svc.conf"))
            time.sleep(0.5)
        assert split_live and len(_service_containers(name)) == 2, "the canary's first step should be live"
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(1)
        os.killpg(proc.pid, signal.SIGINT)
        log, _ = proc.communicate(timeout=120)
        assert proc.returncode != 0, log[-3000:]

        again = subprocess.run([sys.executable, str(FIXTURES / "run_stack.py"), str(workdir), name, "up", "1", "canary-fast"],
                               capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
        assert "canary: promoted after 1 steps" in again.stdout, again.stdout[-3000:]
        assert len(_service_containers(name)) == 1, _service_containers(name)
        (conf,) = route.glob(f"*-{name}/services/svc.conf")
        assert "split_clients" not in conf.read_text()
        assert not list((workdir / ".pulumi-state" / "sockets").glob(f"*-{name}/svc/candidate.sock"))
    finally:
        down = _stack_process(workdir, name, "destroy", "0")
        log, _ = down.communicate(timeout=300)
        _stack_process(workdir, name, "rm", "0").communicate(timeout=120)
    assert down.returncode == 0, log[-3000:]
    assert stack_leftovers(name)["containers"] == []
    assert stack_cli.orphaned_providers(workdir) == []
