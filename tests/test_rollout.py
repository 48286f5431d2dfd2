"""The rollout check of the Kubernetes target (providers/targets/kubernetes/rollout.py), with a fake API reader and clock."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from mldeploy.providers.targets.kubernetes import rollout

OLD_DONE = {
    "metadata": {"generation": 4, "annotations": {"deployment.kubernetes.io/revision": "2"}},
    "spec": {"replicas": 1},
    "status": {
        "observedGeneration": 4,
        "replicas": 1,
        "updatedReplicas": 1,
        "readyReplicas": 1,
        "availableReplicas": 1,
        "conditions": [
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
        ],
    },
}


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    d = copy.deepcopy(base)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = d
        for p in parents:
            node = node[p]
        node[leaf] = value
    return d


CRASHING_POD = {
    "metadata": {"name": "svc-a-7f9-x1"},
    "status": {
        "containerStatuses": [
            {"name": "front", "ready": False, "state": {"running": {}}, "restartCount": 0},
            {
                "name": "scoring",
                "ready": False,
                "restartCount": 2,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting failed container"}},
                "lastState": {"terminated": {"exitCode": 3, "reason": "Error",
                                             "message": "Traceback (most recent call last):\n_pickle.UnpicklingError: invalid load key, 't'."}},
            },
        ]
    },
}
HEALTHY_POD = {"metadata": {"name": "svc-a-5c4-a1"},
               "status": {"containerStatuses": [{"name": "scoring", "ready": True, "state": {"running": {}}}]}}


def test_the_racing_event_is_not_taken_for_a_finished_rollout() -> None:
    """The new generation as stored before the controller ran: old revision, old conditions, all ready."""
    racing = with_(OLD_DONE, metadata__generation=5)
    assert rollout_state_of(racing, 5) == (False, False)
    # The stale cached copy of the previous generation is not enough either.
    assert rollout_state_of(OLD_DONE, 5) == (False, False)


def rollout_state_of(d: dict[str, Any], generation: int) -> tuple[bool, bool]:
    s = rollout.rollout_state(d, generation)
    return s.done, s.failed


@pytest.mark.parametrize(
    "status, expected",
    [
        ({"updatedReplicas": 0}, "0 of 1 new pods created"),
        ({"replicas": 2, "updatedReplicas": 1}, "1 old pods still running"),
        ({"replicas": 1, "updatedReplicas": 1, "availableReplicas": 0}, "0 of 1 new pods available"),
    ],
)
def test_a_rollout_in_progress_waits_and_says_why(status: dict[str, Any], expected: str) -> None:
    d = with_(OLD_DONE, metadata__generation=5, status={**OLD_DONE["status"], "observedGeneration": 5, **status})
    state = rollout.rollout_state(d, 5)
    assert (state.done, state.failed, state.message) == (False, False, expected)


def test_done_when_observed_and_every_pod_is_new_and_available() -> None:
    d = with_(OLD_DONE, metadata__generation=5, status__observedGeneration=5)
    assert rollout_state_of(d, 5) == (True, False)
    # A Deployment without spec.replicas (the HPA owns it) counts as one, as the API defaults it.
    del d["spec"]["replicas"]
    assert rollout_state_of(d, 5) == (True, False)


def test_progress_deadline_fails_at_once() -> None:
    d = with_(OLD_DONE, metadata__generation=5, status__observedGeneration=5, status__updatedReplicas=1, status__replicas=2)
    d["status"]["conditions"][1] = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                    "message": 'ReplicaSet "svc-a-7f9" has timed out progressing.'}
    state = rollout.rollout_state(d, 5)
    assert state.failed and "has timed out progressing" in state.message


def test_pod_problems_quote_the_termination_message_and_skip_ready_containers() -> None:
    problems = rollout.pod_problems([HEALTHY_POD, CRASHING_POD])
    assert len(problems) == 1
    assert problems[0].startswith("pod svc-a-7f9-x1 container scoring: CrashLoopBackOff: back-off 20s")
    assert "exited 3 (Error), restarts 2" in problems[0] and "UnpicklingError: invalid load key" in problems[0]


class FakeReader:
    def __init__(self, states: list[dict[str, Any]], pods: list[dict[str, Any]]):
        self.states, self.pod_list, self.calls = states, pods, 0

    def deployment(self, namespace: str, name: str) -> dict[str, Any]:
        assert (namespace, name) == ("ns1", "svc-a")
        self.calls += 1
        return self.states[min(self.calls, len(self.states)) - 1]

    def pods(self, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        assert selector == {"app": "svc-a"}
        return self.pod_list


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


PROPS = {"namespace": "ns1", "name": "svc-a", "selector": {"app": "svc-a"}, "generation": 5, "timeout_seconds": 30}


def test_wait_returns_once_the_new_generation_is_available(capsys: pytest.CaptureFixture[str]) -> None:
    racing = with_(OLD_DONE, metadata__generation=5)
    rolling = with_(racing, status__observedGeneration=5, status__replicas=2)
    done = with_(racing, status__observedGeneration=5, metadata__annotations={"deployment.kubernetes.io/revision": "3"})
    clock = Clock()
    out = rollout.wait_for_rollout(FakeReader([racing, rolling, done], [HEALTHY_POD]), PROPS, clock, clock.sleep)
    assert out == {"revision": "3", "available_replicas": 1}
    err = capsys.readouterr().err
    assert "ns1/svc-a: waiting for the deployment controller" in err and "1 old pods still running" in err
    assert "rolled out generation 5" in err


def test_wait_fails_at_the_deadline_with_the_pods_own_words() -> None:
    rolling = with_(OLD_DONE, metadata__generation=5, status__observedGeneration=5, status__replicas=2)
    pulling = copy.deepcopy(CRASHING_POD)
    pulling["status"]["containerStatuses"][1]["state"] = {"waiting": {"reason": "ImagePullBackOff", "message": "back-off pulling"}}
    clock = Clock()
    with pytest.raises(rollout.RolloutFailed) as failed:
        rollout.wait_for_rollout(FakeReader([rolling], [HEALTHY_POD, pulling]), PROPS, clock, clock.sleep)
    message = str(failed.value)
    assert message.startswith("Deployment ns1/svc-a: the rollout of generation 5 failed: not done after 30s")
    assert "ImagePullBackOff" in message and "UnpicklingError" in message
    assert 30 <= clock.now <= 31


def test_a_crash_loop_fails_at_once_with_the_pods_own_words() -> None:
    """init() that raises exits the same way every time: no need to wait for the deadline (the pod's status says it)."""
    rolling = with_(OLD_DONE, metadata__generation=5, status__observedGeneration=5, status__replicas=2)
    clock = Clock()
    with pytest.raises(rollout.RolloutFailed) as failed:
        rollout.wait_for_rollout(FakeReader([rolling], [HEALTHY_POD, CRASHING_POD]), PROPS, clock, clock.sleep)
    message = str(failed.value)
    assert message.startswith("Deployment ns1/svc-a: the rollout of generation 5 failed: a new pod crashes at start")
    assert "UnpicklingError" in message and clock.now == 0
    once = copy.deepcopy(CRASHING_POD)
    once["status"]["containerStatuses"][1]["restartCount"] = 1
    assert not rollout.crash_looping([once]), "one restart may be a slow start"


def test_diff_follows_the_generation_not_the_timeout_or_credentials() -> None:
    old = {**PROPS, "kubeconfig": "a"}
    assert not rollout.diff_rollout(old, {**old, "timeout_seconds": 99, "kubeconfig": "b"}).changes
    d = rollout.diff_rollout(old, {**old, "generation": 6})
    assert d.changes and not d.replaces


def test_provider_waits_through_its_reader_seam() -> None:
    done = with_(OLD_DONE, metadata__generation=5, status__observedGeneration=5)

    class Opened(FakeReader):
        def __enter__(self) -> "Opened":
            return self

        def __exit__(self, *a: Any) -> None:
            pass

    seen: list[str] = []

    def open_reader(kubeconfig: str) -> Opened:
        seen.append(kubeconfig)
        return Opened([done], [])

    provider = rollout.RolloutProvider(reader=open_reader)
    created = provider.create({**PROPS, "kubeconfig": "apiVersion: v1"})
    assert created.id == "ns1/svc-a" and created.outs["revision"] == "2" and seen == ["apiVersion: v1"]
    assert [f.property for f in provider.check({}, {"namespace": "", "name": "x"}).failures] == ["namespace"]
