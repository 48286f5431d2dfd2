"""Unit tests of the Azure ML target: its arguments, its rules and diff, its bodies, and the roll's order.

No network, no Docker: the roll runs over a recording client.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from mldeploy.providers.targets.azureml import bodies, rules
from mldeploy.providers.targets.azureml.args import AzureMLArgs, endpoint_name, timeout_iso
from mldeploy.providers.targets.azureml.rollout import RolloutFailed, execute, next_deployment, plan_roll
from test_components_unit import no_docker, project  # noqa: F401 - fixtures

pytestmark = pytest.mark.unit

SUB = "00000000-0000-0000-0000-000000000000"
GOOD = {"subscription_id": SUB, "resource_group": "rg-ml", "workspace": "ws-ml", "location": "westeurope", "endpoint_name": "churn"}


def args(**over: Any) -> dict[str, Any]:
    return AzureMLArgs.model_validate({**GOOD, **over}).model_dump()


def props(**over: Any) -> dict[str, Any]:
    return {"service_name": "churn", "target": "azureml", "project": "p", "stack": "dev", "image_id": "sha256:" + "a" * 64,
            "image_name": "scoring:1", "models": [{"name": "ridge", "version": 3, "model_dir": "reg/ridge/3"}],
            "environment_variables": {"A": "1"}, "primary_key_version": 1, "secondary_key_version": 1,
            "entry_script": "sample/score.py", **args(), **over}


# ------------------------------------------------------------------ arguments


def test_defaults_are_azures():
    a = args()
    assert a["request_timeout_ms"] == 5000 and a["max_concurrent_requests_per_instance"] == 1
    assert a["liveness_probe"] == {"initial_delay": 10, "period": 10, "timeout": 2, "failure_threshold": 30, "success_threshold": 1}
    assert a["auth_mode"] == "key" and a["traffic_steps"] == [100] and a["instance_count"] == 1


@pytest.mark.parametrize("field, value", [
    ("endpoint_name", "ab"), ("endpoint_name", "9churn"), ("endpoint_name", "churn_1"), ("endpoint_name", "c" * 33),
    ("instance_type", "Standard_XL_v9"), ("instance_count", 0), ("request_timeout_ms", 180_001),
    ("auth_mode", "aad_token"), ("mirror_percent", 51), ("subscription_id", "nope"), ("workspace", "w"),
    ("location", "atlantis"), ("traffic_steps", [50, 10, 100]), ("traffic_steps", [10, 50]),
])
def test_bad_input_names_the_field(field, value):
    with pytest.raises(ValidationError) as err:
        AzureMLArgs.model_validate({**GOOD, field: value})
    assert err.value.errors()[0]["loc"][0] == field


def test_mirror_with_a_split_is_refused():
    with pytest.raises(ValidationError, match="mirror_percent cannot go with canary"):
        AzureMLArgs.model_validate({**GOOD, "mirror_percent": 10, "traffic_steps": [10, 100]})
    assert args(mirror_percent=50)["mirror_percent"] == 50


def test_names_and_durations():
    assert endpoint_name("dev", "churn") == "dev-churn" and len(endpoint_name("s" * 40, "x")) == 32
    assert endpoint_name("9dev", "x")[0].isalpha()
    assert timeout_iso(5000) == "PT5S" and timeout_iso(1500) == "PT1.5S"


# ------------------------------------------------------------------ rules and diff


def test_each_input_has_one_rule():
    groups = [rules.REPLACE_ON, rules.ROLL_ON + rules.ROLL_SHARED, rules.PATCH_ON, rules.INERT]
    seen = [k for g in groups for k in g]
    assert len(seen) == len(set(seen))
    assert set(AzureMLArgs.model_fields) <= set(seen)


@pytest.mark.parametrize("key, value, kind", [
    ("endpoint_name", "other", "replace"), ("workspace", "ws-2", "replace"), ("auth_mode", "aml_token", "replace"),
    ("models", [{"name": "ridge", "version": 4, "model_dir": "reg/ridge/4"}], "roll"), ("image_id", "sha256:" + "b" * 64, "roll"),
    ("instance_type", "Standard_F4s_v2", "roll"), ("request_timeout_ms", 9000, "roll"), ("environment_variables", {"A": "2"}, "roll"),
    ("instance_count", 3, "patch"), ("primary_key_version", 2, "patch"), ("mirror_percent", 10, "none"),
    ("traffic_steps", [10, 100], "none"), ("cpu_cores", 4, "none"),
])
def test_diff_says_the_cost(key, value, kind):
    old = props()
    change = rules.diff(old, {**old, key: value})
    assert change.kind == kind and (kind == "none" or key in change.fields)


def test_a_model_moved_on_disk_is_no_change_and_the_costliest_wins():
    old = props()
    assert rules.diff(old, {**old, "models": [{"name": "ridge", "version": 3, "model_dir": "/elsewhere"}]}).kind == "none"
    both = {**old, "instance_count": 2, "endpoint_name": "x-y-z"}
    assert rules.diff(old, both) == rules.Change("replace", ("endpoint_name",))


# ------------------------------------------------------------------ bodies


def test_bodies_carry_what_the_issue_lists():
    p = props(auth_mode="aml_token", request_timeout_ms=1500)
    d = bodies.deployment_body(p, "mid", "eid", "cid", "score.py")
    assert d["sku"] == {"name": "Default", "capacity": 1}
    assert d["properties"]["requestSettings"] == {"requestTimeout": "PT1.5S", "maxConcurrentRequestsPerInstance": 1}
    assert d["properties"]["livenessProbe"]["failureThreshold"] == 30 and d["properties"]["codeConfiguration"]["scoringScript"] == "score.py"
    assert bodies.endpoint_body(p, {})["properties"]["authMode"] == "AMLToken"
    name, version, _ = bodies.environment_asset(p)
    assert (name, version) == ("churn-env", "a" * 12)
    assert bodies.code_asset(p, "0123456789ab")[0:2] == ("churn-code", "0123456789ab")
    assert bodies.asset_id(p, "models", "ridge", "3").endswith("/workspaces/ws-ml/models/ridge/versions/3")


# ------------------------------------------------------------------ the roll's order


class Check:
    def __init__(self, ok: bool):
        self.ok = ok

    def report(self) -> str:
        return "sample request: POST /score {} \nanswer: 500 in 3 ms: boom\nproblem: answered 500, not 200"


class Recorder:
    """A client that records calls; `fail` names an op that raises, `gate_ok` what the gate says."""

    def __init__(self, fail: str | None = None, gate_ok: bool = True):
        self.calls: list[tuple] = []
        self.fail, self.gate_ok = fail, gate_ok

    def __getattr__(self, op: str):
        def call(*a: Any) -> Any:
            self.calls.append((op, *[x for x in a if not isinstance(x, dict) or op == "set_traffic"]))
            if op == self.fail:
                raise RuntimeError(f"409 Conflict: {op} refused")
            return Check(self.gate_ok) if op == "gate" else {}
        return call


def roll(old: str | None = "v03", **kw: Any):
    new = next_deployment(old)
    return plan_roll("churn", old, new, [("models", "ridge", "4", {})], None if old else {"loc": 1}, {}, **{"steps": [100], **kw})


def test_blue_green_order():
    plan = roll()
    rec = Recorder()
    execute(plan, rec, progress=lambda s: None)
    assert [c[0] for c in rec.calls] == ["ensure_asset", "put_deployment", "gate", "set_traffic", "delete_deployment"]
    assert rec.calls[3] == ("set_traffic", "churn", {"v04": 100}, {})
    assert plan.words() == "endpoint `churn`: deployment `v04` created at 0 %, sample checked, traffic v03 100 % → v04 100 %, v03 deleted"


def test_canary_steps_and_a_new_endpoint():
    plan = roll(steps=[10, 50, 100])
    traffic = [s.args[1] for s in plan.steps if s.op == "set_traffic"]
    assert traffic == [{"v03": 90, "v04": 10}, {"v03": 50, "v04": 50}, {"v04": 100}]
    first = roll(old=None)
    assert [s.op for s in first.steps] == ["ensure_asset", "put_endpoint", "put_deployment", "gate", "set_traffic"]
    assert first.new == "v01" and first.steps[-1].args[1] == {"v01": 100}


def test_mirror_goes_before_any_live_traffic():
    plan = roll(mirror_percent=20)
    ops = [(s.op, s.args[1:]) for s in plan.steps if s.op == "set_traffic"]
    assert ops[0] == ("set_traffic", ({"v03": 100}, {"v04": 20})) and ops[-1][1] == ({"v04": 100}, {})


def test_a_refused_sample_leaves_traffic_on_the_old_deployment():
    rec = Recorder(gate_ok=False)
    with pytest.raises(RolloutFailed) as err:
        execute(roll(), rec, progress=lambda s: None)
    assert [c[0] for c in rec.calls] == ["ensure_asset", "put_deployment", "gate", "set_traffic", "delete_deployment"]
    assert rec.calls[3] == ("set_traffic", "churn", {"v03": 100}, {}) and rec.calls[4] == ("delete_deployment", "churn", "v04")
    text = str(err.value)
    assert "sample checked" in text and "azureml-model-deployment: v04" in text and "answered 500" in text
    assert "traffic is back on `v03`" in text


def test_a_failed_deployment_is_removed_and_named():
    rec = Recorder(fail="put_deployment")
    with pytest.raises(RolloutFailed, match="deployment `v04` created at 0 %' failed: 409 Conflict"):
        execute(roll(), rec, progress=lambda s: None)
    assert [c[0] for c in rec.calls] == ["ensure_asset", "put_deployment"]  # nothing was created: nothing to undo


def test_a_failure_after_all_traffic_moved_does_not_undo():
    rec = Recorder(fail="delete_deployment")
    with pytest.raises(RolloutFailed, match="v03 deleted' failed"):
        execute(roll(), rec, progress=lambda s: None)
    assert [c[0] for c in rec.calls][-1] == "delete_deployment" and ("set_traffic", "churn", {"v03": 100}, {}) not in rec.calls


def test_numbers_as_providers_get_them():
    plan = roll(steps=[10.0, 100.0], mirror_percent=0.0)
    assert [s.args[1] for s in plan.steps if s.op == "set_traffic"] == [{"v03": 90, "v04": 10}, {"v04": 100}]
    assert "v04 10 %" in plan.words() and "10.0" not in plan.words()


def test_next_deployment():
    assert next_deployment(None) == "v01" and next_deployment("v09") == "v10" and next_deployment("blue") == "v01"
    # Azure ML's SDK refuses deployment names under 3 characters: a state from before keeps counting.
    assert next_deployment("v1") == "v02" and next_deployment("v99") == "v100"
    import re

    from mldeploy.providers.targets.azureml.args import DEPLOYMENT_NAME_RE
    assert all(re.match(DEPLOYMENT_NAME_RE, next_deployment(f"v{n}")) for n in (None, 1, 9, 99, 998))


# ------------------------------------------------------------------ bad input through the component, at program time


def _declare(config: dict[str, str], **kw: Any) -> Any:
    """ContainerInstanceService(target="azureml") under mocks: what the program raises, if anything."""
    import pulumi

    from test_components_unit import make_image, make_model
    from test_kubernetes_unit import K8sMocks

    mocks = K8sMocks()
    pulumi.runtime.set_mocks(mocks, project="proj", stack="dev", preview=True)
    pulumi.runtime.set_all_config({"mldeploy:target": "azureml", **config}, [])

    @pulumi.runtime.test
    def program() -> Any:
        from mldeploy.components import ContainerInstanceService

        return ContainerInstanceService("svc", models=[make_model()], image=make_image(), **kw).state

    try:
        program()
    finally:
        pulumi.runtime.set_all_config({}, [])
    return mocks


AZ = {"mldeploy:azureSubscriptionId": SUB, "mldeploy:azureResourceGroup": "rg-ml", "mldeploy:azureLocation": "westeurope",
      "mldeploy:azureMlWorkspace": "ws-ml", "mldeploy:imageRegistry": "mlws.azurecr.io"}


@pytest.mark.parametrize("config, kw, field", [
    ({**AZ, "mldeploy:azureMlWorkspace": ""}, {}, "workspace: missing: set stack config mldeploy:azureMlWorkspace"),
    ({**AZ, "mldeploy:azureMlWorkspace": "w"}, {}, "workspace"),
    ({**AZ, "mldeploy:azureLocation": "atlantis"}, {}, "location"),
    ({**AZ, "mldeploy:imageRegistry": "127.0.0.1:5000/team"}, {}, "image_registry: 127.0.0.1:5000/team is on this machine, which Azure cannot pull from"),
    (AZ, {"port": 8080}, "port"),
])
def test_bad_input_fails_in_the_program_naming_the_field(project, config, kw, field):
    with pytest.raises(Exception) as err:
        _declare(config, **kw)
    assert field in str(err.value) and "ContainerInstanceService 'svc'" in str(err.value)


def test_a_good_service_declares_the_endpoint(project):
    mocks = _declare(AZ)
    inputs = mocks.resources["svc-service"][1]
    assert inputs["target"] == "azureml" and inputs["endpoint_name"] == "dev-svc" and inputs["workspace"] == "ws-ml"
    assert inputs["instance_type"] == "Standard_DS3_v2" and inputs["traffic_steps"] == [100]


def _declare_endpoint(config: dict[str, str], **kw: Any) -> Any:
    import pulumi

    from test_components_unit import make_image, make_model
    from test_kubernetes_unit import K8sMocks

    mocks = K8sMocks()
    pulumi.runtime.set_mocks(mocks, project="proj", stack="dev", preview=True)
    pulumi.runtime.set_all_config(config, [])

    @pulumi.runtime.test
    def program() -> Any:
        from mldeploy.components.azureml_service import OnlineEndpointService

        return OnlineEndpointService("churn", models=[make_model()], image=make_image(), **kw).state

    try:
        program()
    finally:
        pulumi.runtime.set_all_config({}, [])
    return mocks


@pytest.mark.parametrize("kw, field", [
    ({"endpoint_name": "9-churn"}, "endpoint_name"), ({"endpoint_name": "churn-"}, "endpoint_name"),
    ({"instance_type": "Standard_Q1"}, "instance_type"),
    ({"instance_count": 0}, "instance_count"), ({"request_timeout_ms": 200_000}, "request_timeout_ms"),
    ({"auth_mode": "aad_token"}, "auth_mode"), ({"mirror_percent": 60}, "mirror_percent"),
    ({"mirror_percent": 10, "traffic_steps": [10, 100]}, "mirror_percent cannot go with canary traffic_steps"),
    ({"liveness_probe": {"period": 0}}, "liveness_probe.period"),
])
def test_online_endpoint_service_refuses_bad_input_naming_the_field(project, kw, field):
    with pytest.raises(Exception) as err:
        _declare_endpoint(AZ, **kw)
    assert field in str(err.value) and "ContainerInstanceService 'churn'" in str(err.value)


def test_online_endpoint_service_sends_its_arguments(project):
    mocks = _declare_endpoint(AZ, instance_type="Standard_F4s_v2", instance_count=2, auth_mode="aml_token",
                              traffic_steps=[20, 100], liveness_probe={"initial_delay": 30})
    inputs = mocks.resources["churn-service"][1]
    assert inputs["target"] == "azureml" and inputs["instance_type"] == "Standard_F4s_v2" and inputs["instance_count"] == 2
    assert inputs["auth_mode"] == "aml_token" and inputs["traffic_steps"] == [20, 100]
    assert inputs["liveness_probe"]["initial_delay"] == 30 and inputs["liveness_probe"]["failure_threshold"] == 30


def test_online_endpoint_service_pushes_the_scoring_image_alone_and_names_its_code_folder(project):
    """Azure pulls the environment's image from a registry with the endpoint's identity and mounts
    the model asset: the component pushes the inference image without a model layer, no front
    image, and hands the service no registry credentials."""
    mocks = _declare_endpoint({**AZ, "mldeploy:acrName": "mldeployacr", "mldeploy:imageRegistry": "mldeployacr.azurecr.io"})
    pushed = {name: inputs for name, (kind, inputs) in mocks.resources.items() if kind.endswith("RegistryImage")}
    assert list(pushed) == ["churn-image"] and pushed["churn-image"]["models"] == []
    assert pushed["churn-image"]["repository"].startswith("mldeployacr.azurecr.io/")
    # Pushed with the ACR's credentials, read through listCredentials at up (the push's `registry_auth`
    # is an unknown secret at preview, which the mocks may leave out, so the credentials resource is checked).
    creds = [inputs for kind, inputs in mocks.resources.values() if kind.endswith("RegistryCredentials")]
    assert [c.get("registry_name") for c in creds] == ["mldeployacr"] and creds[0]["source"] == "acr"
    inputs = mocks.resources["churn-service"][1]
    assert "image_ref" in inputs and "front_image_ref" not in inputs
    assert not {"registry_server", "registry_username", "registry_password"} & set(inputs)
    assert inputs["code_directory"] == "sample/src" or inputs["code_directory"].endswith("src")


# ------------------------------------------------------------------ the client's transport seam


class RecordingTransport:
    """An azure-core transport that answers from a table and records each request: no network at all."""

    def __init__(self, answers: dict[tuple[str, str], tuple[int, Any]]):
        self.answers = answers
        self.sent: list[Any] = []

    def __enter__(self):
        return self

    def __exit__(self, *a: Any) -> None:
        pass

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, request: Any, **kwargs: Any) -> Any:
        import io
        import json as _json

        import requests
        from azure.core.rest._requests_basic import RestRequestsTransportResponse
        from urllib.parse import urlparse

        self.sent.append(request)
        status, body = self.answers.get((request.method, urlparse(request.url).path), (404, {"error": {"code": "NotFound", "message": "no"}}))
        r = requests.Response()
        r.status_code = status
        r._content = _json.dumps(body).encode() if body is not None else b""
        r.raw = io.BytesIO(r._content)
        r.headers["Content-Type"] = "application/json"
        r.url = request.url
        # The rest-style response: azure-ai-ml's generated operations read `.json()`.
        return RestRequestsTransportResponse(request=request, internal_response=r)


def test_the_client_sends_the_pinned_api_versions_and_a_bearer_token_through_any_transport():
    from urllib.parse import parse_qs, urlparse

    from mldeploy.providers.targets.azure.arm import ArmError, StaticToken
    from mldeploy.providers.targets.azureml.client import WorkspaceClient

    p = props()
    ep = bodies.endpoint_id(p)
    ws = bodies.workspace_id(p)
    transport = RecordingTransport({
        ("GET", ws): (200, {"id": ws, "name": "ws-ml", "location": "westeurope", "properties": {}}),
        ("GET", ep): (200, {"id": ep, "name": "churn", "location": "westeurope", "properties": {"authMode": "Key", "traffic": {"v01": 100}}}),
        ("GET", ep + "/deployments"): (200, {"value": []}),  # azure-ai-ml lists them with the endpoint
        ("POST", ep + "/listKeys"): (200, {"primaryKey": "k1", "secondaryKey": "k2"}),
        ("GET", ep + "/deployments/v09"): (404, {"error": {"code": "UserError", "message": "deployment v09 not found"}}),
        ("PUT", ep + "/deployments/v02"): (409, {"error": {"code": "QuotaExceeded", "message": "Not enough quota"}}),
        ("GET", ws + "/codes/churn-code/versions/abc"): (200, {"id": ws + "/codes/churn-code/versions/abc", "properties": {}}),
    })
    c = WorkspaceClient({**p, "arm_endpoint": "https://arm.example"}, cred=StaticToken("t0k"), transport=transport)
    assert c.get_endpoint("churn")["properties"]["traffic"] == {"v01": 100}
    assert c.list_keys("churn") == {"primary_key": "k1", "secondary_key": "k2"}
    assert c.get_deployment("churn", "v09") is None
    deployment = bodies.deployment_body(p, bodies.asset_id(p, "models", "ridge", "3"), bodies.asset_id(p, "environments", "churn-env", "e1"), None, None)
    with pytest.raises(ArmError, match="PUT deployment churn/v02: 409 QuotaExceeded: Not enough quota"):
        c.put_deployment("churn", "v02", deployment)
    assert c.ensure_asset("codes", "churn-code", "abc", {}) is False
    # azure-ai-ml (1.35.2) sends its own api-version per operation group (the endpoint group reads the
    # endpoint and lists its deployments too); ours (code versions) send 2024-04-01.
    for r in transport.sent:
        url = urlparse(r.url)
        assert url.netloc == "arm.example" and url.path.startswith("/subscriptions/")
        version = parse_qs(url.query)["api-version"][0]
        if "/codes/" in url.path:
            assert version == "2024-04-01"
        elif "/deployments/" in url.path:
            assert version == "2023-04-01-preview", r.url
        elif "/onlineEndpoints/" in url.path:
            assert version in ("2022-02-01-preview", "2023-04-01-preview"), r.url
        assert r.headers["Authorization"] == "Bearer t0k"
    assert any("/deployments/v02" in r.url and r.method == "PUT" for r in transport.sent)


def test_online_endpoint_service_takes_its_args_object(project):
    from mldeploy.components import OnlineEndpointServiceArgs

    import pulumi

    from test_components_unit import make_image, make_model
    from test_kubernetes_unit import K8sMocks

    mocks = K8sMocks()
    pulumi.runtime.set_mocks(mocks, project="proj", stack="dev", preview=True)
    pulumi.runtime.set_all_config(AZ, [])

    @pulumi.runtime.test
    def program() -> Any:
        from mldeploy.components import OnlineEndpointService

        return OnlineEndpointService("churn", args=OnlineEndpointServiceArgs(
            models=[make_model()], image=make_image(), instance_count=3, environment_variables={"A": "1"})).state

    try:
        program()
    finally:
        pulumi.runtime.set_all_config({}, [])
    inputs = mocks.resources["churn-service"][1]
    assert inputs["instance_count"] == 3 and inputs["environment_variables"] == {"A": "1"} and inputs["auth_enabled"] is True
    assert "cpu_cores" not in [f.name for f in __import__("dataclasses").fields(OnlineEndpointServiceArgs)]


# ------------------------------------------------------------------ the provider's check: mirror_percent and the preview's words


def _checked(olds: dict[str, Any], news: dict[str, Any]):
    from mldeploy.providers.targets.service import ServiceProvider

    shared = {"cpu_cores": 1.0, "memory_gb": 1.0, "auth_enabled": True, "max_request_bytes": 1048576, "startup_timeout_seconds": 180}
    return ServiceProvider().check({**shared, **olds} if olds else olds, {**shared, **news})


def test_mirror_percent_is_the_endpoints_mirror_traffic_checked_at_preview():
    """The shared `mirror_percent` is taken (not refused as a split this target cannot make), with Azure's limits."""
    assert not _checked({}, props(mirror_percent=20)).failures
    assert [f.property for f in _checked({}, props(mirror_percent=60)).failures] == ["mirror_percent"]
    bad = _checked({}, props(mirror_percent=10, traffic_steps=[10, 100])).failures
    assert bad and "mirror_percent cannot go with canary traffic_steps" in bad[0].reason
    # ... and it reaches the endpoint's mirrorTraffic during the roll, before live traffic moves.
    plan = roll(mirror_percent=20)
    assert ("set_traffic", ("churn", {"v03": 100}, {"v04": 20})) in [(s.op, s.args) for s in plan.steps]


