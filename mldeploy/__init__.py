"""mldeploy: Azure ML-style model deployment as Pulumi components, under one import name.

    from mldeploy.components import RegisteredModel, InferenceImage, ContainerInstanceService

- `mldeploy.components`: the component resources (the public surface, see its `__all__`).
- `mldeploy.providers`: the dynamic providers and their clients. Pulumi pickles a
  provider by reference (`mldeploy.providers.model_registry.provider.ModelProvider`), so the
  `python -m pulumi.dynamic` process that runs it must import the same name.
- `mldeploy/runtime`: files, not code to import: the serving runtime copied into
  every inference image and the gateway's nginx templates.

An installed wheel carries the three beside this file. In a checkout of the
repository they stay the top-level folders `components/`, `providers/` and
`runtime/` (the project's layout), and this package adds the repository's root
to its `__path__`, so the same names resolve there, from the project's own
`__main__.py`, its tests and the engine's provider process (which starts in the
project's folder). Nothing is installed as a top-level `components` or
`providers` package.
"""

from __future__ import annotations

import os

_HERE = os.path.dirname(os.path.abspath(__file__))
_CHECKOUT = os.path.dirname(_HERE)

if not os.path.isdir(os.path.join(_HERE, "components")) and os.path.isfile(
    os.path.join(_CHECKOUT, "components", "__init__.py")
):
    # A checkout: mldeploy.components is <root>/components, mldeploy.providers <root>/providers.
    __path__.append(_CHECKOUT)  # type: ignore[name-defined]  # noqa: F821 - a package's own __path__
