"""AksCluster: the Kubernetes cluster that `AksService`s run on, as Azure ML's `AksCompute`.

Locally it attaches (and starts when needed) the single-node cluster that
`scripts/k8s/cluster.sh` runs on this machine; given a kubeconfig it attaches
that cluster. With `target="azure"` it creates an AKS managed cluster through
ARM (`AksCompute.provisioning_configuration`: agent count, VM size, purpose),
or attaches an existing one by `resource_id` (`AksCompute.attach_configuration`);
either way its user kubeconfig (`listClusterUserCredential`, a secret) goes to
the same Kubernetes provider and service code as the local cluster's.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import pulumi
import pulumi_kubernetes as k8s
from pulumi.dynamic import Resource
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mldeploy.components._common import PACKAGE, ArgsError, Settings, args_class, slug, takes_args, validate
from mldeploy.components.registry_image import RegistryImage
from mldeploy.providers.targets.kubernetes.cluster import ClusterProvider
from mldeploy.providers.targets.kubernetes.managed_cluster import ClusterCredentialsProvider, ManagedClusterProvider
from mldeploy.providers.targets.kubernetes import NAMESPACE_RE, PULL_SECRET_NAME, docker_config_json
from mldeploy.providers.targets.azure.arm import DEFAULT_ENDPOINT

OUTPUTS = ("kubeconfig", "kubernetes_version", "node_count", "allocatable_vcpus")
AKS_ID_RE = (r"^/subscriptions/[0-9a-fA-F-]{36}/resourceGroups/[-\w._()]+/providers/"
             r"Microsoft\.ContainerService/managedClusters/[a-zA-Z0-9][-_a-zA-Z0-9]{0,62}$")


class AksClusterSpec(BaseModel):
    """`AksCompute.provisioning_configuration`'s arguments, with its defaults."""

    model_config = ConfigDict(extra="forbid")

    cluster_purpose: Literal["FastProd", "DevTest"] = "FastProd"
    """FastProd needs at least 12 allocatable vCPUs, as Azure ML requires."""
    agent_count: int | None = Field(default=None, gt=0, le=100)
    """Nodes; by default 3, and 1 for a DevTest cluster created on Azure (as `AksCompute` does)."""
    vm_size: str = Field(default="Standard_D3_v2", min_length=1)
    kubeconfig: Any = None
    """A kubeconfig's text (a string or a secret Output) to attach that cluster; None for the local one."""
    target: Literal["local", "azure"] = "local"
    """`azure`: an AKS managed cluster through ARM (stack config mldeploy:azure*), created or attached."""
    resource_id: str | None = Field(default=None, pattern=AKS_ID_RE)
    """With target='azure': attach this existing managed cluster instead of creating one."""

    @model_validator(mode="after")
    def _one_source(self) -> "AksClusterSpec":
        if self.target == "azure" and self.kubeconfig is not None:
            raise ValueError("kubeconfig: not with target='azure' (its kubeconfig comes from listClusterUserCredential)")
        if self.target != "azure" and self.resource_id is not None:
            raise ValueError("resource_id: only with target='azure'")
        return self


class Cluster(Resource, module=PACKAGE, name="Cluster"):
    """An attached cluster and what it offers (dynamic resource)."""

    kubeconfig: pulumi.Output[str]
    kubernetes_version: pulumi.Output[str]
    node_count: pulumi.Output[int]
    allocatable_vcpus: pulumi.Output[float]
    server: pulumi.Output[str]
    node_address: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        outs = ("kubeconfig_sha", "server", "kubernetes_version", "node_count", "allocatable_vcpus", "node_address")
        super().__init__(ClusterProvider(), name, {"kubeconfig": None, **props, **{k: None for k in outs}}, opts)


class ManagedCluster(Resource, module=PACKAGE, name="ManagedCluster"):
    """An AKS managed cluster in Azure, created or attached through ARM (dynamic resource)."""

    kubernetes_version: pulumi.Output[str]
    node_count: pulumi.Output[int]
    allocatable_vcpus: pulumi.Output[float]
    resource_id: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        outs = ("kubernetes_version", "node_count", "allocatable_vcpus", "fqdn", "present")
        super().__init__(ManagedClusterProvider(), name, {"resource_id": None, **props, **{k: None for k in outs}}, opts)


class ClusterCredentials(Resource, module=PACKAGE, name="ClusterCredentials"):
    """A managed cluster's user kubeconfig (listClusterUserCredential), a secret (dynamic resource)."""

    kubeconfig: pulumi.Output[str]
    server: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        outs = ("kubeconfig", "kubeconfig_sha", "server", "present")
        super().__init__(ClusterCredentialsProvider(), name, {**props, **{k: None for k in outs}}, opts)


