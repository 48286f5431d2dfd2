"""`mldeploy:registry`: components wired to the shared registry (Azurite), under Pulumi mocks.

What a stack sends its resources when its registry is in Blob Storage, where a
service on this machine finds the files, which setting wins, and bad registry
settings stopping the program before any resource is declared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
import pytest

from conftest import azblob_url
from mldeploy.providers.model_registry.registry import content_hash, open_registry
from mldeploy.providers.model_registry.provider import ModelVersionProvider, diff_model
from test_components_unit import (  # noqa: F401 - fixtures
    RecordingMocks,
    _raises,
    _set_mocks,
    make_model,
    make_service,
    mocks,
    no_docker,
    preview_mocks,
    project,
    state_dir,
)

OWNER = "proj/dev/ridge"


@pytest.fixture
def shared(azurite: dict[str, str], blob_container: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A registry URL in a fresh Azurite container; no registry variables of the operator's."""
    for var in ("MLDEPLOY_REGISTRY", "MLDEPLOY_REGISTRY_PATH"):
        monkeypatch.delenv(var, raising=False)
    return azblob_url(azurite, blob_container, "team")


@pulumi.runtime.test
def test_a_stack_on_the_shared_registry(mocks: RecordingMocks, project: Path, shared: str) -> Any:
    pulumi.runtime.set_all_config({"mldeploy:registry": shared})
    open_registry(shared).register("ridge", project / "models" / "ridge.pkl", "proj/other/ridge")  # someone else's v1
    (project / "models" / "ridge.pkl").write_bytes(b"ridge-weights-v2")
    model = make_model()
    service = make_service(models=[model])
    digest = content_hash(project / "models" / "ridge.pkl")
    folder = f"{state_dir(project)}/registry-cache/ridge/{digest.split(':')[1][:32]}"

    def check(_: Any) -> None:
        props = mocks.resources["ridge-version"]
        assert props["registry_root"] == shared and props["version"] == 2  # planned from the shared registry
        assert props["cache_dir"] == f"{state_dir(project)}/registry-cache"
        assert mocks.resources["aciservice-service"]["models"] == [{"name": "ridge", "version": 2, "model_dir": folder}]
        # At up, this machine's copy is there before any service mounts it.
        assert content_hash(Path(folder) / "ridge.pkl") == digest

    return service.scoring_uri.apply(check)


@pulumi.runtime.test
def test_preview_writes_nothing_locally(preview_mocks: RecordingMocks, project: Path, shared: str) -> Any:
    pulumi.runtime.set_all_config({"mldeploy:registry": shared})
    model = make_model()

    def check(_: Any) -> None:
        assert preview_mocks.resources["ridge-version"]["version"] == 1
        assert not (state_dir(project) / "registry-cache").exists()
        assert open_registry(shared).versions("ridge") == []

    return model.version.apply(check)


