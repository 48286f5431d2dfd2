"""Unit tests of the IoT Edge target: the manifest renderer and its checks, bad input by field,
the pure diff, the local agent against a fake Docker API, and the iothub backend against a
fake hub on 127.0.0.1. No Docker, no engine.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.parse
from typing import Any

import pytest
from pulumi.runtime import rpc

from fake_iothub import FakeHub
from preview_markdown import describe_edge_deployment
from mldeploy.providers.targets.iotedge import device as edge_device, edge_manifest
from mldeploy.providers.targets.iotedge import iothub
from mldeploy.providers.targets.iotedge.edge_agent import AgentError, LocalAgent, container_body, spec_hash
from mldeploy.providers.targets.iotedge.device import EdgeDeploymentProvider, diff_edge_deployment, module_versions
from mldeploy.providers.targets import iotedge, target_for
from mldeploy.providers.targets.iotedge import EdgeModuleArgs

IMAGE = "127.0.0.1:5000/mldeploy-proj-dev/scorer@sha256:" + "a" * 64
HUB = "fakehub.azure-devices.net"
KEY = base64.b64encode(b"k" * 32).decode()


@pytest.fixture(autouse=True)
def provider_docker(monkeypatch: pytest.MonkeyPatch) -> "FakeDocker":
    """The provider's local device is an in-memory Docker here: unit tests never ask the real engine."""
    api = FakeDocker()

    def fake_agent(self: EdgeDeploymentProvider, props: dict[str, Any]) -> LocalAgent:
        return LocalAgent(props["device"]["device_id"], edge_device.labels(props), edge_device.container_prefix(props),
                          api=api, grouped=edge_device.grouped(props))

    monkeypatch.setattr(EdgeDeploymentProvider, "_agent", fake_agent)
    return api


def module(**over: Any) -> dict[str, Any]:
    m = {"name": "scorer", "image": IMAGE, "version": "1", "env": {"LOG_LEVEL": "info"},
         "create_options": iotedge.create_options(EdgeModuleArgs(module_name="scorer"), 40001),
         "status": "running", "restart_policy": "always"}
    m.update(over)
    return m


def manifest(**over: Any) -> dict[str, Any]:
    return edge_manifest.render([module(**over)], {"upstream": "FROM /messages/modules/scorer/outputs/amlOutput INTO $upstream"})


# ---------------------------------------------------------------- renderer and schemas


def test_rendered_manifest_passes_the_three_schemas() -> None:
    m = manifest()
    assert edge_manifest.validate(m) == []
    agent = m["modulesContent"]["$edgeAgent"]["properties.desired"]
    assert agent["schemaVersion"] == "1.1"
    assert set(agent["systemModules"]) == {"edgeAgent", "edgeHub"}
    mod = agent["modules"]["scorer"]
    assert (mod["status"], mod["restartPolicy"], mod["type"], mod["version"]) == ("running", "always", "docker", "1")
    assert mod["env"] == {"LOG_LEVEL": {"value": "info"}}
    opts = json.loads(mod["settings"]["createOptions"])
    assert opts["HostConfig"]["PortBindings"]["5001/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": "40001"}]
    hub = m["modulesContent"]["$edgeHub"]["properties.desired"]
    assert hub["storeAndForwardConfiguration"] == {"timeToLiveSecs": 7200}
    assert m["modulesContent"]["scorer"] == {"properties.desired": {}}


def test_registry_credentials_render_in_runtime_settings() -> None:
    creds = {"acr": {"username": "u", "password": "p", "address": "127.0.0.1:5000"}}
    m = edge_manifest.render([module()], {}, creds)
    assert m["modulesContent"]["$edgeAgent"]["properties.desired"]["runtime"]["settings"]["registryCredentials"] == creds
    assert edge_manifest.validate(m) == []


def test_long_create_options_split_into_512_character_parts() -> None:
    opts = {"Env": [f"VAR_{i}=" + "x" * 40 for i in range(40)]}
    parts = edge_manifest.split_create_options(opts)
    assert list(parts)[:3] == ["createOptions", "createOptions01", "createOptions02"]
    assert all(len(p) <= 512 for p in parts.values()) and len(parts) <= 8
    assert json.loads(edge_manifest.join_create_options(parts)) == opts
    m = manifest(create_options=opts)
    assert edge_manifest.validate(m) == []
    settings = m["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["scorer"]["settings"]
    assert edge_manifest.join_create_options(settings) == edge_manifest.minify(opts)


def test_create_options_beyond_8_parts_name_the_field() -> None:
    with pytest.raises(edge_manifest.ManifestError, match=r"create_options: is \d+ characters minified, more than 8 parts of 512"):
        edge_manifest.split_create_options({"Env": ["x" * 5000]})


def test_schema_failures_name_the_json_path() -> None:
    m = manifest()
    mod = m["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["scorer"]
    mod["status"] = "paused"
    mod["settings"]["createOptions01"] = "{"
    mod["env"]["BAD.KEY"] = {"value": "1"}
    problems = dict(edge_manifest.validate(m))
    base = "$.modulesContent['$edgeAgent']['properties.desired'].modules.scorer"
    assert "'paused' is not one of ['running', 'stopped']" in problems[f"{base}.status"]
    assert "is not JSON" in problems[f"{base}.settings.createOptions"]
    assert "BAD.KEY" in problems[f"{base}.env"]
    assert len([p for p in edge_manifest.validate(m) if p[0] == f"{base}.status"]) == 1, "said once, not per schema"


def test_unknown_keys_and_missing_parts_fail_the_schema() -> None:
    m = manifest()
    del m["modulesContent"]["$edgeHub"]
    m["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["scorer"]["cpu"] = 1
    paths = [p for p, _ in edge_manifest.validate(m)]
    assert "$.modulesContent" in paths  # $edgeHub is required
    assert "$.modulesContent['$edgeAgent']['properties.desired'].modules.scorer" in paths


@pytest.mark.parametrize(
    "route",
    [
        "FROM /* INTO $upstream",
        "FROM /messages/* INTO $upstream",
        "from /messages/modules/tempSensor/outputs/temperatureOutput into BrokeredEndpoint(\"/modules/scorer/inputs/amlInput\")",
        "FROM /messages/modules/scorer/outputs/* WHERE $body.temp > 25 AND is_defined(x) INTO $upstream",
        "FROM /twinChangeNotifications INTO $upstream",
        {"route": "FROM /* INTO $upstream", "priority": 2, "timeToLiveSecs": 60},
    ],
)
def test_routes_that_parse(route: Any) -> None:
    assert "sink" in edge_manifest.parse_route(route)
    assert edge_manifest.check_routes({"r": route}) == []


@pytest.mark.parametrize(
    "route",
    [
        "FROM /* TO $upstream",
        "/* INTO $upstream",
        "FROM /* WHERE INTO $upstream",
        "FROM /* INTO upstream",
        "FROM /messages/modules/a b/outputs/x INTO $upstream",
        'FROM /* INTO BrokeredEndpoint("/modules/scorer/outputs/x")',
        "FROM somewhere INTO $upstream",
        "",
    ],
)
def test_routes_that_do_not_parse_are_named(route: str) -> None:
    problems = edge_manifest.check_routes({"toCloud": route})
    assert problems and problems[0][0] == "routes.toCloud"


def test_route_priority_and_name_rules() -> None:
    assert edge_manifest.check_routes({"r": {"route": "FROM /* INTO $upstream", "priority": 10}})[0][0] == "routes.r.priority"
    assert edge_manifest.check_routes({"a.b": "FROM /* INTO $upstream"})[0][0] == "routes.a.b"


# ---------------------------------------------------------------- bad input by field


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"module_name": "my module"}, "module_name"),
        ({"module_name": "edgeHub"}, "module_name"),
        ({"env": {"A.B": "1"}}, "env"),
        ({"env": {"$A": "1"}}, "env"),
        ({"env": {"A B": "1"}}, "env"),
        ({"create_options": "{not json"}, "create_options"),
        ({"create_options": "[1, 2]"}, "create_options"),
        ({"create_options": {"Env": ["x" * 5000]}}, "create_options"),
        ({"restart_policy": "sometimes"}, "restart_policy"),
        ({"status": "paused"}, "status"),
        ({"routes": {"r": "FROM /* TO $upstream"}}, "routes"),
        ({"port": 80}, "port"),
    ],
)
def test_bad_module_arguments_fail_by_field(given: dict[str, Any], field: str) -> None:
    from mldeploy.components import EdgeDevice, EdgeModule
    from mldeploy.components._common import ArgsError

    with pytest.raises(ArgsError, match=rf"EdgeModule 'edge': invalid arguments: {field}"):
        # Fails before models, image or anything else is looked at: nothing is pushed or started.
        EdgeModule("edge", models=[], image=None, device=EdgeDevice(), **{"module_name": "scorer", **given})  # type: ignore[arg-type]


