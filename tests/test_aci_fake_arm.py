"""The ARM client (Microsoft's SDK underneath) against the local fake ARM: protocol and failure paths.

The fake serves HTTPS on 127.0.0.1 and runs the group's containers in Docker on
127.0.0.1; see tests/fake_arm.py. No Azure is reached.
"""

from __future__ import annotations

import time

import pytest
import requests

from fake_arm import FakeArm
from mldeploy.providers.targets.azure.arm import ArmError, ContainerGroups, StaticToken

pytestmark = [pytest.mark.docker]

SUB = "00000000-1111-2222-3333-444444444444"
BASE = "mldeploy/base:bookworm-py3.11"


def body(command: list[str], dns: str = "fake-web") -> dict:
    return {
        "location": "westeurope",
        "tags": {"mldeploy.stack": "fake-arm-test"},
        "properties": {
            "osType": "Linux",
            "restartPolicy": "Always",
            "containers": [{
                "name": "web",
                "properties": {
                    "image": BASE,
                    "command": command,
                    "resources": {"requests": {"cpu": 0.2, "memoryInGB": 0.2}},
                    "ports": [{"port": 8000, "protocol": "TCP"}],
                    "environmentVariables": [{"name": "PLAIN", "value": "p"}, {"name": "SECRET", "secureValue": "s3cr3t-value"}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8000, "scheme": "http"}, "periodSeconds": 1},
                },
            }],
            "ipAddress": {"type": "Public", "ports": [{"port": 8000, "protocol": "TCP"}], "dnsNameLabel": dns},
        },
    }


WEB = ["python3", "-m", "http.server", "8000"]


def groups(fake: FakeArm, token: str | None = None) -> ContainerGroups:
    return ContainerGroups(SUB, "rg", fake.url, cred=StaticToken(token) if token else None)


def test_create_get_delete_with_lro_and_no_secure_values(fake, capfd):
    g = groups(fake)
    t0 = time.monotonic()
    got = g.put("web", body(WEB))
    took = time.monotonic() - t0
    assert got["provisioning_state"] == "Succeeded" and got["instance_view"]["state"] == "Running"
    assert got["ip_address"]["fqdn"] == "fake-web.westeurope.azurecontainer.io"
    env = got["containers"][0]["environment_variables"]
    assert {"name": "SECRET"} in [{k: v for k, v in e.items() if v is not None} for e in env]
    assert "s3cr3t-value" not in str(got)
    assert requests.get(f"http://127.0.0.1:{fake.host_port('web', 8000)}/", timeout=5).status_code == 200
    assert [r for r in fake.requests if "/operations/" in r[1]], "the SDK polled the Azure-AsyncOperation URL"
    from arm_spec import check

    check("Microsoft.ContainerInstance", "2025-09-01", "ContainerGroup", fake.view(fake.group("web")))  # the answer is spec-shaped too
    assert "provisioningState Succeeded" in capfd.readouterr().err
    assert g.delete("web") is True and g.get("web") is None
    assert g.delete("web") is False  # gone already counts as deleted
    print(f"create through the fake: {took:.1f} s")


def test_throttling_is_retried_then_reported(fake):
    g = groups(fake)
    fake.inject("GET", "/containerGroups/nope", 429, "TooManyRequests", "throttled", {"Retry-After": "1"}, times=1)
    assert g.get("nope") is None  # azure-core honoured Retry-After and retried
    fake.inject("GET", "/containerGroups/nope", 429, "TooManyRequests", "throttled", {"Retry-After": "1"}, times=10)
    with pytest.raises(ArmError, match="429 TooManyRequests.*retry after 1 s"):
        g.get("nope")


def test_conflict_and_expired_token_are_clear_errors(fake):
    fake.inject("PUT", "/containerGroups/web", 409, "Conflict", "another operation is in progress")
    with pytest.raises(ArmError, match="409 Conflict: another operation is in progress") as err:
        groups(fake).put("web", body(WEB))
    assert "Traceback" not in str(err.value)
    assert fake.group("web") is None  # nothing half-made: the next up starts clean
    expired = fake.issue_token(ttl=-60)
    with pytest.raises(ArmError, match="401 ExpiredAuthenticationToken"):
        groups(fake, expired).get("web")


