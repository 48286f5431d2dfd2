"""Unit tests of the Kubernetes target: Azure ML's rules, the object specs, the pure diffs,
the thin clients behind injectable seams, and the components' wiring under Pulumi mocks.
No cluster is needed; tests/test_kubernetes_e2e.py runs the same on the real one.
"""

from __future__ import annotations

import base64
import threading
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from mldeploy.components._common import ArgsError
from mldeploy.providers.targets.kubernetes import cluster as cluster_provider
from mldeploy.providers.core import keys as keys_provider
from mldeploy.providers.image_registry import image as registry_image
from mldeploy.providers.targets.kubernetes import kube
from mldeploy.providers.image_registry import oci_registry
from mldeploy.providers.front.gateway_config import render_service_conf
from mldeploy.providers.targets import kubernetes as target
from test_components_unit import make_image, make_model, no_docker, project  # noqa: F401 - fixtures

K = target.KubernetesServiceArgs
# How the Pulumi SDK marks a secret value on the wire (what the mocks receive).
SECRET_SIG, SECRET_VALUE = "4dabf18193072939515e22adb298388d", "1b47061264138c4ac30d75fd1eb44270"

def failures(**kw: Any) -> dict[str, str]:
    return dict(target.check(K(service_name="svc", **kw)))

# ------------------------------------------------------------- Azure ML's rules

def test_defaults_are_azure_ml_defaults() -> None:
    a = K(service_name="svc")
    assert a.autoscale is True
    assert (a.autoscale_min_replicas, a.autoscale_max_replicas, a.autoscale_target_utilization) == (1, 10, 70)
    assert (a.cpu_cores, a.memory_gb, a.scoring_timeout_ms, a.replica_max_concurrent_requests) == (0.1, 0.5, 60000, 1)
    assert (a.period_seconds, a.initial_delay_seconds, a.timeout_seconds, a.success_threshold, a.failure_threshold) == (10, 310, 2, 1, 3)
    assert a.auth_enabled is True and a.namespace == "default"
    assert target.check(a) == []

def test_num_replicas_turns_autoscale_off() -> None:
    a = K(service_name="svc", num_replicas=3)
    assert a.autoscale is False and target.check(a) == []

@pytest.mark.parametrize(
    "kw, field",
    [
        ({"autoscale_enabled": True, "num_replicas": 2}, "num_replicas"),
        ({"autoscale_enabled": False}, "num_replicas"),
        ({"num_replicas": 2, "autoscale_max_replicas": 4}, "autoscale_max_replicas"),
        ({"autoscale_min_replicas": 5, "autoscale_max_replicas": 2}, "autoscale_min_replicas"),
        ({"cpu_cores": 1, "cpu_cores_limit": 0.5}, "cpu_cores_limit"),
        ({"memory_gb": 1, "memory_gb_limit": 0.5}, "memory_gb_limit"),
        ({"timeout_seconds": 11, "period_seconds": 10}, "timeout_seconds"),
        ({"token_auth_enabled": True}, "token_auth_enabled"),
    ],
)
def test_cross_field_rules_name_the_field(kw: dict[str, Any], field: str) -> None:
    assert field in failures(**kw)

