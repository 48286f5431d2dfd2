"""The Kubernetes target's side of a canary (`mldeploy.providers.rollouts.engine.TrafficControl`), issue 20.

Real Kubernetes objects a user can inspect with kubectl: the service's own Deployment (the current
version), and during a canary a candidate Deployment `<service>-canary` of the new pod template (one
replica, gated on the sample like any pod, its own front end checking the service's keys), its ClusterIP
Service, and a NetworkPolicy letting the service's pods reach the candidate's front end and nothing else.

The split is per request, in the front container (nginx) of each CURRENT pod, rendered by the same
`providers/front/split.py` as the local gateway: each weight is the route rewritten in the pod's
writable `ROUTE_DIR` and a reload (kubectl exec through the API server); requests in flight finish on
the workers that took them. A step is judged on the split log those front ends write, read the same
way: the candidate's own status codes and times, never a client's view.

The `KubernetesCanary` resource runs before the service's Deployment is updated. A rollback (or an
interruption) writes every current pod's route back as it started, removes the candidate and fails
`up`: the Deployment was never touched, so the state stays on the old version. Promotion leaves the
candidate taking every request; the Deployment then rolls to the same template, and the `Rollout`
check removes the candidate once the old pods, which sent it their requests, have finished
(`remove_after_roll`).

A held split (`traffic=`) uses the same objects and routes, kept across ups in this resource's state
(`held`) while the Deployment ignores its new spec; dropping it hands every request to the candidate
and lets the Deployment roll.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable, Protocol

from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from mldeploy.providers.core.progress import say
from mldeploy.providers.front.split import metrics_from_log
from mldeploy.providers.rollouts.engine import Metrics, RolledBack, RolloutRecord, run_canary
from mldeploy.providers.rollouts.spec import Canary, TrafficSplit
from mldeploy.providers.rollouts.words import canary_words, held_words
from mldeploy.providers.targets import kubernetes as target
from mldeploy.providers.targets.kubernetes.rollout import RolloutFailed, candidate_paths as paths, remove_after_roll, wait_for_rollout

RELOAD_SETTLE_SECONDS = 0.5
"""After `nginx -s reload` the old workers finish what they hold; new requests meet the new route."""
CREATE_RETRY_SECONDS = 30
REACH_SECONDS = 20
"""How long each serving pod may wait for the candidate's ClusterIP to answer (inside one exec, whose limit is 30 s)."""
REACH_FALLBACK_SECONDS = 5.0
"""Without python3 in the front image the pods cannot be asked: the wait for the nodes' service routing instead."""
REACH_PROBE = r"""
import ssl, sys, time, urllib.error, urllib.request
url, limit = sys.argv[1], float(sys.argv[2])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                     urllib.request.HTTPSHandler(context=ssl._create_unverified_context()))
start, tries, last = time.monotonic(), 0, ""
while True:
    tries += 1
    try:
        with opener.open(url, timeout=2) as answer:
            status = answer.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except Exception as exc:
        status, last = None, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
    if status == 200:
        print(f"ok {tries} {time.monotonic() - start:.2f}")
        break
    if status is not None:
        last = f"HTTP {status}"
    if time.monotonic() - start >= limit:
        print(f"no {tries} {time.monotonic() - start:.2f} {last}")
        break
    time.sleep(0.1)
"""
"""Run in a serving pod's front container: GET the candidate front end's health route (keyless) through its
ClusterIP until it answers 200; prints `ok <tries> <seconds>` or `no <tries> <seconds> <last error>`."""


class ClusterOps(Protocol):
    """What a canary does to a cluster: the seam a unit test fakes (`kube.Reader` plus exec)."""

    def get(self, path: str) -> Any: ...

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def delete(self, path: str) -> bool: ...

    def deployment(self, namespace: str, name: str) -> dict[str, Any]: ...

    def pods(self, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]: ...

    def exec(self, namespace: str, pod: str, container: str, argv: list[str], stdin: str | None = None) -> str: ...


