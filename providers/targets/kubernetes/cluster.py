"""Provider that attaches a Kubernetes cluster, as Azure ML's `ComputeTarget.attach` does.

Its `check` talks to the API server, so a bad kubeconfig, an unreachable
cluster or a FastProd cluster that is too small fails at preview, before any
service is touched, with the API server's own words.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

# Azure ML: a FastProd cluster needs at least 12 vCPUs (agent_count x vCPUs per VM).
FAST_PROD_MIN_VCPUS = 12
PURPOSES = ("FastProd", "DevTest")
SOURCES = ("local", "kubeconfig")
# What identifies the attached cluster; anything else is informational.
REPLACE_ON = ("source",)
UPDATE_ON = ("kubeconfig_sha", "cluster_purpose", "agent_count", "vm_size")


def diff_cluster(olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
    replaces = [k for k in REPLACE_ON if olds.get(k) != news.get(k)]
    changed = replaces + [k for k in UPDATE_ON if olds.get(k) != news.get(k)]
    return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=False)


def purpose_failures(purpose: str, vcpus: float) -> list[CheckFailure]:
    if purpose == "FastProd" and vcpus < FAST_PROD_MIN_VCPUS:
        return [
            CheckFailure(
                "cluster_purpose",
                f"FastProd needs at least {FAST_PROD_MIN_VCPUS} allocatable vCPUs and the cluster has {vcpus:g}; "
                "use a larger cluster or set cluster_purpose='DevTest'",
            )
        ]
    return []


def _local_kubeconfig() -> str:
    from mldeploy.providers.targets.kubernetes import local_cluster as cluster

    cluster.ensure_up()
    with open(cluster.kubeconfig_path(), encoding="utf-8") as f:
        return f.read()


def kubeconfig_text(props: dict[str, Any], local: Callable[[], str] = _local_kubeconfig) -> str:
    return local() if props.get("source") == "local" else str(props.get("kubeconfig") or "")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def scoring_host(loopback_only: bool, node_address: str | None, server: str | None) -> str:
    """The host a service's NodePort is reached at, for its `scoring_uri`. Pure.

    The local cluster's kube-proxy binds node ports on 127.0.0.1 only. An attached
    cluster publishes them on every node: a Ready node's address (read from the API
    server), else the API server's host (a single-node cluster's node), else 127.0.0.1
    (a stack deployed before the address was read, until its next refresh).
    """
    from urllib.parse import urlsplit

    if loopback_only:
        return "127.0.0.1"
    host = node_address or (urlsplit(server).hostname if server else None) or "127.0.0.1"
    return f"[{host}]" if ":" in host else host  # an IPv6 address, as a URI writes it


class ClusterProvider(ResourceProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        from mldeploy.providers.targets.kubernetes import kube

        failures: list[CheckFailure] = []
        if news.get("source") not in SOURCES:
            return CheckResult(news, [CheckFailure("source", f"must be one of {', '.join(SOURCES)}")])
        if news.get("cluster_purpose") not in PURPOSES:
            failures.append(CheckFailure("cluster_purpose", f"must be FastProd or DevTest, got {news.get('cluster_purpose')!r}"))
        try:
            text = kubeconfig_text(news)
            facts = kube.facts(text)
        except kube.KubeconfigError as exc:
            return CheckResult(news, failures + [CheckFailure("kubeconfig", str(exc))])
        except kube.ClusterUnreachable as exc:
            return CheckResult(news, failures + [CheckFailure("kubeconfig", f"the API server did not answer: {exc}")])
        except Exception as exc:  # the local cluster could not start
            return CheckResult(news, failures + [CheckFailure("kubeconfig", f"{type(exc).__name__}: {exc}")])
        if facts.ready_nodes == 0:
            failures.append(CheckFailure("kubeconfig", f"the cluster at {facts.server} has no Ready node"))
        failures += purpose_failures(str(news.get("cluster_purpose")), facts.allocatable_vcpus)
        return CheckResult({**news, "kubeconfig_sha": sha(text)}, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return diff_cluster(olds, news)

    def _outs(self, props: dict[str, Any]) -> dict[str, Any]:
        from mldeploy.providers.targets.kubernetes import kube

        text = kubeconfig_text(props)
        facts = kube.facts(text)
        return {
            **props,
            "kubeconfig": text,
            "kubeconfig_sha": sha(text),
            "server": facts.server,
            "kubernetes_version": facts.kubernetes_version,
            "node_count": facts.node_count,
            "allocatable_vcpus": facts.allocatable_vcpus,
            "node_address": facts.node_address,
        }

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = self._outs(props)
        return CreateResult(f"{props['source']}-{outs['kubeconfig_sha'][:12]}", outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(self._outs(news))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        try:
            return ReadResult(id_, self._outs(props))
        except Exception:
            return ReadResult(id_, props)  # unreachable now: keep what we knew; check reports it at the next preview