def test_the_preview_says_the_roll_in_azures_words():
    """`rollout_plan` is an input the preview's diff shows: the roll's sentence, in Azure's words."""
    olds = {**props(), "live_deployment": "v03"}  # what check carried in the inputs at the last up
    news = props(models=[{"name": "ridge", "version": 4, "model_dir": "reg/ridge/4"}])
    checked = _checked(olds, news)
    assert not checked.failures
    assert checked.inputs["rollout_plan"] == ("endpoint `churn`: deployment `v04` created at 0 %, sample checked, "
                                              "traffic v03 100 % → v04 100 %, v03 deleted")
    mirrored = _checked(olds, {**news, "mirror_percent": 20}).inputs["rollout_plan"]
    assert "20 % mirrored to v04" in mirrored and mirrored.endswith("v03 deleted")
    # An unchanged service and a new endpoint (replace) carry no roll sentence.
    assert checked.inputs["live_deployment"] == "v04"
    same = _checked(olds, props()).inputs
    assert "rollout_plan" not in same and same["live_deployment"] == "v03"
    remade = _checked(olds, {**news, "endpoint_name": "churn2"}).inputs
    assert "rollout_plan" not in remade and remade["live_deployment"] == "v01"
    assert _checked({}, props()).inputs["live_deployment"] == "v01"


