"""Unit tests of the providers' pure diff functions and their `check` methods.

No Docker, no engine: these call the functions directly with property dicts
shaped like the ones the components send.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pulumi.dynamic import CheckFailure

from mldeploy.providers.images.provider import ImageProvider, diff_image, image_name
from mldeploy.providers.model_registry.provider import ModelVersionProvider, diff_model
from mldeploy.providers.targets.service import REPLACE_ON, ROLL_ON, ServiceProvider, diff_service, needs_roll, rules
from mldeploy.providers.targets.local import TARGET as LOCAL

# ---------------------------------------------------------------- fixtures


def model_props(**over: Any) -> dict[str, Any]:
    props = {
        "model_name": "ridge",
        "model_path": "/proj/models/ridge.pkl",
        "content_hash": "sha256:" + "a" * 64,
        "version": 1,
        "tags": {"area": "demo"},
        "description": "Ridge regression",
        "registry_root": "/state/registry",
        "owner": "proj/dev/ridge",
    }
    props.update(over)
    return props


def image_props(**over: Any) -> dict[str, Any]:
    props = {
        "image_repo": "mldeploy-proj-dev/scoring",
        "base_image": "mldeploy/base:bookworm-py3.11",
        "source_directory": "/proj/src",
        "entry_script": "score.py",
        "dependency_file": "/proj/env/myenv.yml",
        "build_hash": "sha256:" + "b" * 64,
        "labels": {"mldeploy.managed": "true"},
    }
    props.update(over)
    return props


def service_props(**over: Any) -> dict[str, Any]:
    props = {
        "service_name": "aciservice",
        "target": "local",
        "project": "proj",
        "stack": "dev",
        "state_dir": "/proj/.pulumi-state",
        "gateway_image": "mldeploy/base:bookworm-py3.11",
        "image_name": "mldeploy-proj-dev/scoring:bbbbbbbbbbbb",
        "image_id": "sha256:" + "c" * 64,
        "models": [{"name": "ridge", "version": 1, "model_dir": "/state/registry/ridge/1"}],
        "cpu_cores": 1,
        "memory_gb": 1,
        "auth_enabled": True,
        "port": 23456,
        "environment_variables": {},
        "primary_key_version": 1,
        "secondary_key_version": 1,
        "max_request_bytes": 1_048_576,
        "startup_timeout_seconds": 180,
    }
    props.update(over)
    return props


def service_olds(**over: Any) -> dict[str, Any]:
    """Old state as the provider stored it after a healthy create."""
    olds = service_props(
        scoring_uri="http://127.0.0.1:23456/api/v1/service/aciservice/score",
        swagger_uri="http://127.0.0.1:23456/api/v1/service/aciservice/swagger.json",
        primary_key="pk",
        secondary_key="sk",
        state="Healthy",
        model_versions={"ridge": 1},
        container_id="abc123",
        backend_socket="0badcafe.sock",
    )
    olds.update(over)
    return olds


def failures_by_property(failures: list[CheckFailure]) -> dict[str, str]:
    return {f.property: f.reason for f in failures}


# ---------------------------------------------------------------- model


class TestDiffModel:
    def test_no_change(self) -> None:
        olds = {**model_props(), "model_dir": "/state/registry/ridge/1", "model_id": "ridge:1", "present": True}
        r = diff_model(olds, model_props())
        assert r.changes is False
        assert not r.replaces
        assert r.delete_before_replace is False

    def test_missing_tags_and_description_equal_empty(self) -> None:
        olds = model_props(tags=None, description=None)
        news = model_props(tags={}, description="")
        assert diff_model(olds, news).changes is False

    def test_content_hash_is_an_update(self) -> None:
        r = diff_model(model_props(), model_props(content_hash="sha256:" + "f" * 64))
        assert r.changes is True
        assert not r.replaces

    @pytest.mark.parametrize(
        "change",
        [{"tags": {"area": "prod"}}, {"tags": {}}, {"description": "new words"}],
        ids=["tags", "tags-cleared", "description"],
    )
    def test_metadata_is_an_update(self, change: dict[str, Any]) -> None:
        r = diff_model(model_props(), model_props(**change))
        assert r.changes is True
        assert not r.replaces

    @pytest.mark.parametrize(
        "key,value",
        [("model_name", "lasso"), ("registry_root", "/elsewhere"), ("owner", "proj/prod/ridge")],
    )
    def test_identity_is_a_replace(self, key: str, value: str) -> None:
        r = diff_model(model_props(), model_props(**{key: value}))
        assert r.changes is True
        assert list(r.replaces) == [key]
        assert r.delete_before_replace is False

    def test_gone_from_registry_is_an_update(self) -> None:
        # refresh found the version deleted by hand: the next up registers it again
        r = diff_model({**model_props(), "present": False}, model_props())
        assert r.changes is True
        assert not r.replaces

    def test_present_true_is_no_change(self) -> None:
        assert diff_model({**model_props(), "present": True}, model_props()).changes is False


class TestModelCheck:
    def test_ok(self) -> None:
        news = model_props()
        r = ModelVersionProvider().check({}, news)
        assert r.failures == []
        assert r.inputs == news

    @pytest.mark.parametrize("key", ["model_name", "model_path", "registry_root", "owner"])
    def test_required(self, key: str) -> None:
        r = ModelVersionProvider().check({}, model_props(**{key: ""}))
        assert list(failures_by_property(r.failures)) == [key]


# ---------------------------------------------------------------- image


class TestDiffImage:
    def test_no_change(self) -> None:
        olds = {**image_props(), "image_name": "x:bbbbbbbbbbbb", "image_id": "sha256:1", "present": True}
        r = diff_image(olds, image_props())
        assert r.changes is False
        assert not r.replaces

    def test_build_hash_is_an_update(self) -> None:
        r = diff_image(image_props(), image_props(build_hash="sha256:" + "e" * 64))
        assert r.changes is True
        assert not r.replaces

    def test_image_repo_is_a_replace(self) -> None:
        r = diff_image(image_props(), image_props(image_repo="mldeploy-proj-prod/scoring"))
        assert r.changes is True
        assert list(r.replaces) == ["image_repo"]
        assert r.delete_before_replace is False

    def test_gone_from_docker_is_an_update(self) -> None:
        r = diff_image({**image_props(), "present": False}, image_props())
        assert r.changes is True
        assert not r.replaces

    def test_inputs_outside_the_build_hash_do_not_rebuild(self) -> None:
        # labels/source paths are folded into build_hash by the component; alone they change nothing
        r = diff_image(image_props(), image_props(labels={"other": "x"}))
        assert r.changes is False

    def test_image_name_uses_short_hash(self) -> None:
        assert image_name(image_props()) == "mldeploy-proj-dev/scoring:" + "b" * 12


class TestImageCheck:
    def test_ok(self) -> None:
        assert ImageProvider().check({}, image_props()).failures == []

    @pytest.mark.parametrize("key", ["image_repo", "base_image", "source_directory", "entry_script", "build_hash"])
    def test_required(self, key: str) -> None:
        r = ImageProvider().check({}, image_props(**{key: ""}))
        assert list(failures_by_property(r.failures)) == [key]

    def test_dependency_file_optional(self) -> None:
        assert ImageProvider().check({}, image_props(dependency_file="")).failures == []


# ---------------------------------------------------------------- service (shared rules + the local target's)


ROLL_CHANGES = {
    "image_id": "sha256:" + "d" * 64,
    "models": [{"name": "ridge", "version": 2, "model_dir": "/state/registry/ridge/2"}],
    "cpu_cores": 2,
    "memory_gb": 0.5,
    "environment_variables": {"LOG_LEVEL": "debug"},
    "state_dir": "/elsewhere/.pulumi-state",
    "worker_count": 2,
}
ROUTE_CHANGES = {
    "port": 23457,
    "auth_enabled": False,
    "primary_key_version": 2,
    "secondary_key_version": 2,
    "max_request_bytes": 2_000_000,
    "gateway_image": "nginx:1",
    "traffic": {"current": 90, "candidate": 10},
    "mirror_percent": 20,
    "warm_standby": True,  # starts (or removes) the standby; the live backend keeps serving
}
# Inputs whose change alone does nothing: the image's name moves with its id,
# and the start-up timeout only matters to the next roll.
NO_CHANGE_ALONE = ("image_name", "startup_timeout_seconds")


class TestDiffService:
    def test_no_change(self) -> None:
        olds, news = service_olds(), service_props()
        r = diff_service(olds, news)
        assert r.changes is False
        assert not r.replaces
        assert needs_roll(olds, news) is False

    def test_inputs_are_not_mutated(self) -> None:
        olds, news = service_olds(), service_props(cpu_cores=2)
        before = copy.deepcopy((olds, news))
        diff_service(olds, news)
        needs_roll(olds, news)
        assert (olds, news) == before

    @pytest.mark.parametrize("key", sorted(ROLL_CHANGES))
    def test_roll_inputs_update_and_roll(self, key: str) -> None:
        olds, news = service_olds(), service_props(**{key: ROLL_CHANGES[key]})
        r = diff_service(olds, news)
        assert r.changes is True
        assert not r.replaces
        assert needs_roll(olds, news) is True

    def test_model_version_bump_rolls(self) -> None:
        olds = service_olds()
        news = service_props(models=[{**olds["models"][0], "version": 2}])
        assert diff_service(olds, news).changes is True
        assert needs_roll(olds, news) is True

    @pytest.mark.parametrize("key", sorted(ROUTE_CHANGES))
    def test_route_inputs_update_without_roll(self, key: str) -> None:
        olds, news = service_olds(), service_props(**{key: ROUTE_CHANGES[key]})
        r = diff_service(olds, news)
        assert r.changes is True
        assert not r.replaces
        assert needs_roll(olds, news) is False

    @pytest.mark.parametrize("key", NO_CHANGE_ALONE)
    def test_inputs_that_change_nothing_alone(self, key: str) -> None:
        r = diff_service(service_olds(), service_props(**{key: "x"}))
        assert r.changes is False

    def test_every_local_input_has_a_rule(self) -> None:
        """A new input that no rule names would never reach a running service."""
        replace_on, roll_on, route_on = rules(service_props())
        ruled = set(replace_on) | set(roll_on) | set(route_on)
        assert set(service_props()) - ruled == set(NO_CHANGE_ALONE)
        assert {"traffic", "mirror_percent"} <= set(route_on), "a held split's weights change the route in place"
        assert set(ROLL_CHANGES) == set(roll_on)
        assert set(ROUTE_CHANGES) == set(route_on)

    def test_local_rules_are_the_shared_ones_plus_the_targets(self) -> None:
        replace_on, roll_on, route_on = rules(service_props())
        assert replace_on == REPLACE_ON + LOCAL.REPLACE_ON
        assert roll_on == ROLL_ON + LOCAL.ROLL_ON
        assert route_on == LOCAL.ROUTE_ON
        # what only the local target has stays out of the shared rules
        assert not {"port", "gateway_image", "state_dir"} & set(REPLACE_ON + ROLL_ON)

    def test_roll_and_route_keys_are_disjoint(self) -> None:
        replace_on, roll_on, route_on = rules(service_props())
        assert not set(roll_on) & set(route_on)
        assert not set(replace_on) & (set(roll_on) | set(route_on))

    @pytest.mark.parametrize(
        "key,value",
        [("service_name", "other-service"), ("target", "aci"), ("project", "proj2"), ("stack", "prod")],
    )
    def test_identity_replaces_delete_first(self, key: str, value: str) -> None:
        r = diff_service(service_olds(), service_props(**{key: value}))
        assert r.changes is True
        assert list(r.replaces) == [key]
        assert r.delete_before_replace is True

    @pytest.mark.parametrize("state", ["Missing", "Stopped", "Unhealthy"])
    def test_broken_state_updates_and_rolls(self, state: str) -> None:
        olds, news = service_olds(state=state), service_props()
        r = diff_service(olds, news)
        assert r.changes is True
        assert not r.replaces
        assert needs_roll(olds, news) is True

    def test_outputs_in_olds_are_not_changes(self) -> None:
        # olds carry outputs (uris, keys, container id) the news never have
        r = diff_service(service_olds(container_id="zzz", backend_socket="40999999.sock"), service_props())
        assert r.changes is False

    def test_numbers_as_the_engine_sends_them_are_no_change(self) -> None:
        # the engine hands providers every number as a float
        news = service_props(port=23456.0, cpu_cores=1.0, memory_gb=1.0, max_request_bytes=1_048_576.0)
        assert diff_service(service_olds(), news).changes is False


class TestServiceCheck:
    def check(self, **over: Any) -> dict[str, str]:
        news = service_props(**over)
        result = ServiceProvider().check({}, news)
        assert result.inputs == news
        return failures_by_property(result.failures)

    def test_ok(self) -> None:
        assert self.check() == {}

    def test_ok_as_the_engine_sends_numbers(self) -> None:
        assert self.check(port=23456.0, cpu_cores=1.0, memory_gb=0.5) == {}

    @pytest.mark.parametrize("key", ["cpu_cores", "memory_gb"])
    @pytest.mark.parametrize("value", [0, -1, -0.5, None, "1", True])
    def test_resources_must_be_positive_numbers(self, key: str, value: Any) -> None:
        failures = self.check(**{key: value})
        assert list(failures) == [key]
        assert "greater than 0" in failures[key] or "must be a number" in failures[key]
        assert repr(value) in failures[key]

    def test_fractional_resources_ok(self) -> None:
        assert self.check(cpu_cores=0.5, memory_gb=0.25) == {}

    def test_unknown_target(self) -> None:
        failures = self.check(target="gpu-cluster")
        assert list(failures) == ["target"]
        assert "gpu-cluster" in failures["target"]
        assert "local" in failures["target"]

    @pytest.mark.parametrize("port", [0, 80, 1023, 65536, 100000, None, "8080", 8080.5, True])
    def test_port_out_of_range(self, port: Any) -> None:
        failures = self.check(port=port)
        assert list(failures) == ["port"]

    @pytest.mark.parametrize("port", [1024, 65535, 20000])
    def test_port_bounds_ok(self, port: int) -> None:
        assert self.check(port=port) == {}

    @pytest.mark.parametrize("key", ["port", "gateway_image", "state_dir"])
    def test_local_target_needs_its_inputs(self, key: str) -> None:
        news = {k: v for k, v in service_props().items() if k != key}
        failures = failures_by_property(ServiceProvider().check({}, news).failures)
        assert list(failures) == [key]

    @pytest.mark.parametrize("models", [[], None])
    def test_models_empty(self, models: Any) -> None:
        failures = self.check(models=models)
        assert list(failures) == ["models"]

    def test_several_failures_reported_together(self) -> None:
        failures = self.check(cpu_cores=0, memory_gb=-1, port=1, models=[], gateway_image="")
        assert set(failures) == {"cpu_cores", "memory_gb", "port", "models", "gateway_image"}

    def test_unknown_target_judges_only_the_shared_inputs(self) -> None:
        # whose port it would be is unknown: only the target is named, besides shared inputs
        failures = self.check(target="gpu-cluster", port=1, cpu_cores=0)
        assert set(failures) == {"target", "cpu_cores"}

    def test_values_unknown_at_preview_are_not_judged(self) -> None:
        from pulumi.runtime import rpc

        assert self.check(port=rpc.UNKNOWN, models=rpc.UNKNOWN) == {}


def test_orphaned_state_updates_without_a_roll() -> None:
    """Leftovers of an interrupted roll beside a healthy backend: remove them, keep serving."""
    olds = {"service_name": "svc", "target": "local", "project": "p", "stack": "s", "state": "Orphaned", "image_id": "i"}
    news = {k: v for k, v in olds.items() if k != "state"}
    assert diff_service(olds, news).changes is True
    assert diff_service(olds, news).replaces == []
    assert needs_roll(olds, news) is False


# ---------------------------------------------------------------- where the checkout lives


# State written by an earlier release: absolute paths of the checkout that deployed it.
EARLIER = "/home/ana/src/mldeploy"


class TestCheckoutIndependence:
    """Inputs hold paths relative to the project; a stack made by an earlier release
    (absolute paths of its checkout) diffs as no change against them, so its next
    `up`, from any checkout, neither replaces nor rolls."""

    def test_model_from_an_earlier_release_is_no_change(self) -> None:
        olds = {
            **model_props(model_path=f"{EARLIER}/sample/models/ridge.pkl", registry_root=f"{EARLIER}/.pulumi-state/registry"),
            "model_dir": f"{EARLIER}/.pulumi-state/registry/ridge/1",
            "present": True,
        }
        news = model_props(model_path="sample/models/ridge.pkl", registry_root=".pulumi-state/registry")
        r = diff_model(olds, news)
        assert r.changes is False and not r.replaces

    def test_model_in_another_registry_is_still_another_model(self) -> None:
        olds = model_props(registry_root=f"{EARLIER}/shared/registry")
        assert diff_model(olds, model_props(registry_root=".pulumi-state/registry")).replaces == ["registry_root"]
        # A registry moved out of the project (relative to absolute) is a move, not a migration.
        olds = model_props(registry_root=".pulumi-state/registry")
        assert diff_model(olds, model_props(registry_root="/mnt/shared/.pulumi-state/registry")).replaces == ["registry_root"]

    def test_service_from_an_earlier_release_neither_rolls_nor_changes(self) -> None:
        olds = service_olds(
            state_dir=f"{EARLIER}/.pulumi-state",
            models=[{"name": "ridge", "version": 1.0, "model_dir": f"{EARLIER}/.pulumi-state/registry/ridge/1"}],
        )
        news = service_props(
            state_dir=".pulumi-state",
            models=[{"name": "ridge", "version": 1, "model_dir": ".pulumi-state/registry/ridge/1"}],
        )
        assert diff_service(olds, news).changes is False
        assert needs_roll(olds, news) is False

    @pytest.mark.parametrize(
        "change",
        [
            {"state_dir": "other-state"},
            {"models": [{"name": "ridge", "version": 1, "model_dir": "other-registry/ridge/1"}]},
            {"models": [{"name": "ridge", "version": 2, "model_dir": ".pulumi-state/registry/ridge/2"}]},
        ],
        ids=["state-dir-moved", "registry-moved", "new-version"],
    )
    def test_a_real_move_still_rolls(self, change: dict[str, Any]) -> None:
        olds = service_olds(
            state_dir=".pulumi-state", models=[{"name": "ridge", "version": 1, "model_dir": ".pulumi-state/registry/ridge/1"}]
        )
        news = service_props(**{**{"state_dir": ".pulumi-state", "models": olds["models"]}, **change})
        assert diff_service(olds, news).changes is True
        assert needs_roll(olds, news) is True

    @pytest.mark.parametrize(
        "old,new,same",
        [
            (".pulumi-state", ".pulumi-state", True),
            (f"{EARLIER}/.pulumi-state", ".pulumi-state", True),
            (f"{EARLIER}/.pulumi-state/registry/m/1", ".pulumi-state/registry/m/1", True),
            (f"{EARLIER}/state", ".pulumi-state", False),
            (".pulumi-state", f"{EARLIER}/.pulumi-state", False),  # relative made absolute: a move
            (f"{EARLIER}/.pulumi-state", "../.pulumi-state", False),
            ("/.pulumi-state", ".pulumi-state", False),  # nothing before it: not a checkout's folder
            (f"{EARLIER}/x", ".", False),
            (None, ".pulumi-state", False),
            ("", "", True),
        ],
    )
    def test_same_place(self, old: Any, new: Any, same: bool) -> None:
        from mldeploy.providers.core.paths import same_place

        assert same_place(old, new) is same

    def test_portable_and_local_round_trip(self, tmp_path: Any) -> None:
        from mldeploy.providers.core.paths import local, portable

        root = tmp_path / "checkout"
        assert portable(root / "sample" / "src", root) == "sample/src"
        assert portable("sample/src", root) == "sample/src"
        assert portable(tmp_path / "shared" / "registry", root) == str(tmp_path / "shared" / "registry")
        assert local("sample/src", root) == root / "sample" / "src"
        assert local(str(tmp_path / "shared"), root) == tmp_path / "shared"

    def test_providers_find_relative_paths_under_the_project(self, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        """At apply time the engine starts providers in the project's folder; MLDEPLOY_PROJECT_DIR wins when set."""
        from mldeploy.providers.core.paths import project_dir
        from mldeploy.providers.targets.local import model_mounts

        monkeypatch.delenv("MLDEPLOY_PROJECT_DIR", raising=False)
        monkeypatch.chdir(tmp_path)
        assert project_dir() == tmp_path.resolve()
        mounts, _ = model_mounts([{"name": "ridge", "version": 1, "model_dir": ".pulumi-state/registry/ridge/1"}])
        assert list(mounts) == [str(tmp_path.resolve() / ".pulumi-state" / "registry" / "ridge" / "1")]
        monkeypatch.setenv("MLDEPLOY_PROJECT_DIR", str(tmp_path / "elsewhere"))
        mounts, _ = model_mounts([{"name": "ridge", "version": 1, "model_dir": ".pulumi-state/registry/ridge/1"}])
        assert list(mounts) == [str(tmp_path.resolve() / "elsewhere" / ".pulumi-state" / "registry" / "ridge" / "1")]
