"""A local fake of Azure ML's online endpoints, for tests only: ARM's control plane for one or
more workspaces, and each endpoint's scoring URI. Nothing here is Azure or a deployment in Azure.

Control plane (HTTPS on 127.0.0.1, a test CA made at test time). The api-versions are those whose
specification is kept in tests/azure-specs: 2024-04-01 (ours: code versions, the datastore) and
the three that azure-ai-ml 1.35.2 sends for what we use (online endpoints 2022-02-01-preview,
deployments and environments 2023-04-01-preview, models 2023-08-01-preview); the workspace GET
also takes 2024-10-01-preview, which azure-ai-ml sends with no body:
- the workspace (GET), which azure-ai-ml reads for its location;
- online endpoints and their deployments: PUT and DELETE are long-running operations
  (201/202 with `Azure-AsyncOperation`, and `Location` for DELETE), `provisioningState`
  goes Creating/Updating/Deleting, then Succeeded or Failed;
- `listKeys`, `regenerateKeys` (202, then `Location`), `token`;
- model, environment and code versions (GET, list, PUT); the default datastore `workspaceblobstore`
  (GET, `listSecrets`) over a storage account the test gives (Azurite). A model or code
  version whose files are not under its datastore path yet is refused (the fake's own check,
  so tests prove the files go up first);
- every request body is checked against Azure's REST specification of the api-version it was
  sent with, kept as extracts in tests/azure-specs (`arm_spec.check`): a body the specification refuses gets
  ARM's 400. A managed deployment is also checked as `ManagedOnlineDeployment` (the
  specification's discriminator);
- the documented rules: traffic values sum to 0 or 100 and name only existing deployments;
  mirror traffic at most 50 %, to one deployment; an endpoint name is unique within its
  region; a deployment that has traffic cannot be deleted;
- bearer tokens are checked (missing, unknown, expired: ARM's 401s), and faults can be
  injected per request (429 with `Retry-After`, 409 with a message).

Data plane: `POST <scoringUri>` and `GET <swaggerUri>` need the endpoint's key (or a token
from `token`) as `Authorization: Bearer`; `azureml-model-deployment` sends the request to that
deployment alone, otherwise the traffic map picks one by weight and `mirrorTraffic` sends a
copy whose answer is dropped. What a deployment answers is the test's `scorer` function
(deployment name, method, path, body) -> (status, text); no container runs here.
"""

from __future__ import annotations

import json
import random
import re
import secrets
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

import arm_spec

API_VERSION = "2024-04-01"
"""What our own ARM calls send (code versions, the datastore); also the fake's operation URLs."""
NS = "Microsoft.MachineLearningServices"
BODYLESS_VERSIONS = ("2024-10-01-preview",)
"""Sent by azure-ai-ml 1.35.2 for the workspace GET only: no body, so no specification is needed."""
WORKSPACE = re.compile(r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.MachineLearningServices/"
                       r"workspaces/(?P<ws>[^/]+)$")
WS = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.MachineLearningServices/"
    r"workspaces/(?P<ws>[^/]+)(?P<rest>/.*)$"
)
DATASTORE = re.compile(r"^/datastores/(?P<name>[^/]+)(?P<rest>/listSecrets)?$")
ASSET = re.compile(r"^/(?P<kind>models|environments|codes)/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$")
ASSET_LIST = re.compile(r"^/(?P<kind>models|environments|codes)/(?P<name>[^/]+)/versions$")
DATASTORE_URI = re.compile(r"^azureml://(?:subscriptions/[^/]+/resource[gG]roups/[^/]+/workspaces/[^/]+/)?"
                           r"datastores/workspaceblobstore/paths/(?P<path>.*)$")
"""A file's place in the default datastore, short or long (azure-ai-ml writes the long form)."""


def datastore_path(uri: str) -> str | None:
    m = DATASTORE_URI.match(uri)
    return m.group("path") if m else None
ENDPOINT = re.compile(r"^/onlineEndpoints/(?P<ep>[^/]+)(?P<rest>/.*)?$")
DEPLOYMENT = re.compile(r"^/deployments/(?P<d>[^/]+)$")
NAME = r"[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]"
"""Endpoint and deployment names, as azure-ai-ml 1.35.2 checks them (3-32 characters, a letter first, a letter or digit last)."""
OPERATION = re.compile(r"^/subscriptions/(?P<sub>[^/]+)/providers/Microsoft\.MachineLearningServices/locations/[^/]+/"
                       r"(?P<kind>mfeOperationsStatus|mfeOperationResults)/(?P<op>[^/]+)$")
