"""The last rollout of each service, kept as a file so `scripts/stack.py rollout <stack> <service>` can
show its steps and decision after the fact (issue 20).

A record lives beside the local target's kept logs: `<stateDir>/rollouts/<project>-<stack>/<service>.json`,
mode 0600, written whole (a temporary file renamed), so a reader never sees half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mldeploy.providers.rollouts.engine import RolloutRecord, StepRecord


def record_path(state_dir: str | os.PathLike[str], project: str, stack: str, service: str) -> Path:
    return Path(state_dir) / "rollouts" / f"{project}-{stack}" / f"{service}.json"


def save_record(path: Path, record: RolloutRecord, **about: Any) -> None:
    """Write `record` (and `about`: the canary's words, the versions) whole, replacing the last one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({**about, **asdict(record)}, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_record(path: Path) -> tuple[RolloutRecord, dict[str, Any]] | None:
    """The record at `path` and what was kept about it, or None when the service never rolled out."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    steps = [StepRecord(**s) for s in data.pop("steps", [])]
    record = RolloutRecord(steps=steps, decision=data.pop("decision", "unknown"))
    return record, data


def render(record: RolloutRecord, about: dict[str, Any] | None = None) -> str:
    """What the command prints: what was declared, one line per step, and the decision."""
    lines = []
    if about and about.get("plan"):
        lines.append(str(about["plan"]))
    for s in record.steps:
        p99 = "n/a" if s.p99_ms is None else f"{s.p99_ms:.0f} ms"
        lines.append(f"step {s.step}: {100 - s.percent} % current / {s.percent} % candidate; {s.requests} requests, "
                     f"error rate {s.error_rate * 100:.2f} %, p99 {p99}: {s.decision}")
    lines.append(f"decision: {record.decision}")
    return "\n".join(lines)
