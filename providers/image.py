"""Where releases before the per-target layout pickled ImageProvider: stacks they deployed still load it here."""

from mldeploy.providers.images.provider import ImageProvider  # noqa: F401