SCORE = re.compile(r"^/inference/(?P<ep>[^/]+)/(?P<what>score|swagger\.json)$")
ASSET_DEFINITIONS = {"models": "ModelVersionResource", "environments": "EnvironmentVersionResource", "codes": "CodeVersionResource"}

Scorer = Callable[[str, str, str, bytes], "tuple[int, str]"]


def echo_scorer(deployment: str, method: str, path: str, body: bytes) -> tuple[int, str]:
    """The default: a Swagger with no sample, and the request body back."""
    if path.endswith("swagger.json"):
        return 200, json.dumps({"swagger": "2.0", "definitions": {}})
    return 200, body.decode() or "null"


@dataclass
class Fault:
    method: str
    path_contains: str
    status: int
    code: str
    message: str
    headers: dict[str, str]
    times: int


@dataclass
class Endpoint:
    key: tuple[str, str, str, str]
    body: dict[str, Any]
    state: str = "Creating"
    keys: dict[str, str] = field(default_factory=lambda: {"primaryKey": secrets.token_urlsafe(24), "secondaryKey": secrets.token_urlsafe(24)})
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set)


class FakeAzureML:
    """Start with `FakeAzureML(tmp_path)`; `env()` is what a client needs; `close()` stops it."""

    def __init__(self, tmp_dir: Path, scorer: Scorer = echo_scorer, op_seconds: float = 0.2, retry_after: int = 1,
                 blob: dict[str, str] | None = None, containers: "DockerDeployments | None" = None, location: str = "westeurope"):
        """`blob` ({"service_url", "account", "key", "container"}): the storage account (Azurite in tests) behind
        the workspace's default datastore `workspaceblobstore`; without it the workspace has no datastore."""
        import trustme

        self.blob = blob
        self.location = location  # the workspace's region
        self.scorer = scorer
        self.containers = containers  # None: deployments answer with `scorer`; else one Docker container each
        self.op_seconds = op_seconds
        self.retry_after = str(retry_after)  # 0: no pause asked (the client's own polling interval applies)
        self.tokens: dict[str, float] = {}
        self.endpoints: dict[tuple[str, str, str, str], Endpoint] = {}
        self.assets: dict[tuple[str, ...], dict[str, Any]] = {}
        self.asset_puts: list[tuple[str, str, str]] = []  # (kind, name, version) of every accepted PUT
        self.operations: dict[str, dict[str, Any]] = {}
        self.faults: list[Fault] = []
        self.failing: dict[str, dict[str, str]] = {}
        self.requests: list[tuple[str, str, int]] = []
        self.scored: list[tuple[str, str | None, int]] = []  # (endpoint, deployment that answered, status)
        self.lock = threading.RLock()
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        tmp_dir.mkdir(parents=True, exist_ok=True)
        self.ca_path = tmp_dir / "fake-azureml-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_path))
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()  # shutdown() waits one poll

    # -- what tests use ---------------------------------------------------------
    def issue_token(self, ttl: float = 3600) -> str:
        token = "fake-" + secrets.token_urlsafe(24)
        self.tokens[token] = time.time() + ttl
        return token

    def env(self, token: str | None = None) -> dict[str, str]:
        return {"MLDEPLOY_ARM_TOKEN": token or self.issue_token(), "MLDEPLOY_ARM_CA_BUNDLE": str(self.ca_path)}

    def inject(self, method: str, path_contains: str, status: int, code: str = "", message: str = "",
               headers: dict[str, str] | None = None, times: int = 1) -> None:
        """The next `times` matching requests get this answer instead."""
        with self.lock:
            self.faults.append(Fault(method, path_contains, status, code or str(status), message or code, headers or {}, times))

    def fail_deployment(self, name: str, code: str = "ResourceNotReady", message: str = "") -> None:
        """The next PUT of deployment `name` ends Failed (the container could not start)."""
        self.failing[name] = {"code": code, "message": message or f"User container has crashed or terminated: deployment {name}"}

    def pause(self) -> dict[str, str]:
        """The polling pause a long-running operation asks for. `retry_after=0`: 50 ms, said in the
        millisecond header azure-core also reads (a `Retry-After: 0` makes it wait its own 5 s instead)."""
        return {"x-ms-retry-after-ms": "50"} if self.retry_after == "0" else {"Retry-After": self.retry_after}

    def endpoint(self, name: str) -> Endpoint | None:
        return next((e for k, e in self.endpoints.items() if k[3] == name), None)

    def close(self) -> None:
        if self.containers is not None:
            self.containers.close()
        self.server.shutdown()
        self.server.server_close()

    # -- state ---------------------------------------------------------------------
    def endpoint_view(self, e: Endpoint) -> dict[str, Any]:
        sub, rg, ws, name = e.key
        props = {**e.body["properties"], "provisioningState": e.state,
                 "scoringUri": f"{self.url}/inference/{name}/score", "swaggerUri": f"{self.url}/inference/{name}/swagger.json"}
        props.pop("keys", None)  # "always returned as null" (EndpointPropertiesBase.keys)
        props.setdefault("traffic", {})
        return {"id": f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{NS}/workspaces/{ws}/onlineEndpoints/{name}",
                "name": name, "type": f"{NS}/workspaces/onlineEndpoints", "location": e.body["location"],
                "tags": e.body.get("tags") or {}, "identity": {"type": "SystemAssigned"}, "properties": props}

    def deployment_view(self, e: Endpoint, name: str) -> dict[str, Any]:
        d = e.deployments[name]
        view = self.endpoint_view(e)
        return {**d["body"], "id": f"{view['id']}/deployments/{name}", "name": name,
                "type": f"{NS}/workspaces/onlineEndpoints/deployments",
                # Azure fills in the default scale settings when a PUT leaves them out.
                "properties": {"scaleSettings": {"scaleType": "Default"}, **d["body"]["properties"], "provisioningState": d["state"]}}

    def _start(self, op: str, finish: Callable[..., dict[str, str] | None],
               work: Callable[[], dict[str, str] | None] | None = None) -> None:
        """A long-running operation: after `op_seconds`, `work` (slow: a container starting or stopping) runs
        outside the fake's lock, so the endpoint keeps scoring meanwhile as Azure's does; then `finish` (given
        `work`'s problem, if there is a `work`) updates the state under the lock."""
        self.operations[op] = {"status": "InProgress"}

        def run() -> None:
            time.sleep(self.op_seconds)
            problem = work() if work is not None else None
            with self.lock:
                error = finish(problem) if work is not None else finish()
                self.operations[op] = {"status": "Failed", "error": error} if error else {"status": "Succeeded"}

        threading.Thread(target=run, daemon=True).start()

    def pick(self, e: Endpoint) -> str | None:
        traffic = {k: v for k, v in (e.body["properties"].get("traffic") or {}).items() if v > 0}
        if not traffic:
            return None
        return random.choices(list(traffic), weights=list(traffic.values()))[0]