@pytest.mark.parametrize(
    "kw, field",
    [
        ({"cpu_cores": 0}, "cpu_cores"),
        ({"memory_gb": -1}, "memory_gb"),
        ({"num_replicas": 0}, "num_replicas"),
        ({"num_replicas": 101}, "num_replicas"),
        ({"autoscale_max_replicas": 1000}, "autoscale_max_replicas"),
        ({"namespace": "Bad_NS"}, "namespace"),
        ({"namespace": "-x"}, "namespace"),
        ({"namespace": "a" * 64}, "namespace"),
        ({"period_seconds": 0}, "period_seconds"),
    ],
)
def test_value_rules_name_the_field(kw: dict[str, Any], field: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        K(service_name="svc", **kw)
    assert field in {str(e["loc"][0]) for e in err.value.errors()}

def test_rule_groups_name_what_kubernetes_does() -> None:
    """Each argument's rule is proved against the renderers in tests/test_rules_agree.py; here the groups' shape."""
    assert ("namespace" in target.REPLACE_ON and "cpu_cores" in target.ROLL_ON and "num_replicas" in target.IN_PLACE_ON)

# ------------------------------------------------------------------ the objects

def spec_for(args: K) -> dict[str, Any]:
    return target.deployment_spec(
        args, project="p", stack="s", image_ref="reg/x@sha256:1", front_image_ref="reg/front@sha256:2",
        model_versions={"ridge": "3"}, config_secret="svc-front", config_checksum="abc",
    )

def test_deployment_rolls_with_no_replica_down_and_maps_the_probe_parameters() -> None:
    args = K(service_name="svc", num_replicas=2, period_seconds=7, initial_delay_seconds=20, timeout_seconds=3,
             success_threshold=1, failure_threshold=4, cpu_cores=0.5, memory_gb=1, cpu_cores_limit=1)
    spec = spec_for(args)
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    scoring, front = spec["template"]["spec"]["containers"]
    live = front["livenessProbe"]
    assert (live["periodSeconds"], live["initialDelaySeconds"], live["timeoutSeconds"], live["failureThreshold"]) == (7, 20, 3, 4)
    assert live["httpGet"] == {"path": "/api/v1/service/svc/health", "port": target.FRONT_PORT}
    assert scoring["resources"] == {"requests": {"cpu": "500m", "memory": "1024Mi"}, "limits": {"cpu": "1000m"}}
    assert "ports" not in scoring  # only the front end has a port
    env = {e["name"]: e["value"] for e in scoring["env"]}
    assert env["MLDEPLOY_BIND_HOST"] == "127.0.0.1"
    assert env["WORKER_COUNT"] == "1" and env["SCORING_TIMEOUT_MS"] == "60000"
    assert scoring["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert spec["template"]["metadata"]["annotations"]["mldeploy.azureml.net/model.ridge"] == "3"
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert volumes["front-conf"]["secret"]["secretName"] == "svc-front"

def test_pull_secret_only_when_the_registry_wants_credentials() -> None:
    import json

    args = K(service_name="svc", num_replicas=1)
    plain = spec_for(args)
    # No credentials: the spec is what it was before pull secrets existed, so existing stacks do not roll.
    assert "imagePullSecrets" not in plain["template"]["spec"]
    with_secret = target.deployment_spec(
        args, project="p", stack="s", image_ref="reg/x@sha256:1", front_image_ref="reg/front@sha256:2",
        model_versions={"ridge": "3"}, config_secret="svc-front", config_checksum="abc",
        image_pull_secret=target.PULL_SECRET_NAME,
    )
    assert with_secret["template"]["spec"].pop("imagePullSecrets") == [{"name": "mldeploy-registry"}]
    assert json.dumps(with_secret, sort_keys=True) == json.dumps(plain, sort_keys=True)

def test_docker_config_json_is_what_docker_login_writes() -> None:
    import json

    config = json.loads(target.docker_config_json({"server": "myacr.azurecr.io", "username": "myacr", "password": "p:w"}))
    entry = config["auths"]["myacr.azurecr.io"]
    assert (entry["username"], entry["password"]) == ("myacr", "p:w")
    assert base64.b64decode(entry["auth"]).decode() == "myacr:p:w"
    assert list(config) == ["auths"] and list(config["auths"]) == ["myacr.azurecr.io"]

def test_autoscale_hpa_and_pdb() -> None:
    auto = K(service_name="svc", autoscale_min_replicas=2, autoscale_max_replicas=5, autoscale_target_utilization=60)
    hpa = target.hpa_spec(auto, "svc")
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 5)
    assert hpa["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 60}
    assert hpa["scaleTargetRef"]["name"] == "svc"
    assert "replicas" not in spec_for(auto), "the HPA owns the replica count"
    assert target.needs_pdb(auto) is True
    assert target.needs_pdb(K(service_name="svc")) is False
    assert target.needs_pdb(K(service_name="svc", num_replicas=1)) is False
    assert target.needs_pdb(K(service_name="svc", num_replicas=3)) is True

def test_front_config_checks_keys_and_listens_on_the_pod_port() -> None:
    keys = ["k" * 43, "s" * 43]
    files = target.front_config(K(service_name="svc"), keys)
    assert set(files) == {"nginx.main", "service.conf"}
    conf = files["service.conf"]
    assert f"listen 0.0.0.0:{target.FRONT_PORT};" in conf
    assert f"server 127.0.0.1:{target.SCORING_PORT}" in conf
    assert "k" * 43 in conf and "return 401" in conf
    assert "proxy_read_timeout 61s;" in conf  # scoring_timeout_ms + max_request_wait_time, rounded up
    open_conf = target.front_config(K(service_name="svc", auth_enabled=False), keys)["service.conf"]
    assert "k" * 43 not in open_conf and "return 401" not in open_conf
    assert target.checksum(files) != target.checksum(target.front_config(K(service_name="svc"), ["n" * 43, "s" * 43]))

def test_local_gateway_still_listens_on_loopback_only() -> None:
    conf = render_service_conf("svc", 20001, 40001, None)
    assert "listen 127.0.0.1:20001;" in conf
    with pytest.raises(ValueError, match="listen_host"):
        render_service_conf("svc", 20001, 40001, None, listen_host="10.0.0.1")
    # A low port only inside a namespace of its own (a pod, an ACI group), never on the host.
    with pytest.raises(ValueError, match="port: must be an integer port in 1024-65535"):
        render_service_conf("svc", 80, 40001, None)
    assert "listen 0.0.0.0:80;" in render_service_conf("svc", 80, 5001, None, listen_host="0.0.0.0")

def test_uris() -> None:
    assert target.uris(31000, "svc") == {
        "scoring_uri": "http://127.0.0.1:31000/api/v1/service/svc/score",
        "swagger_uri": "http://127.0.0.1:31000/api/v1/service/svc/swagger.json",
    }

# ----------------------------------------------------------------------- keys

def test_keys_are_kept_and_rotated_one_at_a_time() -> None:
    made = iter(f"key{i}" for i in range(10))
    first = keys_provider.rotate(None, {"primary_key_version": 1, "secondary_key_version": 1}, make=lambda: next(made))
    assert first == {"primary_key": "key0", "secondary_key": "key1"}
    olds = {"primary_key_version": 1, "secondary_key_version": 1, **first}
    assert keys_provider.rotate(olds, {"primary_key_version": 1, "secondary_key_version": 1}, make=lambda: next(made)) == first
    rotated = keys_provider.rotate(olds, {"primary_key_version": 2, "secondary_key_version": 1}, make=lambda: next(made))
    assert rotated == {"primary_key": "key2", "secondary_key": "key1"}
    assert keys_provider.diff_keys(olds, {**olds, "secondary_key_version": 2}).changes is True
    assert keys_provider.diff_keys(olds, dict(olds)).changes is False

# ------------------------------------------------------------ registry images

def test_registry_image_diff_follows_versions_not_paths() -> None:
    old = {"repository": "r/x", "source_image_id": "sha256:a", "models": [{"name": "m", "version": 1, "model_dir": "/a/m/1"}]}
    moved = {**old, "models": [{"name": "m", "version": 1, "model_dir": "/elsewhere/m/1"}]}
    assert registry_image.diff_registry_image(old, moved).changes is False
    bumped = {**old, "models": [{"name": "m", "version": 2, "model_dir": "/a/m/2"}]}
    d = registry_image.diff_registry_image(old, bumped)
    assert d.changes is True and not d.replaces
    assert registry_image.diff_registry_image(old, {**old, "source_image_id": "sha256:b"}).changes is True
    assert registry_image.diff_registry_image(old, {**old, "repository": "r/y"}).replaces == ["repository"]
    assert registry_image.diff_registry_image({**old, "present": False}, old).changes is True

def test_rotated_registry_credentials_update_the_image_without_a_push(monkeypatch: pytest.MonkeyPatch) -> None:
    old = {"repository": "r/x", "source_image_id": "sha256:a", "models": [], "tag": "t", "digest": "sha256:d",
           "image_ref": "r/x@sha256:d", "registry_auth": {"server": "r", "username": "u", "password": "old"}}
    rotated = {**old, "registry_auth": {**old["registry_auth"], "password": "new"}}
    d = registry_image.diff_registry_image(old, rotated)
    assert d.changes is True and not d.replaces
    assert registry_image.credentials_only(old, rotated)
    assert not registry_image.credentials_only(old, {**rotated, "source_image_id": "sha256:b"})
    assert not registry_image.credentials_only(old, dict(old))

    def no_push(*_a: Any, **_k: Any) -> str:
        raise AssertionError("a rotated password must not push")

    monkeypatch.setattr(oci_registry, "push", no_push)
    outs = registry_image.RegistryImageProvider().update("id", old, rotated).outs
    assert outs["image_ref"] == "r/x@sha256:d" and outs["registry_auth"]["password"] == "new"

def test_model_layer_tag_and_dockerfile() -> None:
    m1 = [{"name": "a", "version": 1}, {"name": "b", "version": 2}]
    assert oci_registry.model_layer_tag("sha256:x", m1) == oci_registry.model_layer_tag("sha256:x", list(reversed(m1)))
    assert oci_registry.model_layer_tag("sha256:x", m1) != oci_registry.model_layer_tag("sha256:x", [{"name": "a", "version": 2}, m1[1]])
    one = oci_registry.render_model_dockerfile("img:1", [{"name": "ridge", "version": 4}])
    assert "FROM img:1\n" in one and "ENV AZUREML_MODEL_DIR=/var/azureml-app/azureml-models/ridge/4" in one
    assert "AZUREML_MODEL_DIR=/var/azureml-app/azureml-models\n" in oci_registry.render_model_dockerfile("img:1", m1)

class FakeResponse:
    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None):
        self.status_code, self._body, self.text, self.headers = status, body, str(body), headers or {}

    def json(self) -> Any:
        return self._body

class FakeSession:
    """Answers requests from a table, and records what was asked."""

    def __init__(self, table: dict[tuple[str, str], FakeResponse]):
        self.table, self.calls = table, []

    def _do(self, method: str, url: str, **_kw: Any) -> FakeResponse:
        self.calls.append((method, url))
        return self.table.get((method, url), FakeResponse(404, {"message": "not found"}))

    def get(self, url: str, **kw: Any) -> FakeResponse:
        return self._do("GET", url, **kw)

    def head(self, url: str, **kw: Any) -> FakeResponse:
        return self._do("HEAD", url, **kw)

    def delete(self, url: str, **kw: Any) -> FakeResponse:
        return self._do("DELETE", url, **kw)

def test_registry_manifest_calls() -> None:
    s = FakeSession({("HEAD", "http://127.0.0.1:5000/v2/p/x/manifests/sha256:1"): FakeResponse(200)})
    assert oci_registry.manifest_exists("127.0.0.1:5000/p/x", "sha256:1", session=s) is True
    assert oci_registry.manifest_exists("127.0.0.1:5000/p/x", "sha256:2", session=s) is False
    oci_registry.delete_manifest("127.0.0.1:5000/p/x", "sha256:2", session=s)  # gone already: fine
    s.table[("DELETE", "http://127.0.0.1:5000/v2/p/x/manifests/sha256:3")] = FakeResponse(405, "UNSUPPORTED")
    with pytest.raises(oci_registry.RegistryError, match="405"):
        oci_registry.delete_manifest("127.0.0.1:5000/p/x", "sha256:3", session=s)

def test_delete_repository_deletes_every_tagged_manifest() -> None:
    base = "http://127.0.0.1:5000/v2/p/x"
    s = FakeSession({
        ("GET", f"{base}/tags/list"): FakeResponse(200, {"name": "p/x", "tags": ["t2", "t1"]}),
        ("HEAD", f"{base}/manifests/t1"): FakeResponse(200, headers={"Docker-Content-Digest": "sha256:1"}),
        ("HEAD", f"{base}/manifests/t2"): FakeResponse(200, headers={"Docker-Content-Digest": "sha256:2"}),
        ("DELETE", f"{base}/manifests/sha256:1"): FakeResponse(202),
        ("DELETE", f"{base}/manifests/sha256:2"): FakeResponse(202),
    })
    assert oci_registry.delete_repository("127.0.0.1:5000/p/x", session=s) == 2
    assert [c for c in s.calls if c[0] == "DELETE"] == [("DELETE", f"{base}/manifests/sha256:1"), ("DELETE", f"{base}/manifests/sha256:2")]
    assert oci_registry.delete_repository("127.0.0.1:5000/p/none", session=s) == 0  # unknown repository: 404


# --------------------------------------------------------- cluster and client

def kubeconfig(server: str = "https://127.0.0.1:6443", **user: Any) -> str:
    return yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority-data": base64.b64encode(b"CA").decode()}}],
        "users": [{"name": "u", "user": user or {"token": "t0k"}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    })

def node(cpu: str, ready: bool = True) -> dict[str, Any]:
    return {"status": {"allocatable": {"cpu": cpu}, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}

def test_facts_sum_allocatable_cpus() -> None:
    server = "https://127.0.0.1:6443"
    s = FakeSession({
        ("GET", f"{server}/version"): FakeResponse(200, {"gitVersion": "v1.37.2"}),
        ("GET", f"{server}/api/v1/nodes"): FakeResponse(200, {"items": [node("4"), node("3500m"), node("2", ready=False)]}),
    })
    f = kube.facts(kubeconfig(), session=s)
    assert (f.kubernetes_version, f.node_count, f.ready_nodes, f.allocatable_vcpus) == ("v1.37.2", 3, 2, 9.5)

def test_api_server_errors_are_its_own_words() -> None:
    server = "https://127.0.0.1:6443"
    s = FakeSession({("GET", f"{server}/version"): FakeResponse(401, {"message": "Unauthorized"})})
    with pytest.raises(kube.ClusterUnreachable, match="401 Unauthorized"):
        kube.facts(kubeconfig(), session=s)

@pytest.mark.parametrize(
    "text, match",
    [
        ("{not yaml", "not valid YAML"),
        ("- a list", "not a mapping"),
        (yaml.safe_dump({"contexts": [], "current-context": "x"}), "no context 'x'"),
        (kubeconfig(exec={"command": "az"}), "exec or auth-provider"),
    ],
)
def test_bad_kubeconfigs(text: str, match: str) -> None:
    with pytest.raises(kube.KubeconfigError, match=match):
        kube.endpoint(text)

def test_cpu_quantities() -> None:
    assert kube.parse_cpu("4") == 4 and kube.parse_cpu("250m") == 0.25 and kube.parse_cpu("0.5") == 0.5

def test_fast_prod_needs_twelve_vcpus() -> None:
    (f,) = cluster_provider.purpose_failures("FastProd", 2)
    assert f.property == "cluster_purpose" and "12" in f.reason and "2" in f.reason and "DevTest" in f.reason
    assert cluster_provider.purpose_failures("FastProd", 12) == []
    assert cluster_provider.purpose_failures("DevTest", 2) == []

def test_cluster_check_reports_an_unreachable_api_server_on_kubeconfig() -> None:
    # Port 9 (discard) on loopback: nothing listens, so the connection is refused at once.
    result = cluster_provider.ClusterProvider().check(
        {}, {"source": "kubeconfig", "kubeconfig": kubeconfig("https://127.0.0.1:9"), "cluster_purpose": "DevTest"}
    )
    (f,) = result.failures
    assert f.property == "kubeconfig" and "127.0.0.1:9" in f.reason

def test_cluster_diff() -> None:
    old = {"source": "local", "kubeconfig_sha": "a", "cluster_purpose": "DevTest", "agent_count": 3, "vm_size": "x"}
    assert cluster_provider.diff_cluster(old, dict(old)).changes is False
    assert cluster_provider.diff_cluster(old, {**old, "kubeconfig_sha": "b"}).replaces == []
    assert cluster_provider.diff_cluster(old, {**old, "kubeconfig_sha": "b"}).changes is True
    assert cluster_provider.diff_cluster(old, {**old, "source": "kubeconfig"}).replaces == ["source"]

# --------------------------------------------------------- components, mocked

class K8sMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: dict[str, tuple[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        outs = dict(args.inputs)
        if args.typ.endswith("mldeploy:ModelVersion"):
            outs.update(version=int(args.inputs.get("version") or 1), model_dir="/r/m/1", content_hash="h", present=True)
        elif args.typ.endswith("mldeploy:Image"):
            outs.update(image_name="img:1", image_id="sha256:" + "1" * 64, present=True)
        elif args.typ.endswith("mldeploy:Cluster"):
            outs.update(kubeconfig=kubeconfig(), kubernetes_version="v1.37.2", node_count=1, allocatable_vcpus=2.0)
        elif args.typ.endswith("mldeploy:RegistryImage"):
            outs.update(image_ref=f"{args.inputs['repository']}@sha256:{'2' * 64}", digest="sha256:" + "2" * 64)
        elif args.typ.endswith("mldeploy:ServiceKeys"):
            outs.update(primary_key="p" * 43, secondary_key="s" * 43)
        elif args.typ == "kubernetes:core/v1:Service":
            outs["spec"] = {**outs["spec"], "ports": [{**outs["spec"]["ports"][0], "nodePort": 31234}]}
        with self._lock:
            self.resources[args.name] = (args.typ, args.inputs)
        return f"{args.name}-id", outs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], None]:
        return {}, None

@pytest.fixture
def k8s_mocks(project: Path) -> K8sMocks:  # noqa: F811 - the fixture imported above
    m = K8sMocks()
    pulumi.runtime.set_mocks(m, project="proj", stack="prod", preview=False)
    pulumi.runtime.set_all_config({}, [])  # no stack config left over from another test
    return m

def build(**kw: Any):
    from mldeploy.components import AksCluster, AksService

    cluster = AksCluster("aks", cluster_purpose="DevTest")
    svc = AksService("scorer", cluster=cluster, models=[make_model()], image=make_image(), namespace="ml", **kw)
    return cluster, svc

@pulumi.runtime.test
def test_aks_service_declares_the_azure_ml_objects(k8s_mocks: K8sMocks):
    _, svc = build(num_replicas=2)

    def check(args: list[Any]) -> None:
        uri, pk = args
        assert uri == "http://127.0.0.1:31234/api/v1/service/scorer/score"
        assert pk == "p" * 43
        types = {name: typ for name, (typ, _) in k8s_mocks.resources.items()}
        assert types["aks-ns-ml"] == "kubernetes:core/v1:Namespace"
        assert types["scorer-deployment"] == "kubernetes:apps/v1:Deployment"
        assert types["scorer-service"] == "kubernetes:core/v1:Service"
        assert types["scorer-front-config"] == "kubernetes:core/v1:Secret"
        assert types["scorer-pdb"] == "kubernetes:policy/v1:PodDisruptionBudget"
        assert "scorer-hpa" not in types  # fixed replicas: no autoscaler
        assert not [n for n in types if "pull-secret" in n], "a registry without credentials needs no pull secret"
        assert "imagePullSecrets" not in k8s_mocks.resources["scorer-deployment"][1]["spec"]["template"]["spec"]
        dep = k8s_mocks.resources["scorer-deployment"][1]
        assert SECRET_SIG not in dep["spec"], "the Deployment's spec must stay reviewable"

        assert dep["metadata"]["namespace"] == "ml"
        assert dep["spec"]["replicas"] == 2
        image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image.startswith("127.0.0.1:5000/mldeploy-proj-prod/scorer@sha256:")
        reg = k8s_mocks.resources["scorer-image"][1]
        assert [(m["name"], m["version"]) for m in reg["models"]] == [("ridge", 1)]
        secret = k8s_mocks.resources["scorer-front-config"][1]
        data = secret["stringData"]
        assert data.get(SECRET_SIG) == SECRET_VALUE, "the keys' config must travel as a secret"
        assert "p" * 43 in data["value"]["service.conf"]

    assert svc.autoscaler is None and svc.disruption_budget is not None
    return pulumi.Output.all(svc.scoring_uri, svc.primary_key, svc.disruption_budget.id, svc.deployment.id).apply(lambda a: check(a[:2]))

@pulumi.runtime.test
def test_aks_service_autoscales_by_default(k8s_mocks: K8sMocks):
    _, svc = build(autoscale_max_replicas=4)

    def check(_: Any) -> None:
        typ, hpa = k8s_mocks.resources["scorer-hpa"]
        assert typ == "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
        assert "scorer-pdb" not in k8s_mocks.resources

    assert svc.autoscaler is not None and svc.disruption_budget is None
    return pulumi.Output.all(svc.scoring_uri, svc.autoscaler.id).apply(check)

@pytest.fixture
def registry_login(k8s_mocks: K8sMocks):
    """Stack config naming a registry that wants credentials, and the credentials the provider would resolve."""
    pulumi.runtime.set_all_config({"mldeploy:imageRegistry": "myacr.azurecr.io", "mldeploy:imageRegistryUsername": "myacr",
                                   "mldeploy:imageRegistryPassword": "s3cret-pw"}, ["mldeploy:imageRegistryPassword"])
    plain = k8s_mocks.new_resource

    def resolved(args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        rid, outs = plain(args)
        if args.typ.endswith("mldeploy:RegistryCredentials"):
            outs.update(server="myacr.azurecr.io", username="myacr", password="s3cret-pw")
        return rid, outs

    k8s_mocks.new_resource = resolved  # type: ignore[method-assign]
    yield k8s_mocks
    pulumi.runtime.set_all_config({}, [])


@pulumi.runtime.test
def test_a_registry_with_credentials_gives_each_namespace_one_pull_secret(registry_login: K8sMocks):
    import json

    from mldeploy.components import AksCluster, AksService

    cluster = AksCluster("aks", cluster_purpose="DevTest")
    a = AksService("scorer", cluster=cluster, models=[make_model()], image=make_image(), namespace="ml", num_replicas=1)
    b = AksService("other", cluster=cluster, models=[make_model()], image=make_image(), namespace="ml", num_replicas=1)

    def check(_: Any) -> None:
        secrets = {n: i for n, (t, i) in registry_login.resources.items() if "pull-secret" in n}
        assert list(secrets) == ["aks-pull-secret-ml"], "one Secret per namespace, shared by its services"
        typ, secret = registry_login.resources["aks-pull-secret-ml"]
        assert typ == "kubernetes:core/v1:Secret" and secret["type"] == "kubernetes.io/dockerconfigjson"
        assert (secret["metadata"]["name"], secret["metadata"]["namespace"]) == ("mldeploy-registry", "ml")
        data = secret["stringData"]
        assert data.get(SECRET_SIG) == SECRET_VALUE, "the registry's password travels as a secret"
        entry = json.loads(data["value"][".dockerconfigjson"])["auths"]["myacr.azurecr.io"]
        assert (entry["username"], entry["password"]) == ("myacr", "s3cret-pw")
        for name in ("scorer", "other"):
            dep = registry_login.resources[f"{name}-deployment"][1]
            assert dep["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "mldeploy-registry"}]
            assert dep["spec"]["template"]["spec"]["containers"][0]["image"].startswith("myacr.azurecr.io/")
            assert "s3cret-pw" not in json.dumps(dep), "a rotated password must not change the Deployment"

    return pulumi.Output.all(a.scoring_uri, b.scoring_uri, a.deployment.id, b.deployment.id).apply(check)


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"num_replicas": 2, "autoscale_enabled": True}, "num_replicas"),
        ({"autoscale_min_replicas": 3, "autoscale_max_replicas": 2}, "autoscale_min_replicas"),
        ({"num_replicas": 500}, "num_replicas"),
        ({"timeout_seconds": 30}, "timeout_seconds"),
        ({"namespace": "Not_OK"}, "namespace"),
        ({"cpu_cores": 1, "cpu_cores_limit": 0.5}, "cpu_cores_limit"),
    ],
)
def test_bad_deploy_configuration_fails_naming_the_field(k8s_mocks: K8sMocks, kw: dict[str, Any], words: str) -> None:
    from mldeploy.components import AksCluster, AksService

    cluster = AksCluster("aks", cluster_purpose="DevTest")
    with pytest.raises(ArgsError, match=rf"AksService 'scorer': invalid arguments: .*{words}"):
        AksService("scorer", cluster=cluster, models=[make_model()], image=make_image(), **kw)

