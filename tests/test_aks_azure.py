"""`AksCluster(target="azure")`: checks at preview, the managed cluster through the SDK against the
local fake ARM, attach by resource id, and the component's wiring under Pulumi's mocks.

The fake ARM (tests/fake_arm.py) is a test double on 127.0.0.1, not Azure: its
kubeconfig names an API server that does not exist, and nothing here talks to
a Kubernetes API server (the Kubernetes side is tested in test_kubernetes_*).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from mldeploy.components._common import ArgsError
from fake_arm import FakeArm
from mldeploy.providers.targets import azure
from mldeploy.providers.targets.kubernetes import managed_cluster as mc
from mldeploy.providers.targets.azure.aks import ManagedClusters, managed_cluster_body, parse_resource_id
from mldeploy.providers.targets.azure.arm import ArmError, CredentialError
from test_components_unit import project  # noqa: F401 - fixture

SUB = "00000000-1111-2222-3333-444444444444"
CREATE = {"mode": "create", "subscription_id": SUB, "resource_group": "rg-ml", "location": "westeurope",
          "cluster_name": "mldeploy-prod-aks", "dns_prefix": "mldeploy-prod-aks", "agent_count": 3,
          "vm_size": "Standard_D4s_v5", "cluster_purpose": "FastProd", "tags": {}, "arm_endpoint": "https://management.azure.com"}


def failures(**over: Any) -> dict[str, str]:
    return {f.property: f.reason for f in mc.check_create({**CREATE, **over})}


# ------------------------------------------------------------ preview checks (pure)

def test_a_good_cluster_passes():
    assert failures() == {}
    assert failures(agent_count=1, cluster_purpose="DevTest") == {}


@pytest.mark.parametrize(
    "over, field, words",
    [
        ({"subscription_id": ""}, "subscription_id", "missing: set stack config mldeploy:azureSubscriptionId"),
        ({"subscription_id": "not-a-guid"}, "subscription_id", "must be a subscription GUID"),
        ({"location": "atlantis"}, "location", "unknown Azure location 'atlantis'"),
        ({"resource_group": "rg."}, "resource_group", "not ending in '.'"),
        ({"cluster_name": "-bad-"}, "cluster_name", "does not match"),
        ({"agent_count": 0}, "agent_count", "1 to 1000 nodes"),
        ({"vm_size": "Standard_Imaginary_v9"}, "vm_size", f"VM size table of {azure.VM_SIZES_DATE}"),
        ({"vm_size": "Standard_B1s", "cluster_purpose": "DevTest", "agent_count": 1}, "vm_size", "System pool needs at least 2 vCPUs"),
        ({"agent_count": 2, "vm_size": "Standard_D3_v2"}, "cluster_purpose", "FastProd needs at least 12 vCPUs and 2 x Standard_D3_v2 (4 vCPUs each"),
    ],
)
def test_bad_input_names_the_field(over, field, words):
    got = failures(**over)
    assert field in got and words in got[field], got


def test_fast_prod_counts_vcpus_from_the_dated_table():
    assert "cluster_purpose" not in failures(agent_count=3, vm_size="Standard_D3_v2")  # 3 x 4 = 12, Azure ML's default
    assert "cluster_purpose" in failures(agent_count=1, vm_size="Standard_D8s_v5")  # 8
    assert mc.pool_vcpus(3, "standard_d4s_v5") == 12  # ARM's names are case-insensitive
    assert mc.check_create({**CREATE, "vm_size": pulumi.runtime.rpc.UNKNOWN}) == []  # unknown at preview: not judged


def test_diff_rules():
    same = mc.diff_managed_cluster(CREATE, dict(CREATE))
    assert not same.changes
    scale = mc.diff_managed_cluster(CREATE, {**CREATE, "agent_count": 5})
    assert scale.changes and not scale.replaces
    created = {**CREATE, "resource_id": "/subscriptions/x/.../managedClusters/a"}  # an output of a created cluster
    assert not mc.diff_managed_cluster(created, {**CREATE, "resource_id": None}).changes
    for key, value in (("vm_size", "Standard_D8s_v5"), ("location", "eastus"), ("dns_prefix", "x")):
        d = mc.diff_managed_cluster(CREATE, {**CREATE, key: value})
        assert d.replaces == [key] and d.delete_before_replace
    assert mc.diff_managed_cluster({**CREATE, "present": False}, dict(CREATE)).changes  # deleted behind our back


def test_resource_ids():
    rid = f"/subscriptions/{SUB}/resourceGroups/rg-ml/providers/Microsoft.ContainerService/managedClusters/prod-aks"
    assert parse_resource_id(rid) == (SUB, "rg-ml", "prod-aks")
    with pytest.raises(ValueError, match="must be /subscriptions/<guid>"):
        parse_resource_id("/subscriptions/x/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm")


def test_the_body_is_azure_ml_shaped_and_passes_the_spec():
    from arm_spec import check

    body = managed_cluster_body(location="westeurope", dns_prefix="p", agent_count=1, vm_size="Standard_D4s_v5")
    pool = body["properties"]["agentPoolProfiles"][0]
    assert (pool["count"], pool["vmSize"], pool["mode"], pool["osType"]) == (1, "Standard_D4s_v5", "System", "Linux")
    assert body["identity"] == {"type": "SystemAssigned"}
    check("Microsoft.ContainerService", "2025-10-01", "ManagedCluster", body)


# ------------------------------------------------------------ against the fake ARM

@pytest.fixture
def fake(fake):
    """Clusters finish in half a second."""
    fake.cluster_seconds = 0.5
    return fake


def props(fake: FakeArm, **over: Any) -> dict[str, Any]:
    return {**CREATE, "arm_endpoint": fake.url, **over}


@pytest.mark.docker  # the fake ARM runs on a Docker client
def test_create_scale_refresh_and_delete_through_the_provider(fake):
    p = mc.ManagedClusterProvider()
    news = props(fake, agent_count=1, cluster_purpose="DevTest")
    assert p.check({}, news).failures == []
    created = p.create(news)
    outs = created.outs
    assert created.id == f"/subscriptions/{SUB}/resourceGroups/rg-ml/providers/Microsoft.ContainerService/managedClusters/mldeploy-prod-aks"
    assert (outs["node_count"], outs["allocatable_vcpus"], outs["kubernetes_version"]) == (1, 4.0, "1.33.2")
    assert "kubeconfig" not in outs  # ClusterCredentials holds it
    from mldeploy.components.aks_cluster import credentials_props

    creds_in = credentials_props(news)
    cp = mc.ClusterCredentialsProvider()
    creds = cp.create(creds_in).outs
    cfg = yaml.safe_load(creds["kubeconfig"])
    assert creds["server"] == cfg["clusters"][0]["cluster"]["server"] and creds["server"].endswith(".westeurope.azmk8s.io:443")
    # A scale leaves the credentials' inputs as they were; another VM size (a new cluster) does not.
    assert not mc.diff_credentials(creds, credentials_props({**news, "agent_count": 2})).changes
    assert mc.diff_credentials(creds, credentials_props({**news, "vm_size": "Standard_D8s_v5"})).changes
    sent = fake.cluster("mldeploy-prod-aks")["body"]
    assert sent["properties"]["agentPoolProfiles"][0] == {"name": "nodepool1", "count": 1, "vmSize": "Standard_D4s_v5",
                                                          "mode": "System", "osType": "Linux", "type": "VirtualMachineScaleSets"}
    assert [r for r in fake.requests if r[0] == "POST" and "/listClusterUserCredential" in r[1] and "api-version=2025-10-01" in r[1]]

    scaled = p.update(created.id, outs, {**news, "agent_count": 2}).outs
    assert scaled["node_count"] == 2 and fake.cluster("mldeploy-prod-aks")["body"]["properties"]["agentPoolProfiles"][0]["count"] == 2

    fake.clusters.clear()  # deleted behind our back
    read = p.read(created.id, scaled)
    assert read.outs["present"] is False
    creds_read = cp.read("x", creds).outs
    assert creds_read["present"] is False and mc.diff_credentials(creds_read, creds_in).changes  # fetched anew
    assert mc.diff_managed_cluster(read.outs, {**news, "agent_count": 2}).changes  # the next up creates it again
    again = p.update(created.id, read.outs, {**news, "agent_count": 2}).outs
    assert again["present"] is True and fake.cluster("mldeploy-prod-aks") is not None

    p.delete(created.id, again)
    assert fake.cluster("mldeploy-prod-aks") is None
    p.delete(created.id, again)  # gone already counts as deleted


@pytest.mark.docker  # the fake ARM runs on a Docker client
def test_a_cluster_that_ends_failed_says_why_and_the_next_up_converges(fake):
    fake.fail_next_cluster("mldeploy-prod-aks", "QuotaExceeded",
                           "Operation could not be completed as it results in exceeding approved standardDSv5Family Cores quota.")
    p = mc.ManagedClusterProvider()
    with pytest.raises(ArmError) as err:
        p.create(props(fake))
    text = str(err.value)
    assert "QuotaExceeded: Operation could not be completed" in text and "provisioningState Failed" in text
    assert "run `pulumi up` again" in text and "Traceback" not in text
    assert p.create(props(fake)).outs["node_count"] == 3  # same PUT, now it succeeds
    ManagedClusters(SUB, "rg-ml", fake.url).delete("mldeploy-prod-aks")


@pytest.mark.docker  # the fake ARM runs on a Docker client
def test_conflict_throttling_and_tokens_are_clear_errors(fake, monkeypatch):
    p = mc.ManagedClusterProvider()
    fake.inject("PUT", "/managedClusters/", 409, "OperationNotAllowed", "Operation is not allowed because there's an in progress create managed cluster operation")
    with pytest.raises(ArmError, match="409 OperationNotAllowed"):
        p.create(props(fake))
    fake.inject("PUT", "/managedClusters/", 429, "TooManyRequests", "throttled", {"Retry-After": "1"}, times=10)
    with pytest.raises(ArmError, match="429 TooManyRequests.*retry after 1 s"):
        p.create(props(fake))
    fake.faults.clear()
    assert fake.cluster("mldeploy-prod-aks") is None  # nothing half-made
    monkeypatch.setenv("MLDEPLOY_ARM_TOKEN", fake.issue_token(ttl=-5))
    with pytest.raises(ArmError, match="401 ExpiredAuthenticationToken"):
        p.create(props(fake))
    monkeypatch.delenv("MLDEPLOY_ARM_TOKEN")
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "EnvironmentCredential")
    for k in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_USERNAME"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(CredentialError, match=r"(?s)could not get an Azure token: DefaultAzureCredential failed.*EnvironmentCredential"):
        p.create(props(fake))
    assert fake.cluster("mldeploy-prod-aks") is None


@pytest.mark.docker  # the fake ARM runs on a Docker client
def test_attach_by_resource_id(fake):
    clusters = ManagedClusters(SUB, "rg-other", fake.url)
    clusters.put("shared-aks", managed_cluster_body(location="westeurope", dns_prefix="shared", agent_count=2, vm_size="Standard_D4s_v5"))
    rid = f"/subscriptions/{SUB}/resourceGroups/rg-other/providers/Microsoft.ContainerService/managedClusters/shared-aks"
    p = mc.ManagedClusterProvider()
    attach = {"mode": "attach", "resource_id": rid, "cluster_purpose": "FastProd", "arm_endpoint": fake.url}
    (f,) = p.check({}, attach).failures
    assert f.property == "cluster_purpose" and "2 nodes" in f.reason and "has 8" in f.reason
    assert p.check({}, {**attach, "cluster_purpose": "DevTest"}).failures == []
    missing = {**attach, "resource_id": rid.replace("shared-aks", "nope")}
    assert [x.property for x in p.check({}, missing).failures] == ["resource_id"]
    outs = p.create({**attach, "cluster_purpose": "DevTest"}).outs
    assert outs["node_count"] == 2
    creds = mc.ClusterCredentialsProvider().create({"mode": "attach", "resource_id": rid, "arm_endpoint": fake.url}).outs
    assert creds["kubeconfig"].startswith("apiVersion: v1") and "shared" in creds["server"]
    puts = [r for r in fake.requests if r[0] == "PUT"]
    p.delete(rid, outs)  # attached: someone else's, never deleted
    assert fake.cluster("shared-aks") is not None and [r for r in fake.requests if r[0] == "PUT"] == puts
    clusters.delete("shared-aks")


@pytest.mark.docker  # the fake ARM runs on a Docker client
def test_the_fake_refuses_a_managed_cluster_outside_the_spec(fake):
    import requests

    url = f"{fake.url}/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/c1"
    body = managed_cluster_body(location="westeurope", dns_prefix="c1", agent_count=1, vm_size="Standard_D4s_v5")
    body["properties"]["agentPoolProfiles"][0]["count"] = "one"
    r = requests.put(url, params={"api-version": "2025-10-01"}, json=body, verify=str(fake.ca_path),
                     headers={"Authorization": f"Bearer {fake.issue_token()}"}, timeout=10)
    assert r.status_code == 400 and "agentPoolProfiles[0].count: 'one' is not of type 'integer'" in r.json()["error"]["message"]
    r = requests.put(url, params={"api-version": "2024-01-01"}, json=body, verify=str(fake.ca_path),
                     headers={"Authorization": f"Bearer {fake.issue_token()}"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "InvalidApiVersionParameter"
    assert fake.cluster("c1") is None


# ------------------------------------------------------------ the component, mocked

class AzureMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: dict[str, tuple[str, dict[str, Any]]] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        outs = dict(args.inputs)
        if args.typ.endswith("mldeploy:ManagedCluster"):
            outs.update(kubernetes_version="1.33.2", node_count=1, allocatable_vcpus=4.0, resource_id="/subscriptions/x/rg/aks")
        elif args.typ.endswith("mldeploy:ClusterCredentials"):
            outs.update(kubeconfig="apiVersion: v1\nkind: Config\n", server="https://x:443")
        self.resources[args.name] = (args.typ, args.inputs)
        return f"{args.name}-id", outs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], None]:
        return {}, None


@pytest.fixture
def azure_mocks(project: Path) -> AzureMocks:  # noqa: F811 - the fixture imported above
    m = AzureMocks()
    pulumi.runtime.set_mocks(m, project="proj", stack="prod", preview=False)
    pulumi.runtime.set_all_config({"mldeploy:azureSubscriptionId": SUB, "mldeploy:azureResourceGroup": "rg-ml",
                                   "mldeploy:azureLocation": "westeurope"})
    return m


@pulumi.runtime.test
def test_aks_cluster_on_azure_hands_its_kubeconfig_to_the_kubernetes_provider(azure_mocks: AzureMocks):
    from mldeploy.components import AksCluster

    cluster = AksCluster("aks", cluster_purpose="DevTest", target="azure", vm_size="Standard_D4s_v5")

    def check(args: list[Any]) -> None:
        typ, inputs = azure_mocks.resources["aks-managed-cluster"]
        assert typ == "pulumi-python:dynamic/mldeploy:ManagedCluster"
        assert (inputs["mode"], inputs["agent_count"], inputs["vm_size"], inputs["cluster_purpose"]) == ("create", 1, "Standard_D4s_v5", "DevTest")
        assert (inputs["subscription_id"], inputs["resource_group"], inputs["location"]) == (SUB, "rg-ml", "westeurope")
        assert inputs["cluster_name"] == "proj-prod-aks" and "aks-cluster" not in azure_mocks.resources  # no local cluster
        ctyp, cinputs = azure_mocks.resources["aks-credentials"]
        assert ctyp == "pulumi-python:dynamic/mldeploy:ClusterCredentials" and cinputs["cluster_name"] == "proj-prod-aks"
        ptyp, pinputs = azure_mocks.resources["aks-provider"]
        assert ptyp == "pulumi:providers:kubernetes"
        assert "apiVersion: v1" in str(pinputs["kubeconfig"])

    return pulumi.Output.all(cluster.kubeconfig, cluster.provider.id).apply(check)


def test_aks_cluster_args_for_azure(azure_mocks: AzureMocks) -> None:
    from mldeploy.components import AksCluster

    with pytest.raises(ArgsError, match="resource_id: String should match pattern"):
        AksCluster("aks", target="azure", resource_id="/not/an/id")
    with pytest.raises(ArgsError, match="kubeconfig: not with target='azure'"):
        AksCluster("aks2", target="azure", kubeconfig="apiVersion: v1")
    with pytest.raises(ArgsError, match="resource_id: only with target='azure'"):
        AksCluster("aks3", resource_id=f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/a")
    with pytest.raises(ArgsError, match="target"):
        AksCluster("aks4", target="gcp")


@pytest.mark.docker  # the fake ARM runs on a Docker client
def test_fake_kubeconfig_is_base64_on_the_wire(fake):
    import requests

    ManagedClusters(SUB, "rg", fake.url).put("k1", managed_cluster_body(location="westeurope", dns_prefix="k1", agent_count=1, vm_size="Standard_D4s_v5"))
    url = f"{fake.url}/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/k1/listClusterUserCredential"
    r = requests.post(url, params={"api-version": "2025-10-01"}, verify=str(fake.ca_path),
                      headers={"Authorization": f"Bearer {fake.issue_token()}"}, timeout=10)
    value = r.json()["kubeconfigs"][0]["value"]
    assert base64.b64decode(value).decode().startswith("apiVersion: v1")  # CredentialResult.value is format: byte
    ManagedClusters(SUB, "rg", fake.url).delete("k1")


# ------------------------------------------------------------ through the engine

@pytest.mark.docker  # the fake ARM runs on a Docker client
@pytest.mark.e2e
def test_bad_input_at_preview_and_a_credential_failure_at_up(fake, workdir, engine_stack, monkeypatch):
    """Nothing reaches ARM for a FastProd cluster that is too small; credentials that cannot get a token
    fail `up` in the credential chain's words, without a stack trace, and create nothing."""

    def program() -> None:
        from mldeploy.components import AksCluster

        purpose = pulumi.Config("mldeploy").get("clusterPurpose") or "FastProd"
        cluster = AksCluster("aks", cluster_purpose=purpose, target="azure", agent_count=2, vm_size="Standard_D3_v2")
        pulumi.export("node_count", cluster.node_count)

    st = engine_stack(program)
    st.configure({"azureSubscriptionId": SUB, "azureResourceGroup": "rg-ml", "azureLocation": "westeurope",
                  "armEndpoint": fake.url})
    with pytest.raises(pulumi.automation.errors.CommandError) as err:
        st.preview()
    text = str(err.value)
    assert "cluster_purpose" in text and "FastProd needs at least 12 vCPUs and 2 x Standard_D3_v2" in text, text[-3000:]
    assert not [r for r in fake.requests if r[0] != "GET"], "a failed check must not reach ARM"

    st.stack.set_config("mldeploy:clusterPurpose", pulumi.automation.ConfigValue("DevTest"))
    monkeypatch.delenv("MLDEPLOY_ARM_TOKEN")
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "EnvironmentCredential")
    for k in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_USERNAME"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(pulumi.automation.errors.CommandError) as err:
        st.up()
    text = str(err.value) + "\n".join(st.log)
    assert "could not get an Azure token: DefaultAzureCredential failed to retrieve a token" in text, text[-3000:]
    assert "EnvironmentCredential authentication unavailable" in text
    assert "Traceback" not in text and 'File "' not in text, text[-3000:]
    assert not fake.clusters