# ------------------------------------------------------------------ the code folder


def test_the_code_is_the_whole_source_folder_versioned_by_its_content_without_caches(tmp_path):
    from mldeploy.providers.targets.azureml.code import code_folder

    src = tmp_path / "src"
    (src / "lib").mkdir(parents=True)
    (src / "score.py").write_text("import lib.util\n")
    (src / "lib" / "util.py").write_text("X = 1\n")
    first = code_folder(src, src / "score.py")
    assert first.files == ("lib/util.py", "score.py") and first.scoring_script == "score.py" and len(first.version) == 12
    # Caches and version control change without the code changing: same files, same version.
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "score.cpython-311.pyc").write_bytes(b"\0")
    (src / "lib" / "util.pyc").write_bytes(b"\0")
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref: main\n")
    assert code_folder(src, src / "score.py") == first
    # A module beside the script is code: a change to it is a new version, and so is a new file or a renamed one.
    (src / "lib" / "util.py").write_text("X = 2\n")
    changed = code_folder(src, src / "score.py")
    assert changed.version != first.version
    (src / "lib" / "util.py").rename(src / "lib" / "util2.py")
    assert code_folder(src, src / "score.py").version not in (first.version, changed.version)
    # An entry script in a subfolder keeps its path inside the folder, as Azure ML's scoring_script does.
    (src / "lib" / "serve.py").write_text("def run(x): return x\n")
    assert code_folder(src, src / "lib" / "serve.py").scoring_script == "lib/serve.py"
    with pytest.raises(ValueError, match="not inside the code folder"):
        code_folder(src / "lib", src / "score.py")