def test_a_group_that_ends_failed_shows_events_and_log_then_converges(fake):
    g = groups(fake)
    crash = ["python3", "-c", "import sys; print('init() failed: no model'); sys.exit(3)"]
    with pytest.raises(ArmError) as err:
        g.put("web", body(crash))
    text = str(err.value)
    assert "Failed" in text and "exit code 3" in text and "init() failed: no model" in text
    got = g.put("web", body(WEB))  # the next up converges from the failed group
    assert got["provisioning_state"] == "Succeeded"
    g.delete("web")


def test_the_fake_refuses_bodies_outside_the_model(fake):
    # The SDK's models drop unknown properties before sending, so this goes around it.
    bad = body(WEB)
    bad["properties"]["containers"][0]["properties"]["cpuCount"] = 1
    url = f"{fake.url}/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.ContainerInstance/containerGroups/web"
    r = requests.put(url, params={"api-version": "2025-09-01"}, json=bad, verify=str(fake.ca_path),
                     headers={"Authorization": f"Bearer {fake.issue_token()}"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "InvalidRequestContent"
    assert "cpuCount" in r.json()["error"]["message"]
    r = requests.get(url, params={"api-version": "2023-05-01"}, verify=str(fake.ca_path),
                     headers={"Authorization": f"Bearer {fake.issue_token()}"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "InvalidApiVersionParameter"


def test_the_fake_checks_the_sdks_wire_body_against_the_spec(fake):
    """The PUT above went through the spec check; this one, valid for the SDK, breaks the 2025-09-01 schema."""
    url = f"{fake.url}/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.ContainerInstance/containerGroups/web"
    bad = body(WEB)
    bad["properties"]["containers"][0]["properties"]["resources"]["requests"]["cpu"] = "lots"
    r = requests.put(url, params={"api-version": "2025-09-01"}, json=bad, verify=str(fake.ca_path),
                     headers={"Authorization": f"Bearer {fake.issue_token()}"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "InvalidRequestContent"
    assert "requests.cpu: 'lots' is not of type 'number'" in r.json()["error"]["message"]
    assert fake.group("web") is None
    assert [p for m, p, s in fake.requests if m == "PUT" and s == 400]


def test_throttled_put_fails_clearly_and_the_next_up_converges(fake):
    fake.inject("PUT", "/containerGroups/web", 429, "TooManyRequests", "throttled", {"Retry-After": "1"}, times=10)
    with pytest.raises(ArmError, match=r"429 TooManyRequests.*run `pulumi up` again later") as err:
        groups(fake).put("web", body(WEB))
    assert "Traceback" not in str(err.value) and fake.group("web") is None
    fake.faults.clear()
    assert groups(fake).put("web", body(WEB))["provisioning_state"] == "Succeeded"
    groups(fake).delete("web")


def test_an_expired_token_is_named_and_a_fresh_one_works(fake):
    expired = fake.issue_token(ttl=-60)
    with pytest.raises(ArmError, match="401 ExpiredAuthenticationToken: The access token expiry UTC time"):
        groups(fake, expired).put("web", body(WEB))
    assert fake.group("web") is None  # refused before anything was made
    assert groups(fake, fake.issue_token()).get("web") is None


def test_credentials_that_cannot_get_a_token_give_the_chains_own_words(fake, monkeypatch):
    """DefaultAzureCredential limited to its environment source (no network): its message, no stack trace."""
    from mldeploy.providers.targets.azure.arm import CredentialError

    monkeypatch.delenv("MLDEPLOY_ARM_TOKEN")
    for k in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_USERNAME"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "EnvironmentCredential")
    with pytest.raises(CredentialError) as err:
        groups(fake).get("web")
    text = str(err.value)
    assert "could not get an Azure token" in text and "EnvironmentCredential" in text
    assert "Environment variables are not fully configured" in text and "Traceback" not in text
    assert not [r for r in fake.requests if "/containerGroups/" in r[1]]  # nothing reached ARM
