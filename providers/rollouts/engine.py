"""The canary rollout, written once over `TrafficControl`: any target that serves two versions at once
(the local gateway, a Kubernetes front end, an Azure ML endpoint's traffic map) implements that
interface, and this module decides.

The order is fixed and unit-tested with a fake: start the candidate (the target's own sample gate
runs there), then for each step move the weights, wait, read the candidate's own metrics from what
the front end recorded, and judge; promote after the last step, or roll back at once: all traffic
back to the current version, the candidate removed, and `RolledBack` naming the metric, its value,
its limit and the step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from mldeploy.providers.rollouts.spec import Canary

POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Metrics:
    """What the front end recorded for one version since a moment: never what a client says."""

    requests: int
    errors: int
    """Answers that were not 2xx."""
    p99_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class TrafficControl(Protocol):
    """The traffic interface of a target whose versions can serve side by side."""

    def start_candidate(self) -> None:
        """Start the new version beside the current one, at 0 % (its sample gate passed, or raise)."""

    def set_weights(self, current: int, candidate: int) -> None:
        """Send these shares of new requests to each version; requests in flight finish where they are."""

    def candidate_metrics(self, since: float) -> Metrics:
        """The candidate's own requests, non-2xx answers and p99 since `since` (time.time())."""

    def promote(self) -> None:
        """Make the candidate the current version and retire the old one."""

    def remove_candidate(self) -> None:
        """Stop and remove the candidate (all traffic is back on the current version already)."""


class RolledBack(RuntimeError):
    """A step failed: traffic is back on the current version and the candidate is gone."""

    def __init__(self, step: int, percent: int, metric: str, value: float, limit: float | str):
        self.step, self.percent, self.metric, self.value, self.limit = step, percent, metric, value, limit
        super().__init__(f"canary rolled back at step {step} ({percent} %): {metric} {_fmt(metric, value)} "
                         f"is over its limit {_fmt(metric, limit)}; all traffic is back on the current version")


def _fmt(metric: str, value: float | str) -> str:
    if isinstance(value, str):
        return value
    if metric == "error rate":
        return f"{value * 100:.2f} %"
    if metric == "p99":
        return f"{value:.0f} ms"
    return f"{value:g}"


@dataclass
class StepRecord:
    step: int
    percent: int
    requests: int
    error_rate: float
    p99_ms: float | None
    decision: str
    """"passed", "promoted without traffic", or why it rolled back."""


@dataclass
class RolloutRecord:
    """The last rollout's steps and decision, kept for `scripts/stack.py rollout <stack> <service>`."""

    steps: list[StepRecord] = field(default_factory=list)
    decision: str = "running"


def step_line(canary: Canary, record: StepRecord) -> str:
    """One progress line per step: weights, requests seen, error rate and p99 against their limits."""
    p99 = "n/a" if record.p99_ms is None else f"{record.p99_ms:.0f} ms"
    p99_limit = "" if canary.max_p99_ms is None else f" (≤ {canary.max_p99_ms:g} ms)"
    return (f"canary step {record.step}: {100 - record.percent} % current / {record.percent} % candidate; "
            f"{record.requests} requests (≥ {canary.min_requests}), error rate {record.error_rate * 100:.2f} % "
            f"(≤ {canary.max_error_rate * 100:g} %), p99 {p99}{p99_limit}: {record.decision}")


def judge(canary: Canary, m: Metrics) -> tuple[str, float, float | str] | None:
    """The first metric over its limit, as (metric, value, limit); None when the step passes."""
    if m.error_rate > canary.max_error_rate:
        return "error rate", m.error_rate, canary.max_error_rate
    if canary.max_p99_ms is not None and m.p99_ms is not None and m.p99_ms > canary.max_p99_ms:
        return "p99", m.p99_ms, canary.max_p99_ms
    return None


def run_canary(
    control: TrafficControl,
    canary: Canary,
    say: Callable[[str], None] = print,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    record: RolloutRecord | None = None,
) -> RolloutRecord:
    """Run the canary to promotion, or roll back and raise `RolledBack`; the record says what happened.

    Pass `record` to keep it also when this raises (the provider saves it for `stack.py rollout`).
    """
    record = RolloutRecord() if record is None else record
    control.start_candidate()
    try:
        for number, percent in enumerate(canary.steps, start=1):
            control.set_weights(100 - percent, percent)
            start = clock()
            sleep(canary.step_seconds)
            metrics = control.candidate_metrics(start)
            while metrics.requests < canary.min_requests and clock() - start < canary.wait_limit:
                sleep(min(POLL_SECONDS, canary.wait_limit - (clock() - start)))
                metrics = control.candidate_metrics(start)
            step = StepRecord(number, percent, metrics.requests, metrics.error_rate, metrics.p99_ms, "passed")
            record.steps.append(step)
            if metrics.requests < canary.min_requests:
                if canary.on_no_traffic == "fail":
                    step.decision = f"rolled back: {metrics.requests} requests in {canary.wait_limit:g} s"
                    say(step_line(canary, step))
                    raise RolledBack(number, percent, "requests", metrics.requests, f"at least {canary.min_requests}")
                step.decision = f"passed without traffic ({metrics.requests} requests in {canary.wait_limit:g} s; on_no_traffic=promote)"
            failed = judge(canary, metrics) if metrics.requests else None
            if failed is not None:
                step.decision = f"rolled back: {failed[0]} over its limit"
                say(step_line(canary, step))
                raise RolledBack(number, percent, *failed)
            say(step_line(canary, step))
    except BaseException as exc:
        # Interrupted or failed: every request goes back to the current version, then the candidate goes.
        control.set_weights(100, 0)
        control.remove_candidate()
        record.decision = str(exc) if isinstance(exc, RolledBack) else f"interrupted: {type(exc).__name__}"
        raise
    control.promote()
    record.decision = f"promoted after {len(canary.steps)} steps"
    say(f"canary: {record.decision}")
    return record
