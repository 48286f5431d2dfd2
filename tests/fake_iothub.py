"""A fake IoT Hub on 127.0.0.1, built from the REST documentation, for the `iothub` backend's tests.

It answers `POST /devices/{id}/applyConfigurationContent?api-version=…` as the
documents say (204), after checking what the hub checks: a SAS token signed with
a policy's key (signature, expiry, resource URI, policy name), a known
api-version, a known device with the iotEdge capability, and a body that passes
the IoT Edge manifest schemas (the same copies the provider uses). Errors come
back in the hub's shape: `{"Message": "ErrorCode:…;…", "ExceptionMessage": …}`.

At-scale deployments (rest/api/iothub/service/configuration: create-or-update, get,
delete): `PUT /configurations/{id}` answers 201 with the configuration and its etag
on create, 200 on an update; `GET` 200 or 404; `DELETE` 204, or 404 for an unknown id.
A module twin (`GET /twins/{id}/modules/{mid}`, rest/api/iothub/service/modules/get-twin)
holds in `properties.desired` what the device's last applied manifest gave that module
(`$edgeAgent`: the modules it runs), plus the hub's `$metadata` and `$version`.
What the documents say is checked: the id (lowercase, at most 128 characters of
`a-z0-9-:+%_#*?!(),=@;'`, the same in the URL and the body), `content.modulesContent`
against the manifest schemas, a wrong `If-Match` (412, "as per RFC7232"), and that
the id and content cannot be updated. Where the documents give no status the choice
is marked [U] (unverified) below.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mldeploy.providers.targets.iotedge import edge_manifest

API_VERSIONS = ("2021-04-12", "2024-03-31")
CONFIGURATION_ID_RE = re.compile(r"^[a-z0-9\-:+%_#*?!(),=@;']{1,128}$")
LABEL_RE = re.compile(r"^[A-Za-z0-9\-:.+%_#*?!(),=@;']{1,128}$")


def _content(body: Any) -> Any:
    """A configuration's content with the parts left empty dropped (the SDK leaves out what is None)."""
    content = body.get("content") if isinstance(body, dict) else None
    return {k: v for k, v in content.items() if v not in (None, {})} if isinstance(content, dict) else content


