"""What the preview says a rollout will do, in the terminal and in the Markdown review."""

from __future__ import annotations

from typing import Any, Mapping

from mldeploy.providers.rollouts.spec import Canary, TrafficSplit


def canary_words(canary: Canary) -> str:
    """"canary: 10 % → 50 % → 100 %, 30 s a step; promote if error rate ≤ 1 % and p99 ≤ 250 ms over ≥ 200 requests; otherwise roll back"."""
    limits = [f"error rate ≤ {canary.max_error_rate * 100:g} %"]
    if canary.max_p99_ms is not None:
        limits.append(f"p99 ≤ {canary.max_p99_ms:g} ms")
    return (f"canary: {' → '.join(f'{s} %' for s in canary.steps)}, {canary.step_seconds:g} s a step; "
            f"promote if {' and '.join(limits)} over ≥ {canary.min_requests} requests; otherwise roll back")


def split_words(split: TrafficSplit) -> str:
    return f"traffic held at {split.current} % current / {split.candidate} % candidate"


def mirror_words(percent: int) -> str:
    return f"{percent} % of requests mirrored to the candidate; its answers are discarded"


def held_weights(inputs: Mapping[str, Any]) -> tuple[int, int] | None:
    """(candidate share, mirrored share) of a held split or mirror in a service's inputs; None without one."""
    traffic, mirror = inputs.get("traffic"), inputs.get("mirror_percent")
    if not traffic and not mirror:
        return None
    weight = int(TrafficSplit.model_validate(traffic).candidate) if traffic else 0
    return weight, int(mirror or 0)


def held_words(inputs: Mapping[str, Any]) -> str:
    """The preview's and the progress line's words for a held split and/or mirror."""
    parts = []
    if inputs.get("traffic"):
        parts.append(split_words(TrafficSplit.model_validate(inputs["traffic"])))
    if inputs.get("mirror_percent"):
        parts.append(mirror_words(int(inputs["mirror_percent"])))
    return "; ".join(parts) + "; held until the program drops it, then the new version takes all traffic"
