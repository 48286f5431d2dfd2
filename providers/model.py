"""Where releases before the per-target layout pickled ModelVersionProvider: stacks they deployed still load it here."""

from mldeploy.providers.model_registry.provider import ModelVersionProvider  # noqa: F401
