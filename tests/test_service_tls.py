"""Issue 18, item 3: TLS at the front end of Kubernetes and ACI services, and words for keys over plain HTTP.

Pure rules and renderers, and the components under Pulumi mocks. The real cluster
serving HTTPS on 127.0.0.1 is tests/test_kubernetes_tls_e2e.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
import pytest

from engine_check import stack_settings
from mldeploy.components._common import ArgsError
from mldeploy.providers.front.gateway_config import render_service_conf
from mldeploy.providers.targets import kubernetes as target
from mldeploy.providers.front import tls
from test_components_unit import make_image, make_model, no_docker, project  # noqa: F401 - fixtures
from test_kubernetes_unit import SECRET_SIG, SECRET_VALUE, K8sMocks, k8s_mocks, spec_for  # noqa: F401 - fixtures
from tls_certs import make_ca_and_cert

K = target.KubernetesServiceArgs


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, Path]:
    return make_ca_and_cert(tmp_path / "tls")


# ------------------------------------------------------------------ the rules

@pytest.mark.parametrize(
    "kw, field",
    [
        ({"ssl_enabled": True, "ssl_key_pem_file": "k.pem"}, "ssl_cert_pem_file"),
        ({"ssl_enabled": True, "ssl_cert_pem_file": "c.pem"}, "ssl_key_pem_file"),
        ({"ssl_cert_pem_file": "c.pem"}, "ssl_cert_pem_file"),
        ({"ssl_cname": "scoring.example.com"}, "ssl_cname"),
        ({"ssl_enabled": True, "ssl_cert_pem_file": "c", "ssl_key_pem_file": "k", "ssl_cname": "bad name"}, "ssl_cname"),
    ],
)
def test_tls_arguments_follow_azure_ml_and_name_the_field(kw: dict[str, Any], field: str) -> None:
    assert field in dict(target.check(K(service_name="svc", **kw)))


def test_a_certificate_and_its_key_are_read_and_checked_to_match(pem: dict[str, Path], tmp_path: Path) -> None:
    cert, key = tls.read_pair(pem["cert"], pem["key"])
    assert cert.startswith("-----BEGIN CERTIFICATE-----") and "PRIVATE KEY" in key
    other = make_ca_and_cert(tmp_path / "other")
    with pytest.raises(tls.TlsError, match=r"^ssl_key_pem_file: .* is not the key of the first certificate"):
        tls.read_pair(pem["cert"], other["key"])
    with pytest.raises(tls.TlsError, match=r"^ssl_cert_pem_file: .* holds no PEM certificate"):
        tls.read_pair(pem["key"], pem["key"])
    with pytest.raises(tls.TlsError, match=r"^ssl_key_pem_file: .* holds no unencrypted PEM private key") as err:
        tls.read_pair(pem["cert"], pem["cert"])
    assert "BEGIN" not in str(err.value)
    with pytest.raises(tls.TlsError, match=r"^ssl_cert_pem_file: cannot read"):
        tls.read_pair(tmp_path / "missing.pem", pem["key"])


def test_with_tls_turns_the_one_listen_line_into_tls() -> None:
    plain = render_service_conf("svc", 8080, 5001, ["k" * 32], listen_host="0.0.0.0")
    conf = tls.with_tls(plain, "/etc/x")
    assert "    listen 0.0.0.0:8080 ssl;" in conf.splitlines()
    assert "    ssl_certificate /etc/x/tls.crt;" in conf and "    ssl_certificate_key /etc/x/tls.key;" in conf
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in conf
    # Everything else of the route is as rendered.
    assert [ln for ln in conf.splitlines() if "ssl" not in ln] == [ln for ln in plain.splitlines() if "listen" not in ln]
    with pytest.raises(ValueError, match="expected one listen line"):
        tls.with_tls("server {}", "/etc/x")


# ------------------------------------------------------------------ Kubernetes objects

def test_without_ssl_enabled_the_deployment_and_front_end_are_as_before() -> None:
    """The spec this item must not change: no TLS volume, probe scheme or annotation, and a plain listen line."""
    args = K(service_name="svc", num_replicas=1)
    pod = spec_for(args)["template"]
    front = pod["spec"]["containers"][1]
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["front-conf", "scratch", "front-run"]
    assert front["ports"] == [{"name": "http", "containerPort": target.FRONT_PORT}]
    assert "scheme" not in front["readinessProbe"]["httpGet"] and "scheme" not in front["livenessProbe"]["httpGet"]
    assert set(pod["metadata"]["annotations"]) == {"mldeploy.azureml.net/model.ridge", "mldeploy.azureml.net/config-checksum"}
    conf = target.front_config(args, ["k" * 32])["service.conf"]
    assert "ssl" not in conf and "    listen 0.0.0.0:8080;" in conf.splitlines()


def test_with_ssl_enabled_the_front_end_serves_https_from_a_secret() -> None:
    args = K(service_name="svc", num_replicas=1, ssl_enabled=True, ssl_cert_pem_file="c", ssl_key_pem_file="k")
    spec = target.deployment_spec(
        args, project="p", stack="s", image_ref="i", front_image_ref="f", model_versions={}, config_secret="svc-front",
        config_checksum="abc", tls_secret="svc-tls", tls_checksum="t1",
    )
    pod = spec["template"]
    scoring, front = pod["spec"]["containers"]
    assert front["readinessProbe"]["httpGet"]["scheme"] == "HTTPS" and front["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert {"name": "front-tls", "mountPath": target.FRONT_TLS_DIR, "readOnly": True} in front["volumeMounts"]
    assert {"name": "front-tls", "secret": {"secretName": "svc-tls", "defaultMode": 0o440}} in pod["spec"]["volumes"]
    assert all(m["name"] != "front-tls" for m in scoring["volumeMounts"]), "the scoring container never sees the key"
    assert pod["metadata"]["annotations"]["mldeploy.azureml.net/tls-checksum"] == "t1"
    conf = target.front_config(args, ["k" * 32])["service.conf"]
    assert f"    ssl_certificate_key {target.FRONT_TLS_DIR}/tls.key;" in conf
    assert target.uris(31000, "svc", "127.0.0.1", "https")["scoring_uri"] == "https://127.0.0.1:31000/api/v1/service/svc/score"
    assert "ssl_enabled" in target.ROLL_ON


def test_keys_over_plain_http_off_this_machine_get_words() -> None:
    keyed = K(service_name="svc")
    assert target.plain_http_warning(keyed, "svc", loopback_only=True) is None
    words = target.plain_http_warning(keyed, "svc", loopback_only=False)
    assert words and "plain HTTP" in words and "ssl_enabled=True" in words
    assert target.plain_http_warning(K(service_name="svc", auth_enabled=False), "svc", loopback_only=False) is None
    tls_on = K(service_name="svc", ssl_enabled=True, ssl_cert_pem_file="c", ssl_key_pem_file="k")
    assert target.plain_http_warning(tls_on, "svc", loopback_only=False) is None


@pulumi.runtime.test
def test_aks_service_with_tls_keeps_the_pair_secret_and_its_uri_is_https(k8s_mocks: K8sMocks, pem: dict[str, Path]):
    from mldeploy.components import AksCluster, AksService

    cluster = AksCluster("aks", cluster_purpose="DevTest")
    svc = AksService("scorer", cluster=cluster, models=[make_model()], image=make_image(), namespace="ml", num_replicas=1,
                     ssl_enabled=True, ssl_cert_pem_file=str(pem["cert"]), ssl_key_pem_file=str(pem["key"]))
    named = AksService("named", cluster=cluster, models=[make_model()], image=make_image(), namespace="ml", num_replicas=1,
                       ssl_enabled=True, ssl_cert_pem_file=str(pem["cert"]), ssl_key_pem_file=str(pem["key"]),
                       ssl_cname="localhost")
    key_text = pem["key"].read_text()

    def check(args: list[Any]) -> None:
        uri, named_uri = args[:2]
        assert uri == "https://127.0.0.1:31234/api/v1/service/scorer/score"
        assert named_uri == "https://localhost:31234/api/v1/service/named/score"
        typ, secret = k8s_mocks.resources["scorer-tls"]
        assert typ == "kubernetes:core/v1:Secret" and secret["type"] == "kubernetes.io/tls"
        assert secret["stringData"].get(SECRET_SIG) == SECRET_VALUE, "the certificate and key travel as a secret"
        assert secret["stringData"]["value"]["tls.key"] == key_text
        dep = k8s_mocks.resources["scorer-deployment"][1]
        assert key_text not in str(dep) and SECRET_SIG not in str(dep["spec"])
        vols = dep["spec"]["template"]["spec"]["volumes"]
        assert {"name": "front-tls", "secret": {"secretName": "scorer-tls", "defaultMode": 0o440}} in vols

    return pulumi.Output.all(svc.scoring_uri, named.scoring_uri, svc.deployment.id).apply(check)


def test_aks_service_tls_errors_name_the_field(k8s_mocks: K8sMocks, pem: dict[str, Path], tmp_path: Path) -> None:
    from mldeploy.components import AksCluster, AksService

    cluster = AksCluster("aks", cluster_purpose="DevTest")
    with pytest.raises(ArgsError, match=r"AksService 'bad': invalid arguments: ssl_key_pem_file: is required"):
        AksService("bad", cluster=cluster, models=[make_model()], image=make_image(), ssl_enabled=True,
                   ssl_cert_pem_file=str(pem["cert"]))
    with pytest.raises(ArgsError, match=r"AksService 'bad2': invalid arguments: ssl_key_pem_file: .* is not the key"):
        AksService("bad2", cluster=cluster, models=[make_model()], image=make_image(), ssl_enabled=True,
                   ssl_cert_pem_file=str(pem["cert"]), ssl_key_pem_file=str(make_ca_and_cert(tmp_path / "o")["key"]))


# ------------------------------------------------------------------ ACI

from mldeploy.providers.targets import ArgsInvalid  # noqa: E402
from mldeploy.providers.targets import aci  # noqa: E402
from test_aci_unit import SETTINGS, props  # noqa: E402


def aci_tls_inputs(pem: dict[str, Path], **over: Any) -> dict[str, Any]:
    given = {"ssl_enabled": True, "ssl_cert_pem_file": str(pem["cert"]), "ssl_key_pem_file": str(pem["key"]), **over}
    return aci.TARGET.service_inputs(given, service_name="aciservice", resource_name="aciservice", settings=stack_settings(**SETTINGS))


def test_aci_without_tls_keeps_its_inputs_and_body() -> None:
    """No new input for a service without TLS, so an existing group sees no change at all."""
    p = props()
    assert not [k for k in p if k.startswith("ssl") or k == "secure_environment_variables"]
    body = aci.container_group_body(p, ["k" * 32])
    assert body["properties"]["ipAddress"]["ports"] == [{"port": 80, "protocol": "TCP"}]
    assert "volumes" not in body["properties"]
    assert [e for e in body["properties"]["containers"][0]["properties"]["environmentVariables"] if e["name"] == "A"] == [
        {"name": "A", "value": "1"}]


def test_aci_with_tls_serves_443_from_a_secret_volume(pem: dict[str, Path]) -> None:
    import base64

    from fake_arm import validate_group_body

    own = aci_tls_inputs(pem)
    assert own["ssl_enabled"] is True and own["ssl_key"] == pem["key"].read_text() and "ssl_cname" not in own
    p = props(**own)
    assert aci.uris(p)["scoring_uri"] == "https://dev-aciservice.westeurope.azurecontainer.io/api/v1/service/aciservice/score"
    assert aci.uris(props(**aci_tls_inputs(pem, ssl_cname="scoring.example.com")))["scoring_uri"].startswith(
        "https://scoring.example.com/api/")
    body = aci.container_group_body(p, ["k" * 32])
    validate_group_body(body)
    scoring, front = body["properties"]["containers"]
    assert body["properties"]["ipAddress"]["ports"] == [{"port": 443, "protocol": "TCP"}]
    assert front["properties"]["ports"] == [{"port": 443, "protocol": "TCP"}]
    assert scoring["properties"]["readinessProbe"]["httpGet"]["port"] == 443
    assert scoring["properties"]["readinessProbe"]["httpGet"]["scheme"] == "https"
    (vol,) = body["properties"]["volumes"]
    assert vol["name"] == "front-tls" and base64.b64decode(vol["secret"]["tls.key"]).decode() == own["ssl_key"]
    assert front["properties"]["volumeMounts"] == [{"name": "front-tls", "mountPath": aci.FRONT_TLS_DIR, "readOnly": True}]
    assert "volumeMounts" not in scoring["properties"], "the scoring container never sees the key"
    conf = next(e["secureValue"] for e in front["properties"]["environmentVariables"] if e["name"] == "MLDEPLOY_SERVICE_CONF")
    assert "    listen 0.0.0.0:443 ssl;" in conf.splitlines() and f"ssl_certificate_key {aci.FRONT_TLS_DIR}/tls.key;" in conf
    assert own["ssl_key"] not in str(front["properties"]["environmentVariables"])
    assert aci.TARGET.check(p) == []


def test_aci_tls_errors_name_the_field(pem: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ArgsInvalid, match=r"^ssl_key_pem_file: is required"):
        aci.TARGET.service_inputs({"ssl_enabled": True, "ssl_cert_pem_file": str(pem["cert"])}, service_name="aciservice",
                                  resource_name="aciservice", settings=stack_settings(**SETTINGS))
    with pytest.raises(ArgsInvalid, match=r"^ssl_key_pem_file: .* is not the key"):
        aci_tls_inputs(pem, ssl_key_pem_file=str(make_ca_and_cert(tmp_path / "o")["key"]))
    with pytest.raises(ArgsInvalid, match=r"^ssl_cname: is only used with ssl_enabled"):
        aci.TARGET.service_inputs({"ssl_cname": "x.example.com"}, service_name="aciservice", resource_name="aciservice",
                                  settings=stack_settings(**SETTINGS))


def test_aci_secret_environment_variables_travel_as_secure_values() -> None:
    from fake_arm import validate_group_body

    p = props(environment_variables={"A": "1", "TOKEN": "t0ps3cret"}, secure_environment_variables=["TOKEN"])
    body = aci.container_group_body(p, None)
    validate_group_body(body)
    env = body["properties"]["containers"][0]["properties"]["environmentVariables"]
    assert {"name": "TOKEN", "secureValue": "t0ps3cret"} in env and {"name": "A", "value": "1"} in env
    assert "secure_environment_variables" in aci.AciTarget.ROLL_ON


def test_aci_keys_over_plain_http_get_words() -> None:
    words = aci.plain_http_warning(props(), "aciservice")
    assert words and "public IP (port 80)" in words and "ssl_enabled=True" in words
    assert aci.plain_http_warning(props(auth_enabled=False), "aciservice") is None
    assert aci.plain_http_warning(props(ssl_enabled=True), "aciservice") is None


@pytest.fixture
def aci_config(k8s_mocks: K8sMocks):
    pulumi.runtime.set_all_config({"mldeploy:target": "aci", "mldeploy:azureSubscriptionId": SETTINGS["azure_subscription_id"],
                                   "mldeploy:azureResourceGroup": "rg-ml", "mldeploy:azureLocation": "westeurope"}, [])
    yield k8s_mocks
    pulumi.runtime.set_all_config({}, [])


@pulumi.runtime.test
def test_aci_component_marks_secret_env_and_keeps_the_pair_secret(aci_config: K8sMocks, pem: dict[str, Path]):
    from mldeploy.components import ContainerInstanceService

    svc = ContainerInstanceService("aciservice", models=[make_model()], image=make_image(), auth_enabled=True,
                                   environment_variables={"A": "1", "TOKEN": pulumi.Output.secret("t0ps3cret"),
                                                          "B": pulumi.Output.from_input("plain")},
                                   ssl_enabled=True, ssl_cert_pem_file=str(pem["cert"]), ssl_key_pem_file=str(pem["key"]))

    def check(_: Any) -> None:
        inputs = aci_config.resources["aciservice-service"][1]
        assert inputs["secure_environment_variables"] == ["TOKEN"]
        assert inputs["ssl_key"].get(SECRET_SIG) == SECRET_VALUE and inputs["ssl_certificate"].get(SECRET_SIG) == SECRET_VALUE
        assert inputs["ssl_enabled"] is True

    return svc.state.apply(check)


# ------------------------------------------------------------------ the review's words

def _deployment(args: K, **kw: Any) -> dict[str, Any]:
    spec = target.deployment_spec(args, project="p", stack="s", image_ref="i", front_image_ref="f", model_versions={"m": "1"},
                                  config_secret="svc-front", config_checksum="abc", **kw)
    return {"metadata": {"namespace": "ml", "name": "svc"}, "spec": spec}


def test_the_review_says_why_pods_roll_for_security_and_tls() -> None:
    from preview_markdown import describe_deployment, render

    new = _deployment(K(service_name="svc", num_replicas=1))
    old = {"metadata": new["metadata"], "spec": {**new["spec"], "template": {**new["spec"]["template"], "spec": {
        **new["spec"]["template"]["spec"], "securityContext": None,
        "containers": [{**c, "securityContext": {"allowPrivilegeEscalation": False}} for c in new["spec"]["template"]["spec"]["containers"]],
    }}}}
    words = describe_deployment(old, new)
    assert words[0].startswith("rolls `ml/svc`")
    assert any("security settings change (they run as uid 65534" in w and "replaced once" in w for w in words), words
    assert describe_deployment(new, new) == []
    tls_args = K(service_name="svc", num_replicas=1, ssl_enabled=True, ssl_cert_pem_file="c", ssl_key_pem_file="k")
    on = _deployment(tls_args, tls_secret="svc-tls", tls_checksum="t1")
    assert any("starts serving HTTPS" in w for w in describe_deployment(new, on))
    assert any("stops serving HTTPS" in w for w in describe_deployment(on, new))
    assert "new TLS certificate or key" in describe_deployment(on, _deployment(tls_args, tls_secret="svc-tls", tls_checksum="t2"))
    md = render("dev", [], {"same": 3}, ["AksService 'svc': its keys  (Bearer tokens) travel over plain HTTP", "x", "x"])
    assert "**Warnings**" in md and "- ⚠️ AksService 'svc': its keys (Bearer tokens) travel over plain HTTP" in md
    assert md.count("- ⚠️ x") == 1
    assert "Warnings" not in render("dev", [], {"same": 3})


def test_components_warn_of_keys_over_plain_http(aci_config: K8sMocks, monkeypatch: pytest.MonkeyPatch, pem: dict[str, Path]) -> None:
    from mldeploy.components import AksCluster, AksService, ContainerInstanceService

    said: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda msg, resource=None, **kw: said.append(msg))
    ContainerInstanceService("keyed", models=[make_model()], image=make_image(), auth_enabled=True)
    ContainerInstanceService("open", models=[make_model()], image=make_image(), auth_enabled=False)
    ContainerInstanceService("tlsed", models=[make_model()], image=make_image(), auth_enabled=True, ssl_enabled=True,
                             ssl_cert_pem_file=str(pem["cert"]), ssl_key_pem_file=str(pem["key"]))
    local = AksCluster("aks", cluster_purpose="DevTest")
    AksService("onlocal", cluster=local, models=[make_model()], image=make_image(), num_replicas=1)
    attached = AksCluster("attached", cluster_purpose="DevTest", kubeconfig="apiVersion: v1\nkind: Config\n")
    AksService("onattached", cluster=attached, models=[make_model()], image=make_image(), num_replicas=1, namespace="other")
    assert [m.split("'")[1] for m in said if "plain HTTP" in m] == ["keyed", "onattached"], said