def credentials_props(cluster: dict[str, Any]) -> dict[str, Any]:
    """Where the cluster is, and a digest of what makes it a new one: all known at program time. Pure."""
    import hashlib
    import json

    keys = ("mode", "subscription_id", "resource_group", "cluster_name", "resource_id", "arm_endpoint")
    new_cluster = {k: cluster.get(k) for k in ("location", "dns_prefix", "vm_size", "cluster_name", "resource_id")}
    return {**{k: cluster[k] for k in keys if k in cluster},
            "cluster_key": hashlib.sha256(json.dumps(new_cluster, sort_keys=True).encode()).hexdigest()[:16]}


def azure_cluster_props(args: AksClusterSpec, settings: Settings, resource_name: str) -> dict[str, Any]:
    """The managed cluster's inputs: its place from stack config, its name and DNS prefix from the names. Pure."""
    base = re.sub(r"[^a-z0-9-]+", "-", f"{settings.project}-{settings.stack}-{resource_name}".lower()).strip("-")
    common = {
        "cluster_purpose": args.cluster_purpose,
        "arm_endpoint": settings.arm_endpoint or DEFAULT_ENDPOINT,
    }
    if args.resource_id:
        return {**common, "mode": "attach", "resource_id": args.resource_id}
    return {
        **common,
        "mode": "create",
        "subscription_id": settings.azure_subscription_id,
        "resource_group": settings.azure_resource_group,
        "location": settings.azure_location,
        "cluster_name": base[:63].strip("-"),
        "dns_prefix": base[:54].strip("-"),
        "agent_count": args.agent_count or (1 if args.cluster_purpose == "DevTest" else 3),
        "vm_size": args.vm_size,
        "tags": {"mldeploy.project": settings.project, "mldeploy.stack": settings.stack, "mldeploy.resource": resource_name},
    }


