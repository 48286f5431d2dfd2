"""The nginx pieces of a traffic split between two versions of one service: pure, no files (issue 20).

Why nginx splits, and not the client or two ports: the gateway already holds every request, so a
split there is by request (not by connection or pod), needs no new moving part, and the gateway can
record each version's own status and time, which is what the rollout judges (never what a client
says). `split_clients` hashes `$request_id`, a fresh random value per request, so the shares follow
the declared weights per request, and moving a weight is a reload: requests in flight finish on
the worker that took them.

Each request's line in the split log: `<msec> <version> <status> <request_time>`, where version is
`current`, `candidate` or `mirror` (a mirrored copy: its answer is discarded by nginx's `mirror`, only
its line is kept). `metrics_from_log` reads a version's own requests, non-2xx answers and p99 from it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, NamedTuple

from mldeploy.providers.front.headers import proxy_headers

VERSIONS = ("current", "candidate")
MIRROR_LOCATION = "/_mldeploy_mirror"
_IDENT_RE = re.compile(r"^[a-z0-9_]{1,32}$")
_PATH_RE = re.compile(r"^/[A-Za-z0-9_./-]{1,120}$")


def _weight(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise ValueError(f"{field}: must be an integer percentage in 0-100, got {value!r}")
    return value


def split_variable(ident: str) -> str:
    return f"$mldeploy_{ident}_version"


def upstream_name(ident: str, version: str) -> str:
    return f"mldeploy_{ident}_{version}"


def log_format(ident: str, mirror: bool = False) -> str:
    return f"mldeploy_{ident}_{'mirror' if mirror else 'split'}"


@dataclass(frozen=True)
class CandidateFront:
    """A candidate reached through a front end of its own that checks the key again (a Kubernetes candidate
    pod's): the path of its score route there, and its scheme. Its share of requests, and the mirrored
    copies, carry the key they came with; the current version's requests never do."""

    path: str
    scheme: str = "http"

    def __post_init__(self) -> None:
        _check_backend_path(self.path)
        if self.scheme not in ("http", "https"):
            raise ValueError(f"front.scheme: must be http or https, got {self.scheme!r}")


def key_variable(ident: str) -> str:
    """The key a request passes on: the client's Authorization to a candidate's front end, nothing otherwise."""
    return f"$mldeploy_{ident}_upstream_key"


def pass_variable(ident: str) -> str:
    return f"$mldeploy_{ident}_pass"


def render_split(ident: str, sockets: dict[str, str], candidate: int, mirror_percent: int = 0,
                 relay: MirrorRelay | None = None, front: CandidateFront | None = None) -> str:
    """The http-level part: one upstream per version, the split, the mirror share, the log format.

    `sockets`: each version's Unix socket as the gateway sees it, or its IPv4 `address:port`; `candidate`: its percentage of live
    requests (the current version takes the rest); `mirror_percent`: the share of live requests
    whose copy also goes to the candidate (answers discarded). nginx refuses a 0 % line in
    `split_clients`, so 0 % and 100 % are written as one catch-all line. `front`: the candidate checks
    the key itself (`CandidateFront`): each version's URL, and the key for the candidate's share only.
    """
    if not _IDENT_RE.match(ident):
        raise ValueError(f"ident: must be [a-z0-9_], 1-32 characters, got {ident!r}")
    candidate = _weight("candidate", candidate)
    mirror_percent = _weight("mirror_percent", mirror_percent)
    if set(sockets) != set(VERSIONS):
        raise ValueError(f"sockets: must name exactly {', '.join(VERSIONS)}, got {sorted(sockets)}")
    parts = []
    for version in VERSIONS:
        parts.append(f"upstream {upstream_name(ident, version)} {{\n    server {_server(version, sockets[version])} max_fails=0;\n}}\n")
    if candidate in (0, 100):
        lines = f"    * {'candidate' if candidate else 'current'};\n"
    else:
        lines = f"    {candidate}% candidate;\n    * current;\n"
    parts.append(f'split_clients "${{request_id}}" {split_variable(ident)} {{\n{lines}}}\n')
    mirror_lines = f"    {mirror_percent}% 1;\n    * \"\";\n" if 0 < mirror_percent < 100 else f"    * {'1' if mirror_percent else chr(34) * 2};\n"
    # A second hash of the same id, salted, so the mirrored share is independent of the split.
    parts.append(f'split_clients "mirror${{request_id}}" $mldeploy_{ident}_mirror {{\n{mirror_lines}}}\n')
    # Two formats with the version in the format itself: a mirror subrequest shares its parent's
    # variables, so a variable set in the mirror location would relabel the live request's line.
    parts.append(f"log_format {log_format(ident)} '$msec {split_variable(ident)} $status $request_time';\n")
    parts.append(f"log_format {log_format(ident, mirror=True)} '$msec mirror $status $request_time';\n")
    if front is not None:
        # Per version: where its share goes, and whether the key goes with it (to the candidate's front only).
        parts.append(f"map {split_variable(ident)} {pass_variable(ident)} {{\n"
                     f"    candidate {front.scheme}://{upstream_name(ident, 'candidate')}{front.path};\n"
                     f"    default http://{upstream_name(ident, 'current')}/score;\n}}\n")
        parts.append(f"map {split_variable(ident)} {key_variable(ident)} {{\n"
                     "    candidate $http_authorization;\n    default \"\";\n}\n")
    if mirror_percent and relay is not None:
        parts.append(render_mirror_relay(ident, relay))
    return "".join(parts)


_ADDRESS_RE = re.compile(r"^(\d{1,3}\.){3}\d{1,3}:\d{1,5}$")


def _server(version: str, address: str) -> str:
    """An upstream's server: a Unix socket path (the local gateway), or an IPv4 `address:port` (a Kubernetes
    pod's front end: its own scoring server on 127.0.0.1, a candidate's ClusterIP)."""
    if _ADDRESS_RE.match(address) and 1 <= int(address.rsplit(":", 1)[1]) <= 65535 \
            and all(0 <= int(b) <= 255 for b in address.rsplit(":", 1)[0].split(".")):
        return address
    if not _PATH_RE.match(address) or ".." in address or not address.endswith(".sock"):
        raise ValueError(f"sockets.{version}: must be an absolute path of [A-Za-z0-9_./-] ending in .sock, "
                         f"or an IPv4 address:port, got {address!r}")
    return f"unix:{address}"


def _check_backend_path(backend_path: str) -> str:
    if not re.match(r"^/[A-Za-z0-9_./-]{0,120}$", backend_path) or ".." in backend_path:
        raise ValueError(f"backend_path: must be an absolute path of [A-Za-z0-9_./-], got {backend_path!r}")
    return backend_path


def render_score_location(ident: str, log_path: str, backend_path: str = "/score", log_if: str | None = None,
                          front: CandidateFront | None = None) -> str:
    """The lines inside the score location: proxy to the request's version, mirror, log each version.

    The mirror location is internal; a request not chosen for mirroring ends there at once (204, never
    sent to the candidate, not logged), and a chosen one is sent with its body. nginx discards mirror
    answers. `backend_path`: the scoring server's route (with a variable in `proxy_pass`, nginx sends
    the URI written there, never the client's own). `log_if`: an nginx variable that is "0" or empty
    for requests the front end refused itself (a wrong key), which never reached either version
    and so are not logged against it. `front`: the candidate checks the key itself (`CandidateFront`), so
    its share carries it (the route's other headers said again: one set here drops all of the server's),
    and the candidate front end's own marker header is hidden (the client sees this front end's).
    """
    if log_if is not None and not re.match(r"^\$[a-z0-9_]{1,64}$", log_if):
        raise ValueError(f"log_if: must be an nginx variable ($name), got {log_if!r}")
    if not _IDENT_RE.match(ident):
        raise ValueError(f"ident: must be [a-z0-9_], 1-32 characters, got {ident!r}")
    if not _PATH_RE.match(log_path) or ".." in log_path:
        raise ValueError(f"log_path: must be an absolute path of [A-Za-z0-9_./-], got {log_path!r}")
    var = split_variable(ident)
    head = (
        f"        access_log {log_path} {log_format(ident)}{f' if={log_if}' if log_if else ''};\n"
        f"        mirror {MIRROR_LOCATION}_{ident};\n"
        "        mirror_request_body on;\n"
    )
    if front is None:
        return head + f"        proxy_pass http://mldeploy_{ident}_{var}{_check_backend_path(backend_path)};\n"
    return (head + "        # The candidate's share carries the key: its own front end checks it again.\n"
            + proxy_headers(key_variable(ident), indent="        ") + "\n"
            + "        proxy_hide_header X-Mldeploy-Backend;\n"
            + f"        proxy_pass {pass_variable(ident)};\n")


MIRROR_BUDGET_MS = 300
"""How long the live request's copy may take to reach the relay (which answers at once)."""
RELAY_LOCATION = "/_mldeploy_relay"


@dataclass(frozen=True)
class MirrorRelay:
    """Where mirrored copies go first: a server of the gateway's own on a Unix socket in its runtime folder.

    Why a relay: nginx finishes a live request only once its mirror subrequest has ended, so a mirror
    straight to a slow candidate holds every mirrored client's connection (measured: a live p50 of
    1.45 s behind a candidate taking 1.5 s). The relay answers the copy at once and sends it on to
    the candidate in a mirror of its own, which no client waits for (live p50 1.6 ms, the same
    candidate; every copy still logged with the candidate's status and time).
    """

    socket: str
    log_path: str
    max_body_bytes: int
    backend_path: str = "/score"
    front: CandidateFront | None = None
    """The candidate checks the key itself: the copies go to its front end's score route, key included."""


def render_mirror_relay(ident: str, relay: MirrorRelay) -> str:
    """The relay's server block (http level): answer at once, mirror to the candidate, log its answer."""
    if not _PATH_RE.match(relay.socket) or ".." in relay.socket or not relay.socket.endswith(".sock"):
        raise ValueError(f"relay.socket: must be an absolute path of [A-Za-z0-9_./-] ending in .sock, got {relay.socket!r}")
    if not _PATH_RE.match(relay.log_path) or ".." in relay.log_path:
        raise ValueError(f"relay.log_path: must be an absolute path of [A-Za-z0-9_./-], got {relay.log_path!r}")
    if isinstance(relay.max_body_bytes, bool) or not isinstance(relay.max_body_bytes, int) or relay.max_body_bytes < 1:
        raise ValueError(f"relay.max_body_bytes: must be a positive integer, got {relay.max_body_bytes!r}")
    if relay.front is None:
        target = f"http://{upstream_name(ident, 'candidate')}{_check_backend_path(relay.backend_path)}"
    else:
        target = f"{relay.front.scheme}://{upstream_name(ident, 'candidate')}{relay.front.path}"
    return (
        "server {\n"
        f"    listen unix:{relay.socket};\n"
        "    access_log off;\n"
        f"    client_max_body_size {relay.max_body_bytes};\n"
        f"    client_body_buffer_size {relay.max_body_bytes};\n"
        "    location / {\n"
        f"        mirror {RELAY_LOCATION}_{ident};\n"
        "        mirror_request_body on;\n"
        "        # The answer (405 to a POST) goes back to the live request's mirror, which discards it.\n"
        "        empty_gif;\n"
        "    }\n"
        f"    location = {RELAY_LOCATION}_{ident} {{\n"
        "        internal;\n"
        "        log_subrequest on;\n"
        f"        access_log {relay.log_path} {log_format(ident, mirror=True)};\n"
        # No header is set here: the copy goes on with the headers it came with (with `front`, the key).
        f"        proxy_pass {target};\n"
        "    }\n"
        "}\n"
    )


def render_mirror_location(ident: str, relay_socket: str, front: CandidateFront | None = None) -> str:
    """The internal location a live request's copy goes through: to the relay, or nowhere (204) when the
    request was not chosen; its answer never reaches a client. `front`: the copy takes the key to the relay
    (this front end's own socket), which sends it on to the candidate's front end."""
    if not _PATH_RE.match(relay_socket) or ".." in relay_socket or not relay_socket.endswith(".sock"):
        raise ValueError(f"relay_socket: must be an absolute path of [A-Za-z0-9_./-] ending in .sock, got {relay_socket!r}")
    headers = ""
    if front is not None:
            headers = proxy_headers("$http_authorization", indent="        ") + "\n"
    return (
        f"    location = {MIRROR_LOCATION}_{ident} {{\n"
        "        internal;\n"
        "        access_log off;\n"
        f"        if ($mldeploy_{ident}_mirror = \"\") {{\n            return 204;\n        }}\n"
        f"        proxy_connect_timeout {MIRROR_BUDGET_MS}ms;\n"
        f"        proxy_send_timeout {MIRROR_BUDGET_MS}ms;\n"
        f"        proxy_read_timeout {MIRROR_BUDGET_MS}ms;\n"
        + headers +
        f"        proxy_pass http://unix:{relay_socket}:/relay;\n"
        "    }\n"
    )


class Recorded(NamedTuple):
    """What the split log says of one version (the rollout's `engine.Metrics` is built from it)."""

    requests: int
    errors: int
    """Answers that were not 2xx."""
    p99_ms: float | None


def p99(times_ms: list[float]) -> float | None:
    """The nearest-rank 99th percentile, or None without requests."""
    if not times_ms:
        return None
    ordered = sorted(times_ms)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def metrics_from_log(lines: Iterable[str], version: str, since: float) -> Recorded:
    """One version's own requests, non-2xx answers and p99 since `since` (seconds since the epoch).

    `version`: current, candidate, or mirror (the candidate's mirrored copies). Lines that do not parse
    (a half-written last line) are skipped.
    """
    requests = errors = 0
    times: list[float] = []
    for line in lines:
        fields = line.split()
        if len(fields) != 4 or fields[1] != version:
            continue
        try:
            at, status, seconds = float(fields[0]), int(fields[2]), float(fields[3])
        except ValueError:
            continue
        if at < since:
            continue
        requests += 1
        errors += not 200 <= status < 300
        times.append(seconds * 1000)
    return Recorded(requests, errors, p99(times))
