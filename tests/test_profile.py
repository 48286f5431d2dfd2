"""Profiling (the seed's `Model.profile`): the pure parts, and a real run on throwaway backends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import profile_service as prof


def test_json_lines_input(tmp_path: Path) -> None:
    good = tmp_path / "req.jsonl"
    good.write_text('{"data": [[1, 2]]}\n\n{"data": [[3, 4]]}\n')
    assert prof.load_requests(good) == [{"data": [[1, 2]]}, {"data": [[3, 4]]}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"data": [[1, 2]]}\n[1, 2\n')
    with pytest.raises(prof.ProfileError, match=r"--input: .*bad.jsonl line 2 is not JSON"):
        prof.load_requests(bad)
    with pytest.raises(prof.ProfileError, match="is not a file"):
        prof.load_requests(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(prof.ProfileError, match="holds no request"):
        prof.load_requests(tmp_path / "empty.jsonl")


def test_sample_comes_from_the_swagger_document() -> None:
    assert prof.sample_from_swagger({"definitions": {"ServiceInput": {"example": {"data": [[1]]}}}}) == {"data": [[1]]}
    with pytest.raises(prof.ProfileError, match="no input sample"):
        prof.sample_from_swagger({"definitions": {}})


def test_percentile_and_recommendation() -> None:
    assert prof.percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert prof.percentile([5.0], 50) == 5.0
    rows = [
        prof.Row(0.5, 100, 0, 15.0, 40, 120, 300),
        prof.Row(1.0, 200, 0, 30.0, 20, 60, 310),
        prof.Row(2.0, 400, 0, 60.0, 10, 30, 330),
    ]
    cpu, memory = prof.recommend(rows, target_p99_ms=100, target_rps=20)
    assert cpu == 1.0
    assert memory == 0.5  # 330 MiB with a quarter of headroom, at least 0.5
    assert prof.recommend(rows, target_p99_ms=10, target_rps=20)[0] is None
    big = [prof.Row(1.0, 10, 0, 30.0, 20, 60, 1500)]
    assert prof.recommend(big, 100, 20)[1] == 2.0  # 1.46 GiB x 1.25 -> 2.0 in 0.25 steps
    erring = [prof.Row(2.0, 10, 3, 60.0, 10, 30, 300)]
    assert prof.recommend(erring, 100, 20)[0] is None, "a size that failed requests is never recommended"
    md = prof.render_markdown("svc", rows, 1.0, 0.5, 100, 20)
    assert "| 1 | 200 | 0 | 30.0 | 20.0 | 60.0 | 310 |" in md
    assert "`cpu_cores=1`, `memory_gb=0.5`" in md


def test_cpu_sizes_are_checked() -> None:
    assert prof.parse_cpus("2,0.5,1") == [0.5, 1.0, 2.0]
    for bad in ("0", "-1,1", "one", ""):
        with pytest.raises(prof.ProfileError, match="--cpu"):
            prof.parse_cpus(bad)


def test_bad_arguments_change_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert prof.main(["dev", "svc", "--duration", "0"]) == 2
    assert "--duration: must be greater than 0" in capsys.readouterr().err
    (tmp_path / "x.jsonl").write_text("not json\n")
    assert prof.main(["dev", "svc", "--input", str(tmp_path / "x.jsonl")]) == 2
    assert "line 1 is not JSON" in capsys.readouterr().err


def state(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resources": list(resources)}


def test_backend_from_state_for_both_targets(tmp_path: Path) -> None:
    local = {
        "type": prof.LOCAL_TYPE,
        "inputs": {
            "service_name": "aciservice",
            "image_name": "img:1",
            "models": [{"name": "ridge", "version": 3, "model_dir": ".pulumi-state/registry/ridge/3"}],
            "environment_variables": {"A": "1"},
        },
    }
    k8s = {
        "type": prof.DEPLOYMENT_TYPE,
        "inputs": {
            "metadata": {"name": "svc-a"},
            "spec": {"template": {"spec": {"containers": [
                {"name": "scoring", "image": "r/x@sha256:1", "env": [{"name": "MLDEPLOY_BIND_HOST", "value": "127.0.0.1"}, {"name": "B", "value": "2"}]},
                {"name": "front", "image": "r/front@sha256:2"},
            ]}}},
        },
    }
    b = prof.backend_from_state(state(local, k8s), "aciservice", lambda p: tmp_path / p)
    assert b.image == "img:1"
    assert b.mounts == {str(tmp_path / ".pulumi-state/registry/ridge/3"): "/var/azureml-app/azureml-models/ridge/3"}
    assert b.environment == {"A": "1", "AZUREML_MODEL_DIR": "/var/azureml-app/azureml-models/ridge/3"}
    b = prof.backend_from_state(state(local, k8s), "svc-a", lambda p: tmp_path / p)
    assert (b.image, b.environment, b.mounts) == ("r/x@sha256:1", {"B": "2"}, {})
    with pytest.raises(prof.ProfileError, match=r"service 'nope' is not in the stack; its services: aciservice, svc-a"):
        prof.backend_from_state(state(local, k8s), "nope", lambda p: tmp_path / p)


def test_peak_memory_file_is_the_process_cgroup(tmp_path: Path) -> None:
    proc, sys_cg = tmp_path / "proc", tmp_path / "cg"
    (proc / "42").mkdir(parents=True)
    (proc / "42" / "cgroup").write_text("12:cpu,cpuacct:/docker/abc\n9:memory:/docker/abc\n0::/\n")
    assert prof.cgroup_memory_file(42, proc, sys_cg) == sys_cg / "memory" / "docker" / "abc" / "memory.max_usage_in_bytes"
    (proc / "43").mkdir()
    (proc / "43" / "cgroup").write_text("0::/system.slice/docker-def.scope\n")
    (sys_cg / "system.slice" / "docker-def.scope").mkdir(parents=True)
    (sys_cg / "system.slice" / "docker-def.scope" / "memory.peak").write_text("1\n")
    assert prof.cgroup_memory_file(43, proc, sys_cg).name == "memory.peak"


class Answer:
    def __init__(self, status: int):
        self.status_code = status


def test_load_counts_latencies_and_errors_and_is_bounded() -> None:
    calls: list[Any] = []

    def post(uri: str, json: Any, timeout: float) -> Answer:
        calls.append(json)
        return Answer(200 if len(calls) % 5 else 500)

    latencies, errors, elapsed = prof.run_load("http://127.0.0.1:1/score", [{"a": 1}, {"a": 2}], duration=5, clients=2, max_requests=50, post=post)
    assert len(latencies) + errors == 50 == len(calls)
    assert errors == 10
    assert {c["a"] for c in calls} == {1, 2}
    assert elapsed < 5


@pytest.mark.e2e
@pytest.mark.docker
def test_profile_runs_on_throwaway_backends(workdir: Path, engine_stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import docker
    import requests

    import stack as stack_cli
    from conftest import train_model

    train_model(workdir / "sample" / "models" / "sklearn_regression_model.pkl")
    st = engine_stack(stack_cli.project_program(workdir))
    out = {k: v.value for k, v in st.up().outputs.items()}
    dc = docker.from_env()
    flt = {"label": [f"mldeploy.stack={st.name}", "mldeploy.resource=aciservice"]}
    live = [c.id for c in dc.containers.list(filters=flt)]
    assert len(live) == 1

    monkeypatch.setattr(stack_cli, "ROOT", workdir)
    real_select = stack_cli.select_stack
    monkeypatch.setattr(stack_cli, "select_stack", lambda name, **kw: real_select(name, program=stack_cli.project_program(workdir), root=workdir))
    seen_during: list[list[str]] = []
    real_profile_size = prof.profile_size

    def watching(*a: Any, **kw: Any):
        row, bodies = real_profile_size(*a, **kw)
        seen_during.append([c.id for c in dc.containers.list(filters=flt)])
        return row, bodies

    monkeypatch.setattr(prof, "profile_size", watching)
    assert prof.main([st.name, "aciservice", "--cpu", "0.5,1", "--duration", "3", "--target-p99-ms", "1000", "--target-rps", "1"]) == 0
    printed = capsys.readouterr().out
    assert "### Profile of service `aciservice`" in printed
    rows = [line for line in printed.splitlines() if line.startswith("| 0.5 |") or line.startswith("| 1 |")]
    assert len(rows) == 2
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert int(cells[1]) > 0 and int(cells[2]) == 0, line  # requests made, none failed
        assert float(cells[6]) > 50, "peak memory is read from the cgroup (a Python server uses tens of MiB)"
    assert "Recommended for p99 ≤ 1000 ms at ≥ 1 req/s: `cpu_cores=0.5`" in printed
    profiles = workdir / ".pulumi-state" / "profiles"
    assert (profiles / f"{st.name}-aciservice.md").read_text().startswith("### Profile")
    assert (profiles / f"{st.name}-aciservice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The live backend served throughout and is the same container; no throwaway one is left.
    assert seen_during == [live, live]
    assert [c.id for c in dc.containers.list(all=True, filters={"label": [f"mldeploy.stack={st.name}", "mldeploy.resource=profile-aciservice"]})] == []
    r = requests.post(out["scoring_uri"], json={"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]},
                      headers={"Authorization": f"Bearer {out['primary_key']}"}, timeout=30)
    assert r.status_code == 200
    assert json.loads(r.text)
