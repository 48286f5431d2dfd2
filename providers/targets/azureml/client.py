"""A thin client for one Azure ML workspace: ARM's REST API (api-version 2024-04-01) over azure-core.

Why no Azure ML SDK (`azure-ai-ml`, `azure-mgmt-machinelearningservices`): no new
package, and the api-version sent is ours to pin. This client sends the documented
REST calls through azure-mgmt-core's ARM pipeline (the retry, `Retry-After` and
bearer-token policies the SDKs use) and azure-core's `ARMPolling` for long-running
operations (`Azure-AsyncOperation`, then the resource). The transport is a
parameter, so tests can hand it any azure-core transport.

Errors come back in ARM's words (`arm.call`), without a stack trace.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

from mldeploy.providers.core.scoring import Answer
from mldeploy.providers.targets.azure import arm
from mldeploy.providers.targets.azureml.args import API_VERSION
from mldeploy.providers.targets.azureml.bodies import DATASTORE, workspace_id

SCOPE = "https://management.azure.com/.default"
MAX_WAIT_SECONDS = 30 * 60
SCORING_TIMEOUT_SECONDS = 30.0


def _json(response: Any) -> Any:
    text = response.text() if callable(getattr(response, "text", None)) else ""
    return json.loads(text) if text else None


class WorkspaceClient:
    """Online endpoints, deployments and assets of one workspace; builds no clients until used."""

    def __init__(self, props: Mapping[str, Any], cred: Any = None, transport: Any = None,
                 sample_request: Mapping[str, Any] | None = None, poll_seconds: float | None = None):
        from azure.core.pipeline import policies
        from azure.core.pipeline.transport import RequestsTransport
        from azure.mgmt.core import ARMPipelineClient
        from azure.mgmt.core.policies import ARMChallengeAuthenticationPolicy, ARMHttpLoggingPolicy

        self.endpoint = str(props.get("arm_endpoint") or arm.DEFAULT_ENDPOINT).rstrip("/")
        self.base = workspace_id(props)
        self.auth_mode = props.get("auth_mode") or "key"
        self.sample_request = sample_request
        # Between polls when ARM sends no Retry-After; MLDEPLOY_ARM_POLL_SECONDS shortens it for a local fake.
        self.poll_seconds = poll_seconds if poll_seconds is not None else float(os.environ.get("MLDEPLOY_ARM_POLL_SECONDS") or 5.0)
        self.ca = os.environ.get("MLDEPLOY_ARM_CA_BUNDLE") or None
        self._datastore: tuple[str, str, Any] | None = None
        pipeline_policies = [
            policies.RequestIdPolicy(),
            policies.HeadersPolicy(),
            policies.UserAgentPolicy("mldeploy-azureml"),
            # azure-core's retry honours 429/503 with Retry-After; three retries keep a throttled up short.
            policies.RetryPolicy(retry_total=3, retry_backoff_max=30),
            ARMChallengeAuthenticationPolicy(cred or arm.credential(), SCOPE),
            policies.ContentDecodePolicy(),
            ARMHttpLoggingPolicy(),
        ]
        if transport is None:
            transport = RequestsTransport(connection_verify=self.ca) if self.ca else RequestsTransport()
        self.client = ARMPipelineClient(base_url=self.endpoint, policies=pipeline_policies, transport=transport)

    # -- plumbing ----------------------------------------------------------
    def _url(self, path: str) -> str:
        return f"{self.endpoint}{self.base}{path}?api-version={API_VERSION}"

    def _run(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200, 201, 202, 204)) -> Any:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
        from azure.core.rest import HttpRequest
        from azure.mgmt.core.exceptions import ARMErrorFormat

        request = HttpRequest(method, self._url(path), json=body) if body is not None else HttpRequest(method, self._url(path))
        pipeline_response = self.client._pipeline.run(request)
        status = pipeline_response.http_response.status_code
        if status == 404:
            raise ResourceNotFoundError(response=pipeline_response.http_response, error_format=ARMErrorFormat)
        if status not in ok:
            raise HttpResponseError(response=pipeline_response.http_response, error_format=ARMErrorFormat)
        return pipeline_response

    def _lro(self, method: str, path: str, body: Any = None, final: str = "original-uri") -> Any:
        """Send, then follow ARM's long-running operation (201/202 with Azure-AsyncOperation or Location)."""
        from azure.core.polling import LROPoller
        from azure.mgmt.core.polling.arm_polling import ARMPolling

        initial = self._run(method, path, body)
        headers = initial.http_response.headers
        if initial.http_response.status_code in (200, 204) and not ("Azure-AsyncOperation" in headers or "Location" in headers):
            return _json(initial.http_response)
        poller = LROPoller(self.client, initial, lambda r: _json(r.http_response),
                           ARMPolling(self.poll_seconds, lro_options={"final-state-via": final}))
        return poller.result(timeout=MAX_WAIT_SECONDS)

    def _get(self, path: str) -> dict[str, Any] | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return _json(self._run("GET", path, ok=(200,)).http_response)
        except ResourceNotFoundError:
            return None

    def _call(self, what: str, fn: Any) -> Any:
        return arm.call(what, fn)

    # -- the default datastore -------------------------------------------------
    def datastore(self, name: str = DATASTORE) -> tuple[str, str, Any]:
        """(account URL, container, credential) of a blob datastore, from GET and `listSecrets`.

        `MLDEPLOY_BLOB_ACCOUNT_URL` replaces the account URL, for a local storage emulator in tests only."""
        if self._datastore is None:
            ds = self._call(f"GET datastore {name}", lambda: self._get(f"/datastores/{name}"))
            if ds is None:
                raise arm.ArmError(f"workspace {self.base.rsplit('/', 1)[-1]}: no datastore {name}")
            props = ds.get("properties") or {}
            if props.get("datastoreType") != "AzureBlob":
                raise arm.ArmError(f"datastore {name}: {props.get('datastoreType')}, not AzureBlob")
            secrets = self._call(f"POST listSecrets {name}",
                                 lambda: _json(self._run("POST", f"/datastores/{name}/listSecrets", ok=(200,)).http_response)) or {}
            if secrets.get("secretsType") == "AccountKey":
                cred: Any = {"account_name": props["accountName"], "account_key": secrets.get("key")}
            elif secrets.get("secretsType") == "Sas":
                cred = secrets.get("sasToken")
            else:
                raise arm.ArmError(f"datastore {name}: secrets of type {secrets.get('secretsType')!r} are not supported here")
            url = os.environ.get("MLDEPLOY_BLOB_ACCOUNT_URL") or (
                f"{props.get('protocol') or 'https'}://{props['accountName']}.blob.{props.get('endpoint') or 'core.windows.net'}")
            self._datastore = (url, str(props["containerName"]), cred)
        return self._datastore

    def upload(self, local: str, path: str, only: list[str] | None = None) -> int:
        """Every file under `local` (a file or a folder; `only`: these relative paths of it) to
        `path/` in the default datastore; the count."""
        from pathlib import Path

        from azure.core.exceptions import AzureError
        from azure.storage.blob import ContainerClient

        src = Path(local)
        if not src.exists():
            raise arm.ArmError(f"upload to {DATASTORE}/{path}: nothing at {src}")
        if only is not None:
            files = [src / rel for rel in only]
        else:
            files = [src] if src.is_file() else sorted(f for f in src.rglob("*") if f.is_file())
        url, container, cred = self.datastore()
        client = ContainerClient(url, container, credential=cred, connection_verify=self.ca or True)
        try:
            for f in files:
                rel = f.name if src.is_file() else f.relative_to(src).as_posix()
                with open(f, "rb") as data:
                    client.upload_blob(f"{path}/{rel}", data, overwrite=True)
        except AzureError as exc:
            raise arm.ArmError(f"upload to {DATASTORE}/{path}: {arm.describe(exc)}") from None
        return len(files)

    # -- assets --------------------------------------------------------------
    def ensure_asset(self, kind: str, name: str, version: str, body: dict[str, Any], upload: Mapping[str, Any] | None = None) -> bool:
        """Register `kind`/`name`/`version` unless it is there: versions follow content, so a
        version that exists holds this content. True when it was registered now. `upload`
        ({"local", "path"}, and "files" to send only those): files that go to the default datastore first."""
        path = f"/{kind}/{name}/versions/{version}"
        if self._call(f"GET {kind} {name}:{version}", lambda: self._get(path)) is not None:
            return False
        if upload:
            count = self.upload(upload["local"], upload["path"], upload.get("files"))
            arm._progress(f"workspace: {count} file(s) of {kind} {name}:{version} uploaded to {DATASTORE}/{upload['path']}")
        self._call(f"PUT {kind} {name}:{version}", lambda: self._lro("PUT", path, body))
        arm._progress(f"workspace: {kind} {name}:{version} registered")
        return True

    # -- endpoints -------------------------------------------------------------
    def get_endpoint(self, name: str) -> dict[str, Any] | None:
        return self._call(f"GET online endpoint {name}", lambda: self._get(f"/onlineEndpoints/{name}"))

    def put_endpoint(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(f"PUT online endpoint {name}", lambda: self._lro("PUT", f"/onlineEndpoints/{name}", body))

    def delete_endpoint(self, name: str) -> bool:
        if self.get_endpoint(name) is None:
            return False
        self._call(f"DELETE online endpoint {name}", lambda: self._lro("DELETE", f"/onlineEndpoints/{name}", final="location"))
        return True

    def set_traffic(self, endpoint: str, traffic: dict[str, int], mirror: dict[str, int] | None = None) -> dict[str, Any]:
        """PUT the endpoint as it is with a new traffic (and mirror) map."""
        current = self.get_endpoint(endpoint)
        if current is None:
            raise arm.ArmError(f"online endpoint {endpoint}: gone")
        keep = ("authMode", "description", "properties", "publicNetworkAccess")
        props = {k: v for k, v in (current.get("properties") or {}).items() if k in keep and v is not None}
        props["traffic"] = dict(traffic)
        props["mirrorTraffic"] = dict(mirror or {})
        body = {"location": current["location"], "tags": current.get("tags") or {}, "properties": props}
        if (current.get("identity") or {}).get("type"):
            body["identity"] = {"type": current["identity"]["type"]}
        return self.put_endpoint(endpoint, body)

    def list_keys(self, endpoint: str) -> dict[str, str]:
        got = self._call(f"POST listKeys {endpoint}", lambda: _json(self._run("POST", f"/onlineEndpoints/{endpoint}/listKeys", ok=(200,)).http_response))
        return {"primary_key": got.get("primaryKey") or "", "secondary_key": got.get("secondaryKey") or ""}

    def regenerate_key(self, endpoint: str, which: str) -> None:
        """`which`: Primary or Secondary; one at a time, so clients keep the other meanwhile."""
        self._call(f"POST regenerateKeys {endpoint} {which}",
                   lambda: self._lro("POST", f"/onlineEndpoints/{endpoint}/regenerateKeys", {"keyType": which}, final="location"))

    def token(self, endpoint: str) -> str:
        got = self._call(f"POST token {endpoint}", lambda: _json(self._run("POST", f"/onlineEndpoints/{endpoint}/token", ok=(200,)).http_response))
        return got.get("accessToken") or ""

    # -- deployments -------------------------------------------------------------
    def get_deployment(self, endpoint: str, name: str) -> dict[str, Any] | None:
        return self._call(f"GET deployment {endpoint}/{name}", lambda: self._get(f"/onlineEndpoints/{endpoint}/deployments/{name}"))

    def list_deployments(self, endpoint: str) -> list[str]:
        got = self._call(f"GET deployments of {endpoint}", lambda: self._get(f"/onlineEndpoints/{endpoint}/deployments")) or {}
        return sorted(d["name"] for d in got.get("value") or [])

    def put_deployment(self, endpoint: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        start = time.monotonic()
        got = self._call(f"PUT deployment {endpoint}/{name}",
                         lambda: self._lro("PUT", f"/onlineEndpoints/{endpoint}/deployments/{name}", body))
        state = ((got or {}).get("properties") or {}).get("provisioningState")
        if state not in (None, "Succeeded"):
            raise arm.ArmError(f"deployment {endpoint}/{name}: provisioningState {state}")
        arm._progress(f"deployment {endpoint}/{name}: Succeeded after {time.monotonic() - start:.0f} s")
        return got or {}

    def delete_deployment(self, endpoint: str, name: str) -> bool:
        if self.get_deployment(endpoint, name) is None:
            return False
        self._call(f"DELETE deployment {endpoint}/{name}",
                   lambda: self._lro("DELETE", f"/onlineEndpoints/{endpoint}/deployments/{name}", final="location"))
        return True

    # -- the data plane ------------------------------------------------------------
    def scoring_transport(self, endpoint: str, deployment: str | None) -> Any:
        """The sample gate's transport: the endpoint's scoring and Swagger URIs, with the key (or AML token)
        as a bearer token and, for one deployment, the `azureml-model-deployment` header."""
        import requests

        ep = self.get_endpoint(endpoint) or {}
        props = ep.get("properties") or {}
        uris = {"/score": props.get("scoringUri"), "/swagger.json": props.get("swaggerUri")}
        bearer = self.list_keys(endpoint)["primary_key"] if self.auth_mode == "key" else self.token(endpoint)
        headers = {"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"}
        if deployment:
            headers["azureml-model-deployment"] = deployment

        def transport(method: str, path: str, body: bytes | None) -> Answer:
            url = uris.get(path)
            if not url:
                return Answer(0, f"the endpoint reports no URI for {path}")
            start = time.monotonic()
            try:
                r = requests.request(method, url, data=body, headers=headers, timeout=SCORING_TIMEOUT_SECONDS, verify=self.ca or True)
            except requests.RequestException as exc:
                return Answer(0, f"{type(exc).__name__}: {exc}", (time.monotonic() - start) * 1000)
            return Answer(r.status_code, r.text, (time.monotonic() - start) * 1000)

        return transport

    def gate(self, endpoint: str, deployment: str) -> Any:
        """The entry script's sample (or the service's `sample_request`) sent to `deployment` alone."""
        from mldeploy.providers.gate.sample_check import check_sample

        return check_sample(self.scoring_transport(endpoint, deployment), self.sample_request)
