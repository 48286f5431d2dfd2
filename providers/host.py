"""The dynamic provider host: the SDK's own (`python -m pulumi.dynamic`), with forged providers refused.

The SDK unpickles each resource's `__provider` from what the engine sends:
on `read` and `delete` that is the state's copy, so anyone who can write the
shared state could plant a pickle that runs their code on the next `preview`
(which refreshes), with the operator's passphrase and credentials. Encrypting
the pickle (the SDK's default, which mldeploy's providers keep) does not stop
it: the host cannot tell an encrypted value from a plain one after the engine
has decrypted it, so a plain forged pickle is still read.

So this host loads only what mldeploy's providers are: a class of
`mldeploy.providers.*` that is a `ResourceProvider`, by reference (that is how
they are pickled). Releases before the `mldeploy` package pickled the same
classes as `providers.*` (the checkout's top-level folder); those names load as
`mldeploy.providers.*`, so their stacks still refresh and destroy. Anything else
is refused before any of it runs, naming what the pickle asked for. A project
that also runs dynamic providers of its own, pickled by value, sets
`MLDEPLOY_TRUST_STATE_PICKLES=1` to get the SDK's behaviour back (and trusts
whoever can write its state).

`scripts/engine/pulumi-resource-pulumi-python` starts this module; the engine
finds it on PATH under the SDK's plugin name.
"""

from __future__ import annotations

import io
import os
import pickle
import runpy
import sys
from typing import Any

ALLOWED_MODULE_PREFIX = "mldeploy.providers."
LEGACY_MODULE_PREFIX = "providers."
"""How releases before the `mldeploy` package named the same modules (their stacks' pickles)."""
TRUST_ENV = "MLDEPLOY_TRUST_STATE_PICKLES"


class ForgedProvider(pickle.UnpicklingError):
    """A `__provider` that is not one of mldeploy's providers."""


class _ProvidersOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        ours = "mldeploy." + module if module.startswith(LEGACY_MODULE_PREFIX) else module
        if ours.startswith(ALLOWED_MODULE_PREFIX) and name.isidentifier():
            from pulumi.dynamic import ResourceProvider

            try:
                found = super().find_class(ours, name)
            except (ImportError, AttributeError):
                found = None
            if isinstance(found, type) and issubclass(found, ResourceProvider):
                return found
        raise ForgedProvider(
            f"refused a dynamic provider that names {module}.{name}: only mldeploy's own providers "
            f"({ALLOWED_MODULE_PREFIX}*) are loaded from the state, and nothing of this one ran. "
            f"Someone may have written the stack's state; if the project has dynamic providers of its own, "
            f"set {TRUST_ENV}=1"
        )


def load_provider(data: bytes, *_: Any, **__: Any) -> Any:
    """Unpickle `data` if it is one of mldeploy's providers, by reference; raise `ForgedProvider` otherwise."""
    return _ProvidersOnly(io.BytesIO(data)).load()


def main() -> None:
    if os.environ.get(TRUST_ENV) != "1":
        import dill

        dill.loads = load_provider  # the SDK's host calls dill.loads(bytes) on every __provider
    sys.argv[0] = "pulumi.dynamic"
    runpy.run_module("pulumi.dynamic", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
