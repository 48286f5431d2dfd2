"""Thin client of IoT Hub's service REST API: a deployment manifest for one edge device, or at scale.

`POST https://{hub}/devices/{id}/applyConfigurationContent?api-version=2021-04-12`
with `{"modulesContent": …}` answers 204 (learn.microsoft.com, rest/api/iothub/
service/configuration/apply-on-edge-device). An at-scale deployment is a
configuration: `PUT /configurations/{id}` (no If-Match on create, 201; the
configuration's etag or `*` on an update, 200) and `DELETE /configurations/{id}`
with `If-Match: *` (204) (…/configuration/create-or-update, …/delete). What a
device runs now is its `$edgeAgent` module twin: `GET /twins/{id}/modules/$edgeAgent`. A
configuration's id and content cannot be updated, only its labels, metrics,
priority and target condition. Requests are signed with a SAS token made from a
shared access policy's key:

    SharedAccessSignature sr={urlenc(uri)}&sig={urlenc(b64(HMAC_SHA256(b64decode(key), urlenc(uri) + "\\n" + se)))}&se={se}&skn={policy}

The HTTP session and the base URL are arguments, so tests talk to a local fake
hub on 127.0.0.1. This client has never been run against Azure.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.parse
from typing import Any, Mapping

import requests

from mldeploy.providers.targets.iotedge import edge_manifest

API_VERSION = "2021-04-12"
TOKEN_TTL_SECONDS = 3600


class IoTHubError(RuntimeError):
    """The hub refused a request; the message carries its status and its own words."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


def sas_token(uri: str, key: str, policy: str | None, expiry: int | None = None) -> str:
    """A SAS token for `uri` (the hub's host name), valid until `expiry` (epoch seconds)."""
    se = str(int(expiry if expiry is not None else time.time() + TOKEN_TTL_SECONDS))
    sr = urllib.parse.quote(uri, safe="")
    digest = hmac.new(base64.b64decode(key), f"{sr}\n{se}".encode(), hashlib.sha256).digest()
    sig = urllib.parse.quote(base64.b64encode(digest).decode(), safe="")
    token = f"SharedAccessSignature sr={sr}&sig={sig}&se={se}"
    return token + (f"&skn={policy}" if policy else "")


def apply_request(
    host: str, device_id: str, manifest: Mapping[str, Any], token: str, base_url: str | None = None, api_version: str = API_VERSION
) -> requests.Request:
    """The request, built without sending it (pure)."""
    base = (base_url or f"https://{host}").rstrip("/")
    url = f"{base}/devices/{urllib.parse.quote(device_id, safe='')}/applyConfigurationContent"
    return requests.Request(
        "POST",
        url,
        params={"api-version": api_version},
        headers={"Authorization": token, "Content-Type": "application/json; charset=utf-8"},
        data=json.dumps(manifest).encode(),
    )


SCHEMA_VERSION = "2.0"
"""What Azure's CLI sends as a configuration's `schemaVersion` for an edge deployment."""