def test_the_local_device_publishes_on_loopback_only() -> None:
    args = EdgeModuleArgs(module_name="scorer", create_options={"HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": "8080"}]}}})
    assert iotedge.check_local(args, iotedge.create_options(args, 40001)) == [
        ("create_options", "HostConfig.PortBindings 80/tcp: the local device publishes on 127.0.0.1 only")
    ]
    args = EdgeModuleArgs(module_name="scorer", create_options={"HostConfig": {"NetworkMode": "host"}})
    assert iotedge.check_local(args, iotedge.create_options(args, None))[0][0] == "create_options"


@pytest.mark.parametrize(
    ("given", "match"),
    [
        ({"device_id": "a device"}, "device_id"),
        ({"backend": "mqtt"}, "backend"),
        ({"backend": "iothub", "policy_key": KEY}, "hub_host is required"),
        ({"backend": "iothub", "hub_host": HUB}, "policy_key"),
    ],
)
def test_bad_device_arguments(given: dict[str, Any], match: str) -> None:
    from mldeploy.components import EdgeDevice
    from mldeploy.components._common import ArgsError

    with pytest.raises(ArgsError, match=match):
        EdgeDevice(**given)


def test_iotedge_is_a_registered_target_deployed_by_edge_module() -> None:
    t = target_for("iotedge")
    assert t.deployed_by == "EdgeModule"
    assert [f.property for f in t.check({"module_name": "scorer", "status": "paused"})] == ["status"]
    assert t.check({"module_name": "scorer"}) == []


def test_trial_manifest_of_defaults_passes() -> None:
    assert edge_manifest.validate(iotedge.trial_manifest(EdgeModuleArgs(module_name="scorer"), 40001)) == []


def test_default_port_is_stable_and_in_range() -> None:
    p = iotedge.default_port("proj", "dev", "scorer")
    assert p == iotedge.default_port("proj", "dev", "scorer") and iotedge.PORT_RANGE[0] <= p <= iotedge.PORT_RANGE[1]
    assert p != iotedge.default_port("proj", "prod", "scorer")


# ---------------------------------------------------------------- provider: check and diff


def props(**over: Any) -> dict[str, Any]:
    p = {
        "device": {"device_id": "local-device", "backend": "local", "hub_host": None, "policy_name": "iothubowner",
                   "endpoint": None, "api_version": "2021-04-12"},
        "policy_key": "",
        "modules": [{"name": "scorer", "image": IMAGE, "source_image_id": "sha256:" + "b" * 64, "models": {"ridge": 1},
                     "env": {}, "create_options": {}, "status": "running", "restart_policy": "always",
                     "image_pull_policy": "on-create"}],
        "routes": {},
        "registry": {"name": "mldeploy", "address": "127.0.0.1:5000", "username": None},
        "registry_password": "",
        "port": 40001,
        "project": "proj", "stack": "dev", "resource": "edge",
    }
    p.update(over)
    return p


def with_module(**over: Any) -> dict[str, Any]:
    p = props()
    p["modules"] = [{**p["modules"][0], **over}]
    return p


def test_module_version_goes_up_exactly_when_the_image_changes() -> None:
    first = {**props(), "module_versions": module_versions({}, props())}
    assert first["module_versions"] == {"scorer": 1}
    assert module_versions(first, with_module(env={"A": "1"})) == {"scorer": 1}, "env is not the image"
    assert module_versions(first, with_module(models={"ridge": 2})) == {"scorer": 2}
    assert module_versions(first, with_module(source_image_id="sha256:" + "c" * 64)) == {"scorer": 2}
    assert module_versions(first, with_module(source_image_id=rpc.UNKNOWN)) == {"scorer": 2}, "a rebuild at preview"
    assert module_versions({**first, "module_versions": {"scorer": 1.0}}, props()) == {"scorer": 1}, "numbers come back as floats"


def test_check_renders_and_validates_when_known() -> None:
    result = EdgeDeploymentProvider().check({}, props())
    assert result.failures == []
    assert result.inputs["module_versions"] == {"scorer": 1}
    assert edge_manifest.modules_of(result.inputs["manifest"])["scorer"]["settings"]["image"] == IMAGE
    unknown = EdgeDeploymentProvider().check({}, with_module(image=rpc.UNKNOWN))
    assert unknown.failures == [] and unknown.inputs["manifest"] == rpc.UNKNOWN
    from pulumi.output import Unknown

    # As the engine hands them to a dynamic provider at preview: objects, at any depth.
    nested = EdgeDeploymentProvider().check({}, with_module(image=Unknown()))
    assert nested.failures == [] and nested.inputs["modules"][0]["image"] == rpc.UNKNOWN


def test_check_names_bad_fields() -> None:
    failures = EdgeDeploymentProvider().check({}, with_module(status="paused", env={"A.B": "x"})).failures
    assert {f.property for f in failures} == {"modules[0].status", "modules[0].env.A.B"}
    hub = props(device={**props()["device"], "backend": "iothub", "hub_host": HUB})
    assert [f.property for f in EdgeDeploymentProvider().check({}, hub).failures] == ["policy_key"]
    bad_route = EdgeDeploymentProvider().check({}, props(routes={"r": "FROM x"})).failures
    assert [f.property for f in bad_route] == ["routes.r"]


def checked(p: dict[str, Any], olds: dict[str, Any] | None = None) -> dict[str, Any]:
    return EdgeDeploymentProvider().check(olds or {}, p).inputs


def test_diff_rules() -> None:
    old = checked(props())
    assert not diff_edge_deployment(old, checked(props(), old)).changes
    bump = diff_edge_deployment(old, checked(with_module(models={"ridge": 2}, image=IMAGE[:-1] + "b"), old))
    assert bump.changes and bump.replaces == []
    other = diff_edge_deployment(old, checked(props(device={**props()["device"], "device_id": "other"}), old))
    assert other.replaces == ["device"] and other.delete_before_replace
    assert diff_edge_deployment(old, checked(props(port=40002), old)).changes
    assert diff_edge_deployment({**old, "drift": {"scorer": "exited"}}, checked(props(), old)).changes
    assert diff_edge_deployment(old, {**checked(props(), old), "manifest": rpc.UNKNOWN}).changes


def test_preview_words() -> None:
    old = {**checked(props()), "drift": {}}
    new = checked(with_module(models={"ridge": 2}, image=IMAGE[:-1] + "b"), old)
    words = describe_edge_deployment(old, new)
    assert words[0] == "module `scorer` image → v2; model `ridge` version 1 → 2"
    assert words[-1] == "a new manifest is applied to device `local-device` (local)"
    assert describe_edge_deployment({}, checked(props()))[0] == "module `scorer` v1 on device `local-device` (local) with `ridge` v1"
    drifted = describe_edge_deployment({**old, "drift": {"scorer": "exited"}}, checked(props(), old))
    assert drifted == ["found by refresh: module `scorer` exited: restored"]


