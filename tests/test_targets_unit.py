"""Unit tests of the target seam: the registry, the dispatch, each target's own rules.

No Docker, no engine. `fake_target` stands in for a target that is not local
(no host port, rules of its own), so the generic code is tested on more than one.
"""

from __future__ import annotations

import contextvars
from pathlib import Path
from typing import Any, Callable

import pytest
from pydantic import BaseModel

from engine_check import stack_settings
from fake_target import ComposedTarget, FakeTarget
from mldeploy.providers import targets
from mldeploy.providers.targets.service import REPLACE_ON, ROLL_ON, ServiceProvider, diff_service, needs_roll, rules
from mldeploy.providers.targets import ArgsInvalid, Target, UnknownTarget, target_for
from mldeploy.providers.targets import local

SETTINGS = {"project": "proj", "stack": "dev", "gateway_image": "mldeploy/base:bookworm-py3.11", "state_dir": "/proj/.pulumi-state"}


def shared_props(**over: Any) -> dict[str, Any]:
    props = {
        "service_name": "svc",
        "target": "fake",
        "project": "proj",
        "stack": "dev",
        "image_name": "mldeploy-proj-dev/scoring:bbbbbbbbbbbb",
        "image_id": "sha256:" + "c" * 64,
        "models": [{"name": "ridge", "version": 1, "model_dir": "/state/registry/ridge/1"}],
        "cpu_cores": 1,
        "memory_gb": 1,
        "auth_enabled": True,
        "environment_variables": {},
        "primary_key_version": 1,
        "secondary_key_version": 1,
        "max_request_bytes": 1_048_576,
        "startup_timeout_seconds": 180,
    }
    props.update(over)
    return props


def fake_props(**over: Any) -> dict[str, Any]:
    return shared_props(**{"namespace": "default", **over})


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeTarget:
    target = FakeTarget()
    monkeypatch.setitem(targets.TARGETS, "fake", target)
    monkeypatch.setitem(targets.TARGETS, "composed", ComposedTarget())
    return target


def in_fresh_context(fn: Callable[[], Any]) -> Any:
    """As the Automation API runs each program: port claims start empty."""
    return contextvars.Context().run(fn)


def failures_of(news: dict[str, Any]) -> dict[str, str]:
    return {f.property: f.reason for f in ServiceProvider().check({}, news).failures}


# ---------------------------------------------------------------- registry


def test_local_is_registered() -> None:
    assert "local" in targets.TARGETS
    assert target_for("local") is local.TARGET
    assert isinstance(local.TARGET, Target)


@pytest.mark.parametrize("name", ["gpu-cluster", "", None, 3])
def test_unknown_target_names_the_known_ones(name: Any) -> None:
    with pytest.raises(UnknownTarget, match=r"unknown target .*; known: local"):
        target_for(name)


def test_registered_module_must_export_a_target_of_that_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(targets.TARGETS, "other", "mldeploy.providers.targets.local")
    with pytest.raises(TypeError, match="must be a Target named 'other'"):
        target_for("other")


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_every_registered_target_keeps_the_contract(name: str) -> None:
    target = target_for(name)
    assert isinstance(target, Target) and target.name == name
    assert issubclass(target.Args, BaseModel)
    groups = {"replace": set(target.REPLACE_ON), "roll": set(target.ROLL_ON), "route": set(target.ROUTE_ON)}
    for group in groups.values():
        assert all(isinstance(k, str) for k in group)
    assert not groups["roll"] & groups["route"]
    assert not groups["replace"] & (groups["roll"] | groups["route"])
    if target.deployed_by is None:
        # the Service resource runs it: it must do the four calls and say its URIs
        for op in ("create", "update", "read", "delete", "uris"):
            assert getattr(type(target), op) is not getattr(Target, op), f"{name} does not implement {op}"


