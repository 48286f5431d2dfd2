"""Issue 18, low items: the logs tool reads a service's own cluster, never the local admin's."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pulumi
import pytest

SIG = {"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270"}
ATTACHED = "apiVersion: v1\nkind: Config\nclusters: [{name: team, cluster: {server: 'https://127.0.0.2:6443'}}]\n"
PROVIDER_URN = "urn:pulumi:dev::mldeploy::mldeploy:index:AksCluster$pulumi:providers:kubernetes::aks-provider"


def _deployment(kubeconfig: object) -> dict:
    return {"resources": [
        {"urn": PROVIDER_URN, "type": "pulumi:providers:kubernetes", "inputs": {"kubeconfig": kubeconfig}},
        {"urn": "urn:pulumi:dev::mldeploy::kubernetes:apps/v1:Deployment::svc", "type": "kubernetes:apps/v1:Deployment",
         "provider": f"{PROVIDER_URN}::0b5a7c1e-3f5d-4c1e-9a3b-1c2d3e4f5a6b",
         "inputs": {"metadata": {"name": "svc", "namespace": "ns"}, "spec": {"selector": {"matchLabels": {"app": "svc"}}}}},
    ]}


def test_the_logs_tool_finds_the_kubeconfig_the_service_was_deployed_with() -> None:
    import service_logs

    secret = {**SIG, "plaintext": json.dumps(ATTACHED)}  # how `pulumi stack export --show-secrets` shows it
    assert service_logs.deployment_kubeconfig(_deployment(secret), "svc") == ATTACHED
    assert service_logs.deployment_kubeconfig(_deployment(ATTACHED), "svc") == ATTACHED
    assert service_logs.deployment_kubeconfig(_deployment(None), "svc") is None, "a default provider: the local one"
    with pytest.raises(service_logs.LogsError, match="encrypted"):
        service_logs.deployment_kubeconfig(_deployment({**SIG, "ciphertext": "v1:abc"}), "svc")


def test_the_logs_tool_runs_kubectl_with_that_kubeconfig_in_a_private_file(monkeypatch: pytest.MonkeyPatch) -> None:
    import service_logs
    import stack as stack_cli

    deployment = _deployment({**SIG, "plaintext": json.dumps(ATTACHED)})
    monkeypatch.setattr(stack_cli, "select_stack",
                        lambda name: SimpleNamespace(export_stack=lambda: SimpleNamespace(deployment=deployment)))
    seen: dict = {}

    def logs(props, tail, follow, out, run=subprocess.run, kubeconfig=None):  # noqa: ANN001 - kubernetes_logs' signature
        seen["path"] = kubeconfig
        seen["text"] = Path(kubeconfig).read_text() if kubeconfig else None
        seen["mode"] = stat.S_IMODE(os.stat(kubeconfig).st_mode) if kubeconfig else None

    monkeypatch.setattr(service_logs, "kubernetes_logs", logs)
    assert service_logs.main(["dev", "svc"]) == 0
    assert seen["text"] == ATTACHED, "kubectl must read the attached cluster's kubeconfig, not the local admin one"
    assert seen["mode"] == 0o600
    assert not os.path.exists(seen["path"]), "the copy is removed afterwards"


def test_kubectl_gets_the_given_kubeconfig(monkeypatch: pytest.MonkeyPatch) -> None:
    import service_logs
    from mldeploy.providers.targets.kubernetes import local_cluster as cluster

    monkeypatch.setattr(cluster, "kubectl_path", lambda: "kubectl")
    monkeypatch.setattr(cluster, "kubeconfig_path", lambda: "/local-admin.kubeconfig")
    calls: list[list[str]] = []

    def run(argv, **kw):  # noqa: ANN001 - subprocess.run's signature
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, json.dumps({"items": []}) if "get" in argv else "", "")

    props = {"metadata": {"name": "svc", "namespace": "ns"}, "spec": {"selector": {"matchLabels": {"app": "svc"}}}}
    service_logs.kubernetes_logs(props, None, False, io.StringIO(), run=run, kubeconfig="/tmp/attached")
    assert calls and all(c[:3] == ["kubectl", "--kubeconfig", "/tmp/attached"] for c in calls)


# ------------------------------------------------- the scoring URI of an attached cluster's service

def test_a_nodeport_is_reached_at_a_ready_nodes_address() -> None:
    from mldeploy.providers.targets.kubernetes.kube import node_address

    def node(ready: str, *addresses: tuple[str, str]) -> dict:
        return {"status": {"conditions": [{"type": "Ready", "status": ready}],
                           "addresses": [{"type": t, "address": a} for t, a in addresses]}}

    assert node_address([node("False", ("ExternalIP", "203.0.113.9")),
                         node("True", ("InternalIP", "10.0.0.5"), ("Hostname", "n2"))]) == "10.0.0.5"
    assert node_address([node("True", ("InternalIP", "10.0.0.5")), node("True", ("ExternalIP", "203.0.113.7"))]) == "203.0.113.7"
    assert node_address([node("True", ("Hostname", "n1"))]) == ""


def test_the_scoring_host_is_loopback_only_on_the_local_cluster() -> None:
    from mldeploy.providers.targets.kubernetes.cluster import scoring_host

    assert scoring_host(True, "10.0.0.5", "https://10.0.0.1:6443") == "127.0.0.1"
    assert scoring_host(False, "10.0.0.5", "https://10.0.0.1:6443") == "10.0.0.5"
    assert scoring_host(False, None, "https://k8s.team.example:6443") == "k8s.team.example"
    assert scoring_host(False, "fd00::5", None) == "[fd00::5]"
    assert scoring_host(False, None, None) == "127.0.0.1", "a stack deployed before the address was read"


from test_kubernetes_unit import K8sMocks, k8s_mocks, kubeconfig  # noqa: E402,F401 - fixtures and mocks
from test_components_unit import make_image, make_model, project  # noqa: E402,F401 - fixtures


@pulumi.runtime.test
def test_an_attached_clusters_service_names_its_node_in_the_scoring_uri(k8s_mocks: K8sMocks):
    from mldeploy.components import AksCluster, AksService

    plain = k8s_mocks.new_resource

    def attached(args: pulumi.runtime.MockResourceArgs):
        rid, outs = plain(args)
        if args.typ.endswith("mldeploy:Cluster"):
            outs.update(server="https://10.1.2.1:6443", node_address="10.1.2.3")
        return rid, outs

    k8s_mocks.new_resource = attached  # type: ignore[method-assign]
    cluster = AksCluster("aks", cluster_purpose="DevTest", kubeconfig=kubeconfig("https://10.1.2.1:6443"))
    svc = AksService("scorer", cluster=cluster, models=[make_model()], image=make_image(), namespace="ml")

    def check(uris: list) -> None:
        assert uris == ["http://10.1.2.3:31234/api/v1/service/scorer/score",
                        "http://10.1.2.3:31234/api/v1/service/scorer/swagger.json"], uris

    return pulumi.Output.all(svc.scoring_uri, svc.swagger_uri).apply(check)
