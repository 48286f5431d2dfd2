"""A registry that wants credentials, as ACR does: Debian's docker-registry with token auth.

A second `docker-registry` (distribution 2.8) of the test's own on a free
127.0.0.1 port (the shared one on :5000 has no auth and is never touched),
configured for Docker's token protocol, which ACR speaks too: an anonymous
request gets `401` with `WWW-Authenticate: Bearer realm=...`, the client gets a
token from the realm with Basic credentials, and retries with it. The token
server here is a few lines on another 127.0.0.1 port: it checks the username
and password and signs a JWT (RS256, certificate in `x5c`) that the registry
verifies against the test CA. Tests only; `close()` stops both.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import requests

BIN = "/usr/bin/docker-registry"
SERVICE = "mldeploy-test-registry"
ISSUER = "mldeploy-test-token-server"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TokenRegistry:
    """`TokenRegistry(tmp_path)`: `address` (host:port), `username`, `password`; `close()` stops it."""

    def __init__(self, tmp_dir: Path, username: str = "mldeployacr", accept_access_token: Any = None):
        import trustme
        from cryptography.hazmat.primitives import serialization

        self.username = username
        self.password = secrets.token_urlsafe(24)
        self.tokens_issued: list[dict[str, Any]] = []
        self.refused = 0
        # ACR's token exchange: an Entra ID access token (checked by this callable) for a refresh token.
        self.accept_access_token = accept_access_token or (lambda _t: False)
        self.refresh_tokens: set[str] = set()
        tmp_dir.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA(key_type=trustme.KeyType.RSA)
        self._key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
        pem = ca.cert_pem.bytes()
        (tmp_dir / "token-ca.pem").write_bytes(pem)
        from cryptography import x509

        self._x5c = base64.b64encode(x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)).decode()
        self._token_server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._token_server.daemon_threads = True
        # shutdown() waits one poll.
        threading.Thread(target=self._token_server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.realm = f"http://127.0.0.1:{self._token_server.server_address[1]}/oauth2/token"  # ACR's paths
        port = _free_port()
        self.address = f"127.0.0.1:{port}"
        config = tmp_dir / "registry.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {tmp_dir / 'storage'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.address}\n  secret: {secrets.token_hex(16)}\n"
            f"auth:\n  token:\n    realm: {self.realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n"
            f"    rootcertbundle: {tmp_dir / 'token-ca.pem'}\n"
            "health:\n  storagedriver:\n    enabled: false\n"
        )
        self._log = open(tmp_dir / "registry.log", "wb")
        self._proc = subprocess.Popen([BIN, "serve", str(config)], stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"http://{self.address}/v2/", timeout=2).status_code == 401:
                    break
            except requests.RequestException:
                pass
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"docker-registry did not start on {self.address}: {(tmp_dir / 'registry.log').read_text()[-2000:]}")
            time.sleep(0.2)

    def _sign(self, account: str, access: list[dict[str, Any]]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {"iss": ISSUER, "sub": account, "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
                  "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        sig = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(sig)}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                q = parse_qs(urlparse(self.path).query)
                header = self.headers.get("Authorization") or ""
                user = password = None
                if header.startswith("Basic "):
                    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                refresh_ok = user == "00000000-0000-0000-0000-000000000000" and password in outer.refresh_tokens
                if (user, password) != (outer.username, outer.password) and not refresh_ok:
                    outer.refused += 1
                    self._send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]})
                    return
                access = []
                for scope in q.get("scope", []):
                    kind, _, rest = scope.partition(":")
                    name, _, actions = rest.rpartition(":")
                    access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]})
                outer.tokens_issued.append({"account": user, "access": access, "agent": self.headers.get("User-Agent") or ""})
                token = outer._sign(user, access)
                self._send(200, {"token": token, "access_token": token, "expires_in": 300})

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                if urlparse(self.path).path != "/oauth2/exchange":
                    self._send(404, {"errors": [{"code": "NOT_FOUND"}]})
                    return
                n = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(n).decode())
                token = (form.get("access_token") or [""])[0]
                if (form.get("grant_type") or [""])[0] != "access_token" or not outer.accept_access_token(token):
                    outer.refused += 1
                    self._send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "invalid access token"}]})
                    return
                refresh = secrets.token_urlsafe(32)
                outer.refresh_tokens.add(refresh)
                self._send(200, {"refresh_token": refresh})

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def close(self) -> None:
        self._token_server.shutdown()
        self._token_server.server_close()
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()