def test_cluster_args_are_checked(k8s_mocks: K8sMocks) -> None:
    from mldeploy.components import AksCluster

    with pytest.raises(ArgsError, match="cluster_purpose"):
        AksCluster("aks", cluster_purpose="Huge")
    with pytest.raises(ArgsError, match="agent_count"):
        AksCluster("aks", agent_count=0)


# ------------------------------------------------------------ preview in words


def test_preview_words_for_a_model_roll_on_kubernetes() -> None:
    import preview_markdown as pm

    def dep(version: str, image: str) -> dict[str, Any]:
        spec = spec_for(K(service_name="svc", num_replicas=2))
        spec["template"]["metadata"]["annotations"]["mldeploy.azureml.net/model.ridge"] = version
        spec["template"]["spec"]["containers"][0]["image"] = image
        return {"metadata": {"name": "svc", "namespace": "ml"}, "spec": spec}

    old, new = dep("1", "r/x@sha256:1"), dep("2", "04da6b54-80e4-46f7-96ec-b56ff0331ba9")  # unknown at preview
    words = pm.describe_deployment(old, new)
    assert words[0].startswith("rolls `ml/svc`: a new ReplicaSet")
    assert "model `ridge` version 1 → 2" in words
    assert pm.describe_deployment(old, old) == []
    image_words = pm.describe_registry_image(
        {"repository": "r/x", "models": [{"name": "ridge", "version": 1}], "source_image_id": "a"},
        {"repository": "r/x", "models": [{"name": "ridge", "version": 2}], "source_image_id": "a"},
    )
    assert image_words == ["model layer: `ridge` version 1 → 2", "pushes a new digest of `r/x`"]
    hpa_old = {"spec": target.hpa_spec(K(service_name="svc"), "svc")}
    hpa_new = {"spec": target.hpa_spec(K(service_name="svc", autoscale_max_replicas=4), "svc")}
    assert pm.describe_hpa(hpa_old, hpa_new) == ["autoscale 1–10 replicas at 70% CPU → 1–4 replicas at 70% CPU"]
    assert pm.describe_keys({"primary_key_version": 1, "secondary_key_version": 1},
                            {"primary_key_version": 2, "secondary_key_version": 1}) == ["rotates the primary key (version 1 → 2)"]
    rendered = pm.render("prod", [{"op": "update", "type": "kubernetes:apps/v1:Deployment",
                                   "urn": "urn:pulumi:prod::mldeploy::x$kubernetes:apps/v1:Deployment::svc-deployment",
                                   "old": old, "new": new}], {"update": 1, "same": 9})
    assert "| ✏️ update | AksService `svc` | rolls `ml/svc`: a new ReplicaSet" in rendered