def whole_numbers(value: Any) -> Any:
    """Inputs reach a dynamic provider through protobuf, where every number is a float; the API server takes
    2.0 for no int32 field. Whole floats become ints again (a spec holds no fractional number). Pure."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole_numbers(v) for v in value]
    return value


def candidate_objects(namespace: str, service_name: str, spec: dict[str, Any], labels: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The candidate's NetworkPolicy, Service and Deployment, as the API server takes them. Pure."""
    cand = target.canary_name(service_name)
    meta = {"name": cand, "namespace": namespace,
            "labels": {**labels, target.LABEL_APP: cand, target.CANARY_ROLE_LABEL: "candidate"}}
    return whole_numbers({
        "networkpolicies": {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta,
                            "spec": target.canary_egress_policy(service_name)},
        "services": {"apiVersion": "v1", "kind": "Service", "metadata": meta,
                     "spec": target.candidate_service_spec(service_name)},
        "deployments": {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
                        "spec": target.candidate_deployment_spec(spec, service_name)},
    })


def serving_pods(pods: list[dict[str, Any]]) -> list[str]:
    """The names of the pods that take requests now: running, ready, not being deleted. Pure."""
    names = []
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        ready = {c.get("type"): c.get("status") for c in status.get("conditions") or []}.get("Ready") == "True"
        if status.get("phase") == "Running" and ready and not meta.get("deletionTimestamp"):
            names.append(str(meta.get("name")))
    return sorted(names)


def pods_words(pods: list[str]) -> str:
    return f"{len(pods)} serving pod{'' if len(pods) == 1 else 's'}"


def can_split(spec: dict[str, Any] | None) -> bool:
    """Whether pods of this Deployment spec start from a writable route (the front's start script). Pure."""
    try:
        containers = spec["template"]["spec"]["containers"]  # type: ignore[index]
        front = next(c for c in containers if c.get("name") == "front")
    except (KeyError, TypeError, StopIteration):
        return False
    return front.get("command") == ["sh", "-c", target.front_start_script()]


def plan(olds: dict[str, Any], news: dict[str, Any]) -> tuple[bool, str | None]:
    """(run the canary, why not in words) for an update from `olds` to `news`. Pure."""
    old_spec, new_spec = olds.get("spec") or {}, news.get("spec") or {}
    if old_spec.get("template") == new_spec.get("template"):
        return False, None  # nothing rolls: a changed `rollout` alone rolls nothing
    if not can_split(old_spec):
        return False, ("the current pods were started before the canary was declared and cannot split traffic: "
                       "this roll is a plain rolling update, gated on the sample; the next roll runs the canary")
    if olds.get("keys") != news.get("keys") or olds.get("front", {}).get("auth_enabled") != news.get("front", {}).get("auth_enabled"):
        return False, ("the keys change with this roll, and a canary sends requests checked with the current "
                       "keys: this roll is a plain rolling update; change keys and versions in separate ups to canary")
    return True, None


def check_words(olds: dict[str, Any], news: dict[str, Any], canary: Canary | None) -> str | None:
    """What the preview says of this change: the canary's steps and limits, why this roll is plain, or
    (declared now) when it starts; for a held split, its weights or its end. Pure."""
    if canary is None:
        return held_plan_words(olds, news)
    if olds.get("held"):
        return "the held version takes all traffic (traffic dropped); the Deployment rolls to it"
    if not olds:
        return (f"{canary_words(canary)}; from the next roll: the pods start now with a route the canary can "
                "split")
    if not olds.get("spec") or news.get("spec") == olds.get("spec"):
        return None
    runs, why = plan(olds, news)
    return canary_words(canary) if runs else why


def held_plan_words(olds: dict[str, Any], news: dict[str, Any]) -> str | None:
    """A held split's words at preview: what it holds, or nothing when nothing changes. Pure."""
    words = held_words(news).split("; held until")[0]
    held = olds.get("held") or {}
    if not olds:
        return f"{words}, from the next new version: the pods start now with a route that can split"
    if held and held.get("candidate_spec") == news.get("spec"):
        if list(held.get("weights") or []) == held_weights_of(news):
            return None
        return f"{words} (was {' / '.join(f'{w} %' for w in held['weights'])}): the routes change, nothing rolls"
    if not held and (olds.get("spec") or {}).get("template") == (news.get("spec") or {}).get("template"):
        return None
    return (f"{words}; the new version starts beside the current one (the Deployment stays on the current "
            "version) and is held until the program drops it, then the Deployment rolls to it")