def test_provider_registers_in_the_shared_registry_and_copies_for_services(
    project: Path, shared: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """create, read (refresh) and delete of the dynamic resource, against Azurite."""
    monkeypatch.chdir(project)
    props = {"model_name": "ridge", "model_path": "models/ridge.pkl", "registry_root": shared, "owner": OWNER,
             "tags": {"a": "1"}, "description": "d", "cache_dir": ".pulumi-state/registry-cache",
             "content_hash": content_hash(project / "models" / "ridge.pkl")}
    provider = ModelVersionProvider()
    assert provider.check({}, {k: v for k, v in props.items() if k != "cache_dir"}).failures[0].property == "cache_dir"
    made = provider.create(props)
    assert made.id == "ridge:1" and made.outs["version"] == 1
    assert (project / made.outs["model_dir"] / "ridge.pkl").read_bytes() == b"ridge-weights"
    assert provider.read(made.id, made.outs).outs["present"] is True
    provider.delete(made.id, made.outs)
    assert open_registry(shared).versions("ridge") == []
    assert provider.read(made.id, made.outs).outs["present"] is False  # gone from the registry: drift


def test_moving_to_the_shared_registry_registers_the_model_there_once() -> None:
    """Another registry is another model: a replace (register there, then release from the folder)."""
    olds = {"model_name": "ridge", "registry_root": ".pulumi-state/registry", "owner": OWNER, "content_hash": "sha256:a"}
    news = {**olds, "registry_root": "azblob://models?localemu=true", "cache_dir": ".pulumi-state/registry-cache"}
    diff = diff_model(olds, news)
    assert diff.changes and diff.replaces == ["registry_root"] and not diff.delete_before_replace
    assert not diff_model(news, dict(news)).changes


# ---------------------------------------------------------------- which setting wins


def _registry_root(mocks: RecordingMocks) -> str:
    return mocks.resources["ridge-version"]["registry_root"]


@pulumi.runtime.test
def test_the_environment_fills_in_the_registry(mocks: RecordingMocks, project: Path, shared: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("MLDEPLOY_REGISTRY", shared)
    model = make_model()
    return model.version.apply(lambda _: _registry_root(mocks) == shared or pytest.fail(_registry_root(mocks)))


@pulumi.runtime.test
def test_a_stack_folder_registry_wins_over_a_shared_one_in_the_environment(
    mocks: RecordingMocks, project: Path, shared: str, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """registry and registryPath are one setting: the stack setting either leaves both variables out."""
    monkeypatch.setenv("MLDEPLOY_REGISTRY", shared)
    pulumi.runtime.set_all_config({"mldeploy:registryPath": "stack-registry"})
    model = make_model()

    def check(_: Any) -> None:
        assert _registry_root(mocks) == "stack-registry"

    return model.version.apply(check)


@pulumi.runtime.test
def test_a_stack_shared_registry_wins_over_a_folder_in_the_environment(
    mocks: RecordingMocks, project: Path, shared: str, monkeypatch: pytest.MonkeyPatch
) -> Any:
    monkeypatch.setenv("MLDEPLOY_REGISTRY_PATH", "env-registry")
    pulumi.runtime.set_all_config({"mldeploy:registry": shared})
    model = make_model()

    def check(_: Any) -> None:
        assert _registry_root(mocks) == shared

    return model.version.apply(check)


# ---------------------------------------------------------------- bad input: named, nothing declared


def _planned(project: Path, registry: str) -> list[Any]:
    """The provider's check of a model on `registry` (the program declares it; the check reads the registry)."""
    from mldeploy.providers.model_registry.provider import plan

    digest = content_hash(project / "models" / "ridge.pkl")
    props = {"model_name": "ridge", "model_path": "models/ridge.pkl", "content_hash": digest, "registry_root": registry,
             "owner": "p/s/ridge", "cache_dir": "cache"}
    return plan(props)[1]


def test_a_container_that_does_not_exist(project: Path, azurite: dict[str, str], blob_container: str) -> None:
    [failure] = _planned(project, azblob_url(azurite, "no-such-container"))
    assert failure.property == "registry_root"
    for fragment in ("mldeploy:registry", "/no-such-container", "the container does not exist"):
        assert fragment in failure.reason


def test_an_account_that_cannot_be_reached(project: Path, blob_container: str) -> None:
    [failure] = _planned(project, "azblob://models?domain=127.0.0.1:9&protocol=http&localemu=true")
    assert failure.property == "registry_root"
    for fragment in ("mldeploy:registry", "cannot reach the storage account", "http://127.0.0.1:9/devstoreaccount1/models"):
        assert fragment in failure.reason


@pytest.mark.parametrize(
    "config, words",
    [
        ({"mldeploy:registry": "azblob://models?sig=secret"}, ["mldeploy:registry", "never in the URL"]),
        ({"mldeploy:registry": "/srv/registry"}, ["mldeploy:registry", "a folder goes in mldeploy:registryPath"]),
        ({"mldeploy:registry": "azblob://models", "mldeploy:registryPath": "reg"}, ["mldeploy:registry and mldeploy:registryPath are both set"]),
    ],
    ids=["secret-in-url", "not-a-url", "both"],
)
@pulumi.runtime.test
def test_bad_registry_settings(mocks: RecordingMocks, project: Path, shared: str, config: dict[str, str], words: list[str]) -> None:
    pulumi.runtime.set_all_config(config)
    _raises(make_model, "stack config stacks/Pulumi.dev.yaml", *words)
    assert mocks.resources == {}


@pytest.mark.parametrize("key", ["registryPath", "stateDir"])
@pulumi.runtime.test
def test_a_registry_path_that_is_a_file(mocks: RecordingMocks, project: Path, key: str) -> None:
    (project / "a-file").write_text("not a folder")
    pulumi.runtime.set_all_config({f"mldeploy:{key}": "a-file"})
    _raises(make_model, f"mldeploy:{key}", f"{project / 'a-file'} is a file, not a folder")
    assert mocks.resources == {}
    assert (project / "a-file").read_text() == "not a folder"


@pulumi.runtime.test
def test_the_default_registry_folder_is_a_file(mocks: RecordingMocks, project: Path) -> None:
    state_dir(project).mkdir()
    (state_dir(project) / "registry").write_text("")
    _raises(make_model, "mldeploy:registryPath", "registry is a file, not a folder")
    assert mocks.resources == {}