def test_sample_request_gates_a_pod_with_a_startup_probe_and_only_then() -> None:
    """Issue 17: a raw script's own sample_request on pods; without one the spec is byte-identical."""
    import json as _json

    args = K(service_name="svc", num_replicas=1, startup_timeout_seconds=75)
    plain = spec_for(args)
    gated = target.deployment_spec(
        args, project="p", stack="s", image_ref="reg/x@sha256:1", front_image_ref="reg/front@sha256:2",
        model_versions={"ridge": "3"}, config_secret="svc-front", config_checksum="abc", sample_config="svc-sample",
    )
    assert _json.dumps(spec_for(args), sort_keys=True) == _json.dumps(
        target.deployment_spec(args, project="p", stack="s", image_ref="reg/x@sha256:1", front_image_ref="reg/front@sha256:2",
                               model_versions={"ridge": "3"}, config_secret="svc-front", config_checksum="abc", sample_config=None),
        sort_keys=True)
    assert "startupProbe" not in _json.dumps(plain)
    scoring = gated["template"]["spec"]["containers"][0]
    assert scoring["startupProbe"]["exec"]["command"] == ["python", "/etc/mldeploy/sample/probe.py"]
    # The probe's budget covers the rollout's: 38 tries 2 s apart for 75 s.
    assert (scoring["startupProbe"]["periodSeconds"], scoring["startupProbe"]["failureThreshold"]) == (2, 38)
    assert {"name": "sample", "mountPath": "/etc/mldeploy/sample", "readOnly": True} in scoring["volumeMounts"]
    assert {"name": "sample", "configMap": {"name": "svc-sample", "defaultMode": 0o444}} in gated["template"]["spec"]["volumes"]
    front = gated["template"]["spec"]["containers"][1]
    assert front == plain["template"]["spec"]["containers"][1], "the front end is unchanged"

    data = target.sample_config_data({"body": '{"data": [[1, 2]]}', "response": "[3.0]"})
    assert _json.loads(data["request.json"]) == {"data": [[1, 2]]} and _json.loads(data["response.json"]) == [3.0]
    assert "def probe(" in data["probe.py"] and "import mldeploy" not in data["probe.py"], "the probe runs alone in the pod"
    assert "response.json" not in target.sample_config_data({"body": "[1]"})


