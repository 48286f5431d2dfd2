"""A roll proven by a real request, and logs on demand (local target, real engine and Docker).

Before the route moves, the new backend must answer the entry script's own
input sample with a 200 that matches the output schema. A backend that does
not is removed, `up` fails with the request, the answer and its log, and a
client at 20 req/s never notices.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest
import requests
from pulumi import automation as auto

from test_deploy_e2e import ScoringLoop, stack_leftovers

pytestmark = [pytest.mark.e2e, pytest.mark.docker]
FIXTURES = Path(__file__).parent / "fixtures"
OLD_ANSWER = 110.0  # sum(1..10) * scale 2


def gate_program(work: Path, env: dict[str, str]):
    def program() -> None:
        import pulumi

        from mldeploy.components import ContainerInstanceService, InferenceImage, RegisteredModel

        model = RegisteredModel("scale", model_name="scale_model", model_path="gate_model/scale.json")
        image = InferenceImage("gate", entry_script="score.py", source_directory="gate_src", conda_file="sample/env/myenv.yml")
        svc = ContainerInstanceService("gate", models=[model], image=image, auth_enabled=True,
                                       environment_variables=dict(env))
        pulumi.export("scoring_uri", svc.scoring_uri)
        pulumi.export("primary_key", svc.primary_key)
        pulumi.export("secondary_key", svc.secondary_key)

    return program


def gate_project(work: Path) -> None:
    (work / "gate_src").mkdir(exist_ok=True)
    (work / "gate_src" / "score.py").write_text((FIXTURES / "gate" / "score.py").read_text())
    (work / "gate_model").mkdir(exist_ok=True)
    (work / "gate_model" / "scale.json").write_text(json.dumps({"scale": 2}))


def logs_command(work: Path, stack_name: str, service: str, monkeypatch: pytest.MonkeyPatch, capsys, *extra: str) -> str:
    import service_logs
    import stack as stack_cli

    monkeypatch.setattr(stack_cli, "ROOT", work)
    real_select = stack_cli.select_stack
    monkeypatch.setattr(stack_cli, "select_stack", lambda name, **kw: real_select(name, program=stack_cli.project_program(work), root=work))
    capsys.readouterr()
    assert stack_cli.main(["logs", stack_name, service, *extra]) == 0
    return capsys.readouterr().out


FAILING_MODES = [
    ("raise", "the sample was answered 500, not 200"),
    ("wrong_shape", "does not match the output schema"),
]


def test_a_roll_that_fails_the_sample_moves_no_traffic(workdir: Path, engine_stack, monkeypatch: pytest.MonkeyPatch,
                                                       capsys) -> None:
    """Both ways a new version can fail the sample (its run() raises; it answers a shape the schema refuses),
    one after the other on one stack, then the fixed version rolls."""
    gate_project(workdir)
    env: dict[str, str] = {}
    st = engine_stack(gate_program(workdir, env))
    out = {k: v.value for k, v in st.up().outputs.items()}
    uri, key = out["scoring_uri"], out["primary_key"]
    r = requests.post(uri, json={"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]}, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200 and r.json() == [OLD_ANSWER], r.text

    for failures, (mode, answer_words) in enumerate(FAILING_MODES, start=1):
        # The new version's run() breaks the sample: the roll must fail with no failed request.
        env["SAMPLE_MODE"] = mode
        loop = ScoringLoop(uri, key)
        loop.start()
        time.sleep(1.0)
        started = time.monotonic()
        with pytest.raises(auto.CommandError) as failed:
            st.up()
        took = time.monotonic() - started
        time.sleep(1.0)
        loop.finish()
        message = str(failed.value)
        assert "failed the entry script's sample request" in message, (mode, message[-3000:])
        assert 'sample request: POST /score {"data": [[10, 9, 8, 7, 6, 5, 4, 3, 2, 1]]}' in message
        assert answer_words in message, (mode, message[-3000:])
        if mode == "raise":
            assert "run failed on purpose: SAMPLE_MODE=raise" in message, "the log's last lines are in the error"
        else:
            assert '{"predictions": [110.0]}' in message, "the answer is in the error"
        assert not loop.failures, (mode, len(loop.failures), loop.ok, loop.failures[:3])
        assert loop.ok > 20, mode
        assert loop.answers == {OLD_ANSWER}, "the client kept getting the old version's answers"
        print(f"[timing] failed roll ({mode}) took {took:.1f}s; client: {loop.ok} ok, 0 failed", file=sys.__stderr__)

        # The new backend is gone; the old one and the gateway remain, and still serve.
        assert len(stack_leftovers(st.name)["containers"]) == 2, mode
        r = requests.post(uri, json={"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]}, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert r.status_code == 200 and r.json() == [OLD_ANSWER]

        # Its log was kept (mode 0600), beside the earlier failure's, and `logs` shows them after the serving backend's.
        kept = list((workdir / ".pulumi-state" / "logs").glob(f"*-{st.name}/gate/*.log"))
        assert len(kept) == failures, (mode, kept)
        assert all(stat.S_IMODE(os.stat(f).st_mode) == 0o600 for f in kept)
        printed = logs_command(workdir, st.name, "gate", monkeypatch, capsys)
        assert "==> serving backend mldeploy-" in printed
        assert printed.count("==> failed backend, removed") == failures, printed[-3000:]
        assert "Booting worker" in printed or "init" in printed.lower()
        if mode == "raise":
            assert "run failed on purpose" in printed
        tail = logs_command(workdir, st.name, "gate", monkeypatch, capsys, "--tail", "3")
        assert len(tail.splitlines()) <= (1 + failures) * (3 + 1), tail
        # No key in any log: the command's output, the kept files, the containers' own logs.
        for secret in (out["primary_key"], out["secondary_key"]):
            assert len(secret) > 20
            assert secret not in printed and secret not in tail
            assert all(secret not in f.read_text() for f in kept)
            assert secret not in message

    # Fixed: the next up rolls, and the failed backends' logs are dropped.
    env.pop("SAMPLE_MODE")
    (workdir / "gate_model" / "scale.json").write_text(json.dumps({"scale": 3}))
    st.up()
    r = requests.post(uri, json={"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]}, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.json() == [165.0]
    assert not list((workdir / ".pulumi-state" / "logs").glob(f"*-{st.name}/gate/*.log"))


def _timed_preview(st, **kw) -> tuple[float, object]:
    start = time.monotonic()
    result = st.preview(**kw)
    return time.monotonic() - start, result


def test_preview_smoke_test_loads_the_new_model(workdir: Path, engine_stack) -> None:
    import preview_markdown

    gate_project(workdir)
    st = engine_stack(gate_program(workdir, {}))
    st.stack.set_config("mldeploy:previewSmokeTest", auto.ConfigValue("true"))
    out = {k: v.value for k, v in st.up().outputs.items()}
    uri, key = out["scoring_uri"], out["primary_key"]

    # Only the model changes: the preview loads v2 in a throwaway container and scores the sample.
    (workdir / "gate_model" / "scale.json").write_text(json.dumps({"scale": 3}))
    import docker

    def smoke_containers_created(since_ns: int) -> list:
        """Containers of this stack created from `since_ns` on (the events' own nanosecond times: a container
        the `up` before created a second earlier is not counted)."""
        found = docker.from_env().api.events(since=since_ns // 10**9 - 1, until=int(time.time()) + 1, decode=True, filters={
            "type": "container", "event": "create", "label": [f"mldeploy.stack={st.name}", "mldeploy.managed=true"]})
        return [e for e in found if e["timeNano"] >= since_ns]

    started = time.time_ns()
    first, pre = _timed_preview(st, diff=True)
    assert len(smoke_containers_created(started)) == 1, "the fresh smoke test ran in one throwaway container"
    assert "model `scale_model` v2 loads and scores the sample: 200 in" in pre.text, pre.text[-2000:]
    steps, summary = preview_markdown.preview_steps(st.stack)
    review = preview_markdown.render(st.name, steps, summary)
    assert "preview smoke test: model `scale_model` v2 loads and scores the sample: 200 in" in review, review
    # Cached by image and model content: a repeat starts no throwaway container (Docker's own events say so;
    # the times are printed for the record, never asserted).
    since = time.time_ns()
    cached, _ = _timed_preview(st)
    created = smoke_containers_created(since)
    assert created == [], [e.get("Actor", {}).get("Attributes", {}).get("name") for e in created]
    print(f"[timing] preview with a fresh smoke test {first:.2f}s, cached {cached:.2f}s", file=sys.__stderr__)
    assert "smoke-" not in " ".join(stack_leftovers(st.name)["containers"]), "the throwaway container is removed"
    up = st.up()
    assert up.summary.result == "succeeded"
    r = requests.post(uri, json={"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]}, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.json() == [165.0]

    # A model that cannot load fails the preview, naming model, version and error; nothing is registered.
    (workdir / "gate_model" / "scale.json").write_text(json.dumps({"broken": "truncated pickle"}))
    with pytest.raises(auto.CommandError) as failed:
        st.preview()
    message = str(failed.value)
    assert "preview smoke test: `scale_model` v3 failed to load" in message, message[-3000:]
    assert "cannot load the model: truncated pickle" in message
    assert not (workdir / ".pulumi-state" / "registry" / "scale_model" / "3").exists(), "nothing is registered"
    assert sorted(p.name for p in (workdir / ".pulumi-state" / "registry" / "scale_model").iterdir() if p.name.isdigit()) == ["1", "2"]
    r = requests.post(uri, json={"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]}, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.json() == [165.0], "nothing rolled"

    # The image changes too: the preview says the check runs at `up`.
    (workdir / "gate_model" / "scale.json").write_text(json.dumps({"scale": 4}))
    (workdir / "gate_src" / "score.py").write_text((FIXTURES / "gate" / "score.py").read_text() + "\n# a new image\n")
    pre = st.preview(diff=True)
    assert "the image changes, so the new model is checked at `up`" in pre.text, pre.text[-2000:]