# ------------------------------------------------------------------ bodies as azure-ai-ml entities (entities.py)


def test_a_deployment_body_becomes_the_same_deployment_in_azure_ml_sdk_words():
    """The one mapping from our ARM-worded body to azure-ai-ml's entity loses nothing: the REST body
    the SDK makes from it (at its own api-version) carries our numbers, and that version's
    specification accepts it."""
    import arm_spec
    from mldeploy.providers.targets.azureml import entities

    p = props(request_timeout_ms=1500, instance_count=3)
    body = bodies.deployment_body(p, bodies.asset_id(p, "models", "ridge", "3"), bodies.asset_id(p, "environments", "churn-env", "e1"),
                                  bodies.asset_id(p, "codes", "churn-code", "c1"), "src/score.py")
    d = entities.deployment("churn", "v02", body)
    assert (d.instance_count, d.instance_type, d.request_settings.request_timeout_ms) == (3, p["instance_type"], 1500)
    assert d.liveness_probe.failure_threshold == 30 and d.readiness_probe.initial_delay == 10
    rest = d._to_rest_object(location="westeurope").as_dict()  # what the SDK sends (2023-04-01-preview)
    sent, ours = rest["properties"], body["properties"]
    for key in ("model", "environmentId", "instanceType", "requestSettings", "livenessProbe", "readinessProbe",
                "environmentVariables", "codeConfiguration"):
        assert sent[key] == ours[key], key
    assert rest["sku"]["capacity"] == 3 and rest["tags"] == body["tags"]
    arm_spec.check("Microsoft.MachineLearningServices", "2023-04-01-preview", "OnlineDeploymentTrackedResource", rest)


