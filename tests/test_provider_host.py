"""Forged providers in the state never run (issue 18, item 4).

The SDK's host unpickles `__provider` from the state on `read` and `delete`.
mldeploy's host (`mldeploy.providers.host`, started by the engine under the
SDK's plugin name) loads only mldeploy's own provider classes, by reference;
the pickles are also stored encrypted again (the SDK's default).
"""

from __future__ import annotations

import base64
import json
import os
import pickle
from pathlib import Path

import pytest

import mldeploy.providers as providers_pkg
from mldeploy.providers.host import ForgedProvider, load_provider


class _Plant:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_mldeploys_own_providers_load_and_anything_else_is_refused_unrun(tmp_path: Path) -> None:
    from pulumi.dynamic.dynamic import serialize_provider

    from mldeploy.providers.targets.kubernetes.rollout import RolloutProvider
    from mldeploy.providers.targets.service import ServiceProvider

    for provider in (ServiceProvider(), RolloutProvider()):
        loaded = load_provider(base64.b64decode(serialize_provider(provider)))
        assert type(loaded) is type(provider)
    marker = tmp_path / "ran"
    with pytest.raises(ForgedProvider, match=r"refused a dynamic provider that names posix\.system"):
        load_provider(pickle.dumps(_Plant(marker)))
    assert not marker.exists(), "nothing of the forged pickle ran"
    # A class of ours that is not a provider is refused too.
    with pytest.raises(ForgedProvider, match="mldeploy.providers.gate.sample_check.SampleCheck"):
        load_provider(pickle.dumps(__import__("mldeploy.providers.gate.sample_check", fromlist=["x"]).SampleCheck(False, True)))


# What the release before the `mldeploy` package (c1fb50a) wrote into its stacks' state, in plain text.
EARLIER_RELEASE_PICKLES = {
    "ServiceProvider": "gASVLAAAAAAAAACMEXByb3ZpZGVycy5zZXJ2aWNllIwPU2VydmljZVByb3ZpZGVylJOUKYGULg==",
    "ModelVersionProvider": "gASVLwAAAAAAAACMD3Byb3ZpZGVycy5tb2RlbJSMFE1vZGVsVmVyc2lvblByb3ZpZGVylJOUKYGULg==",
    "ImageProvider": "gASVKAAAAAAAAACMD3Byb3ZpZGVycy5pbWFnZZSMDUltYWdlUHJvdmlkZXKUk5QpgZQu",
}


@pytest.mark.parametrize("name", sorted(EARLIER_RELEASE_PICKLES))
def test_an_earlier_releases_pickle_loads_as_the_same_mldeploy_provider(name: str) -> None:
    """Stacks of releases before the package refresh and destroy: `providers.x.C` is `mldeploy.providers.x.C`."""
    loaded = load_provider(base64.b64decode(EARLIER_RELEASE_PICKLES[name]))
    assert type(loaded).__qualname__ == name and type(loaded).__module__.startswith("mldeploy.providers.")


def test_an_old_name_of_anything_else_is_refused() -> None:
    # `providers.host.ForgedProvider` exists but is no provider; `providers.nope` does not exist.
    for module, name in (("providers.host", "ForgedProvider"), ("providers.nope", "X"), ("providers.service", "os")):
        data = f"c{module}\n{name}\n)R.".encode()  # GLOBAL module name, called with ()
        with pytest.raises(ForgedProvider, match=f"names {module}.{name}"):
            load_provider(data)


def test_every_provider_keeps_the_sdks_encrypted_pickle() -> None:
    import importlib
    import pkgutil

    from pulumi.dynamic import ResourceProvider

    found = []
    for m in pkgutil.walk_packages(providers_pkg.__path__, "mldeploy.providers."):
        module = importlib.import_module(m.name)
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, ResourceProvider) and obj.__module__ == m.name:
                found.append(obj)
                assert obj.serialize_as_secret_always is True, f"{obj.__qualname__} stores its pickle in plain text"
    assert len(found) >= 10


@pytest.mark.e2e
def test_a_forged_provider_in_the_state_is_refused_by_the_next_preview(workdir: Path, engine_stack, tmp_path: Path) -> None:
    from pulumi import automation as auto

    def program() -> None:
        import pulumi

        from mldeploy.components.aks_service import ServiceKeys

        keys = ServiceKeys("keys", {"primary_key_version": 1, "secondary_key_version": 1})
        pulumi.export("primary_key", keys.primary_key)

    st = engine_stack(program)
    assert st.up().summary.result == "succeeded"
    exported = st.stack.export_stack()
    state = exported.deployment
    res = next(r for r in state["resources"] if r["type"].endswith("mldeploy:ServiceKeys"))
    stored = res["outputs"]["__provider"]
    # A secret (the Automation API's export shows it decrypted; the state file holds the ciphertext).
    assert isinstance(stored, dict) and stored.get("4dabf18193072939515e22adb298388d") == "1b47061264138c4ac30d75fd1eb44270"
    state_file = next((workdir / ".pulumi-state" / "backend").rglob(f"{st.name}.json"))
    assert "ServiceKeysProvider" not in state_file.read_text() and "gASV" not in state_file.read_text()

    # Someone with write access to the state plants a plain pickle that would run a command.
    marker = tmp_path / "forged-provider-ran"
    forged = json.loads(json.dumps(state))
    for r in forged["resources"]:
        if r["type"].endswith("mldeploy:ServiceKeys"):
            plant = base64.b64encode(pickle.dumps(_Plant(marker))).decode()
            r["outputs"]["__provider"] = plant
            r["inputs"]["__provider"] = plant
    st.stack.import_stack(auto.Deployment(version=exported.version, deployment=forged))
    with pytest.raises(auto.CommandError) as failed:
        st.preview(refresh=True)
    assert "refused a dynamic provider that names posix.system" in str(failed.value), str(failed.value)[-3000:]
    assert not marker.exists(), "the forged pickle never ran"
    st.stack.import_stack(exported)  # the real state back, so the stack is destroyed as usual