def held_weights_of(news: dict[str, Any]) -> list[int]:
    """[current, candidate, mirrored] shares of a held split and/or mirror. Pure."""
    split = TrafficSplit.model_validate(news["traffic"]) if news.get("traffic") else TrafficSplit(current=100, candidate=0)
    return [split.current, split.candidate, int(news.get("mirror_percent") or 0)]


def held_plan(olds: dict[str, Any], news: dict[str, Any]) -> str:
    """What an update with `traffic` does: "weights" (same candidate), "start" (a new candidate), "none". Pure."""
    held = olds.get("held") or {}
    if held and held.get("candidate_spec") == news.get("spec"):
        return "weights"
    if not held and (olds.get("spec") or {}).get("template") == (news.get("spec") or {}).get("template"):
        return "none"
    return "start"


class KubeTrafficControl:
    """One service's current pods split requests between their own scoring server and the candidate's."""

    def __init__(self, ops: ClusterOps, olds: dict[str, Any], news: dict[str, Any],
                 wait: Callable[..., Any] = wait_for_rollout, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.ops, self.olds, self.news, self.wait, self.sleep, self.clock = ops, olds, news, wait, sleep, clock
        self.ns, self.name = news["namespace"], news["name"]
        self.paths = paths(self.ns, self.name)
        self.log_path = f"{target.FRONT_RUNTIME_DIR}/split-{uuid.uuid4().hex[:8]}.log"
        self.pods: list[str] = []
        self.before: str | None = None
        self.address: str | None = None

    def attach(self) -> None:
        """The serving pods and the route they started with, for a split that an earlier up set up."""
        self.pods = serving_pods(self.ops.pods(self.ns, target.selector(self.name)))
        if not self.pods:
            raise RolloutFailed(f"Deployment {self.ns}/{self.name}: no current pod is serving, so nothing can split traffic")
        self.before = self._exec(self.pods[0], ["cat", f"{target.ROUTE_DIR}/{target.ROUTE_BEFORE}"])

    # ---- the TrafficControl interface

    def start_candidate(self) -> None:
        """The candidate's objects, then its rollout (every pod answers the sample first); on failure none remain."""
        self.attach()
        # What an up stopped hard (Ctrl-C twice) left: the split in the pods first, then the candidate it names.
        self.put_routes_back()
        self.remove_candidate()
        objects = candidate_objects(self.ns, self.name, self.news["spec"], self.news.get("labels") or {})
        try:
            for kind in ("networkpolicies", "services", "deployments"):
                created = self._create(kind, objects[kind])
            service = self.ops.get(self.paths["services"][1])
            self.address = f"{service['spec']['clusterIP']}:{target.FRONT_PORT}"
            cand = target.canary_name(self.name)
            say(f"{self.ns}/{self.name}: candidate Deployment {cand} created; waiting for its pod to answer the sample")
            self.wait(self.ops, {"namespace": self.ns, "name": cand, "generation": int(created["metadata"].get("generation") or 1),
                                 "selector": {target.LABEL_APP: cand}, "timeout_seconds": self.news.get("timeout_seconds") or 600})
            self.wait_reachable()
        except BaseException:
            self.remove_candidate()
            raise

    def wait_reachable(self) -> None:
        """Every serving pod reaches the candidate through its ClusterIP before any request is sent there.

        The candidate's pod being ready (its Deployment rolled out) does not order anything on the nodes: each
        node's kube-proxy routes the new Service's ClusterIP once it has synced the ready endpoint (at most once
        a second), and a NetworkPolicy is applied as its enforcer gets to it. Until then a connection is refused,
        and the current pod's front end answers a split request 502 "backend unreachable" (what the krollout
        bench once saw at step 1). So each serving pod asks the candidate front end's health route through the
        ClusterIP, as its split will, until it answers 200."""
        args = target.KubernetesServiceArgs.model_validate(self.olds["front"])
        scheme = "https" if args.ssl_enabled else "http"
        url = f"{scheme}://{self.address}{target.scoring_path(self.name)}/health"
        argv = ["sh", "-c", 'if command -v python3 >/dev/null 2>&1; then exec python3 -c "$1" "$2" "$3"; fi; echo none',
                "sh", REACH_PROBE, url, str(REACH_SECONDS)]
        waited: list[str] = []
        for pod in self.pods:
            answer = self._exec(pod, argv).split()
            if answer[:1] == ["none"]:
                say(f"{self.ns}/{self.name}: pod {pod} cannot ask the candidate (no python3 in its front image); "
                    f"waiting {REACH_FALLBACK_SECONDS:g} s for the cluster to route its ClusterIP")
                self.sleep(REACH_FALLBACK_SECONDS)
                return
            if answer[:1] != ["ok"]:
                last = " ".join(answer[3:]) or "no answer"
                raise RolloutFailed(f"{self.ns}/{self.name}: serving pod {pod} could not reach the candidate "
                                    f"{target.canary_name(self.name)} through its ClusterIP {self.address} in "
                                    f"{REACH_SECONDS} s ({last}), though its pod is ready; no request was sent to it")
            if answer[1] != "1":
                waited.append(f"{pod} after {answer[2]} s ({answer[1]} tries)")
        say(f"{self.ns}/{self.name}: the candidate answers through its ClusterIP from {pods_words(self.pods)}"
            + (f"; not at once: {', '.join(waited)}" if waited else ""))

    def set_weights(self, current: int, candidate: int, mirror_percent: int = 0) -> None:
        """Every current pod's route: the split at these weights (and the mirrored share), or (candidate 0,
        no mirror) the route it started with."""
        if candidate == 0 and not mirror_percent:
            route = self.before or ""
        else:
            args = target.KubernetesServiceArgs.model_validate(self.olds["front"])
            route = target.split_route(args, list(self.olds.get("keys") or []), str(self.address), candidate, self.log_path,
                                       mirror_percent)
        for pod in self.pods:
            self._exec(pod, ["sh", "-c", target.route_write_script()], stdin=route)
        self.sleep(RELOAD_SETTLE_SECONDS)
        if candidate == 0 and not mirror_percent:
            say(f"{self.ns}/{self.name}: {pods_words(self.pods)} back on the route they started with")
        else:
            copies = f", copies of {mirror_percent} % to the candidate" if mirror_percent else ""
            say(f"{self.ns}/{self.name}: {pods_words(self.pods)} now split {current} % current / {candidate} % candidate{copies}")

    def put_routes_back(self) -> list[str]:
        """Serving pods whose live route is not the one they started with (the split of an up stopped before it
        could put it back) get that route again, before the candidate it names goes: no request is sent to a
        candidate being removed. The pods it was written to."""
        moved = [pod for pod in self.pods if self._exec(pod, ["cat", f"{target.ROUTE_DIR}/service.conf"]) != self.before]
        for pod in moved:
            self._exec(pod, ["sh", "-c", target.route_write_script()], stdin=self.before)
        if moved:
            self.sleep(RELOAD_SETTLE_SECONDS)
            say(f"{self.ns}/{self.name}: {pods_words(moved)} still split by an interrupted up, back on the route they started with")
        return moved

    def candidate_metrics(self, since: float) -> Metrics:
        lines: list[str] = []
        for pod in self.pods:
            lines += self._exec(pod, ["sh", "-c", f"cat {self.log_path} 2>/dev/null || true"]).splitlines()
        recorded = metrics_from_log(lines, "candidate", since)
        return Metrics(recorded.requests, recorded.errors, recorded.p99_ms)

    def promote(self) -> None:
        """The candidate takes every request already (the last step is 100 %); the Deployment rolls next,
        and the `Rollout` check removes the candidate once the old pods are gone."""
        say(f"{self.ns}/{self.name}: the candidate takes every request; the Deployment rolls to it next")

    def remove_candidate(self) -> None:
        for kind in ("deployments", "services", "networkpolicies"):
            self.ops.delete(self.paths[kind][1])

    # ---- helpers

    def _exec(self, pod: str, argv: list[str], stdin: str | None = None) -> str:
        return self.ops.exec(self.ns, pod, "front", argv, stdin)

    def _create(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create; while an earlier candidate's object of that name is still being deleted, try again."""
        deadline = self.clock() + CREATE_RETRY_SECONDS
        while True:
            try:
                return self.ops.create(self.paths[kind][0], body)
            except Exception as exc:  # the API server's 409 AlreadyExists while the last one goes
                if " 409 " not in str(exc) or self.clock() >= deadline:
                    raise
                self.sleep(1.0)


class Ops:
    """`ClusterOps` over one API server: `kube.Reader`'s requests, and exec through kubectl."""

    def __init__(self, kubeconfig: str):
        from mldeploy.providers.targets.kubernetes import kube

        self._kube, self._kubeconfig = kube, kubeconfig
        self._reader = kube.Reader(kubeconfig)

    def __enter__(self) -> "Ops":
        self._reader.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._reader.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:  # get, create, delete, deployment, pods
        return getattr(self._reader, name)

    def exec(self, namespace: str, pod: str, container: str, argv: list[str], stdin: str | None = None) -> str:
        return self._kube.exec_in(self._kubeconfig, namespace, pod, container, argv, stdin)


WATCHED = ("spec", "rollout", "keys", "front", "namespace", "name", "traffic", "mirror_percent")
"""An input whose change is an update. A held split's new weights or mirror share alone are one
(`held_plan` "weights": the routes change, nothing rolls)."""


LEFTOVER = "leftover"
"""Set by a refresh that finds a candidate nothing holds: an up stopped mid-canary (Ctrl-C twice) left it."""
LEFTOVER_WORDS = ("an interrupted up left a candidate and its split: the serving pods go back to their own route "
                  "and the candidate is removed")
UNSPLIT = "unsplit_pods"
"""Set by a refresh that finds serving pods on the route they started with while a split is held: pods that
restarted, or that the HPA added, after the split was written. The next up writes the split to them (the
preview shows the update; its words come with the up, since `check` sees the old inputs, not this output)."""


def unsplit_words(pods: list[str]) -> str:
    return (f"{pods_words(pods)} started after the held split was written (a restart or the HPA) and send the "
            "candidate nothing: the split is written to them again")


def diff_canary(olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
    """Pure: any watched input that changed is an update, never a replacement; so is a leftover candidate."""
    changed = [k for k in WATCHED if olds.get(k) != news.get(k)] + [k for k in (LEFTOVER, UNSPLIT) if olds.get(k)]
    return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)


def starts_candidate(olds: dict[str, Any], news: dict[str, Any]) -> bool:
    """Whether this update starts a candidate (which clears any leftover first). Pure."""
    if news.get("traffic") or news.get("mirror_percent"):
        return held_plan(olds, news) == "start"
    return not olds.get("held") and plan(olds, news)[0]


class CanaryProvider(ResourceProvider):
    """Runs an AksService's canary when its pod template changes, before its Deployment is updated."""

    def __init__(self, ops: Callable[[str], Any] | None = None):
        self._ops = ops

    def _open(self, kubeconfig: str) -> Any:
        return self._ops(kubeconfig) if self._ops is not None else Ops(kubeconfig)

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = [CheckFailure(k, "is required") for k in ("namespace", "name") if not news.get(k)]
        if not news.get("rollout") and not news.get("traffic") and not news.get("mirror_percent"):
            failures.append(CheckFailure("rollout", "a canary (rollout), a held split (traffic) or a mirror is required"))
        if not failures:
            try:
                canary = Canary.model_validate(news["rollout"]) if news.get("rollout") else None
                held_weights_of(news)
            except ValueError as exc:
                failures.append(CheckFailure("traffic" if news.get("traffic") else "rollout", str(exc)))
            else:
                words = check_words(olds, news, canary)
                if olds.get(LEFTOVER) and not starts_candidate(olds, news):
                    words = f"{words}; {LEFTOVER_WORDS}" if words else LEFTOVER_WORDS
                if words:
                    news = {**news, "rollout_plan": words}  # for the Markdown review (scripts/preview_markdown.py)
                    if olds:
                        say(f"{news['name']}: {words}")
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return diff_canary(olds, news)

    def create(self, props: dict[str, Any]) -> CreateResult:
        # The first version, or one whose pods are not yet ready to split: nothing to compare it with.
        return CreateResult(f"{props['namespace']}/{target.canary_name(props['name'])}", {**props, "last": "created"})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """A refresh (the next run after an interrupted up does one first) looks for a candidate that nothing
        holds: an up stopped mid-canary left it, its split still live. It is marked `leftover`, so the next up
        removes it even when it rolls nothing. Whatever goes wrong here leaves the state as it was: a refresh
        never fails on it."""
        props = {k: v for k, v in props.items() if k not in (LEFTOVER, UNSPLIT)}
        if not props.get("kubeconfig") or not props.get("namespace") or not props.get("name"):
            return ReadResult(id_, props)
        if props.get("held"):
            unsplit = self._unsplit_pods(props)
            return ReadResult(id_, {**props, UNSPLIT: unsplit} if unsplit else props)
        ns, name = props["namespace"], props["name"]
        try:
            with self._open(str(props["kubeconfig"])) as ops:
                found = ops.get(f"/apis/apps/v1/namespaces/{ns}/deployments?labelSelector="
                                f"{target.LABEL_APP}={target.canary_name(name)}").get("items")
        except Exception:  # noqa: BLE001 - an unreachable cluster is the next up's to report
            return ReadResult(id_, props)
        return ReadResult(id_, {**props, LEFTOVER: True} if found else props)

    def _unsplit_pods(self, props: dict[str, Any]) -> list[str]:
        """Serving pods still on the route they started with while the held split sends the candidate a share
        (or a mirrored one): a pod writes its route when the split is set, so one started later has none.
        Read only; anything that goes wrong reads as none (a refresh never fails on it)."""
        weights = list((props["held"] or {}).get("weights") or [100, 0, 0])
        if not any(weights[1:]):
            return []
        ns, name = props["namespace"], props["name"]
        try:
            with self._open(str(props["kubeconfig"])) as ops:
                pods = serving_pods(ops.pods(ns, target.selector(name)))
                return [pod for pod in pods if ops.exec(ns, pod, "front", ["cat", f"{target.ROUTE_DIR}/service.conf"])
                        == ops.exec(ns, pod, "front", ["cat", f"{target.ROUTE_DIR}/{target.ROUTE_BEFORE}"])]
        except Exception:  # noqa: BLE001 - an unreachable cluster is the next up's to report
            return []

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        if olds.get(LEFTOVER) and not starts_candidate(olds, news):
            self._clean(olds, news)
        if news.get("traffic") or news.get("mirror_percent"):
            return UpdateResult({**news, "last": "held", "held": self._hold(olds, news)})
        if olds.get("held"):
            self._release(olds, news)
            return UpdateResult({**news, "last": "held version promoted", "held": None})
        runs, why = plan(olds, news)
        if not runs:
            if why:
                say(f"{news['name']}: {why}")
            return UpdateResult({**news, "last": olds.get("last") or "created"})
        return UpdateResult({**news, "last": self._run(olds, news)})

    def _run(self, olds: dict[str, Any], news: dict[str, Any]) -> str:
        from mldeploy.providers.core.paths import local
        from mldeploy.providers.rollouts.records import record_path, save_record

        canary = Canary.model_validate(news["rollout"])
        name = news["name"]
        record = RolloutRecord()
        say(f"{name}: {canary_words(canary)}")
        try:
            with self._open(str(news.get("kubeconfig") or "")) as ops:
                control = KubeTrafficControl(ops, olds, news)
                run_canary(control, canary, say=lambda line: say(f"{name}: {line}"), record=record)
        except RolledBack as exc:
            raise RolloutFailed(f"{exc}. The candidate Deployment {target.canary_name(name)} was removed and "
                                f"Deployment {news['namespace']}/{name} was not changed; the state stays on the old "
                                "version, so the next preview shows the same change") from None
        finally:
            if news.get("state_dir"):
                save_record(record_path(local(news["state_dir"]), news.get("project", ""), news.get("stack", ""), name), record,
                            plan=canary_words(canary), versions=news.get("versions") or {})
        return record.decision

    def _held_control(self, ops: Any, olds: dict[str, Any], news: dict[str, Any]) -> KubeTrafficControl:
        """The traffic control of a split held by an earlier up: its current version, candidate address and log."""
        held = olds["held"]
        control = KubeTrafficControl(ops, held["current"], news)
        control.address, control.log_path = held["address"], held["log_path"]
        control.attach()
        return control

    def _hold(self, olds: dict[str, Any], news: dict[str, Any]) -> dict[str, Any] | None:
        """Start (or keep) the new version beside the current one at the declared weights; the Deployment stays."""
        weights = held_weights_of(news)
        name, what = news["name"], held_plan(olds, news)
        if what == "none":
            return olds.get("held")
        with self._open(str(news.get("kubeconfig") or "")) as ops:
            if what == "weights":
                control = self._held_control(ops, olds, news)
                if olds.get(UNSPLIT):
                    say(f"{name}: {unsplit_words(list(olds[UNSPLIT]))}")
                control.set_weights(*weights)
                say(f"{name}: {held_words(news)}")
                return {**olds["held"], "weights": weights}
            current = (olds.get("held") or {}).get("current") or {"front": olds.get("front"), "keys": olds.get("keys"),
                                                                   "spec": olds.get("spec")}
            field = "traffic" if news.get("traffic") else "mirror_percent"
            if not can_split(current.get("spec")):
                raise RolloutFailed(f"{field}: the running pods were started before a split was declared and cannot hold "
                                    "one; run one up with rollout=Canary(...) (the pods roll once to take a front end "
                                    "that can split), then declare traffic with the new version")
            if current.get("keys") != news.get("keys"):
                raise RolloutFailed(f"{field}: the keys change with this version; a held split sends requests checked "
                                    "with the current keys: change keys and versions in separate ups")
            if olds.get("held"):  # a newer version replaces the held one: the routes first go back as they started
                self._held_control(ops, olds, news).set_weights(100, 0)
            control = KubeTrafficControl(ops, current, news)
            control.start_candidate()
            try:
                control.set_weights(*weights)
            except BaseException:
                control.set_weights(100, 0)
                control.remove_candidate()
                raise
            say(f"{name}: {held_words(news)}")
            return {"current": current, "address": control.address, "log_path": control.log_path,
                    "candidate_spec": news.get("spec"), "weights": weights}

    def _release(self, olds: dict[str, Any], news: dict[str, Any]) -> None:
        """traffic dropped: the held version takes every request; the Deployment rolls to it next, and the
        Rollout check removes the candidate once the old pods are gone."""
        with self._open(str(news.get("kubeconfig") or "")) as ops:
            self._held_control(ops, olds, news).set_weights(0, 100)
        say(f"{news['name']}: the held version takes all traffic; the Deployment rolls to it next")

    def _clean(self, olds: dict[str, Any], news: dict[str, Any]) -> None:
        """What an up stopped mid-canary left, when this up starts no candidate of its own (which would clear it):
        every serving pod back on its own route, then the candidate, once no old pod still drains into it."""
        with self._open(str(news.get("kubeconfig") or "")) as ops:
            control = KubeTrafficControl(ops, olds, news)
            try:
                control.attach()
            except RolloutFailed:
                pass  # no serving pod: no route to put back
            else:
                control.put_routes_back()
            remove_after_roll(ops, news["namespace"], news["name"])

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        """A candidate left by an interrupted up goes with the service."""
        with self._open(str(props.get("kubeconfig") or "")) as ops:
            for kind in ("deployments", "services", "networkpolicies"):
                ops.delete(paths(props["namespace"], props["name"])[kind][1])
