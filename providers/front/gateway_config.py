"""The gateway's nginx configuration, rendered: pure functions, no files, no Docker.

Why apart from the client (`mldeploy.providers.targets.local.gateway`): three front ends render
the same key-checking config (the local gateway, ACI's front container and the
Kubernetes pod's front container), and only the local one runs it through
Docker on this machine. Everything here is checked by unit tests without a
daemon; the constants the renderers need live here, so the client imports this
module and never the reverse.

Two kinds of backend:
- a TCP port on 127.0.0.1 (`backend_port`): a front end beside the scoring
  server in one network namespace (a pod, a container group);
- a Unix socket (`backend_socket`): the local target. The scoring container has
  no network; it serves on a socket in its service's folder, which the gateway
  mounts read-only. The route names a fixed link (`current.sock`) that a roll
  re-points atomically, so a roll needs no reload and client keep-alive
  connections stay open across it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mldeploy.providers.front.headers import PROXY_HEADERS, proxy_headers

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "runtime" / "nginx"
DEFAULT_IMAGE = "mldeploy/base:bookworm-py3.11"

# Paths inside the gateway container.
CONTAINER_CONF_DIR = "/etc/mldeploy-gw"
CONTAINER_RUNTIME_DIR = "/tmp/mldeploy-gw"
CONTAINER_BACKENDS_DIR = "/run/mldeploy-backends"
"""Where the gateway sees the stack's socket folders (one per service), read-only."""
ROUTES_SUBDIR = "services"
MAIN_CONF = "nginx.conf"

# A service's socket folder: `<backends>/<service>/current.sock -> run/<backend>.sock`.
CURRENT_LINK = "current.sock"
CANDIDATE_LINK = "candidate.sock"
"""A canary's new backend, beside the current one while the split lasts."""
RUN_SUBDIR = "run"
"""The only part of a service's folder that its scoring containers can write (mounted at SCORING_SOCKET_DIR)."""
SCORING_SOCKET_DIR = "/run/mldeploy"
"""Where a scoring container sees its service's `run` folder."""
SOCKET_GROUP = "nogroup"
"""Group of the scoring process (gid 65534) and of the gateway's workers: the only
group that may enter a service's `run` folder and connect to its sockets."""

LABEL_PREFIX = "mldeploy."
MARKER_HEADER = "X-Mldeploy-Backend"

SERVICE_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
# Keys go verbatim into a regex inside nginx config: this alphabet needs no escaping.
KEY_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
# Project/stack end up in a container name and in labels.
SCOPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
SOCKET_PATH_RE = re.compile(r"^/[A-Za-z0-9_./-]{1,100}\.sock$")
MAX_KEYS = 8
MAX_BODY_LIMIT = 16 * 1024 * 1024
"""The largest request body a front end takes (16 MiB): bodies are held in memory, never on disk."""
KEYLESS_GUARD = """        # Keyless routes: a bodiless GET or HEAD only.
        client_max_body_size 1;
        error_page 405 = @mldeploy_not_allowed;
        error_page 413 = @mldeploy_no_body;
        error_page 502 503 @mldeploy_unavailable;
        error_page 504 @mldeploy_timeout;
        if ($request_method !~ ^(GET|HEAD)$) {
            return 405;
        }
        if ($http_content_length !~ ^0?$) {
            return 413;
        }
        if ($http_transfer_encoding) {
            return 413;
        }"""
"""No `proxy_set_header` here: one in a location drops every one of the server's, and with them
`Authorization ""`, so a key sent to these routes would reach the scoring container. A request
with a body never gets this far (413), so nothing is left to strip. `error_page` is the other way
round: one here drops the server's, so they are all said again."""
_KEYLESS_LOCATION_RE = re.compile(r"^    location = /api/v1/service/[a-z0-9-]+(?:/swagger\.json|/health|/)? \{\n", re.M)
_OLD_KEYLESS_GUARDS = ("""        # Keyless routes: a bodiless GET or HEAD only.
        client_max_body_size 1;
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
        error_page 405 = @mldeploy_not_allowed;
        if ($request_method !~ ^(GET|HEAD)$) {
            return 405;
        }""",)
