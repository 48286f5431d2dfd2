"""Where releases before the per-target layout pickled ServiceProvider: stacks they deployed still load it here."""

from mldeploy.providers.targets.service import ServiceProvider  # noqa: F401
