"""Where releases before the per-target layout pickled EdgeDeploymentProvider: stacks they deployed still load it here."""

from mldeploy.providers.targets.iotedge.device import EdgeDeploymentProvider  # noqa: F401