# ---------------------------------------------------------------- local agent (fake Docker API)


class FakeDocker:
    """The few Engine API calls the agent makes, in memory, with a log of them."""

    def __init__(self) -> None:
        self.containers_: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []

    def containers(self, **kw: Any) -> list[dict[str, Any]]:
        assert kw.get("all") is True, "stopped modules count too"
        want = dict(f.split("=", 1) for f in (kw.get("filters") or {}).get("label", []))
        return [{"Id": cid, "State": c["State"], "Labels": c["Labels"]} for cid, c in self.containers_.items()
                if all(c["Labels"].get(k) == v for k, v in want.items())]

    def pull(self, repo: str, tag: str, stream: bool, decode: bool) -> list[dict[str, Any]]:
        self.calls.append(("pull", f"{repo}:{tag}" if not tag.startswith("sha256:") else f"{repo}@{tag}"))
        return [{"status": "ok"}]

    def create_container_from_config(self, body: dict[str, Any], name: str) -> dict[str, str]:
        cid = f"c{len(self.calls)}"
        self.containers_[cid] = {"State": "created", "Labels": body["Labels"], "body": body, "name": name}
        self.calls.append(("create", name))
        return {"Id": cid}

    def start(self, cid: str) -> None:
        self.containers_[cid]["State"] = "running"
        self.calls.append(("start", cid))

    def stop(self, cid: str, timeout: int = 10) -> None:
        self.containers_[cid]["State"] = "exited"
        self.calls.append(("stop", cid))

    def remove_container(self, cid: str, force: bool = False) -> None:
        self.containers_.pop(cid)
        self.calls.append(("remove", cid))

    def remove_image(self, ref: str) -> None:
        self.calls.append(("remove_image", ref))


def agent(api: FakeDocker) -> LocalAgent:
    return LocalAgent("dev1", {"mldeploy.stack": "dev", "mldeploy.resource": "edge"}, "proj-dev-dev1-", api=api)


def test_agent_creates_modules_as_the_iot_edge_agent_does() -> None:
    api = FakeDocker()
    started = agent(api).apply(manifest())
    assert [c[0] for c in api.calls] == ["pull", "create", "start"]
    assert api.calls[0] == ("pull", IMAGE)
    (c,) = api.containers_.values()
    body = c["body"]
    assert c["name"] == "proj-dev-dev1-scorer" and started == {"scorer": next(iter(api.containers_))}
    assert body["Image"] == IMAGE
    assert "LOG_LEVEL=info" in body["Env"] and "IOTEDGE_MODULEID=scorer" in body["Env"]
    assert body["HostConfig"]["PortBindings"]["5001/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": "40001"}]
    assert body["HostConfig"]["RestartPolicy"] == {"Name": "unless-stopped"}
    assert body["Labels"]["net.azure-devices.edge.desiredStatus"] == "running"
    assert body["Labels"]["net.azure-devices.edge.restartPolicy"] == "always"
    assert body["Labels"]["mldeploy.edge.device"] == "dev1"


def test_agent_keeps_what_matches_and_replaces_what_changed() -> None:
    api = FakeDocker()
    agent(api).apply(manifest())
    api.calls.clear()
    agent(api).apply(manifest())
    assert api.calls == [], "same manifest: nothing to do"
    agent(api).apply(manifest(image=IMAGE[:-1] + "b", version="2"))
    assert [c[0] for c in api.calls] == ["stop", "remove", "pull", "create", "start"]


def test_agent_applies_status_and_removes_modules_left_out() -> None:
    api = FakeDocker()
    agent(api).apply(manifest(status="stopped"))
    (c,) = api.containers_.values()
    assert c["State"] == "created", "a stopped module is created, not started"
    agent(api).apply(edge_manifest.render([], {}))
    assert api.containers_ == {}


def test_agent_finds_drift() -> None:
    api = FakeDocker()
    m = manifest()
    agent(api).apply(m)
    assert agent(api).drift(m) == {}
    cid = next(iter(api.containers_))
    api.stop(cid)
    assert agent(api).drift(m) == {"scorer": "exited"}
    api.remove_container(cid)
    assert agent(api).drift(m) == {"scorer": "missing"}
    agent(api).apply(m)
    assert agent(api).drift(m) == {}


