"""A canary on the Kubernetes target (issue 20), without a cluster: the pure parts, and the order of a roll
driven by the real `run_canary` over `KubeTrafficControl` with a fake cluster (`ClusterOps`)."""

from __future__ import annotations

from typing import Any

import pytest

from mldeploy.providers.front import split
from mldeploy.providers.rollouts.engine import RolledBack, run_canary
from mldeploy.providers.rollouts.records import load_record, record_path
from mldeploy.providers.rollouts.spec import Canary
from mldeploy.providers.targets import kubernetes as target
from mldeploy.providers.targets.kubernetes import canary as kcanary
from mldeploy.providers.targets.kubernetes.rollout import remove_after_roll

pytestmark = pytest.mark.unit

NS, NAME = "ns1", "svc"
KEYS = ["k" * 43, "q" * 43]


def spec(canary: bool = True, env: str = "1") -> dict[str, Any]:
    args = target.KubernetesServiceArgs(service_name=NAME, num_replicas=2, environment_variables={"V": env})
    return target.deployment_spec(args, project="p", stack="s", image_ref="img", front_image_ref="front",
                                  model_versions={"m": "1"}, config_secret=f"{NAME}-front", config_checksum="c",
                                  sample_config=f"{NAME}-sample", canary=canary)


def props(**over: Any) -> dict[str, Any]:
    args = target.KubernetesServiceArgs(service_name=NAME, num_replicas=2)
    base = {"kubeconfig": "kc", "namespace": NS, "name": NAME, "labels": target.labels("p", "s", NAME),
            "rollout": Canary(steps=[50, 100], step_seconds=3, min_requests=10).model_dump(),
            "spec": spec(), "front": args.model_dump(mode="json"), "keys": KEYS, "timeout_seconds": 60}
    return {**base, **over}


