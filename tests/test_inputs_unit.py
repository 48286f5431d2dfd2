"""Inputs everywhere a Pulumi user expects them (issue 19, item 5).

An argument may be another resource's Output: a plain value is checked when the component
is built, an Output once the engine knows it, with the same message naming the resource and
the field. Every component also takes its arguments as one `args=<Component>Args(...)` object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
import pytest

from mldeploy.components import (
    ContainerInstanceService,
    ContainerInstanceServiceArgs,
    InferenceImageArgs,
    RegisteredModel,
    RegisteredModelArgs,
)
from mldeploy.components._common import ArgsError
from mldeploy.providers.model_registry.registry import content_hash
from test_components_unit import RecordingMocks, make_image, make_model, mocks, no_docker, project  # noqa: F401 - fixtures
from test_kubernetes_unit import K8sMocks, build, k8s_mocks  # noqa: F401 - fixtures

pytestmark = pytest.mark.unit


def later(value: Any) -> pulumi.Output[Any]:
    """An Output of another resource, known only once the engine has registered that resource."""
    other = pulumi.CustomResource("test:index:Sizing", "sizing", {"value": value})
    return other.urn.apply(lambda _: value)


@pulumi.runtime.test
def test_cpu_cores_from_another_resource_reaches_the_service(mocks: RecordingMocks, project: Path) -> Any:
    service = ContainerInstanceService("svc", models=[make_model()], image=make_image(), cpu_cores=later(2.0), memory_gb=later(1.5))

    def check(_: Any) -> None:
        props = mocks.resources["svc-service"]
        assert (props["cpu_cores"], props["memory_gb"]) == (2.0, 1.5)

    return service.scoring_uri.apply(check)


def test_a_bad_cpu_cores_fails_naming_the_resource_and_field_plain_or_output(mocks: RecordingMocks, project: Path) -> None:
    words = r"ContainerInstanceService 'svc': invalid arguments: cpu_cores: Input should be greater than 0"
    with pytest.raises(ArgsError, match=words):
        ContainerInstanceService("svc", models=[make_model()], image=make_image(), cpu_cores=0)

    @pulumi.runtime.test
    def program() -> None:
        ContainerInstanceService("svc", models=[make_model("m2", model_name="m2")], image=make_image("i2"), cpu_cores=later(0))

    with pytest.raises(ArgsError, match=words):  # the same words, once the engine knows the value
        program()
    assert "svc-service" not in mocks.resources, "a bad value made a service"


@pulumi.runtime.test
def test_num_replicas_from_another_resource_reaches_the_deployment(k8s_mocks: K8sMocks) -> Any:
    _, svc = build(num_replicas=later(3))

    def check(_: Any) -> None:
        _, deployment = k8s_mocks.resources["scorer-deployment"]
        assert deployment["spec"]["replicas"] == 3

    return svc.scoring_uri.apply(check)


@pulumi.runtime.test
def test_model_path_from_another_resource_is_hashed_when_known(mocks: RecordingMocks, project: Path) -> Any:
    model = RegisteredModel("ridge", model_name="ridge", model_path=later("models/ridge.pkl"))

    def check(args: list[Any]) -> None:
        props = mocks.resources["ridge-version"]
        assert props["model_path"] == "models/ridge.pkl"
        assert props["content_hash"] == content_hash(project / "models" / "ridge.pkl")
        assert args[0] == 1

    return pulumi.Output.all(model.version).apply(check)


def test_a_model_path_output_that_does_not_exist_fails_naming_the_field(mocks: RecordingMocks, project: Path) -> None:
    @pulumi.runtime.test
    def program() -> None:
        RegisteredModel("gone", model_name="gone", model_path=later("models/gone.pkl"))

    with pytest.raises(ArgsError, match=r"RegisteredModel 'gone': invalid arguments: model_path: model path does not exist: .*models/gone.pkl"):
        program()
    assert "gone-version" not in mocks.resources


@pulumi.runtime.test
def test_args_objects_are_the_keywords(mocks: RecordingMocks, project: Path) -> Any:
    model = RegisteredModel("ridge", args=RegisteredModelArgs(model_name="ridge", model_path="models/ridge.pkl", tags={"a": "b"}))
    image = make_image()
    service = ContainerInstanceService("svc", args=ContainerInstanceServiceArgs(models=[model], image=image, cpu_cores=0.5))

    def check(_: Any) -> None:
        assert mocks.resources["ridge-version"]["tags"] == {"a": "b"}
        props = mocks.resources["svc-service"]
        assert props["cpu_cores"] == 0.5 and props["memory_gb"] == 1, "left out: the component's default"

    return service.scoring_uri.apply(check)


def test_an_args_object_and_a_keyword_for_one_field_is_refused(project: Path) -> None:
    with pytest.raises(TypeError, match="model_path"):
        RegisteredModel("r", args=RegisteredModelArgs(model_name="r", model_path="a"), model_path="b")
    with pytest.raises(TypeError, match="source_directory"):
        InferenceImageArgs(entry_script="score.py")  # a required argument stays required
