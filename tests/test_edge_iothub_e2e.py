"""The IoT Edge target's `iothub` backend with an at-scale deployment, applied by the real engine.

The hub is the local fake (tests/fake_iothub.py, built from IoT Hub's REST
documents), not IoT Hub: nothing here reaches Azure. The module image really is
built and pushed to the local registry (127.0.0.1:5000); no device runs it.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Iterator

import pulumi
import pytest

from conftest import train_model
from fake_iothub import FakeHub
from test_kubernetes_e2e import IMAGE_ARGS

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

HUB = "fakehub.azure-devices.net"
KEY = base64.b64encode(b"e2e-policy-key-" + b"k" * 17).decode()


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub(HUB, {"iothubowner": KEY}, {"edge1": True}) as h:
        yield h


def test_an_at_scale_deployment_is_a_configuration_replaced_on_a_new_manifest_and_updated_in_place(
    workdir: Path, engine_stack, local_registry: str, hub: FakeHub
) -> None:
    from mldeploy.components import EdgeDevice, EdgeModule, InferenceImage, RegisteredModel
    from mldeploy.providers.image_registry import oci_registry

    model_path = train_model(workdir / "models" / "a" / "sklearn_regression_model.pkl", alpha=0.1)
    priority = [0]

    def program() -> None:
        model = RegisteredModel("model-a", model_name="model_a", model_path="models/a/sklearn_regression_model.pkl")
        image = InferenceImage("scoring", **IMAGE_ARGS)
        device = EdgeDevice("edge1", backend="iothub", hub_host=HUB, policy_key=pulumi.Output.secret(KEY),
                            endpoint=hub.endpoint, target_condition="tags.environment='prod'", priority=priority[0])
        module = EdgeModule("edge", models=[model], image=image, device=device, module_name="scorer")
        pulumi.export("configuration_id", module.configuration_id)
        pulumi.export("image_ref", module.image_ref)
        pulumi.export("model_versions", module.model_versions)

    st = engine_stack(program)
    up = st.up()
    assert up.summary.result == "succeeded", st.log[-40:]
    first = up.outputs["configuration_id"].value
    assert list(hub.configurations) == [first]
    stored: dict[str, Any] = hub.configurations[first]
    assert (stored["targetCondition"], stored["priority"]) == ("tags.environment='prod'", 0)
    agent = stored["content"]["modulesContent"]["$edgeAgent"]["properties.desired"]
    assert agent["modules"]["scorer"]["settings"]["image"] == up.outputs["image_ref"].value
    assert up.outputs["image_ref"].value.startswith(f"{local_registry}/")
    assert hub.applied == {}, "an at-scale deployment applies nothing to one device"

    # A new priority: the same configuration, updated in place.
    import preview_markdown

    etag = stored["etag"]
    priority[0] = 5
    review = preview_markdown.render(st.name, *preview_markdown.preview_steps(st.stack))
    assert "priority 0 → 5<br>the same configuration is updated in place" in review, review
    up = st.up()
    assert up.summary.result == "succeeded", st.log[-40:]
    assert up.outputs["configuration_id"].value == first and list(hub.configurations) == [first]
    assert hub.configurations[first]["priority"] == 5 and hub.configurations[first]["etag"] != etag

    # A new model version: a new manifest, so a new configuration; the old one goes.
    train_model(model_path, alpha=30.0)
    review = preview_markdown.render(st.name, *preview_markdown.preview_steps(st.stack))
    assert "model `model_a` version 1 → 2" in review and "a new configuration for the devices where" in review, review
    up = st.up()
    assert up.summary.result == "succeeded", st.log[-40:]
    second = up.outputs["configuration_id"].value
    assert second != first and list(hub.configurations) == [second]
    assert up.outputs["model_versions"].value == {"model_a": 2}
    assert hub.configurations[second]["priority"] == 5

    # The policy key is only in the state encrypted.
    for f in (workdir / ".pulumi-state" / "backend").rglob("*.json"):
        assert KEY not in f.read_text(), f

    # Deleted on the hub behind our back: refresh finds it, and up creates it again under the same id.
    hub.configurations.clear()
    st.refresh()
    review = preview_markdown.render(st.name, *preview_markdown.preview_steps(st.stack))
    assert "found by refresh: configuration deleted on the hub: restored" in review, review
    up = st.up()
    assert up.summary.result == "succeeded", st.log[-40:]
    assert list(hub.configurations) == [second] and hub.configurations[second]["priority"] == 5

    repository = up.outputs["image_ref"].value.split("@")[0]
    st.destroy()
    assert hub.configurations == {}
    assert oci_registry.tags(repository) == []


def test_the_sample_program_previews_an_at_scale_deployment_from_stack_config(workdir: Path, engine_stack) -> None:
    import preview_markdown
    import stack as stack_cli

    train_model(workdir / "sample" / "models" / "sklearn_regression_model.pkl", alpha=0.1)
    st = engine_stack(stack_cli.project_program(workdir))
    st.configure({"target": "iotedge", "edgeBackend": "iothub", "iotHubHost": HUB, "edgeDevice": "edge1",
                  "edgeTargetCondition": "tags.environment='prod'", "edgePriority": "3"}, secrets={"iotHubPolicyKey": KEY})
    review = preview_markdown.render(st.name, *preview_markdown.preview_steps(st.stack))
    assert "on the devices where `tags.environment='prod'` (an at-scale configuration, priority 3)" in review, review
    assert KEY not in review


def two_module_program(hub: FakeHub, foreign_modules: str = "fail"):
    from mldeploy.components import EdgeDevice, EdgeModule, InferenceImage, RegisteredModel

    def program() -> None:
        image = InferenceImage("scoring", **IMAGE_ARGS)
        kw = {} if foreign_modules == "fail" else {"foreign_modules": foreign_modules}  # the default, as a user leaves it
        device = EdgeDevice("edge1", backend="iothub", hub_host=HUB, policy_key=pulumi.Output.secret(KEY), endpoint=hub.endpoint, **kw)
        for n in ("first", "second"):
            model = RegisteredModel(f"model-{n}", model_name=f"model_{n}", model_path="models/a/sklearn_regression_model.pkl")
            module = EdgeModule(n, models=[model], image=image, device=device)
            pulumi.export(f"{n}_image", module.image_ref)

    return program


def test_two_modules_sent_to_one_hub_device_are_one_manifest_holding_both(workdir: Path, engine_stack, local_registry: str, hub: FakeHub) -> None:
    """Issue 17, part 2: before, the second module's manifest replaced the first's on the device."""
    from mldeploy.providers.targets.iotedge import edge_manifest

    train_model(workdir / "models" / "a" / "sklearn_regression_model.pkl", alpha=0.1)
    st = engine_stack(two_module_program(hub))
    up = st.up()
    assert up.summary.result == "succeeded", st.log[-40:]
    modules = edge_manifest.modules_of(hub.applied["edge1"])
    assert sorted(modules) == ["first", "second"]
    assert {n: m["settings"]["image"] for n, m in modules.items()} == {n: up.outputs[f"{n}_image"].value for n in ("first", "second")}
    applies = [r for r in hub.requests if r["method"] == "POST"]
    assert len(applies) == 1, "one manifest, applied once"
    st.destroy()
    assert edge_manifest.modules_of(hub.applied["edge1"]) == {}


def test_a_foreign_module_on_the_hub_device_fails_the_preview_or_is_kept(workdir: Path, engine_stack, local_registry: str, hub: FakeHub) -> None:
    from pulumi.automation import errors as auto_errors

    from mldeploy.providers.targets.iotedge import edge_manifest

    theirs = edge_manifest.render([{"name": "theirs", "image": "example.invalid/theirs:1", "create_options": {}}])
    hub.applied["edge1"] = theirs
    train_model(workdir / "models" / "a" / "sklearn_regression_model.pkl", alpha=0.1)
    st = engine_stack(two_module_program(hub))
    with pytest.raises(auto_errors.CommandError) as failed:
        st.preview()
    words = str(failed.value) + "\n".join(st.log)
    assert "foreign_modules" in words and "runs modules this stack does not own: theirs" in words, words[-2000:]
    assert hub.applied["edge1"] == theirs, "nothing was applied"

    kept = engine_stack(two_module_program(hub, "keep"), name=f"{st.name}-keep")
    up = kept.up()
    assert up.summary.result == "succeeded", kept.log[-40:]
    assert sorted(edge_manifest.modules_of(hub.applied["edge1"])) == ["first", "second", "theirs"]
    assert edge_manifest.modules_of(hub.applied["edge1"])["theirs"]["settings"]["image"] == "example.invalid/theirs:1"
    kept.destroy()
    assert sorted(edge_manifest.modules_of(hub.applied["edge1"])) == ["theirs"], "destroy removes this stack's modules only"