def test_shared_rules_name_no_target_input() -> None:
    assert not set(REPLACE_ON + ROLL_ON) & set(local.LocalArgs.model_fields)
    assert not set(REPLACE_ON + ROLL_ON) & set(FakeTarget.Args.model_fields)


# ---------------------------------------------------------------- dispatch (a target without ports)


class TestDispatch:
    def test_check_needs_no_port(self, fake: FakeTarget) -> None:
        news = fake_props()
        assert "port" not in news
        assert failures_of(news) == {}

    def test_check_is_the_targets(self, fake: FakeTarget) -> None:
        assert list(failures_of(fake_props(namespace="Not Valid"))) == ["namespace"]
        assert failures_of(fake_props(namespace="kube-system")) == {"namespace": "is reserved"}
        # shared inputs are still checked, besides the target's
        assert set(failures_of(fake_props(namespace="Bad!", cpu_cores=0))) == {"namespace", "cpu_cores"}

    def test_cross_field_rules_wait_for_unknown_inputs(self, fake: FakeTarget) -> None:
        from pulumi.runtime import rpc

        assert failures_of(fake_props(namespace=rpc.UNKNOWN)) == {}
        assert fake.checked == []  # not judged on a default standing in for the unknown value
        assert failures_of(fake_props()) == {}
        assert [a.namespace for a in fake.checked] == ["default"]

    def test_local_check_would_demand_a_port(self) -> None:
        # the same inputs on the local target: its own inputs are missing
        assert set(failures_of(shared_props(target="local"))) == {"port", "gateway_image", "state_dir"}

    def test_target_deployed_by_a_component_is_refused(self, fake: FakeTarget) -> None:
        failures = failures_of(shared_props(target="composed"))
        assert list(failures) == ["target"]
        assert "ComposedService" in failures["target"]
        with pytest.raises(NotImplementedError, match="ComposedService"):
            target_for("composed").create(shared_props(target="composed"))

    def test_rules_are_the_shared_ones_plus_the_targets(self, fake: FakeTarget) -> None:
        replace_on, roll_on, route_on = rules(fake_props())
        assert replace_on == REPLACE_ON + FakeTarget.REPLACE_ON
        assert roll_on == ROLL_ON + FakeTarget.ROLL_ON
        assert route_on == FakeTarget.ROUTE_ON

    @pytest.mark.parametrize("key,value", [("cpu_cores", 2), ("memory_gb", 4), ("namespace", "team-b")])
    def test_target_replace_rules(self, fake: FakeTarget, key: str, value: Any) -> None:
        r = diff_service(fake_props(), fake_props(**{key: value}))
        assert r.changes is True
        assert list(r.replaces) == [key]
        assert r.delete_before_replace is True

    def test_same_change_other_rule_on_local(self, fake: FakeTarget) -> None:
        # cpu_cores replaces on the fake target and rolls on the local one
        olds = shared_props(target="local", port=23456, gateway_image="g", state_dir="/s")
        r = diff_service(olds, {**olds, "cpu_cores": 2})
        assert r.changes is True and not r.replaces
        assert needs_roll(olds, {**olds, "cpu_cores": 2}) is True

    def test_target_roll_and_route_rules(self, fake: FakeTarget) -> None:
        olds = fake_props()
        env = fake_props(environment_variables={"A": "1"})
        auth = fake_props(auth_enabled=False)
        assert diff_service(olds, env).changes is True and needs_roll(olds, env) is True
        assert diff_service(olds, auth).changes is True and needs_roll(olds, auth) is False

    @pytest.mark.parametrize("key,value", [("port", 23457), ("gateway_image", "nginx:1"), ("max_request_bytes", 5)])
    def test_inputs_the_target_does_not_name_change_nothing(self, fake: FakeTarget, key: str, value: Any) -> None:
        assert diff_service(fake_props(), fake_props(**{key: value})).changes is False

    def test_shared_rules_hold_for_every_target(self, fake: FakeTarget) -> None:
        olds = fake_props()
        news = fake_props(image_id="sha256:" + "d" * 64)
        assert diff_service(olds, news).changes is True and needs_roll(olds, news) is True
        r = diff_service(olds, fake_props(service_name="other"))
        assert list(r.replaces) == ["service_name"]

    def test_backend_calls_go_to_the_target(self, fake: FakeTarget) -> None:
        provider = ServiceProvider()
        created = provider.create(fake_props())
        assert created.id == "dev/svc"
        assert created.outs["scoring_uri"] == "https://default.fake.example/api/v1/service/svc/score"
        assert created.outs["group_id"] == "g-1"
        olds = created.outs
        provider.update(created.id, olds, fake_props(environment_variables={"A": "1"}))
        provider.update(created.id, olds, fake_props(auth_enabled=False))
        assert provider.read(created.id, olds).outs["state"] == "Missing"
        provider.delete(created.id, olds)
        assert fake.calls == [
            ("create", "svc"),
            ("update", "svc", True),
            ("update", "svc", False),
            ("read", "svc"),
            ("delete", "svc"),
        ]

    def test_service_inputs_default_to_the_args_model(self, fake: FakeTarget) -> None:
        kw = {"service_name": "svc", "resource_name": "svc", "settings": stack_settings(**SETTINGS)}
        assert fake.service_inputs({}, **kw) == {"namespace": "default"}
        with pytest.raises(ArgsInvalid) as exc:
            fake.service_inputs({"port": 25000}, **kw)
        assert [f.property for f in exc.value.failures] == ["port"]