def _traffic_errors(fake: FakeAzureML, e: Endpoint | None, props: dict[str, Any]) -> str | None:
    """Azure's documented traffic rules (how-to-safely-rollout-online-endpoints)."""
    traffic = props.get("traffic") or {}
    mirror = props.get("mirrorTraffic") or {}
    existing = set(e.deployments) if e else set()
    for name in list(traffic) + list(mirror):
        if name not in existing:
            return f"Traffic can only be set to deployments that exist: deployment '{name}' was not found in this endpoint."
    if sum(traffic.values()) not in (0, 100):
        return f"Traffic values need to sum to 0 or 100, got {sum(traffic.values())}."
    if any(v < 0 for v in list(traffic.values()) + list(mirror.values())):
        return "Traffic values cannot be negative."
    if len([v for v in mirror.values() if v]) > 1:
        return "Mirror traffic can be set to one deployment only."
    if sum(mirror.values()) > 50:
        return f"Mirror traffic cannot exceed 50 percent, got {sum(mirror.values())}."
    return None


def _handler(fake: FakeAzureML) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None, raw: str | None = None) -> None:
            data = raw.encode() if raw is not None else (b"" if body is None else json.dumps(body).encode())
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-ms-request-id", str(uuid.uuid4()))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
            fake.requests.append((self.command, self.path, status))

        def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
            self._send(status, {"error": {"code": code, "message": message}}, headers)

        def _auth(self) -> bool:
            header = self.headers.get("Authorization") or ""
            if not header.startswith("Bearer "):
                self._error(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.")
                return False
            expiry = fake.tokens.get(header.removeprefix("Bearer "))
            if expiry is None:
                self._error(401, "InvalidAuthenticationToken", "The access token is invalid.")
                return False
            if expiry < time.time():
                when = time.strftime("%m/%d/%Y %H:%M:%S", time.gmtime(expiry))
                now = time.strftime("%m/%d/%Y %H:%M:%S", time.gmtime())
                self._error(401, "ExpiredAuthenticationToken",
                            f"The access token expiry UTC time '{when}' is earlier than current UTC time '{now}'.")
                return False
            return True

        def _fault(self) -> bool:
            with fake.lock:
                for f in fake.faults:
                    if f.times > 0 and f.method == self.command and f.path_contains in self.path:
                        f.times -= 1
                        self._error(f.status, f.code, f.message, f.headers)
                        return True
            return False

        def _body(self) -> tuple[Any, bytes]:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            try:
                return (json.loads(raw) if raw else None), raw
            except ValueError:
                return None, raw

        def _valid(self, definition: str, body: Any) -> bool:
            try:
                arm_spec.check(NS, self.version, definition, body)
            except arm_spec.SpecViolation as exc:
                self._error(400, "UserError", f"The request is invalid: {exc}")
                return False
            return True

        def _lro(self, status: int, view: Any, sub: str, location: str, op: str, location_header: bool = False) -> None:
            base = f"{fake.url}/subscriptions/{sub}/providers/{NS}/locations/{location}"
            headers = {"Azure-AsyncOperation": f"{base}/mfeOperationsStatus/{op}?api-version={self.version}", **fake.pause()}
            if location_header:
                headers["Location"] = f"{base}/mfeOperationResults/{op}?api-version={self.version}"
            self._send(status, view, headers)

        def handle_one(self) -> None:
            url = urlparse(self.path)
            body, raw = self._body() if self.command in ("PUT", "POST", "PATCH") else (None, b"")
            m = SCORE.match(url.path)
            if m:
                self._score(m.group("ep"), m.group("what"), raw)
                return
            if not self._auth() or self._fault():
                return
            version = (parse_qs(url.query).get("api-version") or [""])[0]
            kept = arm_spec.api_versions(NS)
            if version not in kept and not (version in BODYLESS_VERSIONS and body is None and self.command in ("GET", "DELETE")):
                self._error(400, "InvalidApiVersionParameter",
                            f"The api-version '{version}' is invalid. The supported versions are '{', '.join(kept)}'.")
                return
            self.version = version
            with fake.lock:
                w = WORKSPACE.match(url.path)
                if w and self.command == "GET":
                    self._send(200, {"id": url.path, "name": w["ws"], "type": f"{NS}/workspaces", "location": fake.location,
                                     "kind": "Default", "properties": {"friendlyName": w["ws"], "provisioningState": "Succeeded"}})
                    return
                m = OPERATION.match(url.path)
                if m:
                    self._operation(m.group("kind"), m.group("op"))
                    return
                m = WS.match(url.path)
                if not m:
                    self._error(404, "InvalidResourceNamespace", f"no route for {url.path}")
                    return
                rest = m.group("rest")
                ds = DATASTORE.match(rest)
                if ds:
                    self._datastore(m, ds.group("name"), bool(ds.group("rest")))
                    return
                a = ASSET.match(rest)
                if a:
                    self._asset(m, a, body)
                    return
                a = ASSET_LIST.match(rest)
                if a and self.command == "GET":
                    key = (m["sub"], m["rg"], m["ws"], a["kind"], a["name"])
                    self._send(200, {"value": [v for k, v in fake.assets.items() if k[:5] == key]})
                    return
                e = ENDPOINT.match(rest)
                if e:
                    self._endpoint(m, e.group("ep"), e.group("rest") or "", body)
                    return
                if rest == "/onlineEndpoints" and self.command == "GET":
                    views = [fake.endpoint_view(x) for k, x in fake.endpoints.items() if k[:3] == (m["sub"], m["rg"], m["ws"])]
                    self._send(200, {"value": views})
                    return
                self._error(404, "NotFound", f"no route for {url.path}")

        do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = handle_one

        def _operation(self, kind: str, op: str) -> None:
            state = fake.operations.get(op)
            if state is None:
                self._error(404, "NotFound", f"operation {op} not found")
            elif kind == "mfeOperationsStatus":
                self._send(200, {"id": op, "name": op, **state}, fake.pause() if state["status"] == "InProgress" else None)
            elif state["status"] == "InProgress":
                self._send(202, None, {"Location": f"{fake.url}{self.path}", **fake.pause()})
            elif state["status"] == "Failed":
                self._send(400, {"error": state["error"]})
            else:
                self._send(200, None)

        def _datastore(self, m: re.Match[str], name: str, secrets_: bool) -> None:
            if fake.blob is None or name != "workspaceblobstore":
                self._error(404, "UserError", f"datastore {name} not found")
                return
            if secrets_:
                if self.command != "POST":
                    self._error(405, "MethodNotAllowed", self.command)
                else:
                    self._send(200, {"secretsType": "AccountKey", "key": fake.blob["key"]})
                return
            ident = f"/subscriptions/{m['sub']}/resourceGroups/{m['rg']}/providers/{NS}/workspaces/{m['ws']}/datastores/{name}"
            self._send(200, {"id": ident, "name": name, "type": f"{NS}/workspaces/datastores", "properties": {
                "datastoreType": "AzureBlob", "isDefault": True, "accountName": fake.blob["account"],
                "containerName": fake.blob["container"], "endpoint": "core.windows.net", "protocol": "https",
                "serviceDataAccessAuthIdentity": "None", "credentials": {"credentialsType": "AccountKey"}}})

        def _files_missing(self, uri: str) -> str | None:
            """The fake's own check (so tests prove files go up before the asset is registered): an
            `azureml://datastores/workspaceblobstore/paths/<p>` with no blob under <p> is refused."""
            path = datastore_path(uri)
            if fake.blob is None or path is None:
                return None
            from azure.storage.blob import ContainerClient

            client = ContainerClient(fake.blob["service_url"], fake.blob["container"],
                                     credential={"account_name": fake.blob["account"], "account_key": fake.blob["key"]})
            if next(iter(client.list_blobs(name_starts_with=path)), None) is None:
                return f"no files under {uri} in the workspace's datastore"
            return None

        def _asset(self, m: re.Match[str], a: re.Match[str], body: Any) -> None:
            key = (m["sub"], m["rg"], m["ws"], a["kind"], a["name"], a["version"])
            ident = f"/subscriptions/{m['sub']}/resourceGroups/{m['rg']}/providers/{NS}/workspaces/{m['ws']}/{a['kind']}/{a['name']}/versions/{a['version']}"
            if self.command == "GET":
                got = fake.assets.get(key)
                if got is None:
                    self._error(404, "UserError", f"{a['kind'][:-1]} {a['name']}:{a['version']} not found")
                else:
                    self._send(200, got)
                return
            if self.command == "PUT":
                if not self._valid(ASSET_DEFINITIONS[a["kind"]], body):
                    return
                missing = self._files_missing(str(body["properties"].get("modelUri") or body["properties"].get("codeUri") or ""))
                if missing:
                    self._error(400, "UserError", missing)
                    return
                existed = key in fake.assets
                # What ARM fills in that a PUT may leave out (azure-ai-ml reads a model's `flavors` as a map).
                defaults = {"flavors": {}} if a["kind"] == "models" else {}
                if existed and {k: v for k, v in fake.assets[key]["properties"].items() if k != "provisioningState"} != {**defaults, **body["properties"]}:
                    # Asset versions are immutable: the same version with other content is refused.
                    self._error(409, "UserError", f"{a['kind'][:-1]} {a['name']}:{a['version']} exists with other properties; versions are immutable")
                    return
                view = {"id": ident, "name": a["version"], "type": f"{NS}/workspaces/{a['kind']}/versions",
                        "properties": {**defaults, **body["properties"], "provisioningState": "Succeeded"}}
                fake.assets[key] = view
                fake.asset_puts.append((a["kind"], a["name"], a["version"]))
                self._send(200 if existed else 201, view)
                return
            self._error(405, "MethodNotAllowed", self.command)

        def _endpoint(self, m: re.Match[str], name: str, rest: str, body: Any) -> None:
            key = (m["sub"], m["rg"], m["ws"], name)
            e = fake.endpoints.get(key)
            d = DEPLOYMENT.match(rest)
            if d:
                self._deployment(m, e, d.group("d"), body)
                return
            if rest == "/deployments" and self.command == "GET":
                if e is None:
                    self._error(404, "UserError", f"online endpoint {name} not found")
                else:
                    self._send(200, {"value": [fake.deployment_view(e, n) for n in sorted(e.deployments)]})
                return
            if rest in ("/listKeys", "/regenerateKeys", "/token") and self.command == "POST":
                if e is None:
                    self._error(404, "UserError", f"online endpoint {name} not found")
                    return
                auth = e.body["properties"]["authMode"]
                if rest == "/listKeys":
                    if auth != "Key":
                        self._error(400, "UserError", f"Keys are only for endpoints with authMode Key; {name} uses {auth}.")
                    else:
                        self._send(200, dict(e.keys))
                elif rest == "/token":
                    if auth != "AMLToken":
                        self._error(400, "UserError", f"Tokens are only for endpoints with authMode AMLToken; {name} uses {auth}.")
                        return
                    token = secrets.token_urlsafe(24)
                    e.tokens.add(token)
                    self._send(200, {"accessToken": token, "tokenType": "Bearer", "expiryTimeUtc": int(time.time()) + 3600})
                else:
                    if not self._valid("RegenerateEndpointKeysRequest", body):
                        return
                    which = "primaryKey" if body["keyType"] == "Primary" else "secondaryKey"
                    op = uuid.uuid4().hex

                    def regen() -> None:
                        e.keys[which] = body.get("keyValue") or secrets.token_urlsafe(24)
                    fake._start(op, regen)
                    self._lro(202, None, m["sub"], e.body["location"], op, location_header=True)
                return
            if rest:
                self._error(404, "NotFound", f"no route for {rest}")
                return
            if self.command == "GET":
                if e is None:
                    self._error(404, "UserError", f"online endpoint {name} not found")
                else:
                    self._send(200, fake.endpoint_view(e))
                return
            if self.command == "PUT":
                if not self._valid("OnlineEndpointTrackedResource", body):
                    return
                for other_key, other in fake.endpoints.items():
                    if other_key[3] == name and other_key != key and other.body["location"] == body["location"]:
                        self._error(409, "UserError", f"An endpoint named '{name}' already exists in region {body['location']}; "
                                    "endpoint names are unique within a region.")
                        return
                if e is not None and body["location"] != e.body["location"]:
                    self._error(400, "UserError", "The location of an endpoint cannot change.")
                    return
                problem = _traffic_errors(fake, e, body["properties"])
                if problem:
                    self._error(400, "UserError", problem)
                    return
                created = e is None
                if created:
                    e = fake.endpoints[key] = Endpoint(key, body)
                else:
                    e.body = body
                    e.state = "Updating"
                op = uuid.uuid4().hex
                endpoint = e

                def done() -> None:
                    endpoint.state = "Succeeded"
                fake._start(op, done)
                self._lro(201 if created else 200, fake.endpoint_view(e), m["sub"], body["location"], op)
                return
            if self.command == "DELETE":
                if e is None:
                    self._send(204)
                    return
                e.state = "Deleting"
                op = uuid.uuid4().hex
                def stop_all() -> None:  # its deployments go with it, as in Azure
                    if fake.containers is not None:
                        for deployment in list(e.deployments):
                            fake.containers.stop(e.key[3], deployment)

                def endpoint_gone(_: Any) -> None:
                    fake.endpoints.pop(key, None)
                fake._start(op, endpoint_gone, stop_all)
                self._lro(202, None, m["sub"], e.body["location"], op, location_header=True)
                return
            self._error(405, "MethodNotAllowed", self.command)

        def _deployment(self, m: re.Match[str], e: Endpoint | None, name: str, body: Any) -> None:
            if e is None:
                self._error(404, "UserError", "online endpoint not found")
                return
            if self.command == "GET":
                if name not in e.deployments:
                    self._error(404, "UserError", f"deployment {name} not found")
                else:
                    self._send(200, fake.deployment_view(e, name))
                return
            if self.command == "PUT":
                if not re.fullmatch(NAME, name):
                    # Azure ML's SDK refuses such a name before sending (validate_endpoint_or_deployment_name).
                    self._error(400, "UserError", "The name for a deployment must be 3 to 32 characters, start with a letter, "
                                "end with a letter or digit, and hold only letters, digits and '-'.")
                    return
                if not self._valid("OnlineDeploymentTrackedResource", body):
                    return
                if body["properties"].get("endpointComputeType") == "Managed" and not self._valid("ManagedOnlineDeployment", body["properties"]):
                    return
                created = name not in e.deployments
                e.deployments[name] = {"body": body, "state": "Creating" if created else "Updating"}
                failure = fake.failing.pop(name, None)
                op = uuid.uuid4().hex
                rec = e.deployments[name]

                def start() -> dict[str, str] | None:
                    if failure or fake.containers is None:
                        return failure
                    try:  # the real image with the real model; provisioning ends when it is healthy
                        fake.containers.start(fake, e.key[3], name, body)
                    except Exception as exc:  # noqa: BLE001 - the deployment ends Failed with the reason
                        return {"code": "ResourceNotReady", "message": f"the deployment's container did not start: {exc}"[:4000]}
                    return None

                def done(problem: dict[str, str] | None) -> dict[str, str] | None:
                    rec["state"] = "Failed" if problem else "Succeeded"
                    return problem
                fake._start(op, done, start)
                self._lro(201 if created else 200, fake.deployment_view(e, name), m["sub"], body["location"], op)
                return
            if self.command == "DELETE":
                if name not in e.deployments:
                    self._send(204)
                    return
                props = e.body["properties"]
                share = (props.get("traffic") or {}).get(name, 0) + (props.get("mirrorTraffic") or {}).get(name, 0)
                if share:
                    self._error(409, "UserError", f"Deployment {name} has {share} % traffic; set its traffic to 0 before deleting it.")
                    return
                e.deployments[name]["state"] = "Deleting"
                op = uuid.uuid4().hex
                def stop() -> None:  # it holds no traffic (refused above otherwise): nothing is routed to it
                    if fake.containers is not None:
                        fake.containers.stop(e.key[3], name)

                def gone(_: Any) -> None:
                    e.deployments.pop(name, None)
                fake._start(op, gone, stop)
                self._lro(202, None, m["sub"], e.body["location"], op, location_header=True)
                return
            self._error(405, "MethodNotAllowed", self.command)

        def _score(self, name: str, what: str, raw: bytes) -> None:
            with fake.lock:
                e = fake.endpoint(name)
                if e is None:
                    self._send(404, raw="endpoint not found")
                    return
                bearer = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                if e.body["properties"]["authMode"] == "Key":
                    allowed = bearer in e.keys.values()
                else:
                    allowed = bearer in e.tokens
                if not bearer or not allowed:
                    self._send(401, raw="unauthorized: a key or token of this endpoint is needed as 'Authorization: Bearer'")
                    return
                wanted = self.headers.get("azureml-model-deployment")
                if wanted:
                    target = wanted if wanted in e.deployments else None
                    if target is None:
                        self._send(404, raw=f"deployment '{wanted}' not found in endpoint {name}")
                        return
                    mirror = None  # a request that names a deployment is not mirrored
                else:
                    target = fake.pick(e)
                    mirror = next((k for k, v in (e.body["properties"].get("mirrorTraffic") or {}).items() if v), None)
                    if mirror and random.randrange(100) >= e.body["properties"]["mirrorTraffic"][mirror]:
                        mirror = None
                if target is None:
                    self._send(503, raw=f"no deployment of endpoint {name} takes traffic (the traffic map is empty)")
                    return
                if e.deployments[target]["state"] != "Succeeded":
                    self._send(503, raw=f"deployment '{target}' is {e.deployments[target]['state']}")
                    return
            path = "/score" if what == "score" else "/swagger.json"
            if fake.containers is not None:
                status, text = fake.containers.score(name, target, self.command, path, raw)
                if mirror and mirror != target:
                    fake.containers.score(name, mirror, self.command, path, raw)
            else:
                status, text = fake.scorer(target, self.command, path, raw)
                if mirror and mirror != target:
                    fake.scorer(mirror, self.command, path, raw)
            fake.scored.append((name, target, status))
            self._send(status, raw=text, headers={"azureml-model-deployment": target})

    return Handler


class DockerDeployments:
    """The fake's data plane with real containers: each deployment runs as a container of its
    environment's image (`images` maps an environment's image reference to a local Docker image;
    unmapped, the reference itself), with its model asset's files copied out of the datastore
    (Azurite) into a folder mounted read-only where AZUREML_MODEL_DIR points, as the local target
    does (no network, a Unix socket: `providers/core/containers.run_socket_container`). Requests are
    proxied to the chosen deployment's socket. A deleted deployment's container is removed, and
    every one at `close()`."""

    def __init__(self, work_dir: Path, images: dict[str, str] | None = None, labels: dict[str, str] | None = None,
                 startup_timeout: float = 180.0):
        self.work_dir = work_dir
        self.images = dict(images or {})
        self.labels = {"mldeploy.test": "fake_azureml", **(labels or {})}
        self.startup_timeout = startup_timeout
        self.running: dict[tuple[str, str], Any] = {}  # (endpoint, deployment) -> RunningContainer
        self.lock = threading.Lock()

    def _asset(self, fake: FakeAzureML, asset_id: str) -> dict[str, Any]:
        with fake.lock:
            assets = list(fake.assets.values())
        got = next((v for v in assets if str(v["id"]).lower() == asset_id.lower()), None)
        if got is None:
            raise RuntimeError(f"asset {asset_id} is not registered in the workspace")
        return got

    def _model_files(self, fake: FakeAzureML, uri: str, into: Path) -> None:
        from azure.storage.blob import ContainerClient

        found = datastore_path(uri)
        if fake.blob is None or found is None:
            raise RuntimeError(f"model files at {uri} are not in the workspace's datastore")
        path = found.rstrip("/") + "/"
        client = ContainerClient(fake.blob["service_url"], fake.blob["container"],
                                 credential={"account_name": fake.blob["account"], "account_key": fake.blob["key"]})
        into.mkdir(parents=True, exist_ok=True)
        count = 0
        for b in client.list_blobs(name_starts_with=path):
            target = into / b.name[len(path):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(client.download_blob(b.name).readall())
            count += 1
        if not count:
            raise RuntimeError(f"no model files under {uri}")
        for f in [into, *into.rglob("*")]:
            f.chmod(0o755 if f.is_dir() else 0o644)  # the scoring user reads them

    def start(self, fake: FakeAzureML, endpoint: str, deployment: str, body: dict[str, Any]) -> None:
        from mldeploy.providers.core import containers
        from mldeploy.providers.core.naming import MODELS_ROOT

        self.stop(endpoint, deployment)  # an update of a deployment starts it again
        props = body["properties"]
        env = self._asset(fake, str(props["environmentId"]))
        image = self.images.get(env["properties"]["image"], env["properties"]["image"])
        model = self._asset(fake, str(props["model"]))
        model_name = str(props["model"]).rstrip("/").split("/")[-3]
        inside = f"{MODELS_ROOT}/{model_name}/{model['name']}"
        token = uuid.uuid4().hex[:8]
        folder = self.work_dir / f"{endpoint}-{deployment}-{token}"
        self._model_files(fake, str(model["properties"]["modelUri"]), folder / "model")
        run_dir = folder / "run"
        run_dir.mkdir(parents=True)
        run_dir.chmod(0o777)  # the scoring user makes its socket here
        rc = containers.run_socket_container(
            f"mldeploy-fakeaml-{endpoint}-{deployment}-{token}"[:120], image, self.labels,
            {**(props.get("environmentVariables") or {}), "AZUREML_MODEL_DIR": inside, "WORKER_COUNT": "1"},
            {str(folder / "model"): inside}, 1.0, 1.0, str(run_dir), "score.sock", "/run/mldeploy")
        with self.lock:
            self.running[(endpoint, deployment)] = rc
        containers.wait_healthy(rc, timeout=self.startup_timeout)

    def score(self, endpoint: str, deployment: str, method: str, path: str, body: bytes) -> tuple[int, str]:
        from mldeploy.providers.core.scoring import unix_request

        with self.lock:
            rc = self.running.get((endpoint, deployment))
        if rc is None:
            return 502, f"deployment '{deployment}' has no container running"
        answer = unix_request(rc.socket, method, path, body or None, timeout=30)
        return (answer.status or 502), answer.body

    def stop(self, endpoint: str, deployment: str) -> None:
        from mldeploy.providers.core import containers

        with self.lock:
            rc = self.running.pop((endpoint, deployment), None)
        if rc is not None:
            containers.remove(rc.id, stop_timeout=2)

    def close(self) -> None:
        for endpoint, deployment in list(self.running):
            self.stop(endpoint, deployment)
