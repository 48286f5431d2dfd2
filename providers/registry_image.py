"""Where releases before the per-target layout pickled RegistryImageProvider: stacks they deployed still load it here."""

from mldeploy.providers.image_registry.image import RegistryImageProvider  # noqa: F401