# ---------------------------------------------------------------- the local target


class TestLocalTarget:
    def inputs(self, given: dict[str, Any], service_name: str = "svc", resource_name: str = "svc", **settings: Any) -> dict[str, Any]:
        return local.TARGET.service_inputs(
            given, service_name=service_name, resource_name=resource_name, settings=stack_settings(**{**SETTINGS, **settings})
        )

    def test_default_port_from_the_names(self) -> None:
        def run() -> None:
            expected = local.default_port("proj", "dev", "svc")  # before it is claimed
            own = self.inputs({})
            assert own == {"port": expected, "gateway_image": SETTINGS["gateway_image"], "state_dir": SETTINGS["state_dir"], "worker_count": None,
                           "warm_standby": None}
            assert local.PORT_RANGE[0] <= own["port"] <= local.PORT_RANGE[1]
            assert local._claimed_ports() == {own["port"]: "svc"}

        in_fresh_context(run)

    def test_default_port_is_stable_and_skips_claimed_ones(self) -> None:
        def run() -> tuple[int, int]:
            first = self.inputs({}, service_name="a", resource_name="a")["port"]
            local._claimed_ports()[local.default_port("proj", "dev", "b")] = "someone"
            return first, self.inputs({}, service_name="b", resource_name="b")["port"]

        first, second = in_fresh_context(run)
        assert first == in_fresh_context(lambda: local.default_port("proj", "dev", "a"))
        assert second != in_fresh_context(lambda: local.default_port("proj", "dev", "b"))

    def test_default_port_never_lands_on_the_cluster_s_etcd(self) -> None:
        """A name whose hash lands on a port the local cluster's etcd listens on gets the next one
        (seen in CI: `port 23790 on 127.0.0.1 is already in use` while the cluster ran)."""
        import hashlib
        import re

        lo, hi = local.PORT_RANGE
        cluster = (Path(__file__).resolve().parents[1] / "scripts" / "k8s" / "cluster.sh").read_text()
        in_range = {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", cluster) if lo <= int(p) <= hi}
        assert in_range and in_range <= local.RESERVED_PORTS, in_range  # the script's ports, declared in one place here
        hits = {}
        for i in range(200_000):
            raw = lo + int(hashlib.sha256(f"proj/dev/svc{i}".encode()).hexdigest(), 16) % (hi - lo + 1)
            if raw in local.RESERVED_PORTS:
                hits[raw] = f"svc{i}"
            if len(hits) == len(local.RESERVED_PORTS):
                break
        assert hits, "no name hashed onto a reserved port"
        for raw, name in hits.items():
            port = in_fresh_context(lambda name=name: local.default_port("proj", "dev", name))
            assert port not in local.RESERVED_PORTS and port == raw + 1 - (raw + 1 > hi) * (hi - lo + 1)

    def test_explicit_port_is_claimed_once(self) -> None:
        def run() -> None:
            assert self.inputs({"port": 25000}, resource_name="first")["port"] == 25000
            with pytest.raises(ArgsInvalid) as exc:
                self.inputs({"port": 25000}, resource_name="second")
            assert [f.property for f in exc.value.failures] == ["port"]
            assert "25000 is already used by service 'first'" in str(exc.value)

        in_fresh_context(run)

    @pytest.mark.parametrize("port", [80, 70000, "8080", 25000.5])
    def test_bad_port_is_named_and_not_claimed(self, port: Any) -> None:
        def run() -> None:
            with pytest.raises(ArgsInvalid) as exc:
                self.inputs({"port": port})
            assert [f.property for f in exc.value.failures] == ["port"]
            assert local._claimed_ports() == {}

        in_fresh_context(run)

    def test_settings_are_checked_by_field(self) -> None:
        with pytest.raises(ArgsInvalid) as exc:
            in_fresh_context(lambda: self.inputs({}, gateway_image="", state_dir=""))
        assert sorted(f.property for f in exc.value.failures) == ["gateway_image", "state_dir"]

    def test_unknown_local_argument(self) -> None:
        with pytest.raises(ArgsInvalid) as exc:
            in_fresh_context(lambda: self.inputs({"replicas": 2}))
        assert [f.property for f in exc.value.failures] == ["replicas"]

    def test_check_takes_numbers_as_the_engine_sends_them(self) -> None:
        assert local.TARGET.check({"port": 23456.0, "gateway_image": "g", "state_dir": "/s"}) == []

    def test_uris(self) -> None:
        assert local.TARGET.uris({"port": 23456.0, "service_name": "svc"}) == {
            "scoring_uri": "http://127.0.0.1:23456/api/v1/service/svc/score",
            "swagger_uri": "http://127.0.0.1:23456/api/v1/service/svc/swagger.json",
        }

    def test_outputs_kept_in_state(self) -> None:
        assert local.TARGET.OUTPUTS == ("container_id", "backend_socket", "candidate", "standby")

    # -- issue 11: workers, cores, server settings, backends of an earlier release

    @pytest.mark.parametrize(
        "cpu,override,workers", [(0.1, None, 1), (0.5, None, 1), (1, None, 1), (1.5, None, 1), (2, None, 2), (2.9, None, 2), (1, 3, 3)]
    )
    def test_workers_follow_whole_cores_unless_given(self, cpu: float, override: int | None, workers: int) -> None:
        assert local.workers_for(cpu, override) == workers

    def test_worker_count_is_a_local_input_that_rolls(self) -> None:
        assert "worker_count" in local.TARGET.ROLL_ON
        own = in_fresh_context(lambda: self.inputs({"worker_count": 3}))
        assert own["worker_count"] == 3

    def test_cpu_cores_above_the_machine_is_named_with_its_cores(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(local, "machine_cores", lambda: 2)
        base = {"port": 23456, "gateway_image": "g", "state_dir": "/s", "environment_variables": {}}
        assert local.TARGET.check({**base, "cpu_cores": 2}) == []
        failures = local.TARGET.check({**base, "cpu_cores": 2.5})
        assert [f.property for f in failures] == ["cpu_cores"]
        assert "2 CPU cores" in failures[0].reason and "2.5" in failures[0].reason
        # Through the provider's check too, beside the shared rules.
        assert "cpu_cores" in failures_of({**shared_props(target="local"), **base, "cpu_cores": 3})

    @pytest.mark.parametrize("name", sorted(targets.SERVER_SETTINGS))
    def test_environment_cannot_override_a_server_setting(self, name: str) -> None:
        base = {"port": 23456, "gateway_image": "g", "state_dir": "/s", "cpu_cores": 1}
        failures = local.TARGET.check({**base, "environment_variables": {"MY_VAR": "1", name: "x"}})
        assert [f.property for f in failures] == ["environment_variables"]
        assert name in failures[0].reason and "MY_VAR" not in failures[0].reason
        assert local.TARGET.check({**base, "environment_variables": {"MY_VAR": "1"}}) == []

    def test_a_tcp_backend_of_an_earlier_release_rolls(self) -> None:
        news = {**shared_props(target="local"), "port": 23456, "gateway_image": "g", "state_dir": "/s", "worker_count": None}
        earlier = {**news, "container_id": "c0ffee", "backend_port": 40001, "state": "Healthy"}
        now = {**news, "container_id": "c0ffee", "backend_socket": "0badcafe.sock", "state": "Healthy"}
        assert diff_service(earlier, news).changes is True and needs_roll(earlier, news) is True
        assert diff_service(now, news).changes is False and needs_roll(now, news) is False


# ---------------------------------------------------------------- the local roll's order (fakes, no Docker)


class FakeGateway:
    def __init__(self, calls: list[str]):
        self.calls = calls
        self.link: str | None = "old.sock"

    def ensure(self) -> str:
        self.calls.append("gateway ensure")
        return "gw"

    def prepare_service(self, service_name: str) -> Path:
        return Path("/sockets") / service_name / "run"

    def current_backend(self, service_name: str) -> str | None:
        return self.link

    def switch_backend(self, service_name: str, socket_name: str) -> None:
        self.calls.append(f"switch to {socket_name}")
        self.link = socket_name

    def put_route(self, *args: Any, **kw: Any) -> None:
        self.calls.append(f"route {kw.get('backend_socket')}")

    def wait_drained(self) -> bool:
        self.calls.append("nginx workers drained")
        return True


@pytest.fixture
def roll(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], dict[str, Any]]:
    """The local target with fake containers and gateway: every call, in order."""
    from mldeploy.providers.core import containers
    from mldeploy.providers.gate.sample_check import SampleCheck

    calls: list[str] = []
    gw = FakeGateway(calls)
    proof = {"ok": True}
    monkeypatch.setattr(local.LocalTarget, "_gateway", lambda self, props: gw)
    monkeypatch.setattr(local.os.path, "isdir", lambda p: True)

    def run_socket_container(name: str, *a: Any, **kw: Any) -> containers.RunningContainer:
        calls.append("start new")
        return containers.RunningContainer("new-id", name, 0, f"/sockets/svc/run/{a[-2]}")

    monkeypatch.setattr(containers, "run_socket_container", run_socket_container)
    monkeypatch.setattr(containers, "wait_healthy", lambda rc, timeout: calls.append("healthy"))
    monkeypatch.setattr(containers, "keep_running", lambda cid: calls.append(f"restart policy on {cid}"))
    monkeypatch.setattr(containers, "wait_idle", lambda cid, path: calls.append(f"idle {cid} {path}") or True)
    monkeypatch.setattr(containers, "remove", lambda cid, stop_timeout=10: calls.append(f"remove {cid}"))
    monkeypatch.setattr(containers, "find", lambda labels: [])
    monkeypatch.setattr(containers, "status", lambda cid: "running")
    monkeypatch.setattr(containers, "save_log", lambda *a, **kw: None)
    monkeypatch.setattr(containers, "logs", lambda *a, **kw: "")
    monkeypatch.setattr(local, "check_sample", lambda transport, sample_request=None: (
        calls.append("sample proved" if proof["ok"] else "sample failed")
        or SampleCheck(gated=True, ok=proof["ok"], request="{}", problem="" if proof["ok"] else "wrong shape")))
    monkeypatch.setattr(local.time, "sleep", lambda s: None)
    return calls, proof


def local_olds(**over: Any) -> dict[str, Any]:
    return {**shared_props(target="local"), "port": 23456, "gateway_image": "g", "state_dir": "/s", "worker_count": None,
            "container_id": "old-id", "backend_socket": "old.sock", "primary_key": "p" * 43, "secondary_key": "s" * 43,
            "state": "Healthy", **over}


class TestLocalRollOrder:
    def test_the_link_moves_after_the_proof_and_the_old_backend_stops_when_idle(self, roll: Any) -> None:
        calls, _ = roll
        olds = local_olds()
        outs = local.TARGET.update(olds, {**olds, "cpu_cores": 2}, roll=True)
        new = outs["backend_socket"]
        assert calls == [
            "gateway ensure", "start new", "healthy", "sample proved", "restart policy on new-id",
            f"switch to {new}", "route /run/mldeploy-backends/svc/current.sock",
            "idle old-id /run/mldeploy/old.sock", "remove old-id",
        ]
        assert outs["container_id"] == "new-id" and outs["primary_key"] == olds["primary_key"]

    def test_a_failed_proof_never_moves_the_link(self, roll: Any) -> None:
        calls, proof = roll
        proof["ok"] = False
        olds = local_olds()
        from mldeploy.providers.core.containers import ServiceStartError

        with pytest.raises(ServiceStartError, match="sample request"):
            local.TARGET.update(olds, {**olds, "cpu_cores": 2}, roll=True)
        assert not [c for c in calls if c.startswith(("switch", "route", "restart policy", "remove old"))]
        assert calls[-1] == "remove new-id"

    def test_a_route_change_alone_starts_nothing(self, roll: Any) -> None:
        calls, _ = roll
        olds = local_olds()
        outs = local.TARGET.update(olds, {**olds, "primary_key_version": 2}, roll=False)
        assert calls == ["gateway ensure", "route /run/mldeploy-backends/svc/current.sock"]
        assert outs["backend_socket"] == "old.sock" and outs["primary_key"] != olds["primary_key"]

    def test_a_tcp_backend_of_an_earlier_release_rolls_even_for_a_route_change(self, roll: Any) -> None:
        calls, _ = roll
        olds = local_olds(backend_socket=None, backend_port=40001)
        outs = local.TARGET.update(olds, {**olds, "backend_port": None}, roll=False)
        assert "start new" in calls and "nginx workers drained" in calls and calls[-1] == "remove old-id"
        assert "backend_port" not in outs and outs["backend_socket"].endswith(".sock")


# ---------------------------------------------------------------- the recipe (providers/targets/README.md)


def test_a_target_registered_by_one_line_works_end_to_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """A target is its package plus one line in TARGETS: stack config, the provider, the rules and
    the review take it from there, with no other file touched."""
    from mldeploy.components._common import StackConfig
    from mldeploy.providers.targets.service import diff_service, inert, rules
    from preview_markdown import describe_service

    fake = FakeTarget()
    monkeypatch.setitem(targets.TARGETS, "fake", fake)  # the one line
    assert StackConfig(target="fake").target == "fake"
    provider = ServiceProvider()
    checked = provider.check({}, fake_props())
    assert checked.failures == []
    made = provider.create(checked.inputs)
    assert made.outs["scoring_uri"] == "https://default.fake.example/api/v1/service/svc/score"
    assert [c[0] for c in fake.calls] == ["create"]
    new = {**made.outs, "namespace": "other"}
    assert diff_service(made.outs, new).replaces == ["namespace"], "its own rule, read by the shared diff"
    assert any("namespace" in w for w in describe_service(made.outs, new)), "and by the review"
    replace_on, roll_on, route_on = rules(new)
    assert "namespace" in replace_on and set(fake.INERT) <= set(inert(new))