def test_an_endpoint_body_becomes_the_same_endpoint_and_reads_back_in_arm_words():
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    from mldeploy.providers.targets.azureml import entities

    p = props(auth_mode="aml_token")
    ep = entities.endpoint("churn", bodies.endpoint_body(p, {"v01": 100}, {"v02": 10}))
    assert (ep.auth_mode, ep.location, ep.traffic, ep.mirror_traffic) == ("aml_token", "westeurope", {"v01": 100}, {"v02": 10})
    assert ep.identity.type == "system_assigned"
    back = ManagedOnlineEndpoint(name="churn", auth_mode="key", traffic={"v01": 100}, location="westeurope")
    view = entities.endpoint_view(back)
    assert view["properties"]["authMode"] == "Key" and view["properties"]["traffic"] == {"v01": 100}


@pytest.mark.parametrize("iso,expected", [("PT5S", 5.0), ("PT0.5S", 0.5), ("PT1M30S", 90.0)])
def test_durations_read_back(iso, expected):
    from mldeploy.providers.targets.azureml import entities

    assert entities.seconds(iso) == expected


def test_a_duration_in_other_units_is_refused():
    from mldeploy.providers.targets.azureml import entities

    with pytest.raises(ValueError, match="PT1H"):
        entities.seconds("PT1H")


