"""The canary rollout written once over a traffic interface (issue 20): its bad input named by field,
its order of calls, and each way it rolls back, with a fake target and a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from mldeploy.providers.rollouts.engine import Metrics, RolledBack, run_canary, step_line
from mldeploy.providers.rollouts.spec import Canary, check_rollout
from mldeploy.providers.rollouts.words import canary_words

pytestmark = pytest.mark.unit

GOOD = {"steps": [10, 50, 100], "step_seconds": 30, "min_requests": 200, "max_error_rate": 0.01, "max_p99_ms": 250}


# ---------------------------------------------------------------- bad input, named by field


@pytest.mark.parametrize(
    "given, field, words",
    [
        ({"rollout": {**GOOD, "steps": [10, 50, 90]}}, "rollout.steps", "must end at 100"),
        ({"rollout": {**GOOD, "steps": [50, 10, 100]}}, "rollout.steps", "must rise"),
        ({"rollout": {**GOOD, "steps": [0, 100]}}, "rollout.steps", "above 0"),
        ({"rollout": {**GOOD, "max_error_rate": 1.5}}, "rollout.max_error_rate", "less than or equal to 1"),
        ({"rollout": {**GOOD, "step_seconds": 0}}, "rollout.step_seconds", "greater than 0"),
        ({"traffic": {"current": 90, "candidate": 20}}, "traffic", "sum to 100"),
        ({"traffic": {"current": 120, "candidate": -20}}, "traffic.current", "less than or equal to 100"),
        ({"mirror_percent": 120}, "mirror_percent", "less than or equal to 100"),
        ({"mirror_percent": 20, "rollout": GOOD}, "mirror_percent", "cannot be combined with a canary"),
    ],
)
def test_bad_rollouts_fail_naming_the_field(given: dict[str, Any], field: str, words: str) -> None:
    problems = check_rollout("local", given)
    assert problems, given
    assert any(f == field and words in reason for f, reason in problems), problems


@pytest.mark.parametrize("target", ["aci", "iotedge"])
def test_a_canary_on_a_target_that_cannot_split_says_so(target: str) -> None:
    [(field, reason)] = check_rollout(target, {"rollout": GOOD})
    assert field == "rollout" and f"target {target!r} cannot split traffic" in reason


def test_good_rollouts_pass_on_targets_that_split() -> None:
    for target in ("local", "kubernetes"):
        assert check_rollout(target, {"rollout": GOOD}) == []
        assert check_rollout(target, {"traffic": {"current": 90, "candidate": 10}}) == []
        assert check_rollout(target, {"mirror_percent": 20}) == []
    assert check_rollout("aci", {}) == [], "no rollout declared: nothing to refuse"


def test_the_preview_says_what_will_happen() -> None:
    assert canary_words(Canary(**GOOD)) == (
        "canary: 10 % → 50 % → 100 %, 30 s a step; promote if error rate ≤ 1 % and p99 ≤ 250 ms over ≥ 200 requests; "
        "otherwise roll back")


# ---------------------------------------------------------------- the engine, over a fake target


class FakeControl:
    """Records the calls; serves the metrics a test scripts for each step."""

    def __init__(self, per_step: list[Metrics], clock: "Clock"):
        self.calls: list[tuple[Any, ...]] = []
        self.per_step, self.clock, self.step = per_step, clock, -1

    def start_candidate(self) -> None:
        self.calls.append(("start",))

    def set_weights(self, current: int, candidate: int) -> None:
        self.calls.append(("weights", current, candidate))
        if candidate:
            self.step += 1

    def candidate_metrics(self, since: float) -> Metrics:
        assert since <= self.clock.now
        return self.per_step[self.step]

    def promote(self) -> None:
        self.calls.append(("promote",))

    def remove_candidate(self) -> None:
        self.calls.append(("remove",))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run(per_step: list[Metrics], **over: Any) -> tuple[FakeControl, list[str], Any]:
    clock = Clock()
    control = FakeControl(per_step, clock)
    said: list[str] = []
    try:
        result: Any = run_canary(control, Canary(**{**GOOD, **over}), said.append, clock, clock.sleep)
    except RolledBack as exc:
        result = exc
    return control, said, result


HEALTHY = Metrics(requests=400, errors=1, p99_ms=120.0)


def test_a_good_version_is_promoted_step_by_step() -> None:
    control, said, record = run([HEALTHY, HEALTHY, HEALTHY])
    assert control.calls == [("start",), ("weights", 90, 10), ("weights", 50, 50), ("weights", 0, 100), ("promote",)]
    assert [s.decision for s in record.steps] == ["passed"] * 3 and record.decision == "promoted after 3 steps"
    assert said[0].startswith("canary step 1: 90 % current / 10 % candidate; 400 requests (≥ 200), error rate 0.25 % (≤ 1 %)")


def test_errors_roll_back_at_once_naming_metric_value_limit_and_step() -> None:
    control, said, exc = run([HEALTHY, Metrics(requests=300, errors=100, p99_ms=100.0), HEALTHY])
    assert isinstance(exc, RolledBack)
    assert (exc.step, exc.percent, exc.metric) == (2, 50, "error rate")
    assert str(exc).startswith("canary rolled back at step 2 (50 %): error rate 33.33 % is over its limit 1.00 %")
    assert control.calls[-2:] == [("weights", 100, 0), ("remove",)] and ("promote",) not in control.calls
    assert "rolled back: error rate over its limit" in said[-1]


def test_a_slow_version_rolls_back_on_p99() -> None:
    control, _, exc = run([Metrics(requests=250, errors=0, p99_ms=900.0)])
    assert isinstance(exc, RolledBack) and (exc.step, exc.metric, exc.value, exc.limit) == (1, "p99", 900.0, 250)
    assert str(exc).startswith("canary rolled back at step 1 (10 %): p99 900 ms is over its limit 250 ms")
    assert control.calls == [("start",), ("weights", 90, 10), ("weights", 100, 0), ("remove",)]


def test_a_step_without_traffic_waits_then_fails_by_default() -> None:
    control, said, exc = run([Metrics(requests=3, errors=0, p99_ms=None)], max_wait_seconds=60)
    assert isinstance(exc, RolledBack) and exc.metric == "requests" and exc.limit == "at least 200"
    assert "3 requests in 60 s" in said[-1]
    assert control.calls[-1] == ("remove",)


def test_a_step_without_traffic_promotes_when_declared() -> None:
    control, said, record = run([Metrics(requests=0, errors=0, p99_ms=None)] * 3, on_no_traffic="promote", max_wait_seconds=5)
    assert control.calls[-1] == ("promote",)
    assert all("without traffic" in s.decision for s in record.steps)


def test_an_interrupted_rollout_puts_traffic_back_and_removes_the_candidate() -> None:
    clock = Clock()
    control = FakeControl([HEALTHY], clock)

    def interrupted(_: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_canary(control, Canary(**GOOD), lambda _: None, clock, interrupted)
    assert control.calls == [("start",), ("weights", 90, 10), ("weights", 100, 0), ("remove",)]


def test_step_lines_say_limits_without_p99_too() -> None:
    from mldeploy.providers.rollouts.engine import StepRecord

    line = step_line(Canary(steps=[100], step_seconds=1, min_requests=1), StepRecord(1, 100, 5, 0.0, None, "passed"))
    assert line == ("canary step 1: 0 % current / 100 % candidate; 5 requests (≥ 1), error rate 0.00 % (≤ 1 %), p99 n/a: passed")


# ---------------------------------------------------------------- the record `stack.py rollout` prints


def test_the_record_is_kept_also_when_the_rollout_rolls_back(tmp_path: Any) -> None:
    from mldeploy.providers.rollouts.engine import RolloutRecord
    from mldeploy.providers.rollouts.records import load_record, record_path, render, save_record

    clock, record = Clock(), RolloutRecord()
    control = FakeControl([HEALTHY, Metrics(requests=300, errors=100, p99_ms=100.0)], clock)
    canary = Canary(**GOOD)
    with pytest.raises(RolledBack):
        run_canary(control, canary, lambda _: None, clock, clock.sleep, record=record)
    path = record_path(tmp_path, "mldeploy", "dev", "aciservice")
    assert path == tmp_path / "rollouts" / "mldeploy-dev" / "aciservice.json"
    save_record(path, record, plan=canary_words(canary))
    assert path.stat().st_mode & 0o777 == 0o600
    loaded, about = load_record(path)
    assert loaded == record and about == {"plan": canary_words(canary)}
    text = render(loaded, about).splitlines()
    assert text[0].startswith("canary: 10 % → 50 % → 100 %")
    assert text[1] == "step 1: 90 % current / 10 % candidate; 400 requests, error rate 0.25 %, p99 120 ms: passed"
    assert text[2].startswith("step 2: 50 % current / 50 % candidate; 300 requests, error rate 33.33 %")
    assert text[-1].startswith("decision: canary rolled back at step 2 (50 %): error rate 33.33 %")
    assert load_record(tmp_path / "none.json") is None


def test_stack_py_rollout_is_a_tool() -> None:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("stack_for_test", Path(__file__).parent.parent / "scripts" / "stack.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.TOOLS["rollout"] == "rollout_record"
    assert (Path(__file__).parent.parent / "scripts" / "rollout_record.py").is_file()
