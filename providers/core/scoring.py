"""Requests to one scoring server, bypassing the gateway: the transports of the sample gate (`mldeploy.providers.gate.sample_check`).

- `unix_transport(path)`: a local backend serving on a Unix socket (a roll's new
  backend, which has no network).
- `http_transport(port)`: a backend published on 127.0.0.1.
- `exec_transport(container)`: a container on no network at all (the preview's
  smoke test); each request runs `python` inside the container, against
  127.0.0.1 of the container's own network namespace.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import requests


@dataclass
class Answer:
    """One HTTP answer of the scoring server."""

    status: int
    """HTTP status; 0 when no answer came (the message is in `body`)."""
    body: str
    """The body as text."""
    ms: float = 0.0
    """Wall time of the request in milliseconds."""


Transport = Callable[[str, str, "bytes | None"], Answer]
"""(method, path, body) -> Answer; the path is the scoring server's own (`/score`)."""

CONTAINER_PORT = 5001
"""Where the scoring server listens inside its container."""

# Runs inside the scoring container (its Python, standard library only).
# argv: method path body_b64 wait_seconds. With wait_seconds > 0 it first waits
# until GET / answers 200 (init() has run). Prints one JSON line.
_IN_CONTAINER = r"""
import base64, json, sys, time, urllib.request, urllib.error
method, path, body, wait = sys.argv[1], sys.argv[2], base64.b64decode(sys.argv[3]) or None, float(sys.argv[4])
base = "http://127.0.0.1:%d" % PORT
def call(m, p, b, timeout):
    req = urllib.request.Request(base + p, data=b, method=m, headers={"Content-Type": "application/json"})
    t = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace"), (time.monotonic() - t) * 1000
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace"), (time.monotonic() - t) * 1000
deadline = time.monotonic() + wait
while wait > 0:
    try:
        if call("GET", "/", None, 2)[0] == 200:
            break
    except Exception:
        pass
    if time.monotonic() > deadline:
        print(json.dumps({"status": 0, "body": "not healthy after %.0fs" % wait, "ms": 0}))
        sys.exit(0)
    time.sleep(0.2)
try:
    status, text, ms = call(method, path, body, 60)
except Exception as exc:
    status, text, ms = 0, "no answer: %r" % (exc,), 0
print(json.dumps({"status": status, "body": text, "ms": ms}))
""".replace("PORT", str(CONTAINER_PORT))


def http_transport(port: int, timeout: float = 60.0) -> Transport:
    """Requests to 127.0.0.1:<port> (never through a proxy from the environment)."""
    session = requests.Session()
    session.trust_env = False

    def send(method: str, path: str, body: bytes | None) -> Answer:
        start = time.monotonic()
        try:
            r = session.request(
                method, f"http://127.0.0.1:{port}{path}", data=body, timeout=timeout,
                headers={"Content-Type": "application/json"},
            )
        except requests.RequestException as exc:
            return Answer(0, f"no answer: {exc!r}", (time.monotonic() - start) * 1000)
        return Answer(r.status_code, r.text, (time.monotonic() - start) * 1000)

    return send


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket. Paths longer than sun_path's 107 bytes (deep temporary
    folders) are reached through the folder's descriptor (/proc/self/fd/N/name)."""

    def __init__(self, path: str | Path, timeout: float = 60.0):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        folder = None
        try:
            target = self.socket_path
            if len(os.fsencode(target)) > 100:
                folder = os.open(os.path.dirname(target), os.O_PATH)
                target = f"/proc/self/fd/{folder}/{os.path.basename(target)}"
            sock.connect(target)
        except BaseException:
            sock.close()
            raise
        finally:
            if folder is not None:
                os.close(folder)
        self.sock = sock


def unix_request(path: str | Path, method: str, url: str, body: bytes | None = None, timeout: float = 60.0) -> Answer:
    """One request to the server on socket `path`; status 0 with the reason when nothing answered."""
    start = time.monotonic()
    conn = UnixHTTPConnection(path, timeout=timeout)
    try:
        conn.request(method, url, body=body, headers={"Content-Type": "application/json", "Connection": "close"})
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
        return Answer(resp.status, text, (time.monotonic() - start) * 1000)
    except (OSError, http.client.HTTPException) as exc:
        return Answer(0, f"no answer: {exc!r}", (time.monotonic() - start) * 1000)
    finally:
        conn.close()


def unix_transport(path: str | Path, timeout: float = 60.0) -> Transport:
    """Requests to the scoring server on the Unix socket `path` (this host's view of it)."""

    def send(method: str, url: str, body: bytes | None) -> Answer:
        return unix_request(path, method, url, body, timeout)

    return send


def exec_in(container: Any, method: str, path: str, body: bytes | None, wait_seconds: float = 0.0) -> Answer:
    """One request from inside `container` (a docker-py Container) to its own server."""
    argv = ["python", "-c", _IN_CONTAINER, method, path, base64.b64encode(body or b"").decode(), str(wait_seconds)]
    code, output = container.exec_run(argv, demux=True)
    stdout = (output[0] or b"").decode(errors="replace") if output else ""
    stderr = (output[1] or b"").decode(errors="replace") if output else ""
    try:
        got = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Answer(0, f"the request inside the container failed (exit {code}): {(stderr or stdout)[-400:]}")
    return Answer(int(got["status"]), str(got["body"]), float(got["ms"]))


def exec_transport(container: Any) -> Transport:
    def send(method: str, path: str, body: bytes | None) -> Answer:
        return exec_in(container, method, path, body)

    return send
