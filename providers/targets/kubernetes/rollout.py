"""Waits for a Deployment's rollout as `kubectl rollout status` does, and fails it with the pods' own words.

pulumi-kubernetes 4.25 can report an update done before the deployment
controller has acted on it. Its await first waits for an event whose
`observedGeneration` equals its `generation`; when its watch starts on a cached
copy of the previous generation, that copy passes the check. The next event
is the new generation as the API server stored it, before the controller ran:
it still carries the old revision and the old ReplicaSet's "available"
conditions, so the await sees the old pods ready and returns. A version whose
`init()` raises was then reported as rolled out while the old pods served.

This check keys on the generation that the apply returned, so nothing from
before the apply can satisfy it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ResourceProvider, UpdateResult

from mldeploy.providers.core.progress import say

# What tells a new generation apart; the timeout and credentials only shape the wait.
WATCHED = ("namespace", "name", "generation")
POLL_SECONDS = 1.0
WAITING_REASONS = {"CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError", "InvalidImageName",
                   "CreateContainerError", "RunContainerError"}


CRASH_LOOP_RESTARTS = 2
"""A new pod's container in CrashLoopBackOff after this many restarts fails the rollout at once: it
exits the same way each time (init() raised, the sample was refused), and the deadline would only wait."""


class RolloutFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class RolloutState:
    done: bool
    failed: bool
    message: str


def rollout_state(deployment: dict[str, Any], generation: int) -> RolloutState:
    """Where the rollout of `generation` stands, from the Deployment alone (kubectl's rules)."""
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    live_generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    observed = int(status.get("observedGeneration") or 0)
    if observed < max(generation, live_generation):
        return RolloutState(False, False, f"waiting for the deployment controller to act on generation {generation}")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return RolloutState(False, True, f"progress deadline exceeded: {cond.get('message', '')}".strip())
    want = int(spec.get("replicas", 1))
    updated = int(status.get("updatedReplicas") or 0)
    if updated < want:
        return RolloutState(False, False, f"{updated} of {want} new pods created")
    total = int(status.get("replicas") or 0)
    if total > updated:
        return RolloutState(False, False, f"{total - updated} old pods still running")
    available = int(status.get("availableReplicas") or 0)
    if available < updated:
        return RolloutState(False, False, f"{available} of {updated} new pods available")
    return RolloutState(True, False, f"{available} of {want} pods available")


def pod_problems(pods: list[dict[str, Any]]) -> list[str]:
    """Why pods are not ready, as their containers say it: the last termination message first."""
    problems = []
    for pod in pods:
        pod_name = (pod.get("metadata") or {}).get("name", "?")
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if cs.get("ready"):
                continue
            waiting = (cs.get("state") or {}).get("waiting") or {}
            terminated = (cs.get("lastState") or {}).get("terminated") or (cs.get("state") or {}).get("terminated") or {}
            parts = []
            if waiting.get("reason") in WAITING_REASONS:
                parts.append(f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": "))
            # A message with exit 0 is one the container wrote itself (the sample probe's report).
            if terminated and (terminated.get("exitCode", 0) != 0 or str(terminated.get("message") or "").strip()):
                # Kubernetes keeps at most the last 2 KiB or 80 lines of the log here: all of it counts.
                tail = str(terminated.get("message") or "").strip()
                parts.append(f"exited {terminated.get('exitCode')} ({terminated.get('reason', '')}), restarts {cs.get('restartCount', 0)}"
                             + (f":\n{tail}" if tail else ""))
            if parts:
                problems.append(f"pod {pod_name} container {cs.get('name')}: " + "; ".join(parts))
    return problems


def crash_looping(pods: list[dict[str, Any]]) -> bool:
    """True when a container that is not ready is in Kubernetes's crash back-off after repeated restarts."""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if not cs.get("ready") and waiting.get("reason") == "CrashLoopBackOff" and int(cs.get("restartCount") or 0) >= CRASH_LOOP_RESTARTS:
                return True
    return False


class DeploymentReader(Protocol):
    def deployment(self, namespace: str, name: str) -> dict[str, Any]: ...

    def pods(self, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]: ...