@pytest.mark.docker  # the fake ARM runs on a Docker client
def test_the_fakes_answers_follow_the_spec_too(fake):
    """What the fake returns is spec-shaped as well, so the SDK's parsing is tested on Azure's shapes."""
    from arm_spec import check

    clusters = ManagedClusters(SUB, "rg", fake.url)
    clusters.put("k2", managed_cluster_body(location="westeurope", dns_prefix="k2", agent_count=1, vm_size="Standard_D4s_v5"))
    (key,) = [k for k in fake.clusters if k[2] == "k2"]
    check("Microsoft.ContainerService", "2025-10-01", "ManagedCluster", fake.cluster_view(key))
    clusters.delete("k2")


@pytest.mark.docker  # the fake ARM runs on a Docker client
@pytest.mark.e2e
def test_up_refresh_and_destroy_a_managed_cluster_through_the_engine(fake, workdir, engine_stack):
    """The cluster is made through the fake ARM; its kubeconfig is a secret output that reaches the
    Kubernetes provider. No API server exists behind it (a closed port on 127.0.0.1), so no service runs."""
    fake.kube_server = "https://127.0.0.1:9"

    def program() -> None:
        from mldeploy.components import AksCluster

        count = int(pulumi.Config("mldeploy").get("agentCount") or 3)
        cluster = AksCluster("aks", cluster_purpose="FastProd", target="azure", agent_count=count, vm_size="Standard_D4s_v5")
        pulumi.export("kubeconfig", cluster.kubeconfig)
        pulumi.export("node_count", cluster.node_count)
        pulumi.export("allocatable_vcpus", cluster.allocatable_vcpus)

    st = engine_stack(program)
    st.configure({"azureSubscriptionId": SUB, "azureResourceGroup": "rg-ml", "azureLocation": "westeurope",
                  "armEndpoint": fake.url})
    name = f"mldeploy-{st.name}-aks"

    up = st.up()
    assert up.summary.result == "succeeded", st.log[-40:]
    assert up.outputs["kubeconfig"].secret and "server: https://127.0.0.1:9" in up.outputs["kubeconfig"].value
    assert (up.outputs["node_count"].value, up.outputs["allocatable_vcpus"].value) == (3, 12.0)
    body = fake.cluster(name)["body"]
    assert body["properties"]["agentPoolProfiles"][0]["count"] == 3 and body["tags"]["mldeploy.stack"] == st.name
    token = fake.clusters[next(k for k in fake.clusters if k[2] == name)]["token"]
    for f in (workdir / ".pulumi-state" / "backend").rglob("*.json"):
        assert token not in f.read_text(), f  # the kubeconfig's credential is stored encrypted only
    assert st.preview().change_summary.get("same"), "a second preview changes nothing"

    fake.clusters.clear()  # deleted behind our back
    st.refresh()
    pre = st.preview()
    line = next(ln for ln in pre.stdout.splitlines() if "ManagedCluster aks-managed-cluster" in ln)
    assert "update" in line and "replace" not in line, pre.stdout[-2000:]  # the same cluster, made again
    assert st.up().summary.result == "succeeded" and fake.cluster(name) is not None

    # A scale is a PUT of the same cluster; its credentials, and the Kubernetes provider, stay as they are.
    st.stack.set_config("mldeploy:agentCount", pulumi.automation.ConfigValue("4"))
    pre = st.preview()
    assert pre.change_summary.get("update") == 1 and not pre.change_summary.get("replace"), pre.stdout[-2000:]
    up = st.up()
    assert up.summary.result == "succeeded" and up.outputs["node_count"].value == 4
    assert not up.summary.resource_changes.get("replace") and not up.summary.resource_changes.get("create"), up.stdout[-2000:]
    assert not [ln for ln in up.stdout.splitlines() if "aks-provider" in ln and "replac" in ln], up.stdout[-2000:]
    assert fake.cluster(name)["body"]["properties"]["agentPoolProfiles"][0]["count"] == 4

    assert st.destroy().summary.result == "succeeded"
    assert fake.cluster(name) is None


