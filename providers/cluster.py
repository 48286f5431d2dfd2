"""Where releases before the per-target layout pickled ClusterProvider: stacks they deployed still load it here."""

from mldeploy.providers.targets.kubernetes.cluster import ClusterProvider  # noqa: F401