def wait_for_rollout(
    reader: DeploymentReader,
    props: dict[str, Any],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll until the rollout of `props["generation"]` is done; raise RolloutFailed with the pods' problems."""
    ns, name, generation = props["namespace"], props["name"], int(props["generation"])
    timeout = float(props.get("timeout_seconds") or 600)
    deadline = clock() + timeout
    last = ""
    while True:
        deployment = reader.deployment(ns, name)
        state = rollout_state(deployment, generation)
        if state.done:
            say(f"{ns}/{name}: rolled out generation {generation} ({state.message})")
            revision = (deployment.get("metadata", {}).get("annotations") or {}).get("deployment.kubernetes.io/revision", "")
            return {"revision": revision, "available_replicas": int((deployment.get("status") or {}).get("availableReplicas") or 0)}
        pods = reader.pods(ns, props.get("selector") or {})
        problems = pod_problems(pods)
        crashing = crash_looping(pods)
        if state.failed or crashing or clock() >= deadline:
            why = (state.message if state.failed
                   else f"a new pod crashes at start ({CRASH_LOOP_RESTARTS}+ restarts, CrashLoopBackOff)" if crashing
                   else f"not done after {timeout:g}s: {state.message}")
            detail = "\n".join(problems) if problems else "no pod reported an error"
            raise RolloutFailed(f"Deployment {ns}/{name}: the rollout of generation {generation} failed: {why}\n{detail}")
        line = state.message + (f"; {problems[0].splitlines()[0]}" if problems else "")
        if line != last:
            say(f"{ns}/{name}: {line}")
            last = line
        sleep(POLL_SECONDS)


def diff_rollout(olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
    changed = [k for k in WATCHED if olds.get(k) != news.get(k)]
    return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)


class RolloutProvider(ResourceProvider):
    """Checks each new generation of one Deployment; deleting it deletes nothing."""

    def __init__(self, reader: Callable[[str], Any] | None = None):
        self._reader = reader

    def _open(self, kubeconfig: str) -> Any:
        if self._reader is not None:
            return self._reader(kubeconfig)
        from mldeploy.providers.targets.kubernetes import kube

        return kube.Reader(kubeconfig)

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = [CheckFailure(k, "is required") for k in ("namespace", "name") if not news.get(k)]
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return diff_rollout(olds, news)

    def _wait(self, props: dict[str, Any]) -> dict[str, Any]:
        with self._open(str(props.get("kubeconfig") or "")) as reader:
            outs = {**props, **wait_for_rollout(reader, props)}
            if props.get("candidate"):
                # A canary's candidate took the old pods' requests until they were gone: it goes now.
                remove_after_roll(reader, props["namespace"], props["name"])
            return outs

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(f"{props['namespace']}/{props['name']}", self._wait(props))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(self._wait(news))


DRAIN_WAIT_SECONDS = 60


def candidate_paths(namespace: str, service_name: str) -> dict[str, tuple[str, str]]:
    """Each candidate object's (collection, object) API paths, in the order they are created. Pure."""
    from mldeploy.providers.targets import kubernetes as target

    cand = target.canary_name(service_name)
    out = {}
    for kind, base in (("networkpolicies", f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies"),
                       ("services", f"/api/v1/namespaces/{namespace}/services"),
                       ("deployments", f"/apis/apps/v1/namespaces/{namespace}/deployments")):
        out[kind] = (base, f"{base}/{cand}")
    return out


def remove_after_roll(ops: Any, namespace: str, name: str, clock: Callable[[], float] = time.monotonic,
                      sleep: Callable[[float], None] = time.sleep) -> bool:
    """After the Deployment rolled: once no old pod is still draining (they sent the candidate their requests),
    remove the candidate's objects. True when there was a candidate to remove."""
    from mldeploy.providers.targets import kubernetes as target

    deadline = clock() + DRAIN_WAIT_SECONDS
    if not ops.get(f"/apis/apps/v1/namespaces/{namespace}/deployments?labelSelector={target.LABEL_APP}={target.canary_name(name)}").get("items"):
        return False
    while clock() < deadline:
        pods = ops.pods(namespace, target.selector(name))
        if not any((p.get("metadata") or {}).get("deletionTimestamp") for p in pods):
            break
        sleep(1.0)
    for kind in ("deployments", "services", "networkpolicies"):
        ops.delete(candidate_paths(namespace, name)[kind][1])
    say(f"{namespace}/{name}: the candidate {target.canary_name(name)} removed")
    return True