def pod(name: str, ready: bool = True, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-05T00:00:00Z"
    return {"metadata": meta, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


class FakeCluster:
    """Records every call in order; the front ends' split log answers what `log` holds."""

    def __init__(self, log: str = "", reach: dict[str, str] | None = None) -> None:
        self.calls: list[tuple] = []
        self.log = log
        self.routes: dict[str, str] = {}
        self.reach = reach or {}
        """What each pod's ask of the candidate's ClusterIP prints (`canary.REACH_PROBE`); at once by default."""

    def get(self, path: str) -> Any:
        self.calls.append(("get", path))
        if path.endswith(f"/services/{NAME}-canary"):
            return {"spec": {"clusterIP": "10.96.0.7"}}
        return {"items": [{"metadata": {"name": f"{NAME}-canary"}}]}

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create", path.rsplit("/", 1)[1], body["metadata"]["name"]))
        return {"metadata": {"generation": 1}}

    def delete(self, path: str) -> bool:
        self.calls.append(("delete", path.rsplit("/", 2)[1], path.rsplit("/", 1)[1]))
        return True

    def deployment(self, namespace: str, name: str) -> dict[str, Any]:
        raise AssertionError("the service's own Deployment is never read or changed by the canary")

    def pods(self, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        self.calls.append(("pods", selector[target.LABEL_APP]))
        return [pod("svc-b"), pod("svc-a"), pod("svc-old", deleting=True), pod("svc-new", ready=False)]

    def exec(self, namespace: str, pod: str, container: str, argv: list[str], stdin: str | None = None) -> str:
        assert container == "front"
        if argv[0] == "cat" and argv[1].endswith(target.ROUTE_BEFORE):
            self.calls.append(("read-before", pod))
            return "BEFORE ROUTE"
        if argv[0] == "cat":
            self.calls.append(("read-route", pod))
            return self.routes.get(pod, "BEFORE ROUTE")
        if kcanary.REACH_PROBE in argv:
            self.calls.append(("reach", pod, argv[argv.index(kcanary.REACH_PROBE) + 1]))
            return self.reach.get(pod, "ok 1 0.01\n")
        if "service.next" in argv[-1]:
            self.routes[pod] = stdin or ""
            lines = [ln.strip() for ln in (stdin or "").splitlines() if ln.strip().endswith(("% candidate;", "* candidate;", "* current;"))]
            weight = "before" if stdin == "BEFORE ROUTE" else lines[0]
            self.calls.append(("route", pod, weight))
            return ""
        self.calls.append(("read-log", pod))
        return self.log


def run(cluster: FakeCluster, canary: Canary) -> tuple[Any, list[str]]:
    olds = props(spec=spec(env="0"))
    control = kcanary.KubeTrafficControl(cluster, olds, props(), wait=lambda ops, p: cluster.calls.append(("wait", p["name"])),
                                         sleep=lambda s: None)
    lines: list[str] = []
    clock = iter(range(1000, 10_000))
    record = run_canary(control, canary, say=lines.append, clock=lambda: float(next(clock)), sleep=lambda s: None)
    return record, lines


def test_a_passing_canary_splits_in_every_serving_pod_then_leaves_the_candidate_for_the_roll() -> None:
    good = "".join(f"{1500 + i}.0 candidate 200 0.010\n" for i in range(20))
    cluster = FakeCluster(good)
    record, lines = run(cluster, Canary(steps=[50, 100], step_seconds=3, min_requests=10))
    assert record.decision == "promoted after 2 steps"
    calls = cluster.calls
    # Each serving pod's live route is read first: it is already the one it started with, so nothing is written.
    assert calls[:8] == [("pods", NAME), ("read-before", "svc-a"), ("read-route", "svc-a"), ("read-route", "svc-b"),
                         ("delete", "deployments", "svc-canary"), ("delete", "services", "svc-canary"),
                         ("delete", "networkpolicies", "svc-canary"), ("create", "networkpolicies", "svc-canary")]
    assert calls[8:11] == [("create", "services", "svc-canary"), ("create", "deployments", "svc-canary"),
                           ("get", f"/api/v1/namespaces/{NS}/services/svc-canary")]
    # The candidate's own rollout (its sample gate) before any weight moves; then both serving pods, each step.
    assert calls[11] == ("wait", "svc-canary")
    # Then every serving pod reaches it through its ClusterIP, as its split will, before any weight moves.
    health = f"http://10.96.0.7:8080{target.scoring_path(NAME)}/health"
    assert calls[12:14] == [("reach", "svc-a", health), ("reach", "svc-b", health)]
    assert calls[14:16] == [("route", "svc-a", "50% candidate;"), ("route", "svc-b", "50% candidate;")]
    assert calls[16:18] == [("read-log", "svc-a"), ("read-log", "svc-b")]
    assert calls[18:20] == [("route", "svc-a", "* candidate;"), ("route", "svc-b", "* candidate;")]
    assert not [c for c in calls[11:] if c[0] == "delete"], "promotion keeps the candidate until the Deployment rolled"
    # The candidate's front end, on its own port, not its scoring server.
    assert "upstream mldeploy_svc_candidate {\n    server 10.96.0.7:8080 max_fails=0;" in cluster.routes["svc-a"]
    assert lines[0].startswith("canary step 1: 50 % current / 50 % candidate; 40 requests")


def test_a_failing_step_puts_the_routes_back_and_removes_the_candidate() -> None:
    bad = "".join(f"{1500 + i}.0 candidate {500 if i % 3 == 0 else 200} 0.010\n" for i in range(12))
    cluster = FakeCluster(bad)
    with pytest.raises(RolledBack, match="error rate"):
        run(cluster, Canary(steps=[50, 100], step_seconds=3, min_requests=10, max_error_rate=0.05))
    tail = cluster.calls[-7:]
    assert tail[:2] == [("read-log", "svc-a"), ("read-log", "svc-b")]
    assert tail[2:4] == [("route", "svc-a", "before"), ("route", "svc-b", "before")]
    assert tail[4:] == [("delete", "deployments", "svc-canary"), ("delete", "services", "svc-canary"),
                        ("delete", "networkpolicies", "svc-canary")]


def test_a_candidate_that_fails_its_sample_gate_is_removed_and_no_route_moves() -> None:
    cluster = FakeCluster()

    def fail(ops: Any, p: dict[str, Any]) -> None:
        raise RuntimeError("sample refused")

    control = kcanary.KubeTrafficControl(cluster, props(spec=spec(env="0")), props(), wait=fail, sleep=lambda s: None)
    with pytest.raises(RuntimeError, match="sample refused"):
        run_canary(control, Canary(steps=[100], step_seconds=1), say=lambda s: None, sleep=lambda s: None)
    assert not [c for c in cluster.calls if c[0] == "route"]
    assert cluster.calls[-3:] == [("delete", "deployments", "svc-canary"), ("delete", "services", "svc-canary"),
                                  ("delete", "networkpolicies", "svc-canary")]


def test_no_request_is_split_to_a_candidate_before_every_serving_pod_reaches_its_cluster_ip(capsys) -> None:
    """The krollout bench's 502 at step 1: the candidate's pod was ready, but a node's kube-proxy had not yet
    routed its new ClusterIP, so the first split requests were refused and the current front end answered
    "backend unreachable". Each serving pod now asks the candidate through the ClusterIP before the first weight."""
    good = "".join(f"{1500 + i}.0 candidate 200 0.010\n" for i in range(20))
    cluster = FakeCluster(good, reach={"svc-b": "ok 9 0.84\n"})
    run(cluster, Canary(steps=[50, 100], step_seconds=3, min_requests=10))
    first_route = next(i for i, c in enumerate(cluster.calls) if c[0] == "route")
    assert {c[1] for c in cluster.calls[:first_route] if c[0] == "reach"} == {"svc-a", "svc-b"}
    assert "not at once: svc-b after 0.84 s (9 tries)" in capsys.readouterr().err

    # Never reached: the candidate goes, no route moved, and the error names the pod, the address and the last error.
    cluster = FakeCluster(reach={"svc-b": "no 150 20.01 URLError: [Errno 111] Connection refused\n"})
    with pytest.raises(kcanary.RolloutFailed, match=r"serving pod svc-b could not reach the candidate svc-canary "
                       r"through its ClusterIP 10\.96\.0\.7:8080 in 20 s \(URLError: \[Errno 111\] Connection refused\)"):
        run(cluster, Canary(steps=[50, 100], step_seconds=3, min_requests=10))
    assert not [c for c in cluster.calls if c[0] == "route"]
    assert cluster.calls[-3:] == [("delete", "deployments", "svc-canary"), ("delete", "services", "svc-canary"),
                                  ("delete", "networkpolicies", "svc-canary")]

    # A front image without python3 cannot ask: a fixed wait instead, said in the output.
    cluster, slept = FakeCluster(reach={"svc-a": "none\n"}), []
    control = kcanary.KubeTrafficControl(cluster, props(spec=spec(env="0")), props(), wait=lambda ops, p: None, sleep=slept.append)
    control.start_candidate()
    assert slept == [kcanary.REACH_FALLBACK_SECONDS] and ("reach", "svc-b") not in [c[:2] for c in cluster.calls]
    assert slept[0] == kcanary.REACH_FALLBACK_SECONDS and "no python3 in its front image" in capsys.readouterr().err


def test_plan_runs_a_canary_only_when_the_template_changes_on_pods_that_can_split_with_the_same_keys() -> None:
    olds = props(spec=spec(env="0"))
    assert kcanary.plan(olds, props()) == (True, None)
    assert kcanary.plan(props(), props(rollout={"steps": [100], "step_seconds": 1})) == (False, None)
    runs, why = kcanary.plan(props(spec=spec(canary=False, env="0")), props())
    assert not runs and "cannot split traffic" in why
    runs, why = kcanary.plan(olds, props(keys=["z" * 43]))
    assert not runs and "keys change" in why
    assert kcanary.can_split(spec()) and not kcanary.can_split(spec(canary=False)) and not kcanary.can_split(None)
    assert not kcanary.diff_canary(props(), props()).changes
    d = kcanary.diff_canary(olds, props())
    assert d.changes and d.replaces == []


def test_the_candidate_is_selected_by_nothing_of_the_service_and_reachable_only_from_its_pods() -> None:
    # Numbers arrive as floats through the engine: the API server gets ints again.
    floats = kcanary.whole_numbers  # (identity on ints)
    objs = kcanary.candidate_objects(NS, NAME, {**spec(), "revisionHistoryLimit": 3.0}, target.labels("p", "s", NAME))
    assert type(objs["deployments"]["spec"]["revisionHistoryLimit"]) is int and floats(0.5) == 0.5
    dep = objs["deployments"]["spec"]
    assert dep["replicas"] == 1 and dep["selector"] == {"matchLabels": {target.LABEL_APP: "svc-canary"}}
    labels = dep["template"]["metadata"]["labels"]
    assert labels[target.LABEL_APP] == "svc-canary", "the NodePort, HPA and PDB select the service's label only"
    containers = {c["name"]: c for c in dep["template"]["spec"]["containers"]}
    scoring = containers["scoring"]
    assert "startupProbe" in scoring, "the candidate is gated on the sample like any pod"
    # Its pod serves as any serving pod does: the scoring server on 127.0.0.1 only, behind its own front end,
    # which checks the service's keys (the same Secret) and owns the pod's one port.
    assert scoring == next(c for c in spec()["template"]["spec"]["containers"] if c["name"] == "scoring")
    assert {e["name"]: e["value"] for e in scoring["env"]}["MLDEPLOY_BIND_HOST"] == "127.0.0.1" and "ports" not in scoring
    assert containers["front"] == next(c for c in spec()["template"]["spec"]["containers"] if c["name"] == "front")
    assert dep["template"]["spec"]["volumes"] == spec()["template"]["spec"]["volumes"]
    assert {"name": "front-conf", "secret": {"secretName": f"{NAME}-front", "defaultMode": 0o440}} in dep["template"]["spec"]["volumes"]
    assert objs["services"]["spec"]["selector"] == {target.LABEL_APP: "svc-canary"}
    assert objs["services"]["spec"]["type"] == "ClusterIP"
    assert objs["services"]["spec"]["ports"] == [{"name": "front", "port": target.FRONT_PORT, "targetPort": target.FRONT_PORT,
                                                  "protocol": "TCP"}]
    policy = objs["networkpolicies"]["spec"]
    assert policy["podSelector"] == {"matchLabels": target.selector(NAME)}
    assert policy["egress"] == [{"to": [{"podSelector": {"matchLabels": {target.LABEL_APP: "svc-canary"}}}],
                                 "ports": [{"protocol": "TCP", "port": target.FRONT_PORT}]}]
    # The service's own pods without a canary are what they always were.
    front = next(c for c in spec(canary=False)["template"]["spec"]["containers"] if c["name"] == "front")
    assert front["command"][0] == "nginx"
    main = target.front_config(target.KubernetesServiceArgs(service_name=NAME), KEYS, canary=True)["nginx.main"]
    assert f"include {target.ROUTE_DIR}/*.conf;" in main


def test_the_split_takes_a_tcp_address_and_refuses_anything_else() -> None:
    conf = split.render_split("svc", {"current": "127.0.0.1:5001", "candidate": "10.96.0.7:5001"}, 10)
    assert "server 127.0.0.1:5001 max_fails=0;" in conf and "server 10.96.0.7:5001 max_fails=0;" in conf
    for bad in ("10.96.0.7", "10.96.0.700:5001", "10.96.0.7:99999", "host:5001", "/tmp/x"):
        with pytest.raises(ValueError, match="sockets.candidate"):
            split.render_split("svc", {"current": "127.0.0.1:5001", "candidate": bad}, 10)


def test_the_provider_keeps_the_record_whatever_the_outcome(tmp_path, monkeypatch) -> None:
    bad = "".join(f"{4_000_000_000 + i}.0 candidate 500 0.010\n" for i in range(12))
    cluster = FakeCluster(bad)

    class Opened:
        def __enter__(self) -> FakeCluster:
            return cluster

        def __exit__(self, *exc: Any) -> None:
            pass

    monkeypatch.setattr(kcanary, "wait_for_rollout", lambda ops, p: None)
    monkeypatch.setattr(kcanary.KubeTrafficControl.__init__, "__defaults__",
                        (lambda ops, p: None, lambda s: None, kcanary.time.monotonic))
    monkeypatch.setattr("mldeploy.providers.rollouts.engine.time.sleep", lambda s: None)
    provider = kcanary.CanaryProvider(ops=lambda kubeconfig: Opened())
    news = props(state_dir=str(tmp_path), project="p", stack="s", versions={"m": "2"},
                 rollout=Canary(steps=[50, 100], step_seconds=0.01, min_requests=1, max_wait_seconds=0.02).model_dump())
    with pytest.raises(kcanary.RolloutFailed, match="was not changed; the state stays on the old version"):
        provider.update("id", props(spec=spec(env="0")), news)
    record, about = load_record(record_path(tmp_path, "p", "s", NAME))
    assert record.decision.startswith("canary rolled back at step 1 (50 %): error rate")
    assert about["plan"].startswith("canary: 50 % → 100 %")
    # A roll without a template change runs nothing.
    assert provider.update("id", news, news).outs["last"] == "created"


def test_the_candidate_goes_after_the_roll_once_no_old_pod_drains() -> None:
    class Draining(FakeCluster):
        rounds = 0

        def pods(self, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
            self.rounds += 1
            self.calls.append(("pods", self.rounds))
            return [pod("new"), *([pod("old", deleting=True)] if self.rounds < 3 else [])]

    cluster = Draining()
    assert remove_after_roll(cluster, NS, NAME, clock=lambda: 0.0, sleep=lambda s: None)
    assert [c for c in cluster.calls if c[0] == "pods"] == [("pods", 1), ("pods", 2), ("pods", 3)]
    assert cluster.calls[-3:] == [("delete", "deployments", "svc-canary"), ("delete", "services", "svc-canary"),
                                  ("delete", "networkpolicies", "svc-canary")]


def test_the_preview_says_the_steps_or_why_this_roll_is_plain_in_the_terminal_and_the_review(capsys) -> None:
    import preview_markdown

    provider = kcanary.CanaryProvider(ops=lambda kubeconfig: None)
    words = "canary: 50 % → 100 %, 3 s a step; promote if error rate ≤ 1 % over ≥ 10 requests; otherwise roll back"
    checked = provider.check(props(spec=spec(env="0")), props())
    assert checked.failures == [] and checked.inputs["rollout_plan"] == words
    assert f"svc: {words}" in capsys.readouterr().err
    assert preview_markdown.describe_canary({}, checked.inputs) == [words]
    plain = provider.check(props(spec=spec(canary=False, env="0")), props()).inputs["rollout_plan"]
    assert "cannot split traffic" in plain and "plain rolling update" in plain
    assert "rollout_plan" not in provider.check(props(), props()).inputs, "nothing rolls: nothing to say"
    assert provider.check({}, props()).inputs["rollout_plan"].endswith("from the next roll: the pods start now with a route the canary can split")
    bad = provider.check({}, props(rollout={"steps": [50], "step_seconds": 3}))
    assert [f.property for f in bad.failures] == ["rollout"]
    step = [{"op": "update", "type": "pulumi-python:dynamic/mldeploy:KubernetesCanary",
             "urn": "urn:pulumi:s::p::mldeploy:index:AksService$pulumi-python:dynamic/mldeploy:KubernetesCanary::svc-canary",
             "old": props(spec=spec(env="0")), "new": checked.inputs}]
    assert f"| ✏️ update | AksService canary `svc-canary` | {words} |" in preview_markdown.render("s", step, {"update": 1})


def test_the_split_route_is_the_pod_s_own_route_plus_the_split() -> None:
    """Rendered from the current version's arguments and keys: TLS, keys and limits stay as the pod started."""
    args = target.KubernetesServiceArgs(service_name=NAME, num_replicas=1, ssl_enabled=True, ssl_cert_pem_file="c",
                                        ssl_key_pem_file="k", max_request_bytes=2048)
    plain = target.front_config(args, KEYS, canary=True)["service.conf"]
    routed = target.split_route(args, KEYS, "10.96.0.7:5001", 10, f"{target.FRONT_RUNTIME_DIR}/split-x.log")
    assert "listen 0.0.0.0:8080 ssl;" in routed and "client_max_body_size 2048;" in routed and KEYS[1] in routed
    assert f"access_log {target.FRONT_RUNTIME_DIR}/split-x.log mldeploy_svc_split if=$mldeploy_authorized_svc;" in routed
    # Every line of the pod's own route is still there but the marker and the score location's proxy_pass.
    missing = [ln for ln in plain.splitlines() if ln not in routed.splitlines()]
    assert all("mldeploy-route" in ln or "X-Mldeploy-Backend" in ln or "proxy_pass http://mldeploy_backend_svc/score" in ln
               for ln in missing), missing
    # The candidate's share goes to its own front end, which checks the key it is sent (HTTPS, as the pod serves).
    assert "candidate https://mldeploy_svc_candidate/api/v1/service/svc/score;" in routed
    assert "proxy_set_header Authorization $mldeploy_svc_upstream_key;" in routed
    keyless = target.split_route(target.KubernetesServiceArgs(service_name=NAME, auth_enabled=False), KEYS,
                                 "10.96.0.7:8080", 10, "/tmp/mldeploy-fe/split-x.log")
    assert KEYS[0] not in keyless and "if=$mldeploy_authorized" not in keyless
    assert "candidate http://mldeploy_svc_candidate/api/v1/service/svc/score;" in keyless


def test_a_split_left_by_an_up_stopped_hard_is_put_back_before_its_candidate_goes() -> None:
    """Ctrl-C twice can stop the provider before it puts the routes back: the next canary first writes every
    pod still split back to the route it started with, then removes the leftover candidate, then starts anew."""
    cluster = FakeCluster()
    cluster.routes = {"svc-b": "A SPLIT ROUTE LEFT BEHIND"}
    control = kcanary.KubeTrafficControl(cluster, props(spec=spec(env="0")), props(),
                                         wait=lambda ops, p: None, sleep=lambda s: None)
    control.start_candidate()
    assert cluster.calls[:8] == [("pods", NAME), ("read-before", "svc-a"), ("read-route", "svc-a"), ("read-route", "svc-b"),
                                 ("route", "svc-b", "before"), ("delete", "deployments", "svc-canary"),
                                 ("delete", "services", "svc-canary"), ("delete", "networkpolicies", "svc-canary")]
    assert cluster.routes["svc-b"] == "BEFORE ROUTE"
    assert ("create", "deployments", "svc-canary") in cluster.calls[8:]


def test_a_refresh_finds_a_leftover_candidate_and_the_next_up_removes_it_even_when_it_rolls_nothing(monkeypatch) -> None:
    """After Ctrl-C twice the user may declare the old version again: no template change, no canary. The refresh
    the next run does first marks the candidate nothing holds; that up puts the split back and removes it."""
    class Settled(FakeCluster):  # no old pod draining: the candidate goes at once
        def pods(self, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
            return [p for p in super().pods(namespace, selector) if not p["metadata"].get("deletionTimestamp")]

    monkeypatch.setattr(kcanary.KubeTrafficControl.__init__, "__defaults__", (lambda ops, p: None, lambda s: None, kcanary.time.monotonic))
    cluster = Settled()
    cluster.routes = {"svc-a": "A SPLIT ROUTE LEFT BEHIND"}
    provider = kcanary.CanaryProvider(ops=lambda kubeconfig: Opened(cluster))
    state = props(spec=spec(env="0"))
    read = provider.read("id", state).outs
    assert read[kcanary.LEFTOVER] is True and kcanary.diff_canary(read, state).changes
    assert provider.read("id", {**state, "held": {"weights": [90, 10, 0]}}).outs.get(kcanary.LEFTOVER) is None, "held: expected"
    words = provider.check(read, state).inputs["rollout_plan"]
    assert words == kcanary.LEFTOVER_WORDS and "the candidate is removed" in words
    cluster.calls.clear()
    outs = provider.update("id", read, state).outs
    assert kcanary.LEFTOVER not in outs
    routes = [c for c in cluster.calls if c[0] == "route"]
    assert routes == [("route", "svc-a", "before")] and cluster.routes["svc-a"] == "BEFORE ROUTE"
    assert cluster.calls[-3:] == [("delete", "deployments", "svc-canary"), ("delete", "services", "svc-canary"),
                                  ("delete", "networkpolicies", "svc-canary")]
    assert cluster.calls.index(routes[0]) < cluster.calls.index(("delete", "deployments", "svc-canary"))

    class Empty(FakeCluster):
        def get(self, path: str) -> Any:
            return {"items": []}

    class Unreachable(FakeCluster):
        def get(self, path: str) -> Any:
            raise ConnectionError("the API server does not answer")

    for other in (Empty(), Unreachable()):
        quiet = kcanary.CanaryProvider(ops=lambda kubeconfig, c=other: Opened(c)).read("id", {**state, kcanary.LEFTOVER: True})
        assert kcanary.LEFTOVER not in quiet.outs and not kcanary.diff_canary(quiet.outs, state).changes


def test_an_interrupted_canary_puts_the_routes_back_and_removes_the_candidate() -> None:
    """Ctrl-C mid-step: run_canary's rollback runs before the interruption goes on, so no route or object is left."""
    cluster = FakeCluster()
    control = kcanary.KubeTrafficControl(cluster, props(spec=spec(env="0")), props(),
                                         wait=lambda ops, p: None, sleep=lambda s: None)

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_canary(control, Canary(steps=[50, 100], step_seconds=3), say=lambda s: None, sleep=interrupt)
    assert cluster.calls[-5:] == [("route", "svc-a", "before"), ("route", "svc-b", "before"),
                                  ("delete", "deployments", "svc-canary"), ("delete", "services", "svc-canary"),
                                  ("delete", "networkpolicies", "svc-canary")]


class Opened:
    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster

    def __enter__(self) -> FakeCluster:
        return self.cluster

    def __exit__(self, *exc: Any) -> None:
        pass


def test_a_held_split_starts_once_moves_its_weights_by_routes_only_and_hands_over_when_dropped(monkeypatch) -> None:
    """traffic={...}: the candidate starts beside the current version (the Deployment keeps ignoring the new spec);
    a new weight rewrites the routes only; dropped, the candidate takes every request before the Deployment rolls."""
    cluster = FakeCluster()
    monkeypatch.setattr(kcanary.KubeTrafficControl.__init__, "__defaults__",
                        (lambda ops, p: cluster.calls.append(("wait", p["name"])), lambda s: None, kcanary.time.monotonic))
    provider = kcanary.CanaryProvider(ops=lambda kubeconfig: Opened(cluster))
    current = props(spec=spec(env="0"), rollout=None, traffic=None)
    held_news = props(rollout=None, traffic={"current": 90, "candidate": 10})
    assert kcanary.held_plan(current, held_news) == "start"
    outs = provider.update("id", current, held_news).outs
    held = outs["held"]
    assert held["weights"] == [90, 10, 0] and held["address"] == "10.96.0.7:8080" and held["candidate_spec"] == spec()
    assert held["current"]["spec"] == spec(env="0"), "the current version's own route is what the split is rendered from"
    assert ("wait", "svc-canary") in cluster.calls
    assert [c for c in cluster.calls if c[0] == "route"] == [("route", "svc-a", "10% candidate;"), ("route", "svc-b", "10% candidate;")]

    cluster.calls.clear()
    moved = props(rollout=None, traffic={"current": 50, "candidate": 50})
    assert kcanary.held_plan(outs, moved) == "weights"
    # New weights alone, on the same version, are a change the engine must apply (found by the bench: it was ignored).
    assert kcanary.diff_canary(outs, moved).changes
    assert kcanary.diff_canary(outs, props(rollout=None, traffic={"current": 90, "candidate": 10}, mirror_percent=20)).changes
    assert "was 90 % / 10 % / 0 %" in kcanary.held_plan_words(outs, moved)
    outs2 = provider.update("id", outs, moved).outs
    assert outs2["held"]["weights"] == [50, 50, 0]
    assert not [c for c in cluster.calls if c[0] in ("create", "delete", "wait")], "a new weight starts nothing"
    assert [c for c in cluster.calls if c[0] == "route"] == [("route", "svc-a", "50% candidate;"), ("route", "svc-b", "50% candidate;")]
    assert kcanary.held_plan_words(outs2, moved) is None

    cluster.calls.clear()
    dropped = props()  # a canary declared again, no traffic
    assert kcanary.check_words(outs2, dropped, Canary.model_validate(dropped["rollout"])).startswith("the held version takes all traffic")
    outs3 = provider.update("id", outs2, dropped).outs
    assert outs3["held"] is None
    assert [c for c in cluster.calls if c[0] == "route"] == [("route", "svc-a", "* candidate;"), ("route", "svc-b", "* candidate;")]
    assert not [c for c in cluster.calls if c[0] == "delete"], "the Rollout check removes it once the Deployment rolled"


def test_a_pod_started_after_a_held_split_was_written_is_found_by_a_refresh_and_split_by_the_next_up(monkeypatch) -> None:
    """A restarted pod (or one the HPA adds) starts on its own route and sends the candidate nothing. A refresh
    marks it (an update at preview), and the next up says so and writes the split to every serving pod again."""
    cluster = FakeCluster()
    monkeypatch.setattr(kcanary.KubeTrafficControl.__init__, "__defaults__", (lambda ops, p: None, lambda s: None, kcanary.time.monotonic))
    provider = kcanary.CanaryProvider(ops=lambda kubeconfig: Opened(cluster))
    held_news = props(rollout=None, traffic={"current": 50, "candidate": 50})
    outs = provider.update("id", props(spec=spec(env="0"), rollout=None, traffic=None), held_news).outs
    assert provider.read("id", outs).outs.get(kcanary.UNSPLIT) is None, "every pod holds the split"
    cluster.routes["svc-a"] = "BEFORE ROUTE"  # svc-a restarted: the route it starts with
    read = provider.read("id", outs).outs
    assert read[kcanary.UNSPLIT] == ["svc-a"] and kcanary.diff_canary(read, held_news).changes
    cluster.calls.clear()
    said: list[str] = []
    monkeypatch.setattr(kcanary, "say", said.append)
    outs2 = provider.update("id", read, held_news).outs
    assert any("1 serving pod started after the held split was written (a restart or the HPA)" in line for line in said), said
    assert kcanary.UNSPLIT not in outs2 and outs2["held"]["weights"] == [50, 50, 0]
    assert [c for c in cluster.calls if c[0] == "route"] == [("route", "svc-a", "50% candidate;"), ("route", "svc-b", "50% candidate;")]
    assert not [c for c in cluster.calls if c[0] in ("create", "delete")], "nothing starts or goes"
    assert provider.read("id", outs2).outs.get(kcanary.UNSPLIT) is None
    # Nothing sent to the candidate (current 100 %, no mirror): the pods' own route is right. No cluster: nothing read.
    cluster.routes["svc-a"] = "BEFORE ROUTE"
    assert provider.read("id", {**outs2, "held": {**outs2["held"], "weights": [100, 0, 0]}}).outs.get(kcanary.UNSPLIT) is None

    class Unreachable(FakeCluster):
        def pods(self, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
            raise ConnectionError("the API server does not answer")

    quiet = kcanary.CanaryProvider(ops=lambda kubeconfig: Opened(Unreachable())).read("id", {**outs2, kcanary.UNSPLIT: ["svc-a"]})
    assert kcanary.UNSPLIT not in quiet.outs


def test_a_held_split_needs_pods_that_can_split_and_the_same_keys() -> None:
    provider = kcanary.CanaryProvider(ops=lambda kubeconfig: Opened(FakeCluster()))
    held_news = props(rollout=None, traffic={"current": 90, "candidate": 10})
    with pytest.raises(kcanary.RolloutFailed, match="traffic: the running pods were started before a split was declared"):
        provider.update("id", props(spec=spec(canary=False, env="0")), held_news)
    with pytest.raises(kcanary.RolloutFailed, match="traffic: the keys change with this version"):
        provider.update("id", props(spec=spec(env="0"), keys=["z" * 43]), held_news)
    assert provider.update("id", props(), held_news).outs.get("held") is None, "nothing new to hold"


def test_a_mirror_is_held_like_a_split_its_copies_relayed_inside_the_pod(monkeypatch) -> None:
    """mirror_percent=50: no live request goes to the candidate, half are copied to it through the front end's
    own relay socket in its writable runtime folder; the weights kept are [current, candidate, mirrored]."""
    cluster = FakeCluster()
    monkeypatch.setattr(kcanary.KubeTrafficControl.__init__, "__defaults__",
                        (lambda ops, p: None, lambda s: None, kcanary.time.monotonic))
    provider = kcanary.CanaryProvider(ops=lambda kubeconfig: Opened(cluster))
    news = props(rollout=None, traffic=None, mirror_percent=50)
    checked = provider.check(props(spec=spec(env="0")), news).inputs
    assert checked["rollout_plan"].startswith("50 % of requests mirrored to the candidate; its answers are discarded; the new")
    held = provider.update("id", props(spec=spec(env="0"), rollout=None), news).outs["held"]
    assert held["weights"] == [100, 0, 50]
    route = cluster.routes["svc-a"]
    assert "split_clients \"${request_id}\" $mldeploy_svc_version {\n    * current;\n}" in route
    assert f"listen unix:{target.FRONT_RUNTIME_DIR}/mirror-svc.sock;" in route
    assert f"proxy_pass http://unix:{target.FRONT_RUNTIME_DIR}/mirror-svc.sock:/relay;" in route


def test_stack_py_rollout_shows_each_version_from_a_split_log() -> None:
    import rollout_record

    lines = ["4000000000.0 current 200 0.004", "4000000000.1 mirror 500 0.010", "4000000000.2 mirror 200 0.020", "junk"]
    assert rollout_record.version_lines(lines) == [
        "current: 1 requests, 0 not 2xx (error rate 0.00 %), p99 4 ms",
        "candidate: 0 requests, 0 not 2xx (error rate n/a), p99 n/a",
        "mirror: 2 requests, 1 not 2xx (error rate 50.00 %), p99 20 ms",
    ]
    assert rollout_record.held_now_kubernetes({"resources": []}, "svc") is None