def configuration_body(
    configuration_id: str, manifest: Mapping[str, Any], target_condition: str, priority: int, labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The body of `PUT /configurations/{id}` for an edge deployment (pure)."""
    return {
        "id": configuration_id,
        "schemaVersion": SCHEMA_VERSION,
        "labels": dict(labels or {}),
        "content": {"modulesContent": manifest["modulesContent"]},
        "metrics": {"queries": {}},
        "targetCondition": target_condition,
        "priority": int(priority),
    }


def configuration_request(
    method: str, host: str, configuration_id: str, token: str, body: Mapping[str, Any] | None = None,
    if_match: str | None = None, base_url: str | None = None, api_version: str = API_VERSION,
) -> requests.Request:
    """A request on `/configurations/{id}`, built without sending it (pure)."""
    base = (base_url or f"https://{host}").rstrip("/")
    headers = {"Authorization": token}
    if body is not None:
        headers["Content-Type"] = "application/json; charset=utf-8"
    if if_match is not None:
        headers["If-Match"] = if_match
    return requests.Request(
        method,
        f"{base}/configurations/{urllib.parse.quote(configuration_id, safe='')}",
        params={"api-version": api_version},
        headers=headers,
        data=json.dumps(body).encode() if body is not None else None,
    )


class IoTHubClient:
    """One hub, one policy. `session` and `base_url` are seams for tests (a fake hub on 127.0.0.1)."""

    def __init__(
        self,
        host: str,
        policy_name: str,
        policy_key: str,
        session: requests.Session | None = None,
        base_url: str | None = None,
        api_version: str = API_VERSION,
    ):
        self.host, self.policy_name, self.policy_key = host, policy_name, policy_key
        self.session = session or requests.Session()
        self.base_url = base_url
        self.api_version = api_version

    def _send(self, req: requests.Request) -> requests.Response:
        try:
            return self.session.send(self.session.prepare_request(req), timeout=30)
        except requests.RequestException as exc:
            raise IoTHubError(0, f"IoT Hub {self.host} did not answer: {exc}") from None

    def _token(self) -> str:
        return sas_token(self.host, self.policy_key, self.policy_name)

    def put_configuration(self, body: Mapping[str, Any], if_match: str | None = None) -> dict[str, Any]:
        """Create (no `if_match`) or update (its etag, or `*`) a configuration; the hub's copy back, with its etag.

        The content is checked against the schemas first, so a bad manifest is never sent.
        """
        edge_manifest.check({"modulesContent": body["content"]["modulesContent"]})
        cid = body["id"]
        # Quoted, as RFC 7232 and Azure's CLI write it (`"*"` too); the SDK sends it bare.
        quoted = f'"{if_match.strip(chr(34))}"' if if_match else None
        req = configuration_request("PUT", self.host, cid, self._token(), body, quoted, self.base_url, self.api_version)
        r = self._send(req)
        if r.status_code not in (200, 201):
            verb = "update" if if_match else "create"
            raise IoTHubError(
                r.status_code,
                f"IoT Hub {self.host} refused to {verb} configuration {cid!r}: {r.status_code} {r.text.strip()[:500]}",
            )
        try:
            return dict(r.json())
        except ValueError:
            return {}

    def get_configuration(self, configuration_id: str) -> dict[str, Any] | None:
        """The hub's copy of a configuration, or None when it has none by that id."""
        r = self._send(configuration_request("GET", self.host, configuration_id, self._token(), None, None, self.base_url, self.api_version))
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise IoTHubError(r.status_code, f"IoT Hub {self.host} refused to read configuration {configuration_id!r}: {r.status_code} {r.text.strip()[:500]}")
        return dict(r.json())

    def delete_configuration(self, configuration_id: str, if_match: str = "*") -> bool:
        """Delete a configuration; False when the hub had none by that id (gone counts as deleted)."""
        req = configuration_request("DELETE", self.host, configuration_id, self._token(), None, if_match, self.base_url, self.api_version)
        r = self._send(req)
        if r.status_code == 404:
            return False
        if r.status_code not in (200, 204):
            raise IoTHubError(
                r.status_code,
                f"IoT Hub {self.host} refused to delete configuration {configuration_id!r}: {r.status_code} {r.text.strip()[:500]}",
            )
        return True

    def get_module_twin(self, device_id: str, module_id: str) -> dict[str, Any]:
        """A module's twin (`$edgeAgent`: the modules the device is told to run); `{}` when the hub has none yet.

        `GET /twins/{id}/modules/{mid}` (rest/api/iothub/service/modules/get-twin); an unknown
        device answers 404, which is raised.
        """
        base = (self.base_url or f"https://{self.host}").rstrip("/")
        url = f"{base}/twins/{urllib.parse.quote(device_id, safe='')}/modules/{urllib.parse.quote(module_id, safe='')}"
        req = requests.Request("GET", url, params={"api-version": self.api_version}, headers={"Authorization": self._token()})
        r = self._send(req)
        if r.status_code == 404 and device_id and "ModuleNotFound" in r.text:
            return {}
        if r.status_code != 200:
            raise IoTHubError(r.status_code, f"IoT Hub {self.host} refused to read module {module_id} of device {device_id!r}: {r.status_code} {r.text.strip()[:500]}")
        try:
            return dict(r.json())
        except ValueError:
            return {}

    def apply_configuration_content(self, device_id: str, manifest: Mapping[str, Any]) -> None:
        """Send the manifest to one edge device; checked against the schemas first."""
        edge_manifest.check(manifest)
        r = self._send(apply_request(self.host, device_id, manifest, self._token(), self.base_url, self.api_version))
        if r.status_code not in (200, 204):
            raise IoTHubError(
                r.status_code,
                f"IoT Hub {self.host} refused the manifest for device {device_id!r}: {r.status_code} {r.text.strip()[:500]}",
            )
