"""Where releases before the per-target layout pickled ServiceKeysProvider: stacks they deployed still load it here."""

from mldeploy.providers.core.keys import ServiceKeysProvider  # noqa: F401