def test_preview_words_for_a_managed_cluster():
    import preview_markdown

    assert preview_markdown.describe_managed_cluster({}, CREATE) == [
        "creates AKS cluster `mldeploy-prod-aks` in westeurope: 3 x Standard_D4s_v5 as `FastProd`"]
    assert preview_markdown.describe_managed_cluster(CREATE, {**CREATE, "agent_count": 4}) == [
        "agent_count 3 → 4: the same cluster is scaled"]
    (words,) = preview_markdown.describe_managed_cluster(CREATE, {**CREATE, "vm_size": "Standard_D8s_v5"})
    assert "deleted and created again" in words
    step = {"op": "update", "type": "pulumi-python:dynamic/mldeploy:ManagedCluster",
            "urn": "urn:pulumi:prod::mldeploy::mldeploy:index:AksCluster$pulumi-python:dynamic/mldeploy:ManagedCluster::aks-managed-cluster",
            "old": CREATE, "new": {**CREATE, "agent_count": 4}}
    assert "| ✏️ update | AksCluster on Azure `aks` | agent_count 3 → 4: the same cluster is scaled |" in preview_markdown.render("prod", [step], {"update": 1})


@pulumi.runtime.test
def test_pushes_for_the_kubernetes_target_carry_the_acr_credentials(project):  # noqa: F811 - the fixture imported above
    """The model and front-end images of an AksService go to the ACR with its credentials, and the pods pull with them."""
    from test_components_unit import make_image, make_model
    from test_kubernetes_unit import K8sMocks

    from mldeploy.components import AksCluster, AksService

    mocks = K8sMocks()
    pulumi.runtime.set_mocks(mocks, project="proj", stack="prod", preview=False)
    pulumi.runtime.set_all_config({"mldeploy:azureSubscriptionId": SUB, "mldeploy:azureResourceGroup": "rg-ml",
                                   "mldeploy:azureLocation": "westeurope", "mldeploy:acrName": "mldeployacr",
                                   "mldeploy:imageRegistry": "mldeployacr.azurecr.io"})
    cluster = AksCluster("aks", cluster_purpose="DevTest")
    svc = AksService("scorer", cluster=cluster, models=[make_model()], image=make_image(), num_replicas=1)

    def check(_: Any) -> None:
        typ, creds = mocks.resources["aks-registry-credentials"]
        assert typ.endswith("mldeploy:RegistryCredentials") and creds["registry_name"] == "mldeployacr"
        for image in ("scorer-image", "aks-front-image"):
            assert "registry_auth" in mocks.resources[image][1], image
        assert [n for n, (t, _) in mocks.resources.items() if t.endswith("mldeploy:RegistryCredentials")] == ["aks-registry-credentials"]
        typ, secret = mocks.resources["aks-pull-secret-default"]
        assert typ == "kubernetes:core/v1:Secret" and secret["type"] == "kubernetes.io/dockerconfigjson"
        pod = mocks.resources["scorer-deployment"][1]["spec"]["template"]["spec"]
        assert pod["imagePullSecrets"] == [{"name": "mldeploy-registry"}]

    return pulumi.Output.all(svc.scoring_uri).apply(check)


def test_services_on_an_azure_cluster_need_a_registry_its_nodes_can_reach(azure_mocks: AzureMocks) -> None:
    from test_components_unit import make_image, make_model

    from mldeploy.components import AksCluster, AksService

    cluster = AksCluster("aks", cluster_purpose="DevTest", target="azure")  # mldeploy:imageRegistry left at 127.0.0.1:5000
    with pytest.raises(ArgsError, match="nodes of a cluster on Azure cannot pull from mldeploy:imageRegistry 127.0.0.1:5000"):
        AksService("scorer", cluster=cluster, models=[make_model()], image=make_image(), num_replicas=1)