"""Guards that routes carry from before this one (issue 18's first cut), replaced by `upgrade_route`."""
_META_RE = re.compile(r"^# mldeploy-route (\{.*\})$", re.M)
_PLACEHOLDER_RE = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")

__all__ = [
    "CONTAINER_BACKENDS_DIR", "CONTAINER_CONF_DIR", "CONTAINER_RUNTIME_DIR", "CURRENT_LINK", "DEFAULT_IMAGE",
    "KEY_RE", "LABEL_PREFIX", "MAIN_CONF", "MARKER_HEADER", "MAX_BODY_LIMIT", "MAX_KEYS", "ROUTES_SUBDIR",
    "PROXY_HEADERS", "RUN_SUBDIR", "SCOPE_RE", "SCORING_SOCKET_DIR", "SERVICE_NAME_RE", "SOCKET_GROUP", "SplitRoute",
    "TEMPLATE_DIR", "backend_socket", "parse_route_meta", "proxy_headers", "render_nginx_conf", "render_service_conf",
    "upgrade_route",
    "validate_service_name",
]


def _template(template: str, /, **values: object) -> str:
    """Fill ``{{ name }}`` placeholders; nginx's own ``$vars`` stay untouched."""
    text = (TEMPLATE_DIR / template).read_text()

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            raise KeyError(f"template {template}: no value for {key}")
        return str(values[key])

    return _PLACEHOLDER_RE.sub(sub, text)


def _check_port(field: str, value: object, low: int = 1024) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 65535:
        raise ValueError(f"{field}: must be an integer port in {low}-65535, got {value!r}")
    return value


def validate_service_name(service_name: object) -> str:
    """Names go into URLs, nginx identifiers and file names: keep them tame."""
    if not isinstance(service_name, str) or not SERVICE_NAME_RE.match(service_name):
        raise ValueError(
            f"service_name: must match {SERVICE_NAME_RE.pattern} "
            f"(lowercase letters, digits, inner dashes, 1-32 chars), got {service_name!r}"
        )
    return service_name


def backend_socket(service_name: str) -> str:
    """The link the gateway proxies a local service to (inside the gateway container)."""
    return f"{CONTAINER_BACKENDS_DIR}/{validate_service_name(service_name)}/{CURRENT_LINK}"


def _check_keys(keys: Sequence[str] | None) -> list[str] | None:
    if keys is None:
        return None
    if isinstance(keys, str) or not isinstance(keys, (list, tuple)):
        raise ValueError("keys: must be None (auth off) or a list of key strings")
    if not keys:
        raise ValueError("keys: an empty list would lock everyone out; pass None to turn auth off")
    if len(keys) > MAX_KEYS:
        raise ValueError(f"keys: at most {MAX_KEYS} keys, got {len(keys)}")
    for i, key in enumerate(keys):
        # Never echo the key itself in the message.
        if not isinstance(key, str) or not KEY_RE.match(key):
            raise ValueError(f"keys[{i}]: must match {KEY_RE.pattern} (16-128 chars of A-Z a-z 0-9 _ -)")
    return list(keys)


