"""Thin client of IoT Hub's service REST API: apply a deployment manifest to an edge device.

`POST https://{hub}/devices/{id}/applyConfigurationContent?api-version=2021-04-12`
with `{"modulesContent": …}` answers 204 (learn.microsoft.com, rest/api/iothub/
service/configuration/apply-on-edge-device). Requests are signed with a SAS token
made from a shared access policy's key:

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

from mldeploy.providers import edge_manifest

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

    def apply_configuration_content(self, device_id: str, manifest: Mapping[str, Any]) -> None:
        """Send the manifest to one edge device; checked against the schemas first."""
        edge_manifest.check(manifest)
        token = sas_token(self.host, self.policy_key, self.policy_name)
        req = apply_request(self.host, device_id, manifest, token, self.base_url, self.api_version)
        try:
            r = self.session.send(self.session.prepare_request(req), timeout=30)
        except requests.RequestException as exc:
            raise IoTHubError(0, f"IoT Hub {self.host} did not answer: {exc}") from None
        if r.status_code not in (200, 204):
            raise IoTHubError(
                r.status_code,
                f"IoT Hub {self.host} refused the manifest for device {device_id!r}: {r.status_code} {r.text.strip()[:500]}",
            )
