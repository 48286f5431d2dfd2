"""Where releases before the per-target layout pickled RegistryCredentialsProvider: stacks they deployed still load it here."""

from mldeploy.providers.image_registry.credentials import RegistryCredentialsProvider  # noqa: F401