def render_nginx_conf(
    include_dir: str = f"{CONTAINER_CONF_DIR}/{ROUTES_SUBDIR}",
    runtime_dir: str = CONTAINER_RUNTIME_DIR,
    worker_processes: int | str = 1,
    access_log: bool = False,
    user: str | None = "www-data",
    worker_shutdown_timeout: int = 75,
    client_keepalive_timeout: int = 65,
    group: str | None = None,
) -> str:
    """The gateway's main config. Access log is off by default; when on, its
    format names no header and no query string, so keys never reach a log.
    `group`: the workers' group (the local gateway's: SOCKET_GROUP, to reach sockets)."""
    for field, value in (("include_dir", include_dir), ("runtime_dir", runtime_dir)):
        if not isinstance(value, str) or not re.match(r"^/[A-Za-z0-9_./-]*$", value):
            raise ValueError(f"{field}: must be an absolute path of [A-Za-z0-9_./-], got {value!r}")
    if worker_processes != "auto" and (
        isinstance(worker_processes, bool) or not isinstance(worker_processes, int) or not 1 <= worker_processes <= 64
    ):
        raise ValueError(f"worker_processes: must be 1-64 or 'auto', got {worker_processes!r}")
    for field, value in (("user", user), ("group", group)):
        if value is not None and not re.match(r"^[a-z_][a-z0-9_-]{0,31}$", value):
            raise ValueError(f"{field}: not a valid {field} name: {value!r}")
    if group is not None and user is None:
        raise ValueError("group: needs a user (nginx switches both or neither)")
    if not isinstance(worker_shutdown_timeout, int) or worker_shutdown_timeout < 1:
        raise ValueError(f"worker_shutdown_timeout: must be a positive integer, got {worker_shutdown_timeout!r}")
    if isinstance(client_keepalive_timeout, bool) or not isinstance(client_keepalive_timeout, int) or client_keepalive_timeout < 0:
        raise ValueError(f"client_keepalive_timeout: must be an integer >= 0, got {client_keepalive_timeout!r}")
    if access_log:
        log = (
            "    log_format mldeploy_safe '$time_iso8601 $remote_addr \"$request_method $uri\" "
            "$status $body_bytes_sent $request_time $upstream_addr';\n"
            "    access_log /dev/stdout mldeploy_safe;"
        )
    else:
        log = "    access_log off;"
    if user:
        user_line = f"user {user} {group};" if group else f"user {user};"
    else:
        user_line = "# (no user directive: nginx runs unprivileged already)"
    return _template(
        "nginx.conf.tmpl",
        include_dir=include_dir.rstrip("/"),
        runtime_dir=runtime_dir.rstrip("/"),
        worker_processes=worker_processes,
        access_log=log,
        user_line=user_line,
        worker_shutdown_timeout=worker_shutdown_timeout,
        client_keepalive_timeout=client_keepalive_timeout,
    )


@dataclass(frozen=True)
class SplitRoute:
    """A canary's place in one route: the candidate's socket, its share, the mirrored share, the log.

    `candidate_front`: the candidate is reached through a front end of its own that checks the key again
    (a Kubernetes candidate pod's, which anything in the cluster may reach): its score route's path there,
    and `candidate_tls` when that front end serves HTTPS. Its share and its mirrored copies then carry the
    key they came with; the current version's never do. None: the candidate is a bare scoring server (the
    local target's, on a socket only the gateway reaches)."""

    candidate_socket: str
    candidate: int
    log_path: str
    mirror_percent: int = 0
    candidate_front: str | None = None
    candidate_tls: bool = False

    def facts(self) -> dict[str, object]:
        facts: dict[str, object] = {"candidate_socket": self.candidate_socket, "candidate": self.candidate,
                                    "mirror_percent": self.mirror_percent, "log_path": self.log_path}
        if self.candidate_front is not None:
            facts.update(candidate_front=self.candidate_front, candidate_tls=self.candidate_tls)
        return facts


