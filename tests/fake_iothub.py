"""A fake IoT Hub on 127.0.0.1, built from the REST documentation, for the `iothub` backend's tests.

It answers `POST /devices/{id}/applyConfigurationContent?api-version=…` as the
documents say (204), after checking what the hub checks: a SAS token signed with
a policy's key (signature, expiry, resource URI, policy name), a known
api-version, a known device with the iotEdge capability, and a body that passes
the IoT Edge manifest schemas (the same copies the provider uses). Errors come
back in the hub's shape: `{"Message": "ErrorCode:…;…", "ExceptionMessage": …}`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mldeploy.providers import edge_manifest

API_VERSIONS = ("2021-04-12", "2024-03-31")


class FakeHub:
    def __init__(self, host: str, policies: dict[str, str], devices: dict[str, bool]):
        """`policies`: name -> base64 key; `devices`: id -> has the iotEdge capability."""
        self.host, self.policies, self.devices = host, policies, devices
        self.applied: dict[str, dict[str, Any]] = {}
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

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append({"path": url.path, "query": query, "headers": dict(self.headers), "body": raw})
                version = (query.get("api-version") or [None])[0]
                if version not in API_VERSIONS:
                    return self._answer(400, "InvalidProtocolVersion", f"api-version {version!r} is not supported")
                why = hub.auth_problem(self.headers.get("Authorization") or "")
                if why:
                    return self._answer(401, "IotHubUnauthorizedAccess", why)
                parts = url.path.strip("/").split("/")
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
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

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
