"""Issue 18, item 7, on the local IoT Edge device: a module's container runs as nobody with no
capabilities and no privilege escalation, unless the user's createOptions say otherwise (IoT Edge
passes createOptions to Docker as they are)."""

from __future__ import annotations

import json

from mldeploy.providers.core import containers
from mldeploy.providers.targets.iotedge.edge_agent import container_body

MODULE = {"settings": {"image": "127.0.0.1:5000/x/scorer:1", "createOptions": json.dumps({"HostConfig": {}})},
          "env": {"A": {"value": "1"}}, "status": "running", "restartPolicy": "always", "version": "1"}


def with_options(options: dict) -> dict:
    return {**MODULE, "settings": {**MODULE["settings"], "createOptions": json.dumps(options)}}


def test_an_edge_module_runs_as_nobody_with_no_capabilities() -> None:
    body = container_body("scorer", MODULE, {})
    assert body["User"] == containers.SCORING_USER == "65534:65534"
    assert body["HostConfig"]["CapDrop"] == ["ALL"] and body["HostConfig"]["SecurityOpt"] == ["no-new-privileges"]
    assert "HOME=/tmp" in body["Env"] and "A=1" in body["Env"]


def test_create_options_may_loosen_it_as_iot_edge_allows() -> None:
    body = container_body("scorer", with_options({"User": "0", "Env": ["HOME=/root"],
                                                  "HostConfig": {"CapDrop": [], "CapAdd": ["NET_BIND_SERVICE"], "SecurityOpt": []}}), {})
    assert body["User"] == "0" and body["HostConfig"]["CapDrop"] == [] and body["HostConfig"]["SecurityOpt"] == []
    assert body["HostConfig"]["CapAdd"] == ["NET_BIND_SERVICE"]
    assert [e for e in body["Env"] if e.startswith("HOME=")] == ["HOME=/root"]

