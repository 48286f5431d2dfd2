"""A thin ARM client for AKS managed clusters, through Microsoft's SDK (azure-mgmt-containerservice).

The SDK builds the requests (api-version 2025-10-01, pinned) and runs the
long-running-operation protocol; this adds the wait with progress lines and a
bound, errors in ARM's words (`arm.call`), and the user kubeconfig from
`listClusterUserCredential`. The body is a plain function so that tests check
it against the REST specification.
"""

from __future__ import annotations

import re
import time
from typing import Any

from mldeploy.providers.targets.azure.arm import (
    AKS_API_VERSION,
    DEFAULT_ENDPOINT,
    ArmError,
    call,
    client_kwargs,
    credential,
)
from mldeploy.providers.core.progress import say

MAX_WAIT_SECONDS = 60 * 60
"""How long `up` waits for a cluster; AKS creates usually take minutes, ARM fails them itself much later."""
RESOURCE_ID_RE = re.compile(
    r"^/subscriptions/(?P<sub>[0-9a-fA-F-]{36})/resourceGroups/(?P<rg>[-\w._()]+)/providers/"
    r"Microsoft\.ContainerService/managedClusters/(?P<name>[a-zA-Z0-9][-_a-zA-Z0-9]{0,61}[a-zA-Z0-9]|[a-zA-Z0-9])$",
    re.IGNORECASE,
)
CLUSTER_NAME_RE = r"^[a-zA-Z0-9]$|^[a-zA-Z0-9][-_a-zA-Z0-9]{0,61}[a-zA-Z0-9]$"
"""The `resourceName` path parameter's pattern in the 2025-10-01 specification."""
DNS_PREFIX_RE = r"^[a-zA-Z0-9][-a-zA-Z0-9]{0,52}[a-zA-Z0-9]$|^[a-zA-Z0-9]$"
POOL_NAME = "nodepool1"


_progress = say  # one style of progress line for every provider


def parse_resource_id(resource_id: str) -> tuple[str, str, str]:
    """(subscription, resource group, cluster name) of a managed cluster's ARM id; ValueError otherwise."""
    m = RESOURCE_ID_RE.match(resource_id or "")
    if not m:
        raise ValueError(
            "must be /subscriptions/<guid>/resourceGroups/<group>/providers/Microsoft.ContainerService/managedClusters/<name>, "
            f"got {resource_id!r}"
        )
    return m["sub"], m["rg"], m["name"]


def managed_cluster_body(
    *, location: str, dns_prefix: str, agent_count: int, vm_size: str, tags: dict[str, str] | None = None,
    kubernetes_version: str | None = None,
) -> dict[str, Any]:
    """The PUT body of a managed cluster with one System pool (api-version 2025-10-01). Pure."""
    props: dict[str, Any] = {
        "dnsPrefix": dns_prefix,
        "agentPoolProfiles": [{
            "name": POOL_NAME, "count": int(agent_count), "vmSize": vm_size,
            "mode": "System", "osType": "Linux", "type": "VirtualMachineScaleSets",
        }],
        "enableRBAC": True,
    }
    if kubernetes_version:
        props["kubernetesVersion"] = kubernetes_version
    return {"location": location, "tags": dict(tags or {}), "identity": {"type": "SystemAssigned"}, "properties": props}


def pools(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    return list(((cluster.get("properties") or {}).get("agentPoolProfiles")) or [])


class ManagedClusters:
    """Managed clusters of one subscription and resource group."""

    def __init__(self, subscription_id: str, resource_group: str, endpoint: str = DEFAULT_ENDPOINT, cred: Any = None):
        from azure.mgmt.containerservice import ContainerServiceClient

        self.resource_group = resource_group
        self.client = ContainerServiceClient(cred or credential(), subscription_id, api_version=AKS_API_VERSION, **client_kwargs(endpoint))

    def get(self, name: str) -> dict[str, Any] | None:
        """The cluster as ARM returns it (REST names), or None when it is not there."""
        from azure.core.exceptions import ResourceNotFoundError

        def get() -> dict[str, Any] | None:
            try:
                return _plain(self.client.managed_clusters.get(self.resource_group, name))
            except ResourceNotFoundError:
                return None

        return call(f"GET managed cluster {name}", get)

    def put(self, name: str, body: dict[str, Any], timeout: float = MAX_WAIT_SECONDS, interval: float = 10.0) -> dict[str, Any]:
        """Create or update, then wait for a terminal provisioningState, with progress lines."""
        poller = call(f"PUT managed cluster {name}",
                      lambda: self.client.managed_clusters.begin_create_or_update(self.resource_group, name, body, polling_interval=1))
        start, last = time.monotonic(), None
        try:
            while not call(f"managed cluster {name}", lambda: poller.done() or (poller.wait(interval) or poller.done())):
                cluster = self.get(name) or {}
                state = (cluster.get("properties") or {}).get("provisioningState") or "Pending"
                if state != last:
                    _progress(f"managed cluster {name}: provisioningState {state} after {time.monotonic() - start:.0f} s")
                    last = state
                if time.monotonic() - start > timeout:
                    raise ArmError(f"managed cluster {name}: still {state} after {timeout / 60:.0f} minutes")
            call(f"managed cluster {name}", poller.result)
        except ArmError as exc:
            cluster = self.get(name)
            state = ((cluster or {}).get("properties") or {}).get("provisioningState")
            raise ArmError(f"{exc}\nmanaged cluster {name}: provisioningState {state or 'gone'}; "
                           "fix the cause and run `pulumi up` again (it PUTs the same cluster)") from None
        cluster = self.get(name)
        if cluster is None:
            raise ArmError(f"managed cluster {name}: gone after its PUT")
        state = (cluster.get("properties") or {}).get("provisioningState")
        if state != "Succeeded":
            raise ArmError(f"managed cluster {name}: provisioningState {state}")
        _progress(f"managed cluster {name}: Succeeded after {time.monotonic() - start:.0f} s")
        return cluster

    def user_kubeconfig(self, name: str) -> str:
        """listClusterUserCredential's first kubeconfig, as text (the SDK decodes the base64)."""
        creds = call(f"listClusterUserCredential of {name}",
                     lambda: self.client.managed_clusters.list_cluster_user_credentials(self.resource_group, name))
        configs = list(getattr(creds, "kubeconfigs", None) or [])
        if not configs or not configs[0].value:
            raise ArmError(f"listClusterUserCredential of {name}: no kubeconfig in the answer")
        value = configs[0].value
        return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)

    def delete(self, name: str, timeout: float = MAX_WAIT_SECONDS) -> bool:
        """Delete and wait; a cluster already gone counts as deleted. True when there was one."""
        if self.get(name) is None:
            return False
        poller = call(f"DELETE managed cluster {name}",
                      lambda: self.client.managed_clusters.begin_delete(self.resource_group, name, polling_interval=1))
        start = time.monotonic()
        while not poller.done():
            if time.monotonic() - start > timeout:
                raise ArmError(f"managed cluster {name}: delete still running after {timeout / 60:.0f} minutes")
            call(f"deleting managed cluster {name}", lambda: poller.wait(5))
        call(f"deleting managed cluster {name}", poller.result)
        _progress(f"managed cluster {name}: deleted after {time.monotonic() - start:.0f} s")
        return True


def _plain(model: Any) -> dict[str, Any]:
    """The SDK's model as the REST JSON it came from."""
    import json

    if isinstance(model, dict):
        return json.loads(json.dumps(model, default=str))
    as_dict = getattr(model, "as_dict", None)
    return json.loads(json.dumps(as_dict() if as_dict else dict(model), default=str))
