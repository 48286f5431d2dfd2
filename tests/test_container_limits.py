"""Scoring, smoke-test and edge containers cannot fill the host's disk or process table (issue 18, item 8),
and the local edge device refuses createOptions that publish beyond 127.0.0.1 (issue 18, low)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mldeploy.providers.core import containers
from mldeploy.providers.targets.iotedge.edge_agent import AgentError, container_body

MODULE = {"settings": {"image": "127.0.0.1:5000/x/scorer:1", "createOptions": json.dumps({"HostConfig": {}})},
          "env": {}, "status": "running", "restartPolicy": "always", "version": "1"}


def test_the_limits_in_both_shapes_say_the_same() -> None:
    run = containers.run_limits()
    host = containers.host_config_limits()
    assert run["pids_limit"] == host["PidsLimit"] == 1024
    assert run["tmpfs"] == host["Tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=256m"}
    assert run["log_config"]["Config"] == host["LogConfig"]["Config"] == {"max-size": "10m", "max-file": "3"}


def test_a_scoring_backend_is_started_with_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the local target's backend container is created with (docker-py's keyword arguments)."""
    asked: dict = {}

    class FakeContainer:
        id = "c0ffee"

    class FakeContainers:
        def run(self, image, **kw):  # noqa: ANN001 - docker-py's signature
            asked.update(kw)
            return FakeContainer()

    class FakeClient:
        containers = FakeContainers()

    monkeypatch.setattr(containers, "client", lambda: FakeClient())
    containers.run_socket_container("svc", "img", {}, {}, {"/models": "/var/azureml-app/models"}, 0.5, 1.0,
                                    "/run/mldeploy/s", "svc.sock", "/run/mldeploy")
    assert asked["pids_limit"] == 1024
    assert asked["tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=256m"}
    assert asked["log_config"]["Type"] == "json-file"
    assert asked["log_config"]["Config"] == {"max-size": "10m", "max-file": "3"}
    assert asked["network_mode"] == "none" and asked["user"] == containers.SCORING_USER


def test_an_edge_module_gets_the_limits_unless_its_create_options_set_them() -> None:
    body = container_body("scorer", MODULE, {})
    assert body["HostConfig"]["PidsLimit"] == 1024 and body["HostConfig"]["Tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=256m"}
    assert body["HostConfig"]["LogConfig"]["Type"] == "json-file"
    own = {**MODULE, "settings": {**MODULE["settings"], "createOptions": json.dumps({"HostConfig": {"PidsLimit": 64}})}}
    assert container_body("scorer", own, {})["HostConfig"]["PidsLimit"] == 64, "the user's createOptions win"


@pytest.mark.parametrize("host, words", [
    ({"PublishAllPorts": True}, "PublishAllPorts publishes on every address"),
    ({"NetworkMode": "container:other"}, "another container's network"),
])
def test_the_local_device_refuses_publishing_beyond_loopback(host: dict, words: str) -> None:
    module = {**MODULE, "settings": {**MODULE["settings"], "createOptions": json.dumps({"HostConfig": host})}}
    with pytest.raises(AgentError, match=words):
        container_body("scorer", module, {})


@pytest.mark.parametrize("host, words", [
    ({"PublishAllPorts": True}, "PublishAllPorts publishes on every address"),
    ({"NetworkMode": "container:other"}, "another container's network"),
])
def test_the_local_device_refuses_them_at_preview_too(host: dict, words: str) -> None:
    """The preview's check (iotedge.check_local) says it before up reaches the device's agent."""
    from mldeploy.providers.targets import iotedge

    args = iotedge.EdgeModuleArgs(module_name="scorer", create_options={"HostConfig": host})
    problems = iotedge.check_local(args, iotedge.create_options(args, 40001))
    assert [field for field, _ in problems] == ["create_options"] and words in problems[0][1], problems


@pytest.mark.e2e
@pytest.mark.docker
def test_a_running_scoring_container_has_the_limits(workdir: Path, engine_stack) -> None:
    import docker

    from test_raw_script_e2e import raw_program, raw_project

    raw_project(workdir, 2)
    st = engine_stack(raw_program({}))
    assert st.up().summary.result == "succeeded"
    dc = docker.from_env()
    backend = next(c for c in dc.containers.list(filters={"label": [f"mldeploy.stack={st.name}", "mldeploy.kind=service"]}))
    host = backend.attrs["HostConfig"]
    assert host["PidsLimit"] == 1024
    assert host["Tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=256m"}
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}
    mounts = backend.exec_run(["cat", "/proc/mounts"]).output.decode()
    assert any(line.split()[1] == "/tmp" and line.split()[2] == "tmpfs" for line in mounts.splitlines()), mounts



def test_the_preview_smoke_test_container_is_hardened_as_the_scoring_ones(tmp_path: Path, monkeypatch) -> None:
    """Issue 18, items 7 and 8: the throwaway container that loads a new model at preview."""
    from mldeploy.providers.gate import smoke_test

    asked: dict = {}

    class Stop(Exception):
        pass

    class FakeContainers:
        def run(self, image, **kw):  # noqa: ANN001 - docker-py's signature
            asked.update(kw)
            raise Stop

    class FakeClient:
        containers = FakeContainers()

    monkeypatch.setattr(containers, "client", lambda: FakeClient())
    src = tmp_path / "scale.json"
    src.write_text("{}")
    model = {"name": "m", "version": 2, "preview": {"source": str(src), "content_hash": "h"}}
    with pytest.raises(Stop):
        smoke_test.run_smoke_test("img", [model], {}, {}, 1.0, 10.0)
    assert asked["user"] == containers.SCORING_USER and asked["cap_drop"] == ["ALL"]
    assert asked["security_opt"] == ["no-new-privileges"] and asked["network_mode"] == "none"
    assert asked["pids_limit"] == 1024 and asked["tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=256m"}
    assert asked["environment"]["HOME"] == "/tmp"