def test_the_sample_probe_in_the_pod(tmp_path) -> None:
    """The probe's own decisions, against a scoring stand-in on 127.0.0.1; stopping the server is a seam here."""
    import http.server
    import json as _json
    import threading

    from mldeploy.providers.gate import sample_probe

    answers = {"body": b"[3.0]", "status": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(answers["status"])
            self.send_header("Content-Length", str(len(answers["body"])))
            self.end_headers()
            self.wfile.write(answers["body"])

        def log_message(self, *a: Any) -> None:
            pass

    folder = tmp_path / "sample"
    folder.mkdir()
    (folder / "request.json").write_text(_json.dumps({"data": [[1, 2]]}))
    (folder / "response.json").write_text("[3.0]")
    stops: list[str] = []
    log = tmp_path / "termination-log"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = str(server.server_address[1])
    try:
        run = lambda: sample_probe.probe(str(folder), port, 5.0, str(log), lambda: stops.append("stop"))  # noqa: E731
        assert run() == 0 and stops == [] and not log.exists()
        answers.update(body=b"[4.0]")
        assert run() == 1 and stops == ["stop"]
        assert "problem: the answer differs from sample_request's expected answer" in log.read_text()
        assert "at 0: expected 3.0, got 4.0" in log.read_text()
        answers.update(status=500, body=b"KeyError: 'data'")
        assert run() == 1 and "the sample was answered 500, not 200" in log.read_text()
    finally:
        server.shutdown()
        server.server_close()
    # Nothing listening yet: not up, so no verdict and nothing stopped.
    stops.clear()
    assert sample_probe.probe(str(folder), port, 1.0, str(tmp_path / "other-log"), lambda: stops.append("stop")) == 1
    assert stops == [] and not (tmp_path / "other-log").exists()


def test_a_probe_report_with_exit_0_reaches_the_rollouts_error() -> None:
    from mldeploy.providers.targets.kubernetes.rollout import pod_problems

    pod = {"metadata": {"name": "svc-1"}, "status": {"containerStatuses": [{
        "name": "scoring", "ready": False, "restartCount": 1,
        "lastState": {"terminated": {"exitCode": 0, "reason": "Completed", "message": "problem: the sample was answered 500, not 200"}},
    }]}}
    assert "problem: the sample was answered 500, not 200" in pod_problems([pod])[0]


@pulumi.runtime.test
def test_every_aks_service_gets_the_sample_gate_with_sample_request_or_the_entry_scripts_own(k8s_mocks: K8sMocks):
    """Issue 20, item 1: the same rule as the local target; the ConfigMap holds the request only when given."""
    from mldeploy.components import AksCluster, AksService

    cluster = AksCluster("aks", cluster_purpose="DevTest")
    gated = AksService("gated", cluster=cluster, models=[make_model()], image=make_image(), namespace="ml", num_replicas=1,
                       sample_request={"data": [[1, 2]]}, sample_response=[3.0])
    plain = AksService("plain", cluster=cluster, models=[make_model()], image=make_image(), namespace="ml", num_replicas=1)

    def check(_: Any) -> None:
        typ, cm = k8s_mocks.resources["gated-sample"]
        assert typ == "kubernetes:core/v1:ConfigMap"
        assert (cm["metadata"]["name"], cm["metadata"]["namespace"]) == ("gated-sample", "ml")
        assert cm["data"]["request.json"] == '{"data": [[1, 2]]}' and cm["data"]["response.json"] == "[3.0]"
        scoring = k8s_mocks.resources["gated-deployment"][1]["spec"]["template"]["spec"]["containers"][0]
        assert scoring["startupProbe"]["exec"]["command"][-1] == "/etc/mldeploy/sample/probe.py"
        plain_cm = k8s_mocks.resources["plain-sample"][1]
        assert set(plain_cm["data"]) == {"probe.py"}, "without sample_request the probe reads the entry script's sample"
        plain_scoring = k8s_mocks.resources["plain-deployment"][1]["spec"]["template"]["spec"]["containers"][0]
        assert plain_scoring["startupProbe"]["exec"]["command"][-1] == "/etc/mldeploy/sample/probe.py"

    return pulumi.Output.all(gated.scoring_uri, plain.scoring_uri, gated.deployment.id).apply(check)


def test_aks_service_sample_request_errors_name_the_field(k8s_mocks: K8sMocks) -> None:
    from mldeploy.components import AksCluster, AksService
    from mldeploy.components._common import ArgsError

    cluster = AksCluster("aks", cluster_purpose="DevTest")
    with pytest.raises(ArgsError, match=r"AksService 'bad': invalid arguments: sample_request: a dict, a list, or the path of a JSON file"):
        AksService("bad", cluster=cluster, models=[make_model()], image=make_image(), sample_request=3)


def test_pods_meet_the_restricted_pod_security_standard() -> None:
    """Issue 18, item 7: nobody, no capabilities, a read-only root with /tmp as an emptyDir, seccomp RuntimeDefault."""
    spec = spec_for(K(service_name="svc", num_replicas=1))
    pod = spec["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534, "fsGroup": 65534,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    for c in pod["containers"]:
        assert c["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                        "readOnlyRootFilesystem": True, "runAsNonRoot": True}, c["name"]
    scoring = pod["containers"][0]
    assert {"name": "scratch", "mountPath": "/tmp"} in scoring["volumeMounts"]
    assert {"name": "scratch", "emptyDir": {"sizeLimit": "256Mi"}} in pod["volumes"]
    assert {"name": "front-conf", "secret": {"secretName": "svc-front", "defaultMode": 0o440}} in pod["volumes"]
    assert target.NAMESPACE_LABELS["pod-security.kubernetes.io/enforce"] == "restricted"
    assert target.deny_egress_policy() == {"podSelector": {}, "policyTypes": ["Egress"], "egress": []}


def test_a_canary_a_held_split_and_a_mirror_on_kubernetes_are_checked_naming_the_field(k8s_mocks: K8sMocks) -> None:
    from mldeploy.components import AksCluster, AksService, Canary
    from mldeploy.components._common import ArgsError

    cluster = AksCluster("aks", cluster_purpose="DevTest")
    svc = AksService("svc-c", cluster=cluster, models=[make_model()], image=make_image(),
                     rollout=Canary(steps=[50, 100], step_seconds=5))
    assert svc.args.service_name == "svc-c"
    with pytest.raises(ArgsError, match=r"AksService 'svc-b': invalid arguments: rollout.steps: steps must end at 100"):
        AksService("svc-b", cluster=cluster, models=[make_model()], image=make_image(), rollout={"steps": [50, 90], "step_seconds": 5})
    with pytest.raises(ArgsError, match=r"rollout: must be a Canary"):
        AksService("svc-b", cluster=cluster, models=[make_model()], image=make_image(), rollout=[50, 100])
    assert AksService("svc-m", cluster=cluster, models=[make_model()], image=make_image(), mirror_percent=10).args
    with pytest.raises(ArgsError, match=r"mirror_percent: cannot be combined with a canary rollout"):
        AksService("svc-m", cluster=cluster, models=[make_model()], image=make_image(), mirror_percent=10,
                   rollout=Canary(steps=[50, 100], step_seconds=5))
    with pytest.raises(ArgsError, match=r"mirror_percent: .*less than or equal to 100"):
        AksService("svc-m", cluster=cluster, models=[make_model()], image=make_image(), mirror_percent=120)
    held = AksService("svc-t", cluster=cluster, models=[make_model()], image=make_image(), traffic={"current": 90, "candidate": 10})
    assert held.args.service_name == "svc-t"
    with pytest.raises(ArgsError, match=r"traffic: current and candidate must sum to 100"):
        AksService("svc-t", cluster=cluster, models=[make_model()], image=make_image(), traffic={"current": 90, "candidate": 20})
    with pytest.raises(ArgsError, match=r"traffic: a held split and a canary rollout cannot both be declared"):
        AksService("svc-t", cluster=cluster, models=[make_model()], image=make_image(), traffic={"current": 90, "candidate": 10},
                   rollout=Canary(steps=[50, 100], step_seconds=5))
