"""The local target's side of a canary (`mldeploy.providers.rollouts.engine.TrafficControl`).

The new backend serves beside the current one on its own socket link
(`candidate.sock`); the gateway splits scoring requests between the two links
by request (`providers/front/split.py`), and each weight is a route reload that
`Gateway.put_route` confirms before the step's clock starts. What the step is
judged on is the gateway's split log, read inside the gateway: the candidate's
own status codes and times, never a client's view. Promotion re-points
`current.sock` at the candidate and drops the split; a rollback puts the route
back as it was and removes the candidate, keeping its log.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from mldeploy.providers.core import containers
from mldeploy.providers.front.gateway_config import CANDIDATE_LINK, CONTAINER_BACKENDS_DIR, CONTAINER_RUNTIME_DIR, SplitRoute
from mldeploy.providers.front.split import metrics_from_log
from mldeploy.providers.rollouts.engine import Metrics
from mldeploy.providers.targets.local.gateway import Gateway


class LocalTrafficControl:
    """Two backends of one service behind the stack's gateway, split by request.

    `target`: the LocalTarget, whose backend start (with its sample gate), route and kept logs
    this reuses (passed in, not imported: the target imports this module)."""

    def __init__(self, target: Any, gw: Gateway, olds: dict[str, Any], news: dict[str, Any],
                 keys: tuple[str | None, str | None]):
        self.target, self.gw, self.olds, self.news, self.keys = target, gw, olds, news, keys
        self.service = news["service_name"]
        self.log_path = f"{CONTAINER_RUNTIME_DIR}/split-{self.service}-{uuid.uuid4().hex[:8]}.log"
        self.candidate: containers.RunningContainer | None = None

    @property
    def socket_name(self) -> str:
        return os.path.basename(self.candidate.socket or "") if self.candidate else ""

    def start_candidate(self) -> None:
        """The candidate's own sample gate runs in `_start_backend`; only then is it linked."""
        self.candidate = self.target._start_backend(self.gw, self.news)
        self.gw.switch_backend(self.service, self.socket_name, link=CANDIDATE_LINK)

    def set_weights(self, current: int, candidate: int) -> None:
        split = SplitRoute(f"{CONTAINER_BACKENDS_DIR}/{self.service}/{CANDIDATE_LINK}", candidate, self.log_path)
        self.target._route(self.gw, self.news, self.keys, split=split)

    def candidate_metrics(self, since: float) -> Metrics:
        recorded = metrics_from_log(self.gw.split_log(self.log_path), "candidate", since)
        return Metrics(recorded.requests, recorded.errors, recorded.p99_ms)

    def promote(self) -> None:
        """Every new connection to the candidate, then the plain route: no request meets neither."""
        self.gw.switch_backend(self.service, self.socket_name)
        self.target._route(self.gw, self.news, self.keys)
        self.gw.drop_candidate(self.service)
        self.gw.remove_split_log(self.log_path)

    def remove_candidate(self) -> None:
        """The route as it was before the rollout (the old keys and limits), then the candidate goes."""
        old_keys = (self.olds.get("primary_key") or None, self.olds.get("secondary_key") or None)
        self.target._route(self.gw, self.olds, old_keys if self.olds.get("auth_enabled") else (None, None))
        self.gw.drop_candidate(self.service)
        if self.candidate is not None:
            self.target._keep_log(self.news, self.candidate, RuntimeError("canary rolled back or interrupted"))
            containers.remove(self.candidate.id, stop_timeout=2)
        self.gw.remove_split_log(self.log_path)