def test_agent_refuses_bindings_beyond_loopback_and_bad_manifests() -> None:
    opts = {"HostConfig": {"PortBindings": {"5001/tcp": [{"HostIp": "0.0.0.0", "HostPort": "1"}]}}}
    with pytest.raises(AgentError, match="127.0.0.1 only"):
        container_body("scorer", edge_manifest.module_entry(module(create_options=opts)), {})
    bad = manifest()
    bad["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["scorer"]["restartPolicy"] = "sometimes"
    api = FakeDocker()
    with pytest.raises(edge_manifest.ManifestError, match=r"modules\.scorer\.restartPolicy"):
        agent(api).apply(bad)
    assert api.calls == [], "nothing is pulled or started"


def test_spec_hash_follows_the_module() -> None:
    entry = edge_manifest.module_entry(module())
    assert spec_hash("scorer", entry) == spec_hash("scorer", json.loads(json.dumps(entry)))
    assert spec_hash("scorer", entry) != spec_hash("scorer", {**entry, "restartPolicy": "never"})
    # Options that travelled through the engine come back with their keys in another order.
    a = edge_manifest.split_create_options({"HostConfig": {"Binds": ["/a:/a"], "PortBindings": {}}, "Env": ["A=1"]})
    b = edge_manifest.split_create_options({"Env": ["A=1"], "HostConfig": {"PortBindings": {}, "Binds": ["/a:/a"]}})
    assert a == b
    reordered = {**entry, "settings": {"image": IMAGE, "createOptions": '{"HostConfig":{"PortBindings":{"5001/tcp":[{"HostPort":"40001","HostIp":"127.0.0.1"}]}},"ExposedPorts":{"5001/tcp":{}}}'}}
    assert spec_hash("scorer", entry) == spec_hash("scorer", reordered)


# ---------------------------------------------------------------- iothub backend (fake hub on 127.0.0.1)


@pytest.fixture
def hub() -> Any:
    with FakeHub(HUB, {"iothubowner": KEY}, {"edge1": True, "leaf1": False}) as h:
        yield h


def client(h: FakeHub, key: str = KEY, **kw: Any) -> iothub.IoTHubClient:
    return iothub.IoTHubClient(HUB, "iothubowner", key, base_url=h.endpoint, **kw)


def test_sas_token_shape() -> None:
    token = iothub.sas_token(HUB, KEY, "iothubowner", expiry=1_900_000_000)
    assert token.startswith(f"SharedAccessSignature sr={HUB}&sig=") and token.endswith("&se=1900000000&skn=iothubowner")
    assert FakeHub(HUB, {"iothubowner": KEY}, {}).auth_problem(token) is None


def test_apply_configuration_content(hub: FakeHub) -> None:
    m = manifest()
    client(hub).apply_configuration_content("edge1", m)
    assert hub.applied["edge1"] == m
    req = hub.requests[-1]
    assert req["path"] == "/devices/edge1/applyConfigurationContent" and req["query"]["api-version"] == ["2021-04-12"]


@pytest.mark.parametrize(
    ("device", "kw", "status", "words"),
    [
        ("nosuch", {}, 404, "DeviceNotFound"),
        ("leaf1", {}, 400, "not an IoT Edge device"),
        ("edge1", {"key": base64.b64encode(b"w" * 32).decode()}, 401, "signature does not match"),
        ("edge1", {"api_version": "2019-01-01"}, 400, "InvalidProtocolVersion"),
    ],
)
def test_hub_refusals_carry_its_answer(hub: FakeHub, device: str, kw: dict[str, Any], status: int, words: str) -> None:
    with pytest.raises(iothub.IoTHubError, match=words) as err:
        client(hub, **kw).apply_configuration_content(device, manifest())
    assert err.value.status == status
    assert device not in hub.applied


def test_fake_hub_checks_expiry_and_body(hub: FakeHub) -> None:
    import requests

    token = iothub.sas_token(HUB, KEY, "iothubowner", expiry=int(time.time()) - 5)
    r = requests.post(f"{hub.endpoint}/devices/edge1/applyConfigurationContent", params={"api-version": "2021-04-12"},
                      headers={"Authorization": token}, json=manifest(), timeout=10)
    assert r.status_code == 401 and "expired" in r.text
    good = iothub.sas_token(HUB, KEY, "iothubowner")
    bad = manifest()
    bad["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["scorer"]["status"] = "paused"
    r = requests.post(f"{hub.endpoint}/devices/edge1/applyConfigurationContent", params={"api-version": "2021-04-12"},
                      headers={"Authorization": good}, json=bad, timeout=10)
    assert r.status_code == 400 and "status" in r.json()["Message"]


def test_client_checks_the_manifest_before_sending(hub: FakeHub) -> None:
    bad = manifest()
    bad["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["scorer"]["status"] = "paused"
    with pytest.raises(edge_manifest.ManifestError, match="scorer.status"):
        client(hub).apply_configuration_content("edge1", bad)
    assert hub.requests == [], "nothing was sent"


def iothub_props(h: FakeHub, device_id: str = "edge1") -> dict[str, Any]:
    dev = {**props()["device"], "device_id": device_id, "backend": "iothub", "hub_host": HUB, "endpoint": h.endpoint}
    return checked(props(device=dev, policy_key=KEY, port=None))


def test_provider_applies_through_the_hub_and_empties_the_device_on_delete(hub: FakeHub) -> None:
    p = EdgeDeploymentProvider()
    created = p.create(iothub_props(hub))
    assert created.outs["state"] == "Applied" and created.outs["scoring_uri"] == ""
    assert edge_manifest.modules_of(hub.applied["edge1"])["scorer"]["settings"]["image"] == IMAGE
    p.delete(created.id, created.outs)
    assert edge_manifest.modules_of(hub.applied["edge1"]) == {}, "the device keeps only the system modules"


def test_provider_shows_the_hubs_answer_for_an_unknown_device(hub: FakeHub) -> None:
    with pytest.raises(iothub.IoTHubError, match=r"device 'ghost'.*404.*DeviceNotFound"):
        EdgeDeploymentProvider().create(iothub_props(hub, "ghost"))
    p = iothub_props(hub, "ghost")
    EdgeDeploymentProvider().delete("ghost/edge", p)  # gone already counts as deleted


def test_azure_iot_hub_sdk_is_accepted_by_the_fake_hub(hub: FakeHub) -> None:
    """An independent client: the SDK signs and sends; the fake checks it as it checks ours."""
    from azure.iot.hub import IoTHubConfigurationManager
    from azure.iot.hub.models import ConfigurationContent

    mgr = IoTHubConfigurationManager(f"HostName={HUB};SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}")
    mgr.protocol.config.base_url = hub.endpoint  # the SDK only builds https://<HostName>; point it at 127.0.0.1
    m = manifest()
    mgr.apply_configuration_on_edge_device("edge1", ConfigurationContent(modules_content=m["modulesContent"]))
    assert hub.applied["edge1"] == m
    assert hub.requests[-1]["headers"]["Authorization"].startswith("SharedAccessSignature sr=")


# ---------------------------------------------------------------- iothub at scale: configurations


PROD = "tags.environment='prod'"


def at_scale_props(h: FakeHub | None, olds: dict[str, Any] | None = None, p: dict[str, Any] | None = None, **over: Any) -> dict[str, Any]:
    base = p or props()
    dev = {**base["device"], "device_id": "edge1", "backend": "iothub", "hub_host": HUB,
           "endpoint": h.endpoint if h else "http://127.0.0.1:9"}
    return checked({**base, "device": dev, "policy_key": KEY, "port": None, "target_condition": PROD, "priority": 0, **over}, olds)


def test_configuration_id_is_names_and_a_content_hash() -> None:
    p = at_scale_props(None)
    cid = p["configuration_id"]
    assert cid.startswith("proj-dev-edge-") and len(cid) == len("proj-dev-edge-") + 12
    assert edge_device.configuration_id(p) == cid, "the same content, the same id"
    bumped = at_scale_props(None, p, with_module(models={"ridge": 2}, image=IMAGE[:-1] + "b"))
    assert bumped["configuration_id"] != cid and bumped["configuration_id"].startswith("proj-dev-edge-")
    assert at_scale_props(None, p, priority=5)["configuration_id"] == cid, "priority is not content"
    assert at_scale_props(None, p, target_condition="deviceId='edge2'")["configuration_id"] == cid
    rotated = at_scale_props(None, p, registry={**props()["registry"], "username": "u"}, registry_password="p1")
    assert at_scale_props(None, p, registry={**props()["registry"], "username": "u"}, registry_password="p2")["configuration_id"] != rotated["configuration_id"]
    assert "p1" not in rotated["configuration_id"]
    long = edge_device.configuration_id({**p, "project": "My Project/" + "x" * 200})
    assert len(long) <= 128 and re.fullmatch(r"[a-z0-9\-:+%_#*?!(),=@;']+", long)
    assert at_scale_props(None, p, modules=[{**props()["modules"][0], "image": rpc.UNKNOWN}])["configuration_id"] == rpc.UNKNOWN
    assert edge_device.configuration_labels({**p, "resource": "my edge/é"})["mldeployResource"] == "my-edge--"


def test_configuration_change_rule() -> None:
    old = {**at_scale_props(None), "configuration_etag": "MQ=="}
    assert edge_device.configuration_change(old, at_scale_props(None, old)) == "none"
    assert edge_device.configuration_change(old, at_scale_props(None, old, priority=3)) == "update"
    assert edge_device.configuration_change(old, at_scale_props(None, old, target_condition="deviceId='d'")) == "update"
    assert edge_device.configuration_change(old, {**at_scale_props(None, old), "configuration_labels": {"a": "b"}}) == "update"
    new_content = at_scale_props(None, old, with_module(env={"A": "1"}))
    assert edge_device.configuration_change(old, new_content) == "replace"
    assert edge_device.configuration_change(old, {**new_content, "configuration_id": rpc.UNKNOWN}) == "replace"
    assert edge_device.configuration_change(checked(props()), old) == "create"
    assert edge_device.configuration_change(old, checked(props())) == ""


def test_diff_of_an_at_scale_deployment() -> None:
    old = at_scale_props(None)
    assert not diff_edge_deployment(old, at_scale_props(None, old)).changes
    content = diff_edge_deployment(old, at_scale_props(None, old, with_module(models={"ridge": 2}, image=IMAGE[:-1] + "b")))
    assert content.changes and content.replaces == [], "an update that creates the new id, then deletes the old"
    priority = diff_edge_deployment(old, at_scale_props(None, old, priority=7))
    assert priority.changes and priority.replaces == []
    one_device = {**old, "target_condition": None, "priority": None, "configuration_id": None}
    switch = diff_edge_deployment(one_device, old)
    assert switch.replaces == ["target_condition"] and switch.delete_before_replace
    assert diff_edge_deployment(old, one_device).replaces == ["target_condition"]


@pytest.mark.parametrize(
    ("over", "field", "words"),
    [
        ({"target_condition": PROD}, "target_condition", "backend='iothub'"),
        ({"priority": 2}, "priority", "local device takes none"),
    ],
)
def test_at_scale_settings_with_the_local_backend_fail_at_check(over: dict[str, Any], field: str, words: str) -> None:
    failures = EdgeDeploymentProvider().check({}, props(**over)).failures
    assert [f.property for f in failures] == [field] and words in failures[0].reason


@pytest.mark.parametrize(
    ("over", "field", "words"),
    [
        ({"target_condition": ""}, "target_condition", "must not be empty"),
        ({"target_condition": "   "}, "target_condition", "must not be empty"),
        ({"target_condition": "FROM devices WHERE tags.x='y'"}, "target_condition", "from devices.modules where"),
        ({"priority": -1}, "priority", "greater than or equal to 0"),
        ({"priority": 1.5}, "priority", "fractional"),
        ({"priority": True}, "priority", "whole number"),
        ({"priority": "3"}, "priority", "whole number"),
        ({"priority": 2**31}, "priority", "less than or equal"),
        ({"target_condition": None, "priority": 3}, "priority", "give target_condition too"),
    ],
)
def test_bad_at_scale_settings_fail_at_check_by_field(over: dict[str, Any], field: str, words: str) -> None:
    dev = {**props()["device"], "device_id": "edge1", "backend": "iothub", "hub_host": HUB}
    failures = EdgeDeploymentProvider().check({}, props(**{"device": dev, "policy_key": KEY, "port": None, "target_condition": PROD, **over})).failures
    assert [f.property for f in failures] == [field] and words in failures[0].reason


@pytest.mark.parametrize(
    "condition",
    [PROD, "deviceId='edge1'", "tags.building=3 and tags.environment='dev'", "*",
     "from devices.modules where tags.environment='prod'", "FROM devices.modules WHERE moduleId='scorer'"],
)
def test_target_conditions_taken_as_written(condition: str) -> None:
    from mldeploy.components import EdgeDevice

    d = EdgeDevice("edge1", backend="iothub", hub_host=HUB, policy_key=KEY, target_condition=condition, priority=4)
    assert (d.at_scale.target_condition, d.at_scale.priority) == (condition, 4)
    assert at_scale_props(None, target_condition=condition)["configuration_id"]


@pytest.mark.parametrize(
    ("given", "match"),
    [
        ({"target_condition": PROD}, "target_condition: an at-scale deployment goes through IoT Hub"),
        ({"priority": 1}, "priority: applies to at-scale deployments through IoT Hub only"),
        ({"backend": "iothub", "hub_host": HUB, "policy_key": KEY, "target_condition": ""}, "target_condition: must not be empty"),
        ({"backend": "iothub", "hub_host": HUB, "policy_key": KEY, "target_condition": PROD, "priority": -3}, "priority: Input should be greater than or equal to 0"),
        ({"backend": "iothub", "hub_host": HUB, "policy_key": KEY, "target_condition": "from devices where x=1"}, "target_condition: a module twin"),
    ],
)
def test_bad_at_scale_device_arguments_name_the_field(given: dict[str, Any], match: str) -> None:
    from mldeploy.components import EdgeDevice
    from mldeploy.components._common import ArgsError

    with pytest.raises(ArgsError, match=rf"EdgeDevice 'edge1': invalid arguments: {match}"):
        EdgeDevice("edge1", **given)


def test_client_creates_reads_updates_and_deletes_a_configuration(hub: FakeHub) -> None:
    c, m = client(hub), manifest()
    body = iothub.configuration_body("proj-dev-edge-0123456789ab", m, PROD, 2, {"mldeployStack": "dev"})
    got = c.put_configuration(body)
    req = hub.requests[-1]
    assert (req["method"], req["path"], req["query"]["api-version"]) == ("PUT", "/configurations/proj-dev-edge-0123456789ab", ["2021-04-12"])
    assert "If-Match" not in req["headers"], "no If-Match on create"
    sent = json.loads(req["body"])
    assert sent == {"id": "proj-dev-edge-0123456789ab", "schemaVersion": "2.0", "labels": {"mldeployStack": "dev"},
                    "content": {"modulesContent": m["modulesContent"]}, "metrics": {"queries": {}},
                    "targetCondition": PROD, "priority": 2}
    assert got["etag"] and c.get_configuration(body["id"])["targetCondition"] == PROD
    updated = c.put_configuration({**body, "priority": 9}, if_match=got["etag"])
    assert updated["priority"] == 9 and updated["etag"] != got["etag"]
    assert c.delete_configuration(body["id"]) is True
    assert hub.requests[-1]["headers"]["If-Match"] == "*"
    assert c.get_configuration(body["id"]) is None and c.delete_configuration(body["id"]) is False


def test_fake_hub_refuses_what_the_hub_refuses(hub: FakeHub) -> None:
    import requests

    c, m = client(hub), manifest()
    body = iothub.configuration_body("cfg-1", m, PROD, 0)
    etag = c.put_configuration(body)["etag"]
    other = manifest(env={"LOG_LEVEL": "debug"})
    with pytest.raises(iothub.IoTHubError, match=r"refused to update configuration 'cfg-1': 409 .*content cannot be updated") as err:
        c.put_configuration(iothub.configuration_body("cfg-1", other, PROD, 0), if_match=etag)
    assert err.value.status == 409 and hub.configurations["cfg-1"]["content"]["modulesContent"] == m["modulesContent"]
    with pytest.raises(iothub.IoTHubError, match=r"refused to create configuration 'cfg-1': 409 .*already exists"):
        c.put_configuration(body)
    with pytest.raises(iothub.IoTHubError, match=r"412 .*PreconditionFailed") as err:
        c.put_configuration({**body, "priority": 1}, if_match="bm90IGl0")
    assert err.value.status == 412
    with pytest.raises(iothub.IoTHubError, match="412"):
        c.delete_configuration("cfg-1", if_match="bm90IGl0")
    token = iothub.sas_token(HUB, KEY, "iothubowner")
    url = f"{hub.endpoint}/configurations/"
    r = requests.delete(url + "nosuch", params={"api-version": "2021-04-12"}, headers={"Authorization": token, "If-Match": "*"}, timeout=10)
    assert r.status_code == 404 and "ConfigurationNotFound" in r.json()["Message"]
    for bad_id in ("Upper", "has space", "x" * 129, "slash$"):
        r = requests.put(url + urllib.parse.quote(bad_id, safe=""), params={"api-version": "2021-04-12"},
                         headers={"Authorization": token}, json={**body, "id": bad_id}, timeout=10)
        assert r.status_code == 400 and "configuration id" in r.json()["Message"], bad_id
    bad = manifest()
    bad["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["scorer"]["status"] = "paused"
    r = requests.put(url + "cfg-2", params={"api-version": "2021-04-12"}, headers={"Authorization": token},
                     json=iothub.configuration_body("cfg-2", bad, PROD, 0), timeout=10)
    assert r.status_code == 400 and "content.modulesContent['$edgeAgent']" in r.json()["Message"] and "status" in r.json()["Message"]
    r = requests.put(url + "cfg-3", params={"api-version": "2021-04-12"}, headers={"Authorization": token},
                     json={**iothub.configuration_body("cfg-2", m, PROD, 0)}, timeout=10)
    assert r.status_code == 400 and "is not the URL's" in r.json()["Message"]
    r = requests.put(url + "cfg-5", params={"api-version": "2021-04-12"}, headers={"Authorization": token},
                     json=iothub.configuration_body("cfg-5", m, PROD, 0, {"made by": "me"}), timeout=10)
    assert r.status_code == 400 and "labels.made by" in r.json()["Message"]
    r = requests.put(url + "cfg-4", params={"api-version": "2021-04-12"}, headers={"Authorization": iothub.sas_token(HUB, KEY, "iothubowner", int(time.time()) - 5)},
                     json=iothub.configuration_body("cfg-4", m, PROD, 0), timeout=10)
    assert r.status_code == 401 and "expired" in r.text
    assert set(hub.configurations) == {"cfg-1"}


def test_client_checks_the_configuration_content_before_sending(hub: FakeHub) -> None:
    bad = manifest()
    bad["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["scorer"]["status"] = "paused"
    with pytest.raises(edge_manifest.ManifestError, match="scorer.status"):
        client(hub).put_configuration(iothub.configuration_body("cfg-1", bad, PROD, 0))
    assert hub.requests == [], "nothing was sent"


def test_provider_creates_replaces_updates_and_deletes_an_at_scale_deployment(hub: FakeHub) -> None:
    p = EdgeDeploymentProvider()
    first = at_scale_props(hub)
    created = p.create(first).outs
    cid = first["configuration_id"]
    assert set(hub.configurations) == {cid} and hub.applied == {}, "a configuration, no single-device apply"
    stored = hub.configurations[cid]
    assert (stored["targetCondition"], stored["priority"], stored["schemaVersion"]) == (PROD, 0, "2.0")
    assert stored["labels"] == {"mldeployProject": "proj", "mldeployStack": "dev", "mldeployResource": "edge"}
    assert edge_manifest.modules_of({"modulesContent": stored["content"]["modulesContent"]})["scorer"]["settings"]["image"] == IMAGE
    assert created["configuration_etag"] == stored["etag"] and created["state"] == "Applied"

    # A new manifest: a new id created first, then the old one deleted.
    v2 = with_module(models={"ridge": 2}, image=IMAGE[:-1] + "b")
    bumped = at_scale_props(hub, created, v2)
    assert bumped["configuration_id"] != cid
    hub.requests.clear()
    outs = p.update("edge1/edge", created, bumped).outs
    assert [(r["method"], r["path"]) for r in hub.requests] == [
        ("PUT", f"/configurations/{bumped['configuration_id']}"), ("DELETE", f"/configurations/{cid}")]
    assert "If-Match" not in hub.requests[0]["headers"] and hub.requests[1]["headers"]["If-Match"] == "*"
    assert set(hub.configurations) == {bumped["configuration_id"]}
    assert edge_manifest.modules_of(hub.configurations[bumped["configuration_id"]]["content"])["scorer"]["version"] == "2"

    # Only the priority: the same id, in place, If-Match its etag.
    moved = at_scale_props(hub, outs, v2, priority=10, target_condition="tags.environment='prod' and tags.ring=1")
    assert moved["configuration_id"] == bumped["configuration_id"]
    hub.requests.clear()
    etag = outs["configuration_etag"]
    outs2 = p.update("edge1/edge", outs, moved).outs
    assert [(r["method"], r["headers"].get("If-Match")) for r in hub.requests] == [("PUT", f'"{etag}"')]
    now = hub.configurations[moved["configuration_id"]]
    assert (now["priority"], now["targetCondition"]) == (10, "tags.environment='prod' and tags.ring=1")
    assert outs2["configuration_etag"] == now["etag"] != etag

    p.delete("edge1/edge", outs2)
    assert hub.configurations == {} and hub.requests[-1]["method"] == "DELETE"
    p.delete("edge1/edge", outs2)  # gone already counts as deleted


def test_provider_shows_the_hubs_refusal(hub: FakeHub) -> None:
    p = EdgeDeploymentProvider()
    created = p.create(at_scale_props(hub)).outs
    # Someone changed the configuration on the hub since: its etag moved on.
    client(hub).put_configuration({**iothub.configuration_body(created["configuration_id"], created["manifest"], PROD, 1)}, if_match="*")
    with pytest.raises(iothub.IoTHubError, match=r"refused to update configuration 'proj-dev-edge-[0-9a-f]{12}': 412 .*PreconditionFailed"):
        p.update("edge1/edge", created, at_scale_props(hub, created, priority=5))
    with pytest.raises(iothub.IoTHubError, match=r"401 .*signature does not match"):
        p.create(at_scale_props(hub, policy_key=base64.b64encode(b"w" * 32).decode()))


def test_a_create_adopts_its_own_configuration_left_by_an_interrupted_up(hub: FakeHub) -> None:
    p = EdgeDeploymentProvider()
    first = at_scale_props(hub)
    p.create(first)  # the state of this one was never saved
    outs = p.create({**first, "priority": 4}).outs
    assert hub.configurations[first["configuration_id"]]["priority"] == 4
    assert outs["configuration_etag"] == hub.configurations[first["configuration_id"]]["etag"]
    # Another content under the id is not ours to take.
    hub.configurations[first["configuration_id"]]["content"] = {"modulesContent": manifest(env={"X": "1"})["modulesContent"]}
    with pytest.raises(iothub.IoTHubError, match="409 .*already exists"):
        p.create(first)


def test_azure_iot_hub_sdk_configurations_are_accepted_by_the_fake_hub(hub: FakeHub) -> None:
    """The SDK's create/get/update/delete of a configuration, checked by the fake as ours are."""
    from azure.iot.hub import IoTHubConfigurationManager
    from azure.iot.hub.models import Configuration, ConfigurationContent

    mgr = IoTHubConfigurationManager(f"HostName={HUB};SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}")
    mgr.protocol.config.base_url = hub.endpoint
    m = manifest()
    config = Configuration(id="sdk-cfg", schema_version="2.0", labels={"by": "sdk"}, target_condition=PROD, priority=3,
                           content=ConfigurationContent(modules_content=m["modulesContent"]))
    made = mgr.create_configuration(config)
    assert made.etag and hub.configurations["sdk-cfg"]["content"]["modulesContent"] == m["modulesContent"]
    assert "If-Match" not in hub.requests[-1]["headers"]
    got = mgr.get_configuration("sdk-cfg")
    assert (got.target_condition, got.priority) == (PROD, 3)
    config.priority = 8
    assert mgr.update_configuration(config, made.etag).priority == 8
    mgr.delete_configuration("sdk-cfg")
    assert hub.configurations == {}
    # The same client reading our provider's configuration back.
    p = at_scale_props(hub)
    EdgeDeploymentProvider().create(p)
    ours = mgr.get_configuration(p["configuration_id"])
    assert (ours.target_condition, ours.priority, ours.content.modules_content) == (PROD, 0, p["manifest"]["modulesContent"])


def test_configuration_drift_rule() -> None:
    from mldeploy.providers.targets.iotedge.device import configuration_drift

    props = {"target_condition": PROD, "priority": 3}
    assert configuration_drift(props, None) == {"configuration": "deleted on the hub"}
    assert configuration_drift(props, {"targetCondition": PROD, "priority": 3}) == {}
    assert configuration_drift(props, {"targetCondition": "tags.x='y'", "priority": 7}) == {
        "target_condition": "changed on the hub to \"tags.x='y'\"", "priority": "changed on the hub to 7"}


def test_refresh_finds_a_configuration_deleted_or_changed_on_the_hub_and_up_restores_it(hub: FakeHub) -> None:
    from mldeploy.providers.targets.iotedge.device import diff_edge_deployment

    p = EdgeDeploymentProvider()
    props = at_scale_props(hub)
    outs = p.create(props).outs
    cid = props["configuration_id"]
    assert p.read("edge1/edge", outs).outs["drift"] == {}

    # Changed on the hub: refresh says so, with the hub's etag, and up puts ours back in place.
    client(hub).put_configuration(iothub.configuration_body(cid, outs["manifest"], PROD, 9), if_match="*")
    read = p.read("edge1/edge", outs).outs
    assert read["drift"] == {"priority": "changed on the hub to 9"} and read["configuration_etag"] == hub.configurations[cid]["etag"]
    assert diff_edge_deployment(read, props).changes
    restored = p.update("edge1/edge", read, props).outs
    assert hub.configurations[cid]["priority"] == 0 and restored["drift"] == {}

    # Deleted on the hub: created again under the same id.
    hub.configurations.clear()
    read = p.read("edge1/edge", restored).outs
    assert read["drift"] == {"configuration": "deleted on the hub"} and read["state"] == "Drifted"
    p.update("edge1/edge", read, props)
    assert list(hub.configurations) == [cid]

    # The hub unreachable at refresh: what we had, no drift invented.
    hub.__exit__()
    assert p.read("edge1/edge", restored).outs == restored


def test_a_rotated_policy_key_changes_no_id_and_a_replace_deletes_with_the_new_key(hub: FakeHub) -> None:
    p = EdgeDeploymentProvider()
    reg = {**props()["registry"], "username": "u"}
    first = at_scale_props(hub, registry=reg, registry_password="pw")
    created = p.create(first).outs
    new_key = base64.b64encode(b"n" * 32).decode()
    rotated = at_scale_props(hub, created, registry=reg, registry_password="pw", policy_key=new_key)
    assert rotated["configuration_id"] == first["configuration_id"], "the policy key is not content"
    assert rotated["configuration_salt"] == first["configuration_salt"]
    # The old key is revoked on the hub; a new manifest is created, and the old one deleted, with the new key.
    hub.policies["iothubowner"] = new_key
    bumped = at_scale_props(hub, created, with_module(models={"ridge": 2}, image=IMAGE[:-1] + "b"),
                            registry=reg, registry_password="pw", policy_key=new_key)
    p.update("edge1/edge", created, bumped)
    assert list(hub.configurations) == [bumped["configuration_id"]]


def test_at_scale_a_new_device_id_replaces_nothing() -> None:
    old = at_scale_props(None)
    moved = at_scale_props(None, old, device={**old["device"], "device_id": "other"})
    assert diff_edge_deployment(old, moved).replaces == []
    single = checked({**props(), "device": {**old["device"]}, "policy_key": KEY, "port": None})
    assert diff_edge_deployment(single, checked({**single, "device": {**single["device"], "device_id": "other"}}, single)).replaces == ["device"]


def test_at_scale_the_previous_image_stays_one_update_longer(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    from mldeploy.providers.image_registry import oci_registry

    deleted: list[str] = []
    monkeypatch.setattr(oci_registry, "delete_manifest", lambda repo, digest, **_k: deleted.append(f"{repo}@{digest}"))
    p = EdgeDeploymentProvider()
    v1 = p.create(at_scale_props(hub)).outs
    img2, img3 = IMAGE[:-1] + "b", IMAGE[:-1] + "c"
    v2 = p.update("edge1/edge", v1, at_scale_props(hub, v1, with_module(models={"ridge": 2}, image=img2))).outs
    assert deleted == [] and v2["previous_images"] == [IMAGE], "devices may still pull v1 while the hub updates their twins"
    p.update("edge1/edge", v2, at_scale_props(hub, v2, with_module(models={"ridge": 3}, image=img3)))
    assert deleted == [IMAGE]


def test_refresh_with_a_revoked_policy_key_fails_naming_it(hub: FakeHub) -> None:
    p = EdgeDeploymentProvider()
    outs = p.create(at_scale_props(hub)).outs
    hub.policies["iothubowner"] = base64.b64encode(b"z" * 32).decode()
    with pytest.raises(iothub.IoTHubError, match=r"^policy_key: .*401"):
        p.read("edge1/edge", outs)


# ---------------------------------------------------------------- modules that share a device (issue 17, part 2)


def two_modules(**over: Any) -> dict[str, Any]:
    """One device, two modules of this stack: the grouped deployment's inputs."""
    p = props(**over)
    second = {**p["modules"][0], "name": "second", "image": IMAGE[:-1] + "c", "models": {"lasso": 1}}
    return {**p, "modules": [p["modules"][0], second], "owners": {"scorer": "edge", "second": "edge2"},
            "ports": {"scorer": 40001, "second": 40002} if p.get("port") else {}, "foreign_modules": "fail", **over}


def foreign_manifest() -> dict[str, Any]:
    """What another stack (or someone by hand) applied to the device: one module, a route, a registry login."""
    return edge_manifest.render([module(name="theirs", image="example.invalid/theirs:1", create_options={})],
                                {"theirs": "FROM /messages/modules/theirs/outputs/* INTO $upstream"},
                                {"other": {"username": "u", "password": "p", "address": "example.invalid"}})


def test_grouping_rules_are_pure() -> None:
    local = {"device_id": "d1", "backend": "local", "hub_host": None}
    hub = {"device_id": "d1", "backend": "iothub", "hub_host": HUB}
    assert iotedge.device_key(local, None) != iotedge.device_key(hub, None), "the same id behind a hub is another device"
    assert iotedge.device_key({**hub, "device_id": "d2"}, "tags.a='b'") == iotedge.device_key(hub, "tags.a='b'"), "at scale no device id"
    assert iotedge.deployment_name(iotedge.device_key(local, None)) == "edge-device-d1"
    assert iotedge.deployment_name(iotedge.device_key(hub, None)) == f"edge-device-d1@{HUB}"
    member = {"resource": "a", "module_name": "a", "port": 1, "routes": {"r": "x"}, "registry_username": "u",
              "device": {f: None for f in iotedge.SHARED_DEVICE_FIELDS}}
    assert iotedge.join_problems([member], {**member, "resource": "b", "module_name": "b", "port": 2}) == []
    fields = lambda **o: [f for f, _ in iotedge.join_problems([member], {**member, "resource": "b", "module_name": "b", "port": 2, **o})]
    assert fields(module_name="a") == ["module_name"]
    assert fields(port=1) == ["port"]
    assert fields(routes={"r": "y"}) == ["routes.r"] and fields(routes={"r": "x"}) == []
    assert fields(registry_username="v") == ["registry_username"]
    assert fields(device={**member["device"], "foreign_modules": "keep"}) == ["device.foreign_modules"]


def test_foreign_modules_and_the_merge_are_pure() -> None:
    olds, news = two_modules(), props()
    # `second` left the program: ours leaving, not foreign; `theirs` is foreign.
    assert edge_device.foreign_names(["scorer", "second", "theirs"], olds, news) == ["theirs"]
    assert edge_device.foreign_names({"scorer": {}}, {}, news) == []
    agent = edge_device.twin_desired({"properties": {"desired": {**foreign_manifest()["modulesContent"]["$edgeAgent"]["properties.desired"],
                                                                  "$metadata": {}, "$version": 4}}})
    assert "$version" not in agent
    hub = foreign_manifest()["modulesContent"]["$edgeHub"]["properties.desired"]
    merged = edge_device.merge_foreign(edge_device.render(news), agent, hub, ["theirs"], set(news["routes"]))
    assert sorted(edge_manifest.modules_of(merged)) == ["scorer", "theirs"]
    assert edge_manifest.validate(merged) == []
    assert merged["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]["theirs"].startswith("FROM /messages/modules/theirs")
    assert "other" in merged["modulesContent"]["$edgeAgent"]["properties.desired"]["runtime"]["settings"]["registryCredentials"]
    assert "theirs" not in merged["modulesContent"], "their own module twin is left as the hub has it"
    assert edge_device.module_ports(props()) == {"scorer": 40001}, "the previous release's one port"
    assert edge_device.module_ports(two_modules()) == {"scorer": 40001, "second": 40002}


def test_diff_of_a_grouped_deployment() -> None:
    old = checked(props())
    # The previous release's inputs, read back under the new code: nothing changes.
    same = checked({**props(), "owners": {"scorer": "edge"}, "ports": {"scorer": 40001}, "foreign_modules": "fail"}, old)
    assert not diff_edge_deployment(old, same).changes
    both = checked(two_modules(), old)
    d = diff_edge_deployment(old, both)
    assert d.changes and d.replaces == [], "a module joins: an update, never a replace"
    assert module_versions(old, both) == {"scorer": 1, "second": 1}
    moved = checked({**two_modules(), "ports": {"scorer": 40001, "second": 40003}}, both)
    assert moved["manifest"] == both["manifest"] and diff_edge_deployment(both, moved).changes, "a port of the second module alone"


def test_the_device_gets_one_manifest_with_both_modules(hub: FakeHub) -> None:
    dev = {**props()["device"], "device_id": "edge1", "backend": "iothub", "hub_host": HUB, "endpoint": hub.endpoint}
    p = EdgeDeploymentProvider()
    created = p.create(checked(two_modules(device=dev, policy_key=KEY, port=None)))
    assert sorted(edge_manifest.modules_of(hub.applied["edge1"])) == ["scorer", "second"]
    images = {n: m["settings"]["image"] for n, m in edge_manifest.modules_of(hub.applied["edge1"]).items()}
    assert images == {"scorer": IMAGE, "second": IMAGE[:-1] + "c"}
    assert created.outs["module_versions"] == {"scorer": 1, "second": 1}
    # Read at preview ($edgeAgent), read again before applying ($edgeAgent, $edgeHub), then one manifest, applied once.
    assert [(r["method"], r["path"].rsplit("/", 1)[-1]) for r in hub.requests] == [
        ("GET", "%24edgeAgent"), ("GET", "%24edgeAgent"), ("GET", "%24edgeHub"), ("POST", "applyConfigurationContent")]
    # One module leaves the program: the other stays in the one manifest.
    one = checked(props(device=dev, policy_key=KEY, port=None, owners={"scorer": "edge"}, foreign_modules="fail"), created.outs)
    p.update(created.id, created.outs, one)
    assert sorted(edge_manifest.modules_of(hub.applied["edge1"])) == ["scorer"]


def test_a_foreign_module_on_the_hub_device_fails_the_preview_naming_it(hub: FakeHub) -> None:
    hub.applied["edge1"] = foreign_manifest()
    dev = {**props()["device"], "device_id": "edge1", "backend": "iothub", "hub_host": HUB, "endpoint": hub.endpoint}
    result = EdgeDeploymentProvider().check({}, two_modules(device=dev, policy_key=KEY, port=None))
    assert [f.property for f in result.failures] == ["foreign_modules"]
    assert "runs modules this stack does not own: theirs" in result.failures[0].reason
    assert "foreign_modules='keep'" in result.failures[0].reason
    reads = [r["path"] for r in hub.requests if r["method"] == "GET"]
    assert reads == ["/twins/edge1/modules/%24edgeAgent"], reads
    # Applied anyway (it came after the preview): refused, and the device keeps its module.
    with pytest.raises(RuntimeError, match="theirs"):
        EdgeDeploymentProvider().create(checked({**two_modules(device=dev, policy_key=KEY, port=None), "foreign_modules": "keep"}) | {"foreign_modules": "fail"})
    assert sorted(edge_manifest.modules_of(hub.applied["edge1"])) == ["theirs"]


def test_keep_keeps_the_foreign_module_in_the_applied_manifest_and_on_delete(hub: FakeHub) -> None:
    hub.applied["edge1"] = foreign_manifest()
    dev = {**props()["device"], "device_id": "edge1", "backend": "iothub", "hub_host": HUB, "endpoint": hub.endpoint}
    news = {**two_modules(device=dev, policy_key=KEY, port=None), "foreign_modules": "keep"}
    result = EdgeDeploymentProvider().check({}, news)
    assert result.failures == []
    p = EdgeDeploymentProvider()
    created = p.create(result.inputs)
    applied = hub.applied["edge1"]
    assert sorted(edge_manifest.modules_of(applied)) == ["scorer", "second", "theirs"]
    assert edge_manifest.modules_of(applied)["theirs"]["settings"]["image"] == "example.invalid/theirs:1"
    assert "theirs" in applied["modulesContent"]["$edgeHub"]["properties.desired"]["routes"]
    assert sorted(edge_manifest.modules_of(created.outs["manifest"])) == ["scorer", "second"], "the state holds ours only"
    p.delete(created.id, created.outs)
    assert sorted(edge_manifest.modules_of(hub.applied["edge1"])) == ["theirs"], "destroy removes ours only"


def test_a_deployment_of_the_previous_release_leaves_a_device_that_runs_others(hub: FakeHub) -> None:
    """Its delete runs after this release's deployment took the device over: the device is left as it is."""
    dev = {**props()["device"], "device_id": "edge1", "backend": "iothub", "hub_host": HUB, "endpoint": hub.endpoint}
    p = EdgeDeploymentProvider()
    grouped = p.create(checked(two_modules(device=dev, policy_key=KEY, port=None)))
    old_style = {**props(device=dev, policy_key=KEY, port=None), "resource": "edge2"}
    old_style["modules"] = [grouped.outs["modules"][1]]
    p.delete("edge1/edge2", old_style)
    assert sorted(edge_manifest.modules_of(hub.applied["edge1"])) == ["scorer", "second"]


def test_the_local_device_groups_by_stack_and_names_foreign_containers(provider_docker: "FakeDocker") -> None:
    p = EdgeDeploymentProvider()
    monkey_health = pytest.MonkeyPatch()
    from mldeploy.providers.core import containers

    waited: list[str] = []
    monkey_health.setattr(containers, "wait_healthy", lambda rc, timeout: waited.append(rc.name))
    try:
        created = p.create(checked(two_modules()))
        assert sorted(waited) == ["proj-dev-local-device-scorer", "proj-dev-local-device-second"], "each module's port is waited on"
        ids = {c["name"]: cid for cid, c in provider_docker.containers_.items()}
        # One module leaves: the other's container is the same one, never restarted.
        provider_docker.calls.clear()
        one = checked({**props(), "owners": {"scorer": "edge"}, "ports": {"scorer": 40001}, "foreign_modules": "fail"}, created.outs)
        p.update(created.id, created.outs, one)
        left = {c["name"]: cid for cid, c in provider_docker.containers_.items()}
        assert left == {"proj-dev-local-device-scorer": ids["proj-dev-local-device-scorer"]}
        assert ("start", ids["proj-dev-local-device-scorer"]) not in provider_docker.calls
        # Another stack on the same device: foreign for this one, named at preview.
        other = LocalAgent("local-device", {"mldeploy.project": "proj", "mldeploy.stack": "prod", "mldeploy.resource": "x"},
                           "proj-prod-local-device-", api=provider_docker, grouped=True)
        other.apply(manifest(name="theirs", create_options={}))
        failures = p.check(created.outs, checked({**props(), "owners": {"scorer": "edge"}, "foreign_modules": "fail"})).failures
        assert [f.property for f in failures] == ["foreign_modules"] and "theirs" in failures[0].reason
        kept = p.check(created.outs, {**props(), "owners": {"scorer": "edge"}, "foreign_modules": "keep"})
        assert kept.failures == []
    finally:
        monkey_health.undo()


def test_the_previous_release_s_containers_are_taken_over_or_left_to_their_own_delete() -> None:
    """Two modules deployed by the previous release (one resource each) on the local device."""
    api = FakeDocker()
    base = {"mldeploy.project": "proj", "mldeploy.stack": "dev"}
    for resource, name in (("edge", "scorer"), ("edge2", "second")):
        LocalAgent("dev1", {**base, "mldeploy.resource": resource}, "proj-dev-dev1-", api=api).apply(manifest(name=name))
    before = {c["name"]: cid for cid, c in api.containers_.items()}
    both = edge_manifest.render([module(), module(name="second")], {})
    group = LocalAgent("dev1", {**base, "mldeploy.resource": "edge"}, "proj-dev-dev1-", api=api, grouped=True)
    group.apply(both)
    after = {c["name"]: cid for cid, c in api.containers_.items()}
    assert after["proj-dev-dev1-scorer"] == before["proj-dev-dev1-scorer"], "its own resource's container: kept"
    assert after["proj-dev-dev1-second"] != before["proj-dev-dev1-second"], "another resource's: replaced once, under the group"
    # The previous release's resource of `second` is deleted by the engine afterwards: it finds nothing of its own.
    assert LocalAgent("dev1", {**base, "mldeploy.resource": "edge2"}, "proj-dev-dev1-", api=api).remove_all() == []
    assert sorted(group.states()) == ["scorer", "second"]
    # The old resource of `scorer` (had it not been aliased) would not take the group's containers either.
    assert LocalAgent("dev1", {**base, "mldeploy.resource": "edge"}, "proj-dev-dev1-", api=api).remove_all() == ["scorer"]