class FakeHub:
    def __init__(self, host: str, policies: dict[str, str], devices: dict[str, bool]):
        """`policies`: name -> base64 key; `devices`: id -> has the iotEdge capability."""
        self.host, self.policies, self.devices = host, policies, devices
        self.applied: dict[str, dict[str, Any]] = {}
        self.configurations: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_a: Any) -> None:
                pass

            def _answer(self, status: int, code: str | None = None, message: str = "") -> None:
                body = b"" if code is None else json.dumps({"Message": f"ErrorCode:{code};{message}", "ExceptionMessage": ""}).encode()
                self.send_response(status)
                if body:
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, doc: Any) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _start(self) -> tuple[list[str], bytes] | None:
                """Log the request and check what every request needs: the api-version and the token."""
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append({"method": self.command, "path": url.path, "query": query, "headers": dict(self.headers), "body": raw})
                version = (query.get("api-version") or [None])[0]
                if version not in API_VERSIONS:
                    self._answer(400, "InvalidProtocolVersion", f"api-version {version!r} is not supported")
                    return None
                why = hub.auth_problem(self.headers.get("Authorization") or "")
                if why:
                    self._answer(401, "IotHubUnauthorizedAccess", why)
                    return None
                return url.path.strip("/").split("/"), raw

            def _configuration_id(self, parts: list[str]) -> str | None:
                if len(parts) != 2 or parts[0] != "configurations":
                    self._answer(404, "NotFound", "/" + "/".join(parts))
                    return None
                cid = urllib.parse.unquote(parts[1])
                if not CONFIGURATION_ID_RE.match(cid):
                    self._answer(400, "ArgumentInvalid", f"configuration id {cid!r}: lowercase, at most 128 characters of a-z 0-9 -:+%_#*?!(),=@;'")
                    return None
                return cid

            def _precondition(self, have: dict[str, Any] | None) -> bool:
                """If-Match as RFC 7232 says: `*` matches any existing one, an etag only its own."""
                want = (self.headers.get("If-Match") or "").strip().removeprefix("W/").strip('"')
                if not want or want == "*":  # Azure's CLI sends it quoted, the SDK bare
                    return True
                if have is None or want != have["etag"]:
                    self._answer(412, "PreconditionFailed", f"etag {want!r} does not match the configuration's")
                    return False
                return True

            def do_GET(self) -> None:  # noqa: N802
                started = self._start()
                if started is None:
                    return
                if started[0] and started[0][0] == "twins":
                    return self._module_twin(started[0])
                cid = self._configuration_id(started[0])
                if cid is None:
                    return
                if cid not in hub.configurations:
                    # [U] the code's name: the documents list DeviceNotFound, none for configurations.
                    return self._answer(404, "ConfigurationNotFound", f"Configuration {cid} not found")
                return self._json(200, hub.configurations[cid])

            def _module_twin(self, parts: list[str]) -> None:
                """`GET /twins/{id}/modules/{mid}`: the module twin, its desired properties as the last manifest set them."""
                if len(parts) != 4 or parts[2] != "modules":
                    return self._answer(404, "NotFound", "/" + "/".join(parts))
                device, module = urllib.parse.unquote(parts[1]), urllib.parse.unquote(parts[3])
                if device not in hub.devices:
                    return self._answer(404, "DeviceNotFound", f"Device {device} not registered")
                content = (hub.applied.get(device) or {}).get("modulesContent") or {}
                # An edge device has its $edgeAgent and $edgeHub from registration, with nothing desired yet.
                if module not in content and not (hub.devices[device] and module in ("$edgeAgent", "$edgeHub")):
                    return self._answer(404, "ModuleNotFound", f"Module {module} on device {device} not found")
                desired = dict((content.get(module) or {}).get("properties.desired") or {})
                desired.update({"$metadata": {"$lastUpdated": "2024-01-01T00:00:00Z"}, "$version": 1 + len(hub.requests)})
                return self._json(200, {"deviceId": device, "moduleId": module, "etag": "AAAAAAAAAAE=", "status": "enabled",
                                        "properties": {"desired": desired, "reported": {"$metadata": {}, "$version": 1}}})

            def do_DELETE(self) -> None:  # noqa: N802
                started = self._start()
                if started is None:
                    return
                cid = self._configuration_id(started[0])
                if cid is None:
                    return
                have = hub.configurations.get(cid)
                if have is None:
                    return self._answer(404, "ConfigurationNotFound", f"Configuration {cid} not found")
                if not self._precondition(have):
                    return
                del hub.configurations[cid]
                return self._answer(204)

            def do_PUT(self) -> None:  # noqa: N802
                started = self._start()
                if started is None:
                    return
                parts, raw = started
                cid = self._configuration_id(parts)
                if cid is None:
                    return
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError as exc:
                    return self._answer(400, "ArgumentInvalid", f"body is not JSON: {exc}")
                if not isinstance(body, dict) or body.get("id") != cid:
                    return self._answer(400, "ArgumentInvalid", f"body id {body.get('id') if isinstance(body, dict) else None!r} is not the URL's {cid!r}")
                problems = hub.configuration_problems(body)
                if problems:
                    return self._answer(400, "ArgumentInvalid", "; ".join(problems))
                have = hub.configurations.get(cid)
                if_match = (self.headers.get("If-Match") or "").strip().strip('"')
                if have is not None and not if_match:
                    # [U] "If-Match … should not be set while creating": a create of an id
                    # that exists is refused here, as a device's is (409 DeviceAlreadyExists).
                    return self._answer(409, "ConfigurationAlreadyExists", f"Configuration {cid} already exists")
                # `*` on a create is taken (Azure's CLI sends it); a given etag is not.
                if (have is not None or if_match not in ("", "*")) and not self._precondition(have):
                    return
                if have is not None and _content(have) != _content(body):
                    # [U] The documents say only "Configuration identifier and Content cannot be
                    # updated"; 409 Conflict is what azure-iot-sdk-python issue 983 reports for an
                    # update the hub refused. Real hubs may answer 400 instead.
                    return self._answer(409, "Conflict", f"Configuration {cid}: content cannot be updated; create a new configuration")
                now = time.strftime("%Y-%m-%dT%H:%M:%S.0000000Z", time.gmtime())
                hub.version += 1
                stored = {
                    "id": cid, "schemaVersion": body.get("schemaVersion") or "1.0", "labels": body.get("labels") or {},
                    "content": have["content"] if have else body["content"], "targetCondition": body.get("targetCondition") or "",
                    "createdTimeUtc": have["createdTimeUtc"] if have else now, "lastUpdatedTimeUtc": now,
                    "priority": int(body.get("priority") or 0), "systemMetrics": {"results": {}, "queries": {}},
                    "metrics": body.get("metrics") or {"results": {}, "queries": {}},
                    "etag": base64.b64encode(str(hub.version).encode()).decode(),
                }
                hub.configurations[cid] = stored
                return self._json(200 if have else 201, stored)

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                started = self._start()
                if started is None:
                    return
                parts, raw = started
                url = urllib.parse.urlsplit(self.path)
                if len(parts) != 3 or parts[0] != "devices" or parts[2] != "applyConfigurationContent":
                    return self._answer(404, "NotFound", url.path)
                device = urllib.parse.unquote(parts[1])
                if device not in hub.devices:
                    return self._answer(404, "DeviceNotFound", f"Device {device} not registered")
                if not hub.devices[device]:
                    return self._answer(400, "ArgumentInvalid", f"Device {device} is not an IoT Edge device")
                try:
                    content = json.loads(raw)
                except json.JSONDecodeError as exc:
                    return self._answer(400, "ArgumentInvalid", f"body is not JSON: {exc}")
                problems = edge_manifest.validate(content)
                if problems:
                    return self._answer(400, "ArgumentInvalid", "; ".join(f"{p}: {m}" for p, m in problems))
                hub.applied[device] = content
                return self._answer(204)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)  # shutdown() waits one poll

    version = 0
    """Makes each configuration write's etag new, as the hub's are."""

    def configuration_problems(self, body: dict[str, Any]) -> list[str]:
        """What the hub would refuse in a configuration's body (an edge deployment's)."""
        problems = []
        content = body.get("content")
        modules = content.get("modulesContent") if isinstance(content, dict) else None
        if not isinstance(modules, dict) or not modules:
            problems.append("content.modulesContent: an edge deployment's content is its modulesContent; none given")
        else:
            problems += [f"content{p[1:]}: {m}" for p, m in edge_manifest.validate({"modulesContent": modules})]
        condition = body.get("targetCondition")
        if condition is not None and not isinstance(condition, str):
            problems.append(f"targetCondition: must be a string, got {type(condition).__name__}")
        priority = body.get("priority")
        if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int) or priority < 0):
            problems.append(f"priority: must be an integer >= 0, got {priority!r}")
        labels = body.get("labels")
        if labels is not None and (not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values())):
            problems.append("labels: must map names to strings")
        elif labels:
            # Keys and values: at most 128 of these, `$` reserved (azure-iot-sdk-node, Configuration.labels).
            problems += [f"labels.{k}: {v!r} is not up to 128 of A-Z a-z 0-9 -:.+%_#*?!(),=@;'"
                         for k, v in labels.items() if not (LABEL_RE.match(k) and LABEL_RE.match(v))]
        return problems

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def auth_problem(self, header: str) -> str | None:
        if not header.startswith("SharedAccessSignature "):
            return "no SharedAccessSignature"
        fields = dict(p.split("=", 1) for p in header[len("SharedAccessSignature ") :].split("&") if "=" in p)
        if set(fields) < {"sr", "sig", "se", "skn"}:
            return f"token lacks {sorted({'sr', 'sig', 'se', 'skn'} - set(fields))}"
        if urllib.parse.unquote(fields["sr"]).lower().rstrip("/") != self.host.lower():
            return f"token is for {urllib.parse.unquote(fields['sr'])}, not {self.host}"
        if fields["skn"] not in self.policies:
            return f"unknown policy {fields['skn']}"
        if int(fields["se"]) < time.time():
            return "token expired"
        expected = hmac.new(base64.b64decode(self.policies[fields["skn"]]), f"{fields['sr']}\n{fields['se']}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(urllib.parse.unquote(fields["sig"]), base64.b64encode(expected).decode()):
            return "signature does not match"
        return None

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
