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
import threading
import time
from typing import Any, Mapping

from mldeploy.providers.core.scoring import Answer
from mldeploy.providers.targets.azure import arm
from mldeploy.providers.targets.azureml import entities
from mldeploy.providers.targets.azureml.args import API_VERSION
from mldeploy.providers.targets.azureml.bodies import DATASTORE, workspace_id

SCOPE = "https://management.azure.com/.default"
CLOUD_ENV = "AZUREML_CURRENT_CLOUD"
_CLOUD_ENV_LOCK = threading.Lock()
MAX_WAIT_SECONDS = 30 * 60
SCORING_TIMEOUT_SECONDS = 30.0


def sdk_words(message: str) -> str:
    """azure-ai-ml's own refusal without its colours and boilerplate: the `(x)` lines, else the first line."""
    import re

    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", message or "").splitlines() if ln.strip()]
    details = [ln[3:].strip() for ln in lines if ln.startswith("(x)")]
    return "; ".join(details) or (lines[0] if lines else "refused by azure-ai-ml")


def _json(response: Any) -> Any:
    if callable(getattr(response, "read", None)):
        response.read()  # a rest-style response (any transport a test hands in) holds nothing until read
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

        self.props = props
        self.endpoint = str(props.get("arm_endpoint") or arm.DEFAULT_ENDPOINT).rstrip("/")
        self.base = workspace_id(props)
        self.auth_mode = props.get("auth_mode") or "key"
        self.sample_request = sample_request
        # Between polls when ARM sends no Retry-After; MLDEPLOY_ARM_POLL_SECONDS shortens it for a local fake.
        self.poll_seconds = poll_seconds if poll_seconds is not None else float(os.environ.get("MLDEPLOY_ARM_POLL_SECONDS") or 5.0)
        self.ca = os.environ.get("MLDEPLOY_ARM_CA_BUNDLE") or None
        self._datastore: tuple[str, str, Any] | None = None
        self.cred = cred or arm.credential()
        self._transport = transport
        self._ml: Any = None
        pipeline_policies = [
            policies.RequestIdPolicy(),
            policies.HeadersPolicy(),
            policies.UserAgentPolicy("mldeploy-azureml"),
            # azure-core's retry honours 429/503 with Retry-After; three retries keep a throttled up short.
            policies.RetryPolicy(retry_total=3, retry_backoff_max=30),
            ARMChallengeAuthenticationPolicy(self.cred, SCOPE),
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

    # -- azure-ai-ml ----------------------------------------------------------------
    @property
    def ml(self) -> Any:
        """Azure ML's own SDK (`MLClient`), made on first use: importing it takes a second or two.

        Pointed at `arm_endpoint` the documented sovereign-cloud way (`cloud` and `cloud_metadata`)
        when that is not Azure's; no telemetry, no progress bars (our progress lines say it)."""
        if self._ml is None:
            import hashlib

            from azure.ai.ml import MLClient

            kw: dict[str, Any] = {"show_progress": False, "enable_telemetry": False, "retry_total": 3, "retry_backoff_max": 30}
            if self.endpoint != arm.DEFAULT_ENDPOINT.rstrip("/"):
                # One cloud name per ARM endpoint: azure-ai-ml keeps the first metadata given for a name.
                kw["cloud"] = "mldeploy-" + hashlib.sha256(self.endpoint.encode()).hexdigest()[:12]
                kw["cloud_metadata"] = {
                    "azure_portal": "https://portal.azure.com/", "resource_manager": self.endpoint + "/",
                    "active_directory": "https://login.microsoftonline.com/", "aml_resource_id": "https://ml.azure.com/",
                    "storage_endpoint": "core.windows.net", "registry_discovery_endpoint": "https://eastus.api.azureml.ms/"}
            if self._transport is not None:
                kw["transport"] = self._transport
            elif self.ca:
                kw["connection_verify"] = self.ca
            with _CLOUD_ENV_LOCK:
                # MLClient records its cloud in os.environ (AZUREML_CURRENT_CLOUD), which every process started
                # later inherits; a process that does not know that cloud's name asks Azure's public metadata URL
                # for it. Put the variable back: the clouds this process registered stay known to it.
                before = os.environ.get(CLOUD_ENV)
                try:
                    self._ml = MLClient(self.cred, str(self.props["subscription_id"]), str(self.props["resource_group"]),
                                        str(self.props["workspace"]), **kw)
                finally:
                    if before is None:
                        os.environ.pop(CLOUD_ENV, None)
                    else:
                        os.environ[CLOUD_ENV] = before
        return self._ml

    def _sdk(self, what: str, fn: Any, missing_ok: bool = False) -> Any:
        """One azure-ai-ml call; its failure in ARM's words (`arm.call`), or the SDK's own message
        for what it refuses before sending. `missing_ok`: None for a 404."""
        from azure.ai.ml.exceptions import MlException
        from azure.core.exceptions import ResourceNotFoundError

        def run() -> Any:
            try:
                return fn()
            except ResourceNotFoundError:
                if missing_ok:
                    return None
                raise
        try:
            return self._call(what, run)
        except MlException as exc:
            raise arm.ArmError(f"{what}: {sdk_words(exc.message)}") from None

    # -- assets --------------------------------------------------------------
    def ensure_asset(self, kind: str, name: str, version: str, body: dict[str, Any], upload: Mapping[str, Any] | None = None) -> bool:
        """Register `kind`/`name`/`version` unless it is there: versions follow content, so a
        version that exists holds this content. True when it was registered now. `upload`
        ({"local", "path"}, and "files" to send only those): files that go to the default datastore first.

        Models and environments go through azure-ai-ml; code versions through ARM directly,
        since azure-ai-ml has no public operation for a code folder that is already uploaded."""
        path = f"/{kind}/{name}/versions/{version}"
        if kind == "codes":
            exists = self._call(f"GET {kind} {name}:{version}", lambda: self._get(path)) is not None
        else:
            ops = self.ml.models if kind == "models" else self.ml.environments
            exists = self._sdk(f"GET {kind} {name}:{version}", lambda: ops.get(name=name, version=version), missing_ok=True) is not None
        if exists:
            return False
        if upload:
            count = self.upload(upload["local"], upload["path"], upload.get("files"))
            arm._progress(f"workspace: {count} file(s) of {kind} {name}:{version} uploaded to {DATASTORE}/{upload['path']}")
        if kind == "codes":
            self._call(f"PUT {kind} {name}:{version}", lambda: self._lro("PUT", path, body))
        else:
            entity = entities.model(name, version, body) if kind == "models" else entities.environment(name, version, body)
            self._sdk(f"PUT {kind} {name}:{version}", lambda: ops.create_or_update(entity))
        arm._progress(f"workspace: {kind} {name}:{version} registered")
        return True

    # -- endpoints -------------------------------------------------------------
    def get_endpoint(self, name: str) -> dict[str, Any] | None:
        got = self._sdk(f"GET online endpoint {name}", lambda: self.ml.online_endpoints.get(name), missing_ok=True)
        return None if got is None else entities.endpoint_view(got)

    def put_endpoint(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        entity = entities.endpoint(name, body)
        got = self._sdk(f"PUT online endpoint {name}", lambda: self.ml.online_endpoints.begin_create_or_update(entity).result(MAX_WAIT_SECONDS))
        return entities.endpoint_view(got) if got is not None else {}

    def delete_endpoint(self, name: str) -> bool:
        if self.get_endpoint(name) is None:
            return False
        self._sdk(f"DELETE online endpoint {name}", lambda: self.ml.online_endpoints.begin_delete(name=name).result(MAX_WAIT_SECONDS))
        return True

    def set_traffic(self, endpoint: str, traffic: dict[str, int], mirror: dict[str, int] | None = None) -> dict[str, Any]:
        """The endpoint as it is, with a new traffic (and mirror) map."""
        current = self._sdk(f"GET online endpoint {endpoint}", lambda: self.ml.online_endpoints.get(endpoint), missing_ok=True)
        if current is None:
            raise arm.ArmError(f"online endpoint {endpoint}: gone")
        current.traffic = {k: int(v) for k, v in traffic.items()}
        current.mirror_traffic = {k: int(v) for k, v in (mirror or {}).items()}
        got = self._sdk(f"PUT online endpoint {endpoint} (traffic)",
                        lambda: self.ml.online_endpoints.begin_create_or_update(current).result(MAX_WAIT_SECONDS))
        return entities.endpoint_view(got) if got is not None else {}

    def list_keys(self, endpoint: str) -> dict[str, str]:
        got = self._sdk(f"POST listKeys {endpoint}", lambda: self.ml.online_endpoints.get_keys(endpoint))
        if not hasattr(got, "primary_key"):  # get_keys answers by the endpoint's auth mode
            raise arm.ArmError(f"POST listKeys {endpoint}: the endpoint uses an AML token, not keys")
        return {"primary_key": getattr(got, "primary_key", None) or "", "secondary_key": getattr(got, "secondary_key", None) or ""}

    def regenerate_key(self, endpoint: str, which: str) -> None:
        """`which`: Primary or Secondary; one at a time, so clients keep the other meanwhile.

        Through ARM directly, not azure-ai-ml: its `begin_regenerate_keys` (1.35.2) reads the keys
        and sends the current one as `keyValue`, which the REST specification documents as "the
        value the key is set to", so the key would stay as it is. We send `keyType` alone."""
        self._call(f"POST regenerateKeys {endpoint} {which}",
                   lambda: self._lro("POST", f"/onlineEndpoints/{endpoint}/regenerateKeys", {"keyType": which}, final="location"))

    def token(self, endpoint: str) -> str:
        """An AML token (azure-ai-ml's `get_keys` asks for one when the endpoint's auth mode is aml_token)."""
        got = self._sdk(f"POST token {endpoint}", lambda: self.ml.online_endpoints.get_keys(endpoint))
        return getattr(got, "access_token", None) or ""

    # -- deployments -------------------------------------------------------------
    def get_deployment(self, endpoint: str, name: str) -> dict[str, Any] | None:
        got = self._sdk(f"GET deployment {endpoint}/{name}", lambda: self.ml.online_deployments.get(name=name, endpoint_name=endpoint),
                        missing_ok=True)
        return None if got is None else entities.deployment_view(got)

    def list_deployments(self, endpoint: str) -> list[str]:
        got = self._sdk(f"GET deployments of {endpoint}", lambda: list(self.ml.online_deployments.list(endpoint_name=endpoint)),
                        missing_ok=True) or []
        return sorted(d.name for d in got)

    def _put_deployment(self, endpoint: str, name: str, entity: Any) -> dict[str, Any]:
        start = time.monotonic()
        got = self._sdk(f"PUT deployment {endpoint}/{name}",
                        lambda: self.ml.online_deployments.begin_create_or_update(entity, skip_script_validation=True).result(MAX_WAIT_SECONDS))
        view = entities.deployment_view(got) if got is not None else {}
        state = (view.get("properties") or {}).get("provisioningState")
        if state not in (None, "Succeeded"):
            raise arm.ArmError(f"deployment {endpoint}/{name}: provisioningState {state}")
        arm._progress(f"deployment {endpoint}/{name}: Succeeded after {time.monotonic() - start:.0f} s")
        return view

    def put_deployment(self, endpoint: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._put_deployment(endpoint, name, entities.deployment(endpoint, name, body))

    def scale_deployment(self, endpoint: str, name: str, count: int) -> dict[str, Any]:
        """The live deployment as it is, with `count` instances (in place: no new deployment)."""
        live = self._sdk(f"GET deployment {endpoint}/{name}", lambda: self.ml.online_deployments.get(name=name, endpoint_name=endpoint))
        live.instance_count = int(count)
        return self._put_deployment(endpoint, name, live)

    def delete_deployment(self, endpoint: str, name: str) -> bool:
        if self.get_deployment(endpoint, name) is None:
            return False
        self._sdk(f"DELETE deployment {endpoint}/{name}",
                  lambda: self.ml.online_deployments.begin_delete(name=name, endpoint_name=endpoint).result(MAX_WAIT_SECONDS))
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