def render_service_conf(
    service_name: str,
    port: int,
    backend_port: int | None,
    keys: list[str] | None,
    max_body_bytes: int = 1_048_576,
    listen_host: str = "127.0.0.1",
    read_timeout_s: int = 60,
    *,
    backend_socket: str | None = None,
    split: SplitRoute | None = None,
    runtime_dir: str = CONTAINER_RUNTIME_DIR,
) -> str:
    """One service's upstream + server block. Keys (if any) are matched
    exactly against ``Authorization: Bearer <key>`` on the score route only.
    The backend is `backend_port` on 127.0.0.1 or the Unix socket `backend_socket`.
    `split`: a canary's second version beside it (a socket, or an address:port beside a port backend), its share of
    scoring requests, and the log each version's answers are judged from."""
    validate_service_name(service_name)
    # On the shared host only unprivileged ports; a front end in its own network
    # namespace (a pod, a container group) may take a low one such as ACI's 80.
    _check_port("port", port, low=1 if listen_host == "0.0.0.0" else 1024)
    if (backend_port is None) == (backend_socket is None):
        raise ValueError("backend_port: give a backend port or a backend_socket, not both or neither")
    if backend_socket is not None:
        if not isinstance(backend_socket, str) or not SOCKET_PATH_RE.match(backend_socket) or ".." in backend_socket:
            raise ValueError(f"backend_socket: must be an absolute path of [A-Za-z0-9_./-] ending in .sock, got {backend_socket!r}")
    else:
        _check_port("backend_port", backend_port)
        if port == backend_port:
            raise ValueError("port: must differ from backend_port (both are 127.0.0.1 ports)")
    checked_keys = _check_keys(keys)
    if listen_host not in ("127.0.0.1", "0.0.0.0"):
        # 0.0.0.0 only inside a pod, whose one port is this front end.
        raise ValueError(f"listen_host: must be 127.0.0.1 or 0.0.0.0, got {listen_host!r}")
    if isinstance(read_timeout_s, bool) or not isinstance(read_timeout_s, int) or not 1 <= read_timeout_s <= 86_400:
        raise ValueError(f"read_timeout_s: must be an integer in 1-86400, got {read_timeout_s!r}")
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or not 1 <= max_body_bytes <= MAX_BODY_LIMIT:
        # 0 would mean "unlimited" to nginx: refuse it.
        raise ValueError(f"max_body_bytes: must be an integer in 1-{MAX_BODY_LIMIT}, got {max_body_bytes!r}")

    ident = service_name.replace("-", "_")
    meta: dict[str, object] = {
        "service": service_name,
        "port": port,
        "auth": checked_keys is not None,
        "max_body_bytes": max_body_bytes,
    }
    if backend_socket is not None:
        meta["backend_socket"] = backend_socket
        # A socket route does not change when its backend rolls; the marker names the
        # route's revision instead (keys included, hashed), so a reload can be confirmed.
        facts = json.dumps([meta, checked_keys, listen_host, read_timeout_s], sort_keys=True)
        marker = "r" + hashlib.sha256(facts.encode()).hexdigest()[:12]
        meta["marker"] = marker
        upstream = (
            f"    server unix:{backend_socket} max_fails=0;\n"
            "    # No pooled connections: each request connects afresh, so it follows the link\n"
            "    # that a roll re-points (the scoring server's sync workers close every\n"
            "    # connection after one answer anyway)."
        )
    else:
        meta["backend_port"] = backend_port
        marker = str(backend_port)
        upstream = (
            f"    server 127.0.0.1:{backend_port} max_fails=0;\n"
            "    # HTTP/1.1 keepalive to the scoring container; idle connections are\n"
            "    # dropped before typical backend idle timeouts (gunicorn: 2s) expire.\n"
            "    keepalive 16;\n"
            "    keepalive_timeout 1s;"
        )
    score_pass = f"        proxy_pass http://mldeploy_backend_{ident}/score;"
    split_http = split_locations = ""
    if split is not None:
        from mldeploy.providers.front import split as front_split

        # A port backend (a Kubernetes pod's own scoring server) is 127.0.0.1:<port>; its candidate an address:port.
        sockets = {"current": backend_socket or f"127.0.0.1:{backend_port}", "candidate": split.candidate_socket}
        relay_socket = f"{runtime_dir}/mirror-{ident}.sock"  # the mirror's relay: in the front end's own runtime folder
        front = None
        if split.candidate_front is not None:
            front = front_split.CandidateFront(split.candidate_front, "https" if split.candidate_tls else "http")
        relay = front_split.MirrorRelay(relay_socket, split.log_path, max_body_bytes, front=front)
        split_http = front_split.render_split(ident, sockets, split.candidate, split.mirror_percent, relay,  # type: ignore[arg-type]
                                              front=front)
        log_if = f"$mldeploy_authorized_{ident}" if checked_keys else None  # a refused key reached no version
        score_pass = front_split.render_score_location(ident, split.log_path, log_if=log_if, front=front).rstrip("\n")
        split_locations = front_split.render_mirror_location(ident, relay_socket, front=front)
        meta["split"] = split.facts()
        # The marker names the split too, so a weight's reload is confirmed.
        marker = "r" + hashlib.sha256(json.dumps([marker, split.facts()], sort_keys=True).encode()).hexdigest()[:12]
        meta["marker"] = marker
    if checked_keys:
        auth_map = _template(
            "service-auth-map.conf.tmpl", ident=ident, key_alternatives="|".join(checked_keys)
        )
        auth_check = _template(
            "service-auth-check.conf.tmpl", ident=ident, name=service_name, marker=marker
        ).rstrip("\n")
    else:
        auth_map = ""
        auth_check = "        # auth off: no key required"
    return _template(
        "service.conf.tmpl",
        meta_json=json.dumps(meta, sort_keys=True),
        name=service_name,
        ident=ident,
        port=port,
        listen_host=listen_host,
        read_timeout_s=read_timeout_s,
        upstream=upstream,
        proxy_headers=proxy_headers(),
        marker=marker,
        max_body_bytes=max_body_bytes,
        auth_map=auth_map + split_http,
        auth_check=auth_check,
        keyless_guard=KEYLESS_GUARD,
        score_pass=score_pass,
        split_locations=split_locations,
    )


