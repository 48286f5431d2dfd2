"""Provider for an AKS managed cluster in Azure: created through ARM, or attached by resource id.

Like Azure ML's `AksCompute`: `provisioning_configuration` (agent count, VM
size, cluster purpose) creates one; `attach_configuration` (an existing
cluster's resource id) attaches one. Either way the outputs are those of the
local `Cluster` (Kubernetes version, node count, vCPUs); a second resource,
`ClusterCredentials`, holds the user kubeconfig as a secret, which `AksCluster`
hands to the same Kubernetes code. Its inputs are known when the program runs,
so a scale of the cluster leaves the kubeconfig, and the Kubernetes provider
that takes it, alone in the preview.

Preview judges what it can without creating anything: the subscription id,
the location, the cluster name and DNS prefix, the VM size against the dated
table in `providers/targets/azure/__init__.py` (AKS's System-pool minimum), and Azure ML's
FastProd rule (at least 12 vCPUs). An attached cluster is read through ARM at
preview for the same rule.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from mldeploy.providers.targets import azure
from mldeploy.providers.targets.kubernetes.cluster import (  # Azure ML's rule, the same for every cluster
    FAST_PROD_MIN_VCPUS,
)
from mldeploy.providers.targets.azure.arm import DEFAULT_ENDPOINT
MODES = ("create", "attach")
# Where the cluster is, its name, its DNS prefix and its pool's VM size cannot change in place.
REPLACE_ON = ("mode", "subscription_id", "resource_group", "location", "cluster_name", "dns_prefix", "vm_size", "resource_id", "arm_endpoint")
# A PUT of the same cluster: scale the pool; the purpose is a check, not a setting.
UPDATE_ON = ("agent_count", "cluster_purpose", "kubernetes_version", "tags")


def _known(news: dict[str, Any], key: str) -> bool:
    from pulumi.runtime import rpc

    return news.get(key) is not None and news.get(key) != rpc.UNKNOWN


def purpose_failures(purpose: Any, vcpus: float, how: str) -> list[CheckFailure]:
    if purpose == "FastProd" and vcpus < FAST_PROD_MIN_VCPUS:
        return [CheckFailure(
            "cluster_purpose",
            f"FastProd needs at least {FAST_PROD_MIN_VCPUS} vCPUs and {how} has {vcpus:g}; "
            "add agents, pick a larger vm_size, or set cluster_purpose='DevTest'",
        )]
    return []


def pool_vcpus(agent_count: int, vm_size: str) -> float | None:
    size = azure.vm_size(vm_size)
    return None if size is None else agent_count * size.vcpus


def check_create(news: dict[str, Any]) -> list[CheckFailure]:
    """A cluster to create: every field judged from tables and patterns, no I/O. Pure."""
    from mldeploy.providers.targets.azure.aks import CLUSTER_NAME_RE, DNS_PREFIX_RE

    failures: list[CheckFailure] = []
    sub = news.get("subscription_id")
    if not sub:
        failures.append(CheckFailure("subscription_id", "missing: set stack config mldeploy:azureSubscriptionId"))
    elif _known(news, "subscription_id") and not azure.is_subscription_id(str(sub)):
        failures.append(CheckFailure("subscription_id", f"must be a subscription GUID, got {sub!r}"))
    rg = news.get("resource_group")
    if not rg:
        failures.append(CheckFailure("resource_group", "missing: set stack config mldeploy:azureResourceGroup"))
    elif _known(news, "resource_group") and not re.match(azure.RESOURCE_GROUP_RE, str(rg)):
        failures.append(CheckFailure("resource_group", f"1-90 letters, digits, '-', '_', '.', '(' or ')', not ending in '.', got {rg!r}"))
    loc = news.get("location")
    if not loc:
        failures.append(CheckFailure("location", "missing: set stack config mldeploy:azureLocation"))
    elif _known(news, "location") and loc not in azure.LOCATIONS:
        failures.append(CheckFailure("location", f"unknown Azure location {loc!r}; for example westeurope, eastus (providers/targets/azure/__init__.py LOCATIONS)"))
    for key, pattern in (("cluster_name", CLUSTER_NAME_RE), ("dns_prefix", DNS_PREFIX_RE)):
        if _known(news, key) and not re.match(pattern, str(news[key])):
            failures.append(CheckFailure(key, f"{news[key]!r} does not match {pattern}"))
    count = news.get("agent_count")
    if _known(news, "agent_count") and (not isinstance(count, (int, float)) or isinstance(count, bool) or int(count) != count or not 1 <= count <= 1000):
        failures.append(CheckFailure("agent_count", f"a System pool has 1 to 1000 nodes, got {count!r}"))
        return failures
    if not _known(news, "vm_size"):
        return failures
    size = azure.vm_size(str(news["vm_size"]))
    if size is None:
        failures.append(CheckFailure(
            "vm_size",
            f"unknown VM size {news['vm_size']!r} (VM size table of {azure.VM_SIZES_DATE}, providers/targets/azure/__init__.py); "
            "for example Standard_D4s_v5, Standard_D3_v2",
        ))
        return failures
    if size.vcpus < azure.SYSTEM_POOL_MIN_VCPUS or size.memory_gb < azure.SYSTEM_POOL_MIN_MEMORY_GB:
        failures.append(CheckFailure(
            "vm_size",
            f"{news['vm_size']} has {size.vcpus} vCPUs and {size.memory_gb:g} GB; an AKS System pool needs at least "
            f"{azure.SYSTEM_POOL_MIN_VCPUS} vCPUs and {azure.SYSTEM_POOL_MIN_MEMORY_GB:g} GB",
        ))
    if _known(news, "agent_count"):
        failures += purpose_failures(
            news.get("cluster_purpose"), int(count) * size.vcpus,
            f"{int(count)} x {news['vm_size']} ({size.vcpus} vCPUs each, VM size table of {azure.VM_SIZES_DATE})",
        )
    return failures


def cluster_vcpus(cluster: dict[str, Any]) -> tuple[float | None, int]:
    """(vCPUs from the table, or None when a pool's size is not in it; node count) of a cluster as ARM returns it."""
    from mldeploy.providers.targets.azure.aks import pools

    total: float | None = 0.0
    nodes = 0
    for pool in pools(cluster):
        n = int(pool.get("count") or 0)
        nodes += n
        v = pool_vcpus(n, str(pool.get("vmSize") or ""))
        total = None if v is None or total is None else total + v
    return total, nodes


def diff_managed_cluster(olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
    # A created cluster's resource_id is an output; only an attached one names it as an input.
    keys = [k for k in REPLACE_ON if k != "resource_id" or news.get("mode") == "attach"]
    replaces = [k for k in keys if olds.get(k) != news.get(k)]
    changed = replaces + [k for k in UPDATE_ON if olds.get(k) != news.get(k)]
    gone = olds.get("present") is False
    if gone:
        changed.append("present")  # deleted behind our back: the next up creates it again (a new kubeconfig)
    return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=bool(replaces))


def _clusters(props: dict[str, Any]) -> Any:
    from mldeploy.providers.targets.azure.aks import ManagedClusters

    return ManagedClusters(props["subscription_id"], props["resource_group"], props.get("arm_endpoint") or DEFAULT_ENDPOINT)


def _where(props: dict[str, Any]) -> dict[str, Any]:
    """For attach: where the resource id points."""
    from mldeploy.providers.targets.azure.aks import parse_resource_id

    sub, rg, name = parse_resource_id(str(props["resource_id"]))
    return {**props, "subscription_id": sub, "resource_group": rg, "cluster_name": name}


def outputs(props: dict[str, Any], cluster: dict[str, Any]) -> dict[str, Any]:
    """What a managed cluster offers, from ARM's answer (the kubeconfig is ClusterCredentials'). Pure."""
    vcpus, nodes = cluster_vcpus(cluster)
    p = cluster.get("properties") or {}
    return {
        **props,
        "kubernetes_version": p.get("currentKubernetesVersion") or p.get("kubernetesVersion") or "",
        "node_count": nodes,
        "allocatable_vcpus": float(vcpus) if vcpus is not None else 0.0,
        "resource_id": cluster.get("id") or props.get("resource_id") or "",
        "fqdn": p.get("fqdn") or "",
        "present": True,
    }


def kubeconfig_outputs(props: dict[str, Any], kubeconfig: str) -> dict[str, Any]:
    """ClusterCredentials' outputs from the user kubeconfig. Pure."""
    import yaml

    cfg = yaml.safe_load(kubeconfig) or {}
    server = ((cfg.get("clusters") or [{}])[0].get("cluster") or {}).get("server", "")
    return {**props, "kubeconfig": kubeconfig, "kubeconfig_sha": hashlib.sha256(kubeconfig.encode()).hexdigest(),
            "server": server, "present": True}


class ManagedClusterProvider(ResourceProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        mode = news.get("mode")
        if mode not in MODES:
            return CheckResult(news, [CheckFailure("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")])
        if mode == "create":
            return CheckResult(news, check_create(news))
        try:
            where = _where(news)
        except ValueError as exc:
            return CheckResult(news, [CheckFailure("resource_id", str(exc))])
        from mldeploy.providers.targets.azure.arm import ArmError

        try:
            cluster = _clusters(where).get(where["cluster_name"])
        except ArmError as exc:  # includes CredentialError: the chain's own words
            return CheckResult(news, [CheckFailure("resource_id", f"could not read the cluster through ARM: {exc}")])
        if cluster is None:
            return CheckResult(news, [CheckFailure("resource_id", f"no managed cluster at {news['resource_id']}")])
        vcpus, nodes = cluster_vcpus(cluster)
        if vcpus is None:
            sizes = sorted({str(p.get("vmSize")) for p in cluster.get("properties", {}).get("agentPoolProfiles") or []})
            failures = [] if news.get("cluster_purpose") != "FastProd" else [CheckFailure(
                "cluster_purpose", f"cannot count the vCPUs of VM sizes {sizes} (not in the table of {azure.VM_SIZES_DATE}, providers/targets/azure/__init__.py)")]
        else:
            failures = purpose_failures(news.get("cluster_purpose"), vcpus, f"the attached cluster ({nodes} nodes)")
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return diff_managed_cluster(olds, news)

    def _apply(self, props: dict[str, Any]) -> dict[str, Any]:
        from mldeploy.providers.targets.azure.aks import managed_cluster_body

        if props["mode"] == "attach":
            where = _where(props)
            clusters = _clusters(where)
            cluster = clusters.get(where["cluster_name"])
            if cluster is None:
                from mldeploy.providers.targets.azure.arm import ArmError

                raise ArmError(f"no managed cluster at {props['resource_id']}")
            return outputs(props, cluster)
        clusters = _clusters(props)
        body = managed_cluster_body(location=props["location"], dns_prefix=props["dns_prefix"], agent_count=int(props["agent_count"]),
                                    vm_size=props["vm_size"], tags=props.get("tags") or {}, kubernetes_version=props.get("kubernetes_version") or None)
        return outputs(props, clusters.put(props["cluster_name"], body))

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = self._apply(props)
        return CreateResult(outs["resource_id"], outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(self._apply(news))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """Refresh: a cluster deleted behind our back is drift the next up restores (create mode)."""
        from mldeploy.providers.targets.azure.arm import ArmError

        try:
            where = _where(props) if props.get("mode") == "attach" else props
            cluster = _clusters(where).get(where["cluster_name"])
        except (ArmError, ValueError):
            return ReadResult(id_, props)  # ARM unreachable now: keep what we knew; up says why
        if cluster is None:
            return ReadResult(id_, {**props, "present": False})
        vcpus, nodes = cluster_vcpus(cluster)
        return ReadResult(id_, {**props, "present": True, "node_count": nodes,
                                "allocatable_vcpus": float(vcpus) if vcpus is not None else props.get("allocatable_vcpus")})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        """Created here: deleted (gone already counts). Attached: left alone, it is someone else's."""
        if props.get("mode") == "create":
            _clusters(props).delete(props["cluster_name"])


def diff_credentials(olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
    """Fetched again when the cluster they belong to is another one, or was gone at refresh. Pure.

    Its inputs are known when the program runs (where the cluster is and what makes it a new
    one), so a scale of the cluster leaves the kubeconfig known at preview and the Kubernetes
    provider that takes it is not planned for replacement.
    """
    changed = [k for k in CREDENTIAL_INPUTS if olds.get(k) != news.get(k)]
    if olds.get("present") is False:
        changed.append("present")
    return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)


CREDENTIAL_INPUTS = ("mode", "subscription_id", "resource_group", "cluster_name", "resource_id", "arm_endpoint", "cluster_key")


class ClusterCredentialsProvider(ResourceProvider):
    """The user kubeconfig of a managed cluster (listClusterUserCredential); the output is a secret."""

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        if news.get("mode") not in MODES:
            return CheckResult(news, [CheckFailure("mode", f"must be one of {', '.join(MODES)}, got {news.get('mode')!r}")])
        return CheckResult(news, [])

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return diff_credentials(olds, news)

    def _fetch(self, props: dict[str, Any]) -> dict[str, Any]:
        where = _where(props) if props.get("mode") == "attach" else props
        return kubeconfig_outputs(props, _clusters(where).user_kubeconfig(where["cluster_name"]))

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = self._fetch(props)
        return CreateResult(f"{outs['server']}#{outs['kubeconfig_sha'][:12]}", outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(self._fetch(news))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """Refresh reads the kubeconfig again (a rotated certificate); a cluster gone makes the next up fetch it anew."""
        from mldeploy.providers.targets.azure.arm import ArmError

        try:
            return ReadResult(id_, self._fetch(props))
        except ArmError as exc:
            if "404" in str(exc):
                return ReadResult(id_, {**props, "present": False})
            return ReadResult(id_, props)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        """Nothing to remove: the credentials are the cluster's."""
