"""Where releases before the per-target layout pickled RolloutProvider: stacks they deployed still load it here."""

from mldeploy.providers.targets.kubernetes.rollout import RolloutProvider  # noqa: F401