def test_azure_ml_sdk_refusals_come_back_without_colours_or_boilerplate():
    from mldeploy.providers.targets.azureml.client import sdk_words

    message = "\x1b[37m\n\x1b[30m\n1) At least one required parameter is missing\x1b[39m\n\nDetails: \n\n\x1b[31m(x) Version must be provided.\x1b[39m\n\nResolutions: \n1) Ensure ..."
    assert sdk_words(message) == "Version must be provided."
    assert sdk_words("Endpoint 'x' does not use keys for authentication.") == "Endpoint 'x' does not use keys for authentication."


def test_making_the_sdk_client_leaves_the_environment_as_it_was(monkeypatch):
    """azure-ai-ml records its cloud in os.environ; a process started later (the engine's provider) that
    inherits a name it does not know asks Azure's public metadata URL for it. The client puts it back."""
    import os

    from mldeploy.providers.targets.azure.arm import StaticToken
    from mldeploy.providers.targets.azureml.client import CLOUD_ENV, WorkspaceClient

    monkeypatch.delenv(CLOUD_ENV, raising=False)
    c = WorkspaceClient({**props(), "arm_endpoint": "https://arm.example"}, cred=StaticToken("t"), transport=RecordingTransport({}))
    assert c.ml is not None and CLOUD_ENV not in os.environ
    monkeypatch.setenv(CLOUD_ENV, "AzureCloud")
    assert WorkspaceClient({**props(), "arm_endpoint": "https://arm2.example"}, cred=StaticToken("t"), transport=RecordingTransport({})).ml
    assert os.environ[CLOUD_ENV] == "AzureCloud"
