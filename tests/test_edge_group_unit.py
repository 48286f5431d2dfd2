"""The EdgeModules of one device become one EdgeDeployment (issue 17), under Pulumi mocks.

The list of a device's modules is sealed once the program's top-level code has run
(components/edge_module.py); these tests run the component as the SDK does and look
at what the one deployment resource is given.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pulumi
import pytest

from mldeploy.components import EdgeDevice, EdgeModule
from mldeploy.components._common import ArgsError
from mldeploy.providers.targets import iotedge
from test_components_unit import RecordingMocks, make_image, make_model, mocks, no_docker, project  # noqa: F401 - fixtures

KEY = "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2s="
HUB = "fakehub.azure-devices.net"


def deployments(mocks: RecordingMocks) -> dict[str, dict[str, Any]]:
    return {n: p for n, p in mocks.resources.items() if mocks.types[n].endswith("mldeploy:EdgeDeployment")}


@pulumi.runtime.test
def test_two_modules_of_one_device_are_one_deployment_with_both(mocks: RecordingMocks, project: Path) -> Any:
    image = make_image()
    dev = EdgeDevice("dev1")
    first = EdgeModule("first", models=[make_model()], image=image, device=dev)
    second = EdgeModule("second", models=[make_model("ridge2", "ridge2")], image=image, device=dev, module_name="other")
    elsewhere = EdgeModule("third", models=[make_model("ridge3", "ridge3")], image=image, device=EdgeDevice("dev2"))

    def check(args: list[Any]) -> None:
        found = deployments(mocks)
        assert sorted(found) == ["edge-device-dev1", "edge-device-dev2"], found.keys()
        one = found["edge-device-dev1"]
        assert [m["name"] for m in one["modules"]] == ["first", "other"]
        assert one["owners"] == {"first": "first", "other": "second"}
        assert one["ports"] == {"first": first_port, "other": second_port} and first_port != second_port
        assert one["resource"] == "first" and one["port"] == first_port, "the first module's, as the previous release had them"
        assert [m["name"] for m in found["edge-device-dev2"]["modules"]] == ["third"]
        uri1, uri2 = args
        assert uri1 == f"http://127.0.0.1:{first_port}/score" and uri2 == f"http://127.0.0.1:{second_port}/score"
        # The previous release's deployment of a one-module device keeps its URN by an alias.
        request = mocks.monitor.requests["edge-device-dev1"]
        (alias,) = request.aliases
        if alias.HasField("spec"):
            assert alias.spec.name == "first-deployment" and alias.spec.parentUrn.endswith("mldeploy:index:EdgeModule::first"), alias
        else:
            assert alias.urn.endswith("mldeploy:index:EdgeModule$pulumi-python:dynamic/mldeploy:EdgeDeployment::first-deployment"), alias

    first_port = iotedge.default_port("proj", "dev", "first")
    second_port = iotedge.default_port("proj", "dev", "other")
    return pulumi.Output.all(first.scoring_uri, second.scoring_uri, elsewhere.scoring_uri).apply(lambda a: check(a[:2]))


def test_modules_of_one_device_must_agree(mocks: RecordingMocks, project: Path) -> None:
    image = make_image()
    dev = EdgeDevice("dev1")
    EdgeModule("first", models=[make_model()], image=image, device=dev, port=16001)
    with pytest.raises(ArgsError, match=r"EdgeModule 'again': invalid arguments: module_name: 'first' is already a module of this device"):
        EdgeModule("again", models=[make_model("r2", "r2")], image=image, device=dev, module_name="first")
    with pytest.raises(ArgsError, match=r"port: 16001 is already the scoring port of EdgeModule 'first'"):
        EdgeModule("clash", models=[make_model("r3", "r3")], image=image, device=dev, port=16001)
    with pytest.raises(ArgsError, match=r"device\.foreign_modules: EdgeModule 'first' goes to the same device"):
        EdgeModule("keep", models=[make_model("r4", "r4")], image=image, device=EdgeDevice("dev1", foreign_modules="keep"))
    with pytest.raises(ArgsError, match=r"foreign_modules: must be 'fail' or 'keep'"):
        EdgeDevice("dev1", foreign_modules="maybe")


def test_a_module_declared_after_the_list_is_sealed_fails_naming_device(mocks: RecordingMocks, project: Path) -> None:
    image = make_image()
    dev = EdgeDevice("dev1")
    EdgeModule("first", models=[make_model()], image=image, device=dev)
    loop = asyncio.get_event_loop()
    loop.run_until_complete(asyncio.sleep(0))  # what the SDK does once the top-level code returns: the callback runs
    with pytest.raises(ArgsError, match=r"EdgeModule 'late': invalid arguments: device: the modules of device dev1 were gathered"):
        EdgeModule("late", models=[make_model("r2", "r2")], image=image, device=dev)


@pulumi.runtime.test
def test_at_scale_modules_of_one_hub_and_condition_are_one_configuration(mocks: RecordingMocks, project: Path) -> Any:
    image = make_image()

    def dev(priority: int = 1) -> EdgeDevice:
        return EdgeDevice("edge1", backend="iothub", hub_host=HUB, policy_key=KEY, target_condition="tags.env='prod'", priority=priority)

    EdgeModule("first", models=[make_model()], image=image, device=dev())
    second = EdgeModule("second", models=[make_model("r2", "r2")], image=image, device=dev())
    with pytest.raises(ArgsError, match=r"device\.priority: EdgeModule 'first' goes to the same device with priority=1, this one 5"):
        EdgeModule("third", models=[make_model("r3", "r3")], image=image, device=dev(5))

    def check(_: Any) -> None:
        (name, props), = deployments(mocks).items()
        assert name.startswith("edge-devices-") and name.endswith("@" + HUB)
        assert [m["name"] for m in props["modules"]] == ["first", "second"]
        assert props["target_condition"] == "tags.env='prod'" and props["priority"] == 1

    return second.module_version.apply(check)