class AksCluster(pulumi.ComponentResource):
    """A cluster to deploy services on; checks Azure ML's size rule at preview."""

    kubeconfig: pulumi.Output[str]
    kubernetes_version: pulumi.Output[str]
    node_count: pulumi.Output[int]
    allocatable_vcpus: pulumi.Output[float]

    @takes_args
    def __init__(
        self,
        resource_name: str,
        cluster_purpose: str = "FastProd",
        agent_count: int | None = None,
        vm_size: str = "Standard_D3_v2",
        kubeconfig: pulumi.Input[str] | None = None,
        target: str = "local",
        resource_id: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        args = validate(
            AksClusterSpec,
            "AksCluster",
            resource_name,
            {"cluster_purpose": cluster_purpose, "agent_count": agent_count, "vm_size": vm_size, "kubeconfig": kubeconfig,
             "target": target, "resource_id": resource_id},
        )
        super().__init__(f"{PACKAGE}:index:AksCluster", resource_name, None, opts)
        self._name = resource_name
        self._settings = Settings.load()
        secret_outs = pulumi.ResourceOptions(parent=self, additional_secret_outputs=["kubeconfig"])
        self.resource_id: pulumi.Output[str] | None = None
        if args.target == "azure":
            cluster_props = azure_cluster_props(args, self._settings, resource_name)
            managed = ManagedCluster(f"{resource_name}-managed-cluster", cluster_props, pulumi.ResourceOptions(parent=self))
            creds = ClusterCredentials(
                f"{resource_name}-credentials",
                credentials_props(cluster_props),
                pulumi.ResourceOptions(parent=self, depends_on=[managed], additional_secret_outputs=["kubeconfig"]),
            )
            self._cluster: pulumi.Resource = managed
            self._kubeconfig_source: pulumi.Resource = creds
            self.resource_id = managed.resource_id
        else:
            props: dict[str, Any] = {
                "source": "kubeconfig" if args.kubeconfig is not None else "local",
                "cluster_purpose": args.cluster_purpose,
                "agent_count": args.agent_count or 3,
                "vm_size": args.vm_size,
            }
            if args.kubeconfig is not None:
                props["kubeconfig"] = pulumi.Output.secret(args.kubeconfig)
            self._cluster = Cluster(f"{resource_name}-cluster", props, secret_outs)
            self._kubeconfig_source = self._cluster
        self.kubeconfig = self._kubeconfig_source.kubeconfig  # type: ignore[attr-defined]
        self.kubernetes_version = self._cluster.kubernetes_version
        self.node_count = self._cluster.node_count
        self.allocatable_vcpus = self._cluster.allocatable_vcpus
        self.provider = k8s.Provider(
            f"{resource_name}-provider",
            kubeconfig=self.kubeconfig,
            # Server-side apply: the API server merges and validates, and preview asks it.
            enable_server_side_apply=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self._namespaces: dict[str, k8s.core.v1.Namespace] = {}
        self._front: RegistryImage | None = None
        self._registry_auth: dict[str, Any] | None = None
        self._pull_secrets: dict[str, k8s.core.v1.Secret] = {}
        self._on_azure = args.target == "azure"
        # The local cluster's kube-proxy binds node ports on 127.0.0.1 only; any other cluster publishes them.
        self._loopback_only = args.target == "local" and args.kubeconfig is None
        # Where services' NodePorts answer (their scoring_uri): an attached cluster's node. The azure
        # target stays 127.0.0.1: here its clusters are the local fakes'; on Azure a NodePort is not public.
        if args.target == "local" and args.kubeconfig is not None:
            from mldeploy.providers.targets.kubernetes.cluster import scoring_host

            facts = pulumi.Output.all(self._cluster.node_address, self._cluster.server)  # type: ignore[attr-defined]
            self.node_host: pulumi.Output[str] = facts.apply(lambda a: scoring_host(False, a[0], a[1]))
        else:
            self.node_host = pulumi.Output.from_input("127.0.0.1")
        self.register_outputs({k: getattr(self, k) for k in OUTPUTS})

    @property
    def image_registry(self) -> str:
        return f"{self._settings.image_registry}/mldeploy-{slug(self._settings.project)}-{slug(self._settings.stack)}"

    def namespace(self, name: str) -> pulumi.Resource | None:
        """The cluster owns each namespace its services use, so removing one service never takes it away."""
        if name == "default":
            return None
        if not re.match(NAMESPACE_RE, name):
            raise ValueError(f"namespace {name!r} does not match {NAMESPACE_RE}")
        if name not in self._namespaces:
            from mldeploy.providers.targets import kubernetes as kube_target

            ns = k8s.core.v1.Namespace(
                f"{self._name}-ns-{name}",
                metadata={"name": name, "labels": {"app.kubernetes.io/managed-by": "mldeploy", **kube_target.NAMESPACE_LABELS}},
                opts=pulumi.ResourceOptions(parent=self, provider=self.provider),
            )
            # Scoring pods need nothing outside themselves. The local cluster's CNI bridge does not
            # enforce NetworkPolicy; a cluster whose network plugin does (AKS with Azure or Calico) will.
            k8s.networking.v1.NetworkPolicy(
                f"{self._name}-deny-egress-{name}",
                metadata={"name": "mldeploy-deny-egress", "namespace": name},
                spec=kube_target.deny_egress_policy(),
                opts=pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=[ns]),
            )
            self._namespaces[name] = ns
        return self._namespaces[name]

    def registry_auth(self) -> dict[str, Any]:
        """`registry_auth` for this cluster's pushes when the stack's registry wants credentials (an ACR), else {}.

        The nodes pull with the same credentials, through `pull_secret`.
        """
        if self._registry_auth is None:
            from mldeploy.components.registry_credentials import registry_credentials_for

            creds = registry_credentials_for(self._settings, f"{self._name}-registry-credentials", self)
            self._registry_auth = {} if creds is None else {"registry_auth": pulumi.Output.secret(
                pulumi.Output.all(creds.server, creds.username, creds.password).apply(
                    lambda a: {"server": a[0], "username": a[1], "password": a[2]}))}
        return self._registry_auth

    def pull_secret(self, namespace: str) -> k8s.core.v1.Secret | None:
        """The namespace's image pull Secret when the stack's registry wants credentials (an ACR), else None.

        One per namespace, so services share it; its name is fixed, so a rotated
        password updates the Secret and rolls no pod (the kubelet reads it at the
        next pull). A cluster whose nodes may pull by their own identity (an ACR
        attached with AcrPull) works with it too.
        """
        auth = self.registry_auth()
        if not auth:
            return None
        if namespace not in self._pull_secrets:
            ns = self.namespace(namespace)
            # The key is the host the image references name, which is what the kubelet matches.
            host = self._settings.image_registry.split("/", 1)[0]
            config = auth["registry_auth"].apply(lambda a: docker_config_json({**a, "server": host}))
            self._pull_secrets[namespace] = k8s.core.v1.Secret(
                f"{self._name}-pull-secret-{namespace}",
                metadata={"name": PULL_SECRET_NAME, "namespace": namespace,
                          "labels": {"app.kubernetes.io/managed-by": "mldeploy"}},
                type="kubernetes.io/dockerconfigjson",
                string_data={".dockerconfigjson": pulumi.Output.secret(config)},
                opts=pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=[ns] if ns is not None else []),
            )
        return self._pull_secrets[namespace]

    def front_image(self) -> RegistryImage:
        """The key-checking front end's image (nginx), pushed once per stack for every service."""
        host = self._settings.image_registry.split("/", 1)[0].rsplit(":", 1)[0]
        if self._on_azure and (host.startswith("127.") or host == "localhost"):
            raise ArgsError(
                f"AksCluster '{self._name}': invalid arguments: target: the nodes of a cluster on Azure cannot pull from "
                f"mldeploy:imageRegistry {self._settings.image_registry} on this machine; set it to an ACR's login server"
            )
        if self._front is None:
            self._front = RegistryImage(
                f"{self._name}-front-image",
                {
                    "source_image": self._settings.gateway_image,
                    "source_image_id": "",
                    "repository": f"{self.image_registry}/front",
                    "models": [],
                    "labels": {},
                    **self.registry_auth(),
                },
                pulumi.ResourceOptions(parent=self, depends_on=[self._cluster]),
            )
        return self._front


AksClusterArgs = args_class(AksCluster, "The arguments of `AksCluster` as one object: Azure ML's provisioning or attach configuration.")
