"""The ACI target without Azure: its args, checks, rules and container-group body."""

from __future__ import annotations

import pytest

from engine_check import stack_settings
from mldeploy.providers.targets.service import diff_service
from mldeploy.providers.targets import ArgsInvalid, target_for
from mldeploy.providers.targets import aci

SUB = "00000000-1111-2222-3333-444444444444"
SETTINGS = {"project": "mldeploy", "stack": "dev", "azure_subscription_id": SUB, "azure_resource_group": "rg-ml",
            "azure_location": "westeurope", "arm_endpoint": "https://management.azure.com"}


def props(**over):
    base = {
        "service_name": "aciservice", "target": "aci", "project": "mldeploy", "stack": "dev",
        "image_name": "img", "image_id": "sha256:1", "models": [{"name": "ridge", "version": 1, "model_dir": "m"}],
        "cpu_cores": 1.0, "memory_gb": 1.5, "auth_enabled": True, "environment_variables": {"A": "1"},
        "primary_key_version": 1, "secondary_key_version": 1, "max_request_bytes": 1_048_576,
        "startup_timeout_seconds": 180,
        **aci.TARGET.service_inputs({}, service_name="aciservice", resource_name="aciservice", settings=stack_settings(**SETTINGS)),
        "image_ref": "127.0.0.1:5000/x/aciservice@sha256:" + "a" * 64,
        "front_image_ref": "127.0.0.1:5000/x/aciservice-front@sha256:" + "b" * 64,
    }
    return {**base, **over}


def test_registered_and_pulls_images():
    assert target_for("aci") is aci.TARGET and aci.TARGET.pulls_images == "with_front"


def test_service_inputs_from_settings():
    p = props()
    assert p["dns_name_label"] == "dev-aciservice" and p["group_name"] == "mldeploy-dev-aciservice"
    assert aci.TARGET.uris(p)["scoring_uri"] == "http://dev-aciservice.westeurope.azurecontainer.io/api/v1/service/aciservice/score"


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"azure_subscription_id": ""}, "subscription_id"),
        ({"azure_subscription_id": "not-a-guid"}, "subscription_id"),
        ({"azure_location": "atlantis"}, "location"),
        ({"azure_location": ""}, "location"),
        ({"stack": "9bad"}, "dns_name_label"),
        ({"azure_resource_group": "rg."}, "resource_group"),
    ],
)
def test_bad_settings_name_the_field(settings, field):
    with pytest.raises(ArgsInvalid) as err:
        aci.TARGET.service_inputs({}, service_name="aciservice", resource_name="s", settings=stack_settings(**{**SETTINGS, **settings}))
    assert err.value.failures[0].property == field


def test_port_is_refused():
    with pytest.raises(ArgsInvalid) as err:
        aci.TARGET.service_inputs({"port": 8080}, service_name="aciservice", resource_name="s", settings=stack_settings(**SETTINGS))
    assert err.value.failures[0].property == "port"


def test_check_limits_and_unknowns():
    assert aci.TARGET.check(props()) == []
    fails = {f.property for f in aci.TARGET.check(props(cpu_cores=4.0, memory_gb=16.0))}
    assert fails == {"cpu_cores", "memory_gb"}
    msg = aci.TARGET.check(props(cpu_cores=4.0))[0].reason
    assert "4 CPUs" in msg and aci.LIMITS_DATE in msg
    assert aci.TARGET.check(props(image_ref="04da6b54-80a4-11e4-b15f-5b20e4d5c7a7")) == []
    from pulumi.runtime import rpc
    assert aci.TARGET.check(props(image_ref=rpc.UNKNOWN)) == []  # unknown at preview: not judged


@pytest.mark.parametrize(
    "key, value, kind",
    [
        ("cpu_cores", 2.0, "replace"), ("memory_gb", 2.0, "replace"), ("restart_policy", "Never", "replace"),
        ("ip_address_type", "Private", "replace"), ("location", "eastus", "replace"),
        ("image_ref", "r@sha256:c", "update"), ("models", [{"name": "ridge", "version": 2, "model_dir": "m"}], "update"),
        ("environment_variables", {"A": "2"}, "update"), ("primary_key_version", 2, "update"),
        ("startup_timeout_seconds", 60, "none"),
    ],
)
def test_diff_rules(key, value, kind):
    d = diff_service(props(), props(**{key: value}))
    got = "replace" if d.replaces else ("update" if d.changes else "none")
    assert got == kind
    if kind == "replace":
        assert d.delete_before_replace  # same group name, same DNS label


def test_body_shape_and_secrets():
    body = aci.container_group_body(props(), ["k" * 32, "s" * 32])
    p = body["properties"]
    scoring, front = p["containers"]
    assert scoring["properties"]["resources"]["requests"] == {"cpu": 1.0, "memoryInGB": 1.5}
    assert {"name": "MLDEPLOY_BIND_HOST", "value": "127.0.0.1"} in scoring["properties"]["environmentVariables"]
    assert scoring["properties"]["ports"] == [] and scoring["properties"]["readinessProbe"]["httpGet"]["path"].endswith("/health")
    assert p["ipAddress"] == {"type": "Public", "ports": [{"port": 80, "protocol": "TCP"}], "dnsNameLabel": "dev-aciservice"}
    secure = [e for e in front["properties"]["environmentVariables"] if "secureValue" in e]
    assert len(secure) == 1 and "k" * 32 in secure[0]["secureValue"]
    plain = [e["value"] for c in p["containers"] for e in c["properties"]["environmentVariables"] if "value" in e]
    assert not any("k" * 32 in v for v in plain)
    assert body["tags"]["mldeploy.model.ridge"] == "1"


def test_environment_cannot_override_the_servers_own_settings():
    fails = aci.TARGET.check(props(environment_variables={"A": "1", "MLDEPLOY_BIND_HOST": "0.0.0.0", "WORKER_COUNT": "4"}))
    assert [f.property for f in fails] == ["environment_variables", "environment_variables"]
    assert "MLDEPLOY_BIND_HOST" in fails[0].reason and "WORKER_COUNT" in fails[1].reason


def test_body_passes_the_fake_arm_checks():
    from fake_arm import BodyInvalid, validate_group_body

    validate_group_body(aci.container_group_body(props(), ["k" * 32, "s" * 32]))
    bad = aci.container_group_body(props(), None)
    bad["properties"]["containers"][0]["properties"]["cpus"] = 1
    with pytest.raises(BodyInvalid, match="cpus"):
        validate_group_body(bad)
    del bad["properties"]["containers"][0]["properties"]["cpus"]
    del bad["properties"]["containers"][0]["properties"]["image"]
    with pytest.raises(BodyInvalid, match="image"):
        validate_group_body(bad)


def test_group_state():
    assert aci.group_state(None) == "Missing"
    assert aci.group_state({"provisioning_state": "Succeeded", "instance_view": {"state": "Running"}}) == "Healthy"
    assert aci.group_state({"provisioning_state": "Succeeded", "instance_view": {"state": "Stopped"}}) == "Stopped"
    assert aci.group_state({"provisioning_state": "Failed", "instance_view": {"state": "Running"}}) == "Unhealthy"


def test_preview_words_say_aci_restarts_or_replaces():
    import preview_markdown

    old = props()
    bump = preview_markdown.describe_service(old, props(models=[{"name": "ridge", "version": 2, "model_dir": "m"}]))
    assert any("short outage" in w for w in bump)
    bigger = preview_markdown.describe_service(old, props(cpu_cores=2.0))
    assert any("deleted and created again" in w for w in bigger)
