"""Where releases before the per-target layout pickled ManagedClusterProvider, ClusterCredentialsProvider: stacks they deployed still load it here."""

from mldeploy.providers.targets.kubernetes.managed_cluster import (  # noqa: F401
    ManagedClusterProvider,
    ClusterCredentialsProvider,
)