def upgrade_route(conf_text: str) -> str:
    """A route file as this release renders it, from one an earlier release rendered. Pure.

    The file holds the service's keys and nothing else keeps them, so the gateway upgrades
    routes in place (a reload, no roll) rather than rendering them again: the keyless routes
    get their guard, a body stays in memory up to the limit, and 405 gets its answer. A
    current file comes back unchanged.
    """
    text = conf_text
    for old in _OLD_KEYLESS_GUARDS:
        text = text.replace(old, KEYLESS_GUARD)
    limit = re.search(r"^    client_max_body_size (\d+);\n", text, re.M)
    if limit and "client_body_buffer_size" not in text:
        text = text[: limit.end()] + (
            "    # A body up to the limit stays in memory: it never spills to the front end's small\n"
            "    # shared /tmp, where concurrent large bodies could fill it (nginx answered 500 then).\n"
            f"    client_body_buffer_size {limit.group(1)};\n"
        ) + text[limit.end():]
    text = text.replace(
        "    # Swagger is readable without a key, as in Azure.\n",
        "    # Swagger and health need no key, as in Azure: so they take a bodiless GET or HEAD\n"
        "    # and nothing else (405), and no body (413), so strangers cannot load the front end.\n",
    )
    out, pos = [], 0
    for m in _KEYLESS_LOCATION_RE.finditer(text):
        out.append(text[pos:m.end()])
        pos = m.end()
        if not text.startswith(KEYLESS_GUARD, pos):
            out.append(KEYLESS_GUARD + "\n")
    text = "".join(out) + text[pos:]
    if "location @mldeploy_not_allowed" not in text:
        text = text.replace("    location @mldeploy_too_large {\n", (
            "    location @mldeploy_not_allowed {\n"
            "        add_header Allow \"GET, HEAD\" always;\n"
            "        return 405 '{\"message\": \"Method not allowed: this route takes GET or HEAD.\"}';\n"
            "    }\n"
            "    location @mldeploy_too_large {\n"), 1)
    if "location @mldeploy_no_body" not in text:
        text = text.replace("    location @mldeploy_too_large {\n", (
            "    location @mldeploy_no_body {\n"
            "        return 413 '{\"message\": \"Request body not allowed: this route takes GET or HEAD with no body.\"}';\n"
            "    }\n"
            "    location @mldeploy_too_large {\n"), 1)
    return text


def parse_route_meta(conf_text: str) -> dict | None:
    """The non-secret header line of a rendered route file (no keys in it)."""
    m = _META_RE.search(conf_text)
    return json.loads(m.group(1)) if m else None
