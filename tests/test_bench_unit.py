"""The benchmark's pure pieces: reading `wrk` output. No figure is asserted about speed."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import ROOT

WRK_OUTPUT = """Running 3s test @ http://127.0.0.1:26801/api/v1/service/svc/score
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     7.88ms    2.06ms   1.02s    76.95%
    Req/Sec   519.91    100.32   767.00     72.50%
  Latency Distribution
     50%  753.00us
     75%    4.27ms
     90%    4.94ms
     99%   17.67ms
  3103 requests in 3.02s, 1.37MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:   1027.25
Transfer/sec:    467.63KB
"""


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("mldeploy_bench", ROOT / "bench" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mldeploy_bench"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("mldeploy_bench", None)


def test_wrk_output_is_read_in_milliseconds(bench) -> None:
    m = bench.parse_wrk(WRK_OUTPUT)
    assert m == {"p50": pytest.approx(0.753), "p99": pytest.approx(17.67), "max": pytest.approx(1020.0),
                 "throughput": pytest.approx(1027.25), "requests": 3103.0, "errors": 7.0}


def test_wrk_output_without_errors(bench) -> None:
    text = "\n".join(ln for ln in WRK_OUTPUT.splitlines() if "errors" not in ln and "Non-2xx" not in ln)
    assert bench.parse_wrk(text)["errors"] == 0


def test_unexpected_wrk_output_is_an_error(bench) -> None:
    with pytest.raises(ValueError, match="unexpected wrk output"):
        bench.parse_wrk("unable to connect to 127.0.0.1:9 Connection refused")


def test_serving_options(bench) -> None:
    a = bench.parse_args(["--only", "serve", "--runs", "1", "--serve-seconds", "3"])
    assert (a.only, a.runs, a.serve_seconds, a.concurrency, a.wrk_threads) == (["serve"], 1, 3, 8, 2)
    with pytest.raises(SystemExit):
        bench.parse_args(["--concurrency", "1", "--wrk-threads", "2"])


def test_cgroup_cpu_time_is_read_in_nanoseconds(bench) -> None:
    v2 = "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\nnr_periods 0\n"
    assert bench.parse_cgroup_cpu_ns("cpu.stat", v2) == 1_234_567_000
    assert bench.parse_cgroup_cpu_ns("cpuacct.usage", "987654321\n") == 987_654_321
    with pytest.raises(ValueError, match="usage_usec"):
        bench.parse_cgroup_cpu_ns("cpu.stat", "nr_periods 0\n")
    with pytest.raises(ValueError, match="not a CPU accounting file"):
        bench.parse_cgroup_cpu_ns("memory.stat", "1")


def test_proc_stat_gives_process_group_and_cpu_ticks(bench) -> None:
    # A command name with a space and a parenthesis, as /proc allows.
    stat = "4242 (python (x) y) S 1 4240 4240 0 -1 4194560 100 0 0 0 70 30 5 2 20 0 3 0 123 0 0"
    assert bench.parse_proc_stat_cpu_ticks(stat) == (4240, 107)


def test_a_pods_cpu_is_split_by_container_and_the_rest_is_other(bench, tmp_path) -> None:
    pod = tmp_path / "pod1"
    front, server = pod / "aaa111", pod / "bbb222"
    for d in (front, server):
        d.mkdir(parents=True)

    def at(total: int, f: int, s: int) -> None:
        (pod / "cpuacct.usage").write_text(f"{total}\n")
        (front / "cpuacct.usage").write_text(f"{f}\n")
        (server / "cpuacct.usage").write_text(f"{s}\n")

    probe = bench.SplitProbe([pod], {"front": [front], "server": [server]})
    at(1_000, 300, 600)
    assert probe() == 1_000
    at(5_000, 1_300, 3_500)
    assert probe() == 5_000
    assert probe.last_split() == {"front": 1_000, "server": 2_900, "other": 100}


def test_cpu_per_thousand_requests(bench) -> None:
    assert bench.cpu_ms_per_1000(2_000_000_000, 4000) == pytest.approx(500.0)  # 2 CPU-s over 4,000 requests
    assert bench.cpu_ms_per_1000(1, 0) != bench.cpu_ms_per_1000(1, 0)  # NaN: no requests, no figure


def test_cpu_goals_compare_medians(bench) -> None:
    local = {"bare": {"cpu_per_1k": [100.0, 110.0, 90.0]}, "ours1": {"cpu_per_1k": [105.0, 108.0, 200.0]},
             "ours2": {"cpu_per_1k": [130.0]}}
    rows = bench.cpu_goals(local, {})
    assert rows[0] == "| ours (`cpu_cores=1`) / bare, CPU per request ≤ 1.10× | 1.080× | yes |"
    assert rows[1].endswith("| 1.204× | **no** |") and "2 workers / 1 worker" in rows[1]
    assert len(rows) == 2, "no Kubernetes figures, no Kubernetes row"
    # Below saturation the two-workers goal is judged on its own figures, and the saturated one stays beside it.
    paced = {"ours1": {"cpu_per_1k": [100.0, 102.0, 98.0]}, "ours2": {"cpu_per_1k": [103.0, 104.0, 99.0]}}
    rows = bench.cpu_goals(local, {}, paced)
    assert rows[1] == "| 2 workers / 1 worker (`cpu_cores` 2 / 1), CPU per request, below saturation ≤ 1.05× | 1.030× | yes |"
    assert "at saturation" in rows[2] and rows[2].endswith("| 1.204× | **no** |") and len(rows) == 3


def test_kubernetes_sections_can_be_picked(bench) -> None:
    a = bench.parse_args(["--only", "kubernetes,kserve", "--runs", "1"])
    assert a.only == ["kubernetes", "kserve"]


def test_rollout_sections_can_be_picked(bench) -> None:
    a = bench.parse_args(["--only", "rollout,krollout", "--runs", "3"])
    assert a.only == ["rollout", "krollout"]
    assert bench.PHASES.index("krollout") > bench.PHASES.index("kserve"), "after the cluster's other sections"


def test_clients_send_to_loopback_only(bench) -> None:
    uri = "http://127.0.0.1:31234/api/v1/service/aksservice/score"
    assert bench.loopback_uri(uri) == uri
    assert bench.loopback_uri("http://localhost:8080/score") == "http://localhost:8080/score"
    for elsewhere in ("http://10.42.0.17:5001/score", "http://172.17.0.2/score", "http://svc.default.svc:80/score"):
        with pytest.raises(ValueError, match="127.0.0.1 only"):
            bench.loopback_uri(elsewhere)


def test_first_mark_is_the_first_matching_engine_line(bench) -> None:
    marks = [(0.4, "Updating (bench-krollout)"), (12.5, "[mldeploy] aksservice: canary step 1: 75 % current / 25 % candidate"),
             (18.25, "[mldeploy] aksservice: canary: promoted after 2 steps"), (19.0, "canary: promoted (again)")]
    assert bench.first_mark(marks, "canary: promoted") == 18.25
    assert bench.first_mark(marks, "rolled back") != bench.first_mark(marks, "rolled back")  # NaN: never said
    assert bench.first_mark([], "anything") != bench.first_mark([], "anything")


def test_rollout_declaration_is_the_same_on_every_target(bench) -> None:
    from mldeploy.components import Canary

    d = bench.rollout_declaration(canary=True)
    assert isinstance(d["rollout"], Canary) and d["traffic"] is None and d["mirror_percent"] is None
    assert (list(d["rollout"].steps), d["rollout"].step_seconds) == (bench.ROLLOUT_STEPS, bench.ROLLOUT_STEP_SECONDS)
    assert bench.rollout_declaration(traffic=50) == {"rollout": None, "traffic": {"current": 50, "candidate": 50},
                                                     "mirror_percent": None}
    assert bench.rollout_declaration(mirror=50) == {"rollout": None, "traffic": None, "mirror_percent": 50}
    assert bench.rollout_declaration() == {"rollout": None, "traffic": None, "mirror_percent": None}


def test_kubernetes_keeps_the_canary_declared_unless_a_split_is_held(bench) -> None:
    # Nothing held: the canary is declared (the pods' front end can split; a dropped split goes to the candidate).
    assert bench.k8s_rollout_declaration()["rollout"] is not None
    assert bench.k8s_rollout_declaration(canary=True)["rollout"] is not None
    # A held split or a mirror alone, as tests/test_kubernetes_canary_e2e.py declares them.
    held = bench.k8s_rollout_declaration(traffic=50)
    assert held["rollout"] is None and held["traffic"] == {"current": 50, "candidate": 50}
    mirrored = bench.k8s_rollout_declaration(mirror=50)
    assert mirrored["rollout"] is None and mirrored["mirror_percent"] == 50


def test_which_version_answered_is_counted_from_the_answers(bench) -> None:
    current, candidate = 186.2718, 171.0047
    answers = [current, candidate, current + 1e-9, candidate, candidate]
    assert bench.answered_by(answers, candidate) == 3 and bench.answered_by(answers, current) == 2
    assert bench.share_percent(answers, candidate) == pytest.approx(60.0)
    assert bench.answered_by([current] * 4, candidate) == 0  # a mirror's answers never reach the client
    assert bench.share_percent([], candidate) != bench.share_percent([], candidate)  # NaN: nothing answered


def test_the_record_names_the_checkout_it_measured(bench) -> None:
    assert bench.checkout_words("9762f3b", "") == "9762f3b, nothing uncommitted"
    assert bench.checkout_words("9762f3b", " M bench/bench.py\n") == "9762f3b with 1 uncommitted file (bench/bench.py)"
    # `git status --porcelain` read through a stripped command output: the first line lost its leading space.
    assert bench.checkout_words("9762f3b", "M a.py\n M b.py") == "9762f3b with 2 uncommitted files (a.py, b.py)"
    many = "".join(f" M f{i}.py\n" for i in range(8))
    assert bench.checkout_words("abc", many) == "abc with 8 uncommitted files (f0.py, f1.py, f2.py, f3.py, f4.py, f5.py, …)"


def test_a_canary_whose_serving_pods_reached_the_candidate_late_is_noted_once(bench) -> None:
    from types import SimpleNamespace

    line = "[mldeploy] ns/svc: the candidate answers through its ClusterIP from 1 serving pod; not at once: p after 0.84 s (9 tries)"
    runner = SimpleNamespace(results=bench.Results())
    st = SimpleNamespace(marks=[(7.0, f"    pulumi:pulumi:Stack x running {line}"), (7.1, line), (8.0, "[mldeploy] ns/svc: other")])
    bench.Bench.note_late_candidate(runner, st, "krollout", 1)
    assert runner.results.notes == [f"krollout, run 2, promoted canary: {line.split('[mldeploy] ', 1)[1]}"]
