"""The blue/green roll as an ordered plan, and the executor that runs it over a client.

A plan is data (a list of steps), so its order is tested without Azure and the
preview can say it in Azure's words before anything runs:

    endpoint `churn`: deployment `v04` created at 0 %, sample checked, traffic v03 100 % → v04 100 %, v03 deleted

Order, as Azure's safe-rollout guide has it: the new deployment is created
outside the traffic map (0 %), the entry script's sample goes to it alone through
the endpoint (header `azureml-model-deployment`), traffic moves in the declared
steps, and only then is the old deployment deleted. If any step fails before the
new deployment holds all traffic, traffic goes back to the old deployment, the
new one is deleted, and the error names the step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

from mldeploy.providers.core.progress import say
from mldeploy.providers.core.scoring import Answer


class Client(Protocol):
    """What the executor needs of Azure ML (`client.WorkspaceClient`; a recording fake in unit tests)."""

    def ensure_asset(self, kind: str, name: str, version: str, body: dict[str, Any], upload: Mapping[str, str] | None = None) -> bool: ...
    def put_endpoint(self, name: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def put_deployment(self, endpoint: str, name: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def delete_deployment(self, endpoint: str, name: str) -> bool: ...
    def set_traffic(self, endpoint: str, traffic: dict[str, int], mirror: dict[str, int] | None = None) -> dict[str, Any]: ...
    def gate(self, endpoint: str, deployment: str) -> Any: ...


@dataclass(frozen=True)
class Step:
    """One call of the plan: `op` names the client method, `args` its arguments."""

    op: str
    args: tuple[Any, ...] = ()
    words: str = ""


@dataclass
class Plan:
    endpoint: str
    new: str
    old: str | None
    steps: list[Step] = field(default_factory=list)

    def words(self) -> str:
        """The roll in one line, in Azure's words."""
        return f"endpoint `{self.endpoint}`: " + ", ".join(s.words for s in self.steps if s.words)


class RolloutFailed(RuntimeError):
    """A step failed; traffic is on the old deployment (if any) and the new one is gone."""


def next_deployment(old: str | None) -> str:
    """v01, v02, ...: the deployment after `old` (its number plus one). At least 3 characters, as
    Azure ML's own SDK requires of a deployment name (`validate_endpoint_or_deployment_name`);
    an older state's `v1` is followed by `v02`."""
    m = re.fullmatch(r"v(\d+)", old or "")
    return f"v{int(m.group(1)) + 1:02d}" if m else "v01"


def plan_roll(endpoint: str, old: str | None, new: str, assets: list[tuple[Any, ...]],
              endpoint_body: dict[str, Any] | None, deployment_body: dict[str, Any],
              steps: list[int], mirror_percent: int = 0) -> Plan:
    """The ordered steps from `old` (None: a new endpoint) to `new`.

    `assets`: (kind, name, version, body[, upload]), registered only when absent (files uploaded first). `endpoint_body`:
    given for a new endpoint (created first, with an empty traffic map).
    """
    plan = Plan(endpoint, new, old)
    add = plan.steps.append
    steps = [int(s) for s in steps]  # providers get every number as a float; ARM wants int32 shares
    mirror_percent = int(mirror_percent)
    for asset in assets:
        add(Step("ensure_asset", tuple(asset)))
    if endpoint_body is not None:
        add(Step("put_endpoint", (endpoint, endpoint_body), "created"))
    add(Step("put_deployment", (endpoint, new, deployment_body), f"deployment `{new}` created at 0 %"))
    add(Step("gate", (endpoint, new), "sample checked"))
    if old and mirror_percent:
        add(Step("set_traffic", (endpoint, {old: 100}, {new: mirror_percent}), f"{mirror_percent} % mirrored to {new}"))
    before = f"{old} 100 %" if old else "none"
    for share in steps:
        traffic = {new: share} if not old or share == 100 else {old: 100 - share, new: share}
        now = " + ".join(f"{k} {v} %" for k, v in traffic.items())
        add(Step("set_traffic", (endpoint, traffic, {}), f"traffic {before} → {now}"))
        before = now
    if old:
        add(Step("delete_deployment", (endpoint, old), f"{old} deleted"))
    return plan


def execute(plan: Plan, client: Client, progress: Callable[[str], None] = say) -> None:
    """Run the steps in order; on a failure before the new deployment holds all traffic, undo and raise."""
    created = False
    for step in plan.steps:
        try:
            result = getattr(client, step.op)(*step.args)
        except Exception as exc:
            raise _undo(plan, client, step, str(exc), created, progress) from None
        if step.op == "put_deployment":
            created = True
        if step.op == "gate" and not getattr(result, "ok", True):
            raise _undo(plan, client, step, gate_report(plan, result), created, progress)
        if step.op == "set_traffic" and step.args[1].get(plan.new) == 100:
            created = False  # the new deployment holds all traffic: nothing to undo from here on
        if step.words:
            progress(f"endpoint {plan.endpoint}: {step.words}")


def gate_report(plan: Plan, check: Any) -> str:
    report = check.report() if hasattr(check, "report") else str(check)
    return (f"the sample gate refused deployment `{plan.new}` (called through the endpoint with header "
            f"azureml-model-deployment: {plan.new})\n{report}")


def _undo(plan: Plan, client: Client, step: Step, why: str, created: bool, progress: Callable[[str], None]) -> RolloutFailed:
    what = step.words or f"{step.op} {' '.join(str(a) for a in step.args[:3] if isinstance(a, str))}"
    lines = [f"endpoint {plan.endpoint}: step '{what}' failed: {why}"]
    if created:
        try:
            if plan.old:
                client.set_traffic(plan.endpoint, {plan.old: 100}, {})
                lines.append(f"traffic is back on `{plan.old}` (100 %)")
            client.delete_deployment(plan.endpoint, plan.new)
            lines.append(f"deployment `{plan.new}` deleted")
        except Exception as exc:  # say it; the next `up` converges from what refresh finds
            lines.append(f"undo incomplete ({exc}); the next `pulumi up` converges")
    elif plan.old:
        lines.append(f"traffic stays on `{plan.old}`")
    progress(lines[-1])
    return RolloutFailed("\n".join(lines))


def gate_answer(status: int, body: str, ms: float = 0.0) -> Answer:
    return Answer(status, body, ms)
