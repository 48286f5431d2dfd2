"""AksCluster: the Kubernetes cluster that `AksService`s run on, as Azure ML's `AksCompute`.

Locally it attaches (and starts when needed) the single-node cluster that
`scripts/k8s/cluster.sh` runs on this machine; given a kubeconfig it attaches
that cluster. Creating a cluster on Azure is a separate backend: the arguments
mirror `AksCompute.provisioning_configuration` so it can slot in here.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import pulumi
import pulumi_kubernetes as k8s
from pulumi.dynamic import Resource
from pydantic import BaseModel, ConfigDict, Field

from components._common import PACKAGE, Settings, slug, validate
from components.registry_image import RegistryImage
from providers.cluster import ClusterProvider
from providers.targets.kubernetes import NAMESPACE_RE

OUTPUTS = ("kubeconfig", "kubernetes_version", "node_count", "allocatable_vcpus")


class AksClusterArgs(BaseModel):
    """`AksCompute.provisioning_configuration`'s arguments, with its defaults."""

    model_config = ConfigDict(extra="forbid")

    cluster_purpose: Literal["FastProd", "DevTest"] = "FastProd"
    """FastProd needs at least 12 allocatable vCPUs, as Azure ML requires."""
    agent_count: int = Field(default=3, gt=0, le=100)
    vm_size: str = Field(default="Standard_D3_v2", min_length=1)
    kubeconfig: Any = None
    """A kubeconfig's text (a string or a secret Output) to attach that cluster; None for the local one."""


class Cluster(Resource, module=PACKAGE, name="Cluster"):
    """An attached cluster and what it offers (dynamic resource)."""

    kubeconfig: pulumi.Output[str]
    kubernetes_version: pulumi.Output[str]
    node_count: pulumi.Output[int]
    allocatable_vcpus: pulumi.Output[float]
    server: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        outs = ("kubeconfig_sha", "server", "kubernetes_version", "node_count", "allocatable_vcpus")
        super().__init__(ClusterProvider(), name, {"kubeconfig": None, **props, **{k: None for k in outs}}, opts)


class AksCluster(pulumi.ComponentResource):
    """A cluster to deploy services on; checks Azure ML's size rule at preview."""

    kubeconfig: pulumi.Output[str]
    kubernetes_version: pulumi.Output[str]
    node_count: pulumi.Output[int]
    allocatable_vcpus: pulumi.Output[float]

    def __init__(
        self,
        resource_name: str,
        cluster_purpose: str = "FastProd",
        agent_count: int = 3,
        vm_size: str = "Standard_D3_v2",
        kubeconfig: pulumi.Input[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        args = validate(
            AksClusterArgs,
            "AksCluster",
            resource_name,
            {"cluster_purpose": cluster_purpose, "agent_count": agent_count, "vm_size": vm_size, "kubeconfig": kubeconfig},
        )
        super().__init__(f"{PACKAGE}:index:AksCluster", resource_name, None, opts)
        self._name = resource_name
        self._settings = Settings.load()
        props: dict[str, Any] = {
            "source": "kubeconfig" if args.kubeconfig is not None else "local",
            "cluster_purpose": args.cluster_purpose,
            "agent_count": args.agent_count,
            "vm_size": args.vm_size,
        }
        if args.kubeconfig is not None:
            props["kubeconfig"] = pulumi.Output.secret(args.kubeconfig)
        self._cluster = Cluster(
            f"{resource_name}-cluster",
            props,
            pulumi.ResourceOptions(parent=self, additional_secret_outputs=["kubeconfig"]),
        )
        self.kubeconfig = self._cluster.kubeconfig
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
            self._namespaces[name] = k8s.core.v1.Namespace(
                f"{self._name}-ns-{name}",
                metadata={"name": name, "labels": {"app.kubernetes.io/managed-by": "mldeploy"}},
                opts=pulumi.ResourceOptions(parent=self, provider=self.provider),
            )
        return self._namespaces[name]

    def front_image(self) -> RegistryImage:
        """The key-checking front end's image (nginx), pushed once per stack for every service."""
        if self._front is None:
            self._front = RegistryImage(
                f"{self._name}-front-image",
                {
                    "source_image": self._settings.gateway_image,
                    "source_image_id": "",
                    "repository": f"{self.image_registry}/front",
                    "models": [],
                    "labels": {},
                },
                pulumi.ResourceOptions(parent=self, depends_on=[self._cluster]),
            )
        return self._front
