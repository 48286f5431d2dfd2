"""What a rollout declares: a canary, a held traffic split, or a mirrored share; checked at preview."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SPLITTING_TARGETS = ("local", "kubernetes")
"""Targets whose two versions serve side by side behind one front end, split by request."""


class Canary(BaseModel):
    """A new version takes each step's share of live traffic, promoted or rolled back on its own metrics.

    For example `Canary(steps=[10, 50, 100], step_seconds=30, min_requests=200, max_error_rate=0.01,
    max_p99_ms=250)`: 10 % for 30 s, then 50 %, then all of it, as long as the new version's
    non-2xx rate stays at or under 1 % and its p99 at or under 250 ms over at least 200 requests.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: list[int] = Field(min_length=1)
    """Percentages of live traffic, rising, ending at 100."""
    step_seconds: float = Field(gt=0)
    min_requests: int = Field(default=100, ge=0)
    """Requests the new version must see in a step before it is judged."""
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    """Non-2xx answers over requests, 0 to 1."""
    max_p99_ms: float | None = Field(default=None, gt=0)
    max_wait_seconds: float | None = Field(default=None, gt=0)
    """How long a step may wait for `min_requests` (default: ten steps)."""
    on_no_traffic: Literal["fail", "promote"] = "fail"
    """What a step that never saw `min_requests` does once `max_wait_seconds` have passed."""

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[int]) -> list[int]:
        for s in steps:
            if not 0 < s <= 100:
                raise ValueError(f"each step is a percentage above 0 and at most 100, got {s}")
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ValueError(f"steps must rise, got {steps}")
        if steps[-1] != 100:
            raise ValueError(f"steps must end at 100 (the new version takes all traffic), got {steps}")
        return steps

    @property
    def wait_limit(self) -> float:
        return self.max_wait_seconds if self.max_wait_seconds is not None else 10 * self.step_seconds


class TrafficSplit(BaseModel):
    """Two versions held live at these weights until the program says otherwise (blue/green held open)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    current: int = Field(ge=0, le=100)
    candidate: int = Field(ge=0, le=100)

    @model_validator(mode="after")
    def _sums_to_100(self) -> "TrafficSplit":
        if self.current + self.candidate != 100:
            raise ValueError(f"current and candidate must sum to 100, got {self.current} + {self.candidate}")
        return self


class Rollout(BaseModel):
    """A service's rollout arguments together, so the rules across them live in one place."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rollout: Canary | None = None
    traffic: TrafficSplit | None = None
    mirror_percent: int | None = Field(default=None, ge=0, le=100)

    @field_validator("traffic", mode="before")
    @classmethod
    def _traffic(cls, value: Any) -> Any:
        return TrafficSplit(**value) if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _one_way(self) -> "Rollout":
        if self.mirror_percent and self.rollout is not None:
            raise ValueError("mirror_percent: cannot be combined with a canary rollout; mirror first, then roll")
        if self.traffic is not None and self.rollout is not None:
            raise ValueError("traffic: a held split and a canary rollout cannot both be declared; choose one")
        return self


def check_rollout(target: str, given: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, reason) for each problem with a service's rollout arguments on `target`; none means fine."""
    from pydantic import ValidationError

    declared = {k: v for k, v in given.items() if v is not None}
    if not declared:
        return []
    try:
        Rollout.model_validate(declared)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            msg = err["msg"].removeprefix("Value error, ")
            field = ".".join(loc) if loc else msg.split(":", 1)[0]
            problems.append((field, msg.split(": ", 1)[1] if not loc and ": " in msg else msg))
        return problems
    if target not in SPLITTING_TARGETS:
        field = next(iter(declared))
        return [(field, f"target {target!r} cannot split traffic between two versions (one version serves at a time there); "
                        f"a canary, a held split or mirroring needs the {' or '.join(SPLITTING_TARGETS)} target")]
    return []
