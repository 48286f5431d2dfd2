"""The Azure ML client and the roll against the local fake (tests/fake_azureml.py), which follows
Azure's REST specification of 2024-04-01. This is a fake: nothing here runs on Azure.

No Docker: the fake's deployments answer with a scorer function the test gives.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
import requests

import arm_spec
from fake_azureml import FakeAzureML
from mldeploy.providers.targets.azure.arm import ArmError, StaticToken
from mldeploy.providers.targets.azureml import bodies
from mldeploy.providers.targets.azureml.client import WorkspaceClient
from mldeploy.providers.targets.azureml.code import code_folder
from mldeploy.providers.targets.azureml.rollout import RolloutFailed, execute, plan_roll
from test_azureml_unit import props

pytestmark = pytest.mark.unit

ML = ("Microsoft.MachineLearningServices", "2024-04-01")
SWAGGER = {"swagger": "2.0", "definitions": {
    "ServiceInput": {"type": "object", "example": {"data": [[1, 2]]}},
    "ServiceOutput": {"type": "array", "items": {"type": "number"}},
}}


def scorer(bad: set[str]):
    def answer(deployment: str, method: str, path: str, body: bytes) -> tuple[int, str]:
        if path == "/swagger.json":
            return 200, json.dumps(SWAGGER)
        if deployment in bad:
            return 500, "model load failed"
        return 200, json.dumps([0.5])
    return answer


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, azurite: dict[str, str], blob_container: str):
    blob = {"service_url": azurite["service_url"], "account": azurite["AZURE_STORAGE_ACCOUNT"],
            "key": azurite["AZURE_STORAGE_KEY"], "container": blob_container}
    monkeypatch.setenv("MLDEPLOY_BLOB_ACCOUNT_URL", azurite["service_url"])
    f = FakeAzureML(tmp_path, scorer=scorer(set()), op_seconds=0.05, retry_after=0, blob=blob)
    monkeypatch.setenv("MLDEPLOY_ARM_CA_BUNDLE", str(f.ca_path))
    monkeypatch.setenv("MLDEPLOY_ARM_POLL_SECONDS", "0.05")
    yield f
    f.close()


def client(fake: FakeAzureML, p: dict[str, Any] | None = None, token: str | None = None) -> WorkspaceClient:
    return WorkspaceClient({**(p or props()), "arm_endpoint": fake.url}, cred=StaticToken(token or fake.issue_token()), poll_seconds=0.05)


MODEL_DIR = Path(tempfile.mkdtemp(prefix="azureml-model-"))
(MODEL_DIR / "model.pkl").write_bytes(b"not really a pickle")
# A code folder as an image's source folder is: the entry script, a module it imports, and an
# interpreter cache that must not be uploaded nor change the version.
CODE_DIR = Path(tempfile.mkdtemp(prefix="azureml-code-"))
SCRIPT = CODE_DIR / "score.py"
SCRIPT.write_text("from helpers import f\ndef run(x): return f(x)\n")
(CODE_DIR / "helpers.py").write_text("def f(x): return x\n")
(CODE_DIR / "__pycache__").mkdir()
(CODE_DIR / "__pycache__" / "helpers.cpython-311.pyc").write_bytes(b"\0cache")
CODE = code_folder(CODE_DIR, SCRIPT)


def assets(p: dict[str, Any]) -> list[tuple[Any, ...]]:
    m = bodies.model_asset(p, p["models"][0])
    e = bodies.environment_asset(p)
    c = bodies.code_asset(p, CODE.version)
    return [("models", *m, {"local": str(MODEL_DIR), "path": bodies.model_path(m[0], m[1])}), ("environments", *e),
            ("codes", *c, {"local": str(CODE_DIR), "files": list(CODE.files), "path": bodies.code_path(c[0], c[1])})]


def roll(fake: FakeAzureML, p: dict[str, Any], old: str | None, new: str, steps: list[int] = [100]) -> None:
    a = assets(p)
    ids = [bodies.asset_id(p, kind, name, version) for kind, name, version, *_ in a]
    dep = bodies.deployment_body(p, ids[0], ids[1], ids[2], "score.py")
    plan = plan_roll(p["endpoint_name"], old, new, a, None if old else bodies.endpoint_body(p, {}), dep, steps)
    execute(plan, client(fake, p), progress=lambda s: None)


def test_our_bodies_pass_the_specification():
    p = props()
    for kind, name, version, body, *_ in assets(p):
        arm_spec.check(*ML, {"models": "ModelVersionResource", "environments": "EnvironmentVersionResource", "codes": "CodeVersionResource"}[kind], body)
    arm_spec.check(*ML, "OnlineEndpointTrackedResource", bodies.endpoint_body(p, {"v01": 100}, {"v02": 10}))
    dep = bodies.deployment_body(p, "m", "e", "c", "score.py")
    arm_spec.check(*ML, "OnlineDeploymentTrackedResource", dep)
    arm_spec.check(*ML, "ManagedOnlineDeployment", dep["properties"])
    arm_spec.check(*ML, "RegenerateEndpointKeysRequest", {"keyType": "Secondary"})


def test_create_then_blue_green_roll(fake: FakeAzureML):
    p = props()
    roll(fake, p, None, "v01")
    e = fake.endpoint("churn")
    assert e.state == "Succeeded" and e.body["properties"]["traffic"] == {"v01": 100}
    assert len(fake.asset_puts) == 3
    # A new model version: a new deployment beside v01, gated, then all traffic, then v01 gone.
    p2 = props(models=[{"name": "ridge", "version": 4, "model_dir": "reg/ridge/4"}])
    roll(fake, p2, "v01", "v02")
    assert e.body["properties"]["traffic"] == {"v02": 100} and sorted(e.deployments) == ["v02"]
    assert fake.asset_puts[3:] == [("models", "ridge", "4")]  # environment and code unchanged: nothing registered
    # The files went to the workspace's default datastore first (the fake refuses an asset without them).
    from azure.storage.blob import ContainerClient

    blobs = ContainerClient(fake.blob["service_url"], fake.blob["container"],
                            credential={"account_name": fake.blob["account"], "account_key": fake.blob["key"]})
    names = sorted(b.name for b in blobs.list_blobs(name_starts_with="mldeploy/"))
    # The whole code folder, without the interpreter's cache, under a version that follows its content.
    code = "mldeploy/code/churn-code/" + CODE.version + "/"
    assert names == [code + "helpers.py", code + "score.py", "mldeploy/models/ridge/3/model.pkl", "mldeploy/models/ridge/4/model.pkl"]
    gate_calls = [r for r in fake.scored if r[1] == "v02"]
    assert gate_calls and all(s == 200 for _, _, s in gate_calls)
    # Every ARM request was a long-running operation where the specification says so.
    assert any(m == "GET" and "mfeOperationsStatus" in path for m, path, _ in fake.requests)


def test_canary_steps_score_through_the_endpoint(fake: FakeAzureML):
    roll(fake, props(), None, "v01")
    roll(fake, props(image_id="sha256:" + "b" * 64), "v01", "v02", steps=[10, 50, 100])
    assert fake.endpoint("churn").body["properties"]["traffic"] == {"v02": 100}
    puts = [json.loads(json.dumps(x)) for x in fake.requests if x[0] == "PUT" and x[1].split("?")[0].endswith("/onlineEndpoints/churn")]
    assert len(puts) == 1 + 3 + 1  # created, the three steps (and the first roll's 100 %)


def test_a_refused_sample_leaves_traffic_on_the_old_deployment(fake: FakeAzureML):
    roll(fake, props(), None, "v01")
    fake.scorer = scorer({"v02"})
    with pytest.raises(RolloutFailed) as err:
        roll(fake, props(image_id="sha256:" + "c" * 64), "v01", "v02")
    e = fake.endpoint("churn")
    assert e.body["properties"]["traffic"] == {"v01": 100} and sorted(e.deployments) == ["v01"]
    text = str(err.value)
    assert "sample checked' failed" in text and "azureml-model-deployment: v02" in text
    assert '{"data": [[1, 2]]}' in text and "model load failed" in text
    # Clients of the endpoint never saw v02.
    key = e.keys["primaryKey"]
    r = requests.post(f"{fake.url}/inference/churn/score", json={"data": [[1, 2]]},
                      headers={"Authorization": f"Bearer {key}"}, verify=str(fake.ca_path))
    assert r.status_code == 200 and r.headers["azureml-model-deployment"] == "v01"


def test_a_failed_deployment_fails_the_roll_and_is_removed(fake: FakeAzureML):
    roll(fake, props(), None, "v01")
    fake.fail_deployment("v02", message="User container has crashed or terminated: exit code 1")
    with pytest.raises(RolloutFailed, match="deployment `v02` created at 0 %' failed: .*User container has crashed"):
        roll(fake, props(image_id="sha256:" + "d" * 64), "v01", "v02")
    e = fake.endpoint("churn")
    assert e.body["properties"]["traffic"] == {"v01": 100}
    # The next up converges: the same roll goes through.
    roll(fake, props(image_id="sha256:" + "d" * 64), "v01", "v02")
    assert fake.endpoint("churn").body["properties"]["traffic"] == {"v02": 100}


def test_arm_errors_in_arms_words(fake: FakeAzureML):
    roll(fake, props(), None, "v01")
    fake.inject("PUT", "/deployments/v02", 409, "QuotaExceeded",
                "Not enough quota available for Standard_DS3_v2 in SubscriptionId 00000000-0000-0000-0000-000000000000.")
    with pytest.raises(RolloutFailed, match="409 QuotaExceeded: Not enough quota available for Standard_DS3_v2"):
        roll(fake, props(image_id="sha256:" + "e" * 64), "v01", "v02")
    assert fake.endpoint("churn").body["properties"]["traffic"] == {"v01": 100}
    roll(fake, props(image_id="sha256:" + "e" * 64), "v01", "v02")  # quota granted: the same roll converges
    assert fake.endpoint("churn").body["properties"]["traffic"] == {"v02": 100}
    # A 429 with Retry-After is retried by azure-core's policy, honouring the header.
    fake.inject("GET", "/onlineEndpoints/churn", 429, "TooManyRequests", "throttled", {"Retry-After": "1"})
    assert client(fake).get_endpoint("churn")["properties"]["traffic"] == {"v02": 100}
    # An expired token: ARM's own 401.
    with pytest.raises(ArmError, match="401 ExpiredAuthenticationToken"):
        client(fake, token=fake.issue_token(ttl=-10)).get_endpoint("churn")


def raw(fake: FakeAzureML, method: str, path: str, body: Any, api_version: str) -> requests.Response:
    """A request as any client would send it, past azure-ai-ml's own checks: the fake's rules alone answer."""
    ws = bodies.workspace_id(props())
    return requests.request(method, f"{fake.url}{ws}{path}?api-version={api_version}", json=body,
                            headers={"Authorization": f"Bearer {fake.issue_token()}"}, verify=str(fake.ca_path), timeout=10)


def test_the_fake_enforces_azures_rules(fake: FakeAzureML):
    c = client(fake)
    p = props()
    c.put_endpoint("churn", bodies.endpoint_body(p, {}))
    with pytest.raises(ArmError, match="deployment 'v09' was not found"):
        c.set_traffic("churn", {"v09": 100})
    dep = bodies.deployment_body(p, bodies.asset_id(p, "models", "ridge", "1"), bodies.asset_id(p, "environments", "churn-env", "abc"), None, None)
    c.put_deployment("churn", "v01", dep)
    c.put_deployment("churn", "v02", dep)
    with pytest.raises(ArmError, match="sum to 0 or 100"):
        c.set_traffic("churn", {"v01": 60, "v02": 30})
    with pytest.raises(ArmError, match="cannot exceed 50"):
        c.set_traffic("churn", {"v01": 100}, {"v02": 60})
    c.set_traffic("churn", {"v01": 100}, {"v02": 50})
    with pytest.raises(ArmError, match="v01 has 100 % traffic"):
        c.delete_deployment("churn", "v01")
    # Bodies are checked against the specification of the api-version they were sent with.
    bad = raw(fake, "PUT", "/onlineEndpoints/other", {"location": "westeurope", "properties": {"authMode": "Basic"}}, "2022-02-01-preview")
    assert bad.status_code == 400 and "body.properties.authMode" in bad.text
    # publicNetworkAccess is in 2024-04-01's OnlineEndpoint, not yet in 2022-02-01-preview's.
    body = {"location": "westeurope", "properties": {"authMode": "Key", "publicNetworkAccess": "Enabled"}}
    assert raw(fake, "PUT", "/onlineEndpoints/other", body, "2022-02-01-preview").status_code == 400
    bad = raw(fake, "PUT", "/onlineEndpoints/churn/deployments/v03", {**dep, "properties": {**dep["properties"], "replicas": 2}}, "2023-04-01-preview")
    assert bad.status_code == 400 and "could not find member 'replicas'" in bad.text
    bad = raw(fake, "PUT", "/onlineEndpoints/other", bodies.endpoint_body(p, {}), "2021-01-01")
    assert bad.status_code == 400 and "InvalidApiVersionParameter" in bad.text
    # An endpoint name is unique within its region, across workspaces.
    with pytest.raises(ArmError, match="409 UserError: An endpoint named 'churn' already exists in region westeurope"):
        client(fake, props(workspace="ws-other")).put_endpoint("churn", bodies.endpoint_body(p, {}))


def test_keys_rotate_one_at_a_time_and_scoring_checks_them(fake: FakeAzureML):
    roll(fake, props(), None, "v01")
    c = client(fake)
    before = c.list_keys("churn")
    c.regenerate_key("churn", "Primary")
    after = c.list_keys("churn")
    assert after["primary_key"] != before["primary_key"] and after["secondary_key"] == before["secondary_key"]
    url = f"{fake.url}/inference/churn/score"
    ca = str(fake.ca_path)
    assert requests.post(url, json={}, headers={"Authorization": f"Bearer {before['primary_key']}"}, verify=ca).status_code == 401
    assert requests.post(url, json={}, headers={"Authorization": f"Bearer {after['secondary_key']}"}, verify=ca).status_code == 200
    ok = requests.post(url, json={}, headers={"Authorization": f"Bearer {after['primary_key']}", "azureml-model-deployment": "v09"}, verify=ca)
    assert ok.status_code == 404


def test_aml_token_endpoints_score_with_a_token(fake: FakeAzureML):
    p = props(auth_mode="aml_token", endpoint_name="churn-tok")
    roll(fake, p, None, "v01")
    c = client(fake, p)
    with pytest.raises(ArmError, match="uses an AML token, not keys"):
        c.list_keys("churn-tok")
    refused = raw(fake, "POST", "/onlineEndpoints/churn-tok/listKeys", None, "2022-02-01-preview")
    assert refused.status_code == 400 and "Keys are only for endpoints with authMode Key" in refused.text
    assert c.token("churn-tok")
    check = c.gate("churn-tok", "v01")
    assert check.ok and check.gated


# ------------------------------------------------------------------ the target through the Service provider


def service_props(fake: FakeAzureML, **over: Any) -> dict[str, Any]:
    from engine_check import stack_settings
    from mldeploy.providers.targets import target_for

    settings = stack_settings(project="p", stack="dev", azure_subscription_id="00000000-0000-0000-0000-000000000000",
                              azure_resource_group="rg-ml", azure_ml_workspace="ws-ml", azure_location="westeurope",
                              arm_endpoint=fake.url)
    own = target_for("azureml").service_inputs({}, service_name="churn", resource_name="churn", settings=settings)
    base = {"service_name": "churn", "target": "azureml", "project": "p", "stack": "dev", "image_name": "scoring:1",
            "image_id": "sha256:" + "a" * 64, "models": [{"name": "ridge", "version": 1, "model_dir": str(MODEL_DIR)}],
            "cpu_cores": 1.0, "memory_gb": 1.0, "auth_enabled": True, "environment_variables": {},
            "primary_key_version": 1, "secondary_key_version": 1, "max_request_bytes": 1048576,
            "startup_timeout_seconds": 180, "entry_script": str(SCRIPT)}
    return {**base, **own, **over}


def test_a_service_with_target_azureml_creates_rolls_rotates_and_deletes(fake: FakeAzureML, monkeypatch: pytest.MonkeyPatch):
    from mldeploy.providers.targets.service import ServiceProvider

    monkeypatch.setenv("MLDEPLOY_ARM_TOKEN", fake.issue_token())
    provider = ServiceProvider()
    news = service_props(fake)
    checked = provider.check({}, news)
    assert not checked.failures
    created = provider.create(checked.inputs)
    outs = created.outs
    assert created.id == "dev/churn" and outs["deployment"] == "v01" and outs["state"] == "Healthy"
    assert outs["scoring_uri"] == f"{fake.url}/inference/dev-churn/score"
    assert outs["primary_key"] == fake.endpoint("dev-churn").keys["primaryKey"]
    # A new model version: the diff rolls, the review says the roll in Azure's words, up does it.
    news2 = service_props(fake, models=[{"name": "ridge", "version": 2, "model_dir": str(MODEL_DIR)}])
    diff = provider.diff("dev/churn", outs, news2)
    assert diff.changes and not diff.replaces
    from mldeploy.providers.targets import target_for
    assert target_for("azureml").change_words(outs, news2, False) == [
        "endpoint `dev-churn`: deployment `v02` created at 0 %, sample checked, traffic v01 100 % → v02 100 %, v01 deleted"]
    outs2 = provider.update("dev/churn", outs, provider.check(outs, news2).inputs).outs
    assert outs2["deployment"] == "v02" and fake.endpoint("dev-churn").body["properties"]["traffic"] == {"v02": 100}
    # A key version bump regenerates that key only, in place.
    news3 = {**news2, "primary_key_version": 2}
    assert target_for("azureml").change_words(outs2, news3, False)[0].startswith("Azure ML: endpoint `dev-churn` changed in place")
    outs3 = provider.update("dev/churn", outs2, news3).outs
    assert outs3["primary_key"] != outs2["primary_key"] and outs3["secondary_key"] == outs2["secondary_key"]
    assert outs3["deployment"] == "v02"
    # A roll and a key bump in the same up: both happen.
    news_both = {**news3, "image_id": "sha256:" + "f" * 64, "secondary_key_version": 2}
    outs_both = provider.update("dev/churn", outs3, news_both).outs
    assert outs_both["deployment"] == "v03" and outs_both["secondary_key"] != outs3["secondary_key"]
    assert outs_both["primary_key"] == outs3["primary_key"]
    outs3, news3 = outs_both, news_both
    # Scale in place: the same deployment, a new capacity.
    outs4 = provider.update("dev/churn", outs3, {**news3, "instance_count": 2}).outs
    assert outs4["deployment"] == "v03" and fake.endpoint("dev-churn").deployments["v03"]["body"]["sku"]["capacity"] == 2
    # Refresh: a leftover deployment with no traffic (an interrupted roll) reads as Orphaned; up removes it.
    assert provider.read("dev/churn", outs4).outs["state"] == "Healthy"
    c = client(fake, outs4)
    c.put_deployment("dev-churn", "v09", {k: v for k, v in fake.deployment_view(fake.endpoint("dev-churn"), "v03").items()
                                         if k in ("location", "tags", "sku")} | {"properties": fake.endpoint("dev-churn").deployments["v03"]["body"]["properties"]})
    orphaned = provider.read("dev/churn", outs4).outs
    assert orphaned["state"] == "Orphaned" and provider.diff("dev/churn", orphaned, news3 | {"instance_count": 2}).changes
    outs4 = provider.update("dev/churn", orphaned, {**news3, "instance_count": 2}).outs
    assert sorted(fake.endpoint("dev-churn").deployments) == ["v03"] and outs4["state"] == "Healthy"
    # Deleted behind our back reads as Missing (the next up restores it).
    provider.delete("dev/churn", outs4)
    assert fake.endpoint("dev-churn") is None
    assert provider.read("dev/churn", outs4).outs["state"] == "Missing"


def test_bad_service_inputs_name_the_field(fake: FakeAzureML):
    from engine_check import stack_settings
    from mldeploy.providers.targets import ArgsInvalid, target_for
    from mldeploy.providers.targets.service import ServiceProvider

    target = target_for("azureml")
    with pytest.raises(ArgsInvalid) as err:
        target.service_inputs({}, service_name="churn", resource_name="churn",
                              settings=stack_settings(project="p", stack="dev", azure_subscription_id="00000000-0000-0000-0000-000000000000",
                                                      azure_resource_group="rg", azure_location="westeurope"))
    # Every missing or unusable setting at once: the workspace, and a registry Azure cannot pull from.
    assert [f.property for f in err.value.failures] == ["workspace", "image_registry"] and "mldeploy:azureMlWorkspace" in str(err.value)
    with pytest.raises(ArgsInvalid, match="port"):
        target.service_inputs({"port": 8080}, service_name="churn", resource_name="churn",
                              settings=stack_settings(project="p", stack="dev", azure_subscription_id="00000000-0000-0000-0000-000000000000",
                                                      azure_resource_group="rg", azure_location="westeurope", azure_ml_workspace="ws",
                                                      image_registry="mlws.azurecr.io"))
    two = service_props(fake, models=[{"name": "a", "version": 1}, {"name": "b", "version": 1}])
    assert [f.property for f in ServiceProvider().check({}, two).failures] == ["models"]
    bad = service_props(fake, instance_count=0, endpoint_name="9-bad")
    assert sorted(f.property for f in ServiceProvider().check({}, bad).failures) == ["endpoint_name", "instance_count"]


def test_an_asset_without_its_files_is_refused_and_a_missing_folder_named(fake: FakeAzureML, tmp_path: Path):
    c = client(fake)
    p = props()
    name, version, body = bodies.model_asset(p, {"name": "lost", "version": 1})
    with pytest.raises(ArmError, match="no files under azureml://.*datastores/workspaceblobstore/paths/mldeploy/models/lost/1/"):
        c.ensure_asset("models", name, version, body)
    with pytest.raises(ArmError, match=f"nothing at {tmp_path}/nowhere"):
        c.ensure_asset("models", name, version, body, {"local": str(tmp_path / "nowhere"), "path": bodies.model_path(name, version)})
