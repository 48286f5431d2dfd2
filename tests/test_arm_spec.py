"""The fake ARM's spec checks: Azure's own OpenAPI definitions, kept in tests/azure-specs.

Each malformed body below is refused naming its JSON path; the bodies our
clients build pass. Wire-level checks (the SDK's serialised PUT passing the
fake, a hand-made bad PUT refused with ARM's 400) are in test_aci_fake_arm.py
and test_aks_azure.py.
"""

from __future__ import annotations

import copy
import json

import pytest

from arm_spec import SPEC_FILES, SPECS_ROOT, SpecViolation, api_versions, check

ACI = ("Microsoft.ContainerInstance", "2025-09-01", "ContainerGroup")
AKS = ("Microsoft.ContainerService", "2025-10-01", "ManagedCluster")


def aci_body() -> dict:
    from test_aci_unit import props

    from mldeploy.providers.targets import aci

    return aci.container_group_body(props(), ["k" * 32, "s" * 32])


def aks_body() -> dict:
    from mldeploy.providers.targets.azure.aks import managed_cluster_body

    return managed_cluster_body(location="westeurope", dns_prefix="dev-aks", agent_count=1,
                                vm_size="Standard_D4s_v5", tags={"mldeploy.stack": "dev"})


def test_kept_files_are_pinned_and_parse():
    assert api_versions("Microsoft.ContainerInstance") == ["2025-09-01"]
    assert api_versions("Microsoft.ContainerService") == ["2025-10-01"]
    for path in SPEC_FILES.values():
        doc = json.loads((SPECS_ROOT / path).read_text())
        assert doc["swagger"] == "2.0" and doc["info"]["version"] in path
    assert (SPECS_ROOT / "LICENSE").read_text().startswith("MIT License")
    assert "azure-rest-api-specs" in (SPECS_ROOT / "README.md").read_text()


def test_our_bodies_pass():
    check(*ACI, aci_body())
    check(*AKS, aks_body())


def _set(path: list, value):
    def mutate(body: dict) -> None:
        node = body
        for p in path[:-1]:
            node = node[p]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return mutate


C0 = ["properties", "containers", 0, "properties"]


@pytest.mark.parametrize(
    "mutate, words",
    [
        (_set([*C0, "cpus"], 1), "body.properties.containers[0].properties.cpus: could not find member 'cpus' on object of type 'ContainerProperties'"),
        (_set([*C0, "resources", "requests", "cpu"], "one"), "requests.cpu: 'one' is not of type 'number'"),
        (_set([*C0, "resources", "requests", "memoryInGB"], KeyError), "'memoryInGB' is a required property"),
        (_set(["properties", "osType"], "Plan9"), "body.properties.osType: 'Plan9' is not one of ['Windows', 'Linux']"),
        (_set(["properties", "ipAddress", "type"], KeyError), "body.properties.ipAddress: 'type' is a required property"),
        (_set(["properties", "restartPolicy"], "Sometimes"), "restartPolicy: 'Sometimes' is not one of"),
        (_set(["properties", "containers", 0, "name"], KeyError), "'name' is a required property"),
        (_set(["tags", "mldeploy.stack"], 7), "body.tags.mldeploy.stack: 7 is not of type 'string'"),
        (_set(["properties", "containers"], KeyError), "body.properties: 'containers' is a required property"),
    ],
)
def test_malformed_container_groups_are_refused(mutate, words):
    body = copy.deepcopy(aci_body())
    mutate(body)
    with pytest.raises(SpecViolation) as err:
        check(*ACI, body)
    assert words in str(err.value)


P0 = ["properties", "agentPoolProfiles", 0]


@pytest.mark.parametrize(
    "mutate, words",
    [
        (_set([*P0, "name"], "Node_Pool"), "agentPoolProfiles[0].name: 'Node_Pool' does not match"),
        (_set([*P0, "count"], "3"), "agentPoolProfiles[0].count: '3' is not of type 'integer'"),
        (_set([*P0, "mode"], "Primary"), "'Primary' is not one of ['System', 'User', 'Gateway']"),
        (_set([*P0, "vmsize"], "x"), "could not find member 'vmsize' on object of type 'ManagedClusterAgentPoolProfile'"),
        (_set(["identity", "type"], "Magic"), "body.identity.type: 'Magic' is not one of"),
        (_set(["location"], KeyError), "body: 'location' is a required property"),
        (_set(["properties", "networkProfile"], {"networkPlugin": "azure"}), "not kept in tests/azure-specs"),
    ],
)
def test_malformed_managed_clusters_are_refused(mutate, words):
    body = copy.deepcopy(aks_body())
    mutate(body)
    with pytest.raises(SpecViolation) as err:
        check(*AKS, body)
    assert words in str(err.value)


def test_an_api_version_without_a_kept_spec_is_not_checked_silently():
    with pytest.raises(KeyError, match="2023-05-01"):
        check("Microsoft.ContainerInstance", "2023-05-01", "ContainerGroup", aci_body())
