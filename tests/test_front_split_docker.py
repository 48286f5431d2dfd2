"""The gateway's traffic split and mirror in a real nginx, with real requests (issue 20).

One throwaway container with no network: two scoring stand-ins on Unix sockets (the current one
answers 200, the candidate 500 or slowly), nginx with the split rendered by providers/front/split.py,
and a client on the container's own 127.0.0.1. The split log is read back on this side with
`metrics_from_log`, as the rollout reads it.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from mldeploy.providers.front import split

pytestmark = pytest.mark.docker

IMAGE = "mldeploy/base:bookworm-py3.11"
SOCKETS = {"current": "/tmp/current.sock", "candidate": "/tmp/candidate.sock"}
LOG = "/tmp/split.log"

BACKEND = r"""
import http.server, os, socketserver, sys, time
path, status, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        assert self.path == "/score", self.path  # the scoring server's own route, never the client's
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(delay)
        body = sys.argv[4].encode()
        self.send_response(status); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def address_string(self): return "unix"
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
if os.path.exists(path): os.unlink(path)
s = S(path, H); os.chmod(path, 0o777); s.serve_forever()
"""

CLIENT = r"""
import http.client, json, sys
answers = {}
for i in range(int(sys.argv[1])):
    c = http.client.HTTPConnection("127.0.0.1", 18080, timeout=10)
    c.request("POST", "/api/v1/service/svc/score", body=b'{"data": [[1]]}', headers={"Content-Type": "application/json"})
    r = c.getresponse(); key = f"{r.status} {r.read().decode()}"; c.close()
    answers[key] = answers.get(key, 0) + 1
print(json.dumps(answers))
"""


def run_split(candidate: int, mirror: int, candidate_status: int, candidate_delay: float, n: int) -> tuple[dict, list[str]]:
    relay = split.MirrorRelay("/tmp/mirror-svc.sock", LOG, 1_048_576)
    conf = ("user root;\nworker_processes 1;\nerror_log /tmp/error.log;\npid /tmp/nginx.pid;\nevents {}\nhttp {\n"
            + split.render_split("svc", SOCKETS, candidate, mirror, relay)
            + "server {\n    listen 127.0.0.1:18080;\n    location = /api/v1/service/svc/score {\n"
            + split.render_score_location("svc", LOG) + "    }\n"
            + split.render_mirror_location("svc", relay.socket) + "}\n}\n")
    script = f"""set -e
cat > /tmp/nginx.conf <<'CONF'
{conf}CONF
cat > /tmp/backend.py <<'PY'
{BACKEND}PY
cat > /tmp/client.py <<'PY'
{CLIENT}PY
python3 /tmp/backend.py {SOCKETS['current']} 200 0 current &
python3 /tmp/backend.py {SOCKETS['candidate']} {candidate_status} {candidate_delay} candidate &
for i in $(seq 50); do [ -S {SOCKETS['current']} ] && [ -S {SOCKETS['candidate']} ] && break; sleep 0.1; done
nginx -c /tmp/nginx.conf
python3 /tmp/client.py {n}
sleep 1
echo ===LOG===
cat {LOG}
"""
    done = subprocess.run(["docker", "run", "--rm", "-i", "--network", "none", IMAGE, "bash", "-s"],
                          input=script, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    out, log = done.stdout.split("===LOG===\n", 1)
    return json.loads(out.strip().splitlines()[-1]), log.splitlines()


def test_a_split_follows_the_weights_per_request_and_the_log_names_each_version() -> None:
    since = time.time() - 3600  # the container's clock is this machine's
    answers, log = run_split(candidate=10, mirror=0, candidate_status=500, candidate_delay=0, n=1000)
    current = split.metrics_from_log(log, "current", since)
    candidate = split.metrics_from_log(log, "candidate", since)
    assert current.requests + candidate.requests == 1000
    assert abs(candidate.requests - 100) <= 30, candidate  # ±3 percentage points over 1,000 requests
    assert candidate.errors == candidate.requests and current.errors == 0
    assert answers == {"200 current": current.requests, "500 candidate": candidate.requests}
    assert split.metrics_from_log(log, "mirror", since).requests == 0


def test_mirroring_answers_only_from_the_live_version_and_records_the_candidate() -> None:
    since = time.time() - 3600
    answers, log = run_split(candidate=0, mirror=20, candidate_status=500, candidate_delay=0, n=500)
    assert answers == {"200 current": 500}, answers
    assert split.metrics_from_log(log, "current", since).requests == 500
    assert split.metrics_from_log(log, "candidate", since).requests == 0
    mirrored = split.metrics_from_log(log, "mirror", since)
    assert 60 <= mirrored.requests <= 140 and mirrored.errors == mirrored.requests, mirrored


def test_a_slow_candidate_shows_in_its_own_p99() -> None:
    since = time.time() - 3600
    _, log = run_split(candidate=50, mirror=0, candidate_status=200, candidate_delay=0.3, n=60)
    slow = split.metrics_from_log(log, "candidate", since)
    fast = split.metrics_from_log(log, "current", since)
    assert slow.requests and slow.p99_ms is not None and slow.p99_ms >= 290, slow
    assert fast.p99_ms is not None and fast.p99_ms < 200, fast


TCP_BACKEND = r"""
import http.server, socketserver, sys
port, name = int(sys.argv[1]), sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        # What a scoring server would see: the path, and whether a key reached it.
        body = f"{name} {self.path} {'key' if self.headers.get('Authorization') else 'nokey'}".encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
S(("127.0.0.1", port), H).serve_forever()
"""

KEY_CLIENT = r"""
import http.client, json, ssl, sys
key, scheme, n = sys.stdin.read().strip(), sys.argv[1], int(sys.argv[2])
def post(port, auth):
    if scheme == "https":
        c = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ssl._create_unverified_context())
    else:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("POST", "/api/v1/service/svc/score", body=b'{"data": [[1]]}',
              headers={"Content-Type": "application/json", **({"Authorization": auth} if auth else {})})
    r = c.getresponse(); out = f"{r.status} {r.read().decode()[:40]}"; c.close()
    return out
def count(port, auth, times):
    answers = {}
    for _ in range(times):
        a = post(port, auth); answers[a] = answers.get(a, 0) + 1
    return answers
print(json.dumps({"split": count(18080, f"Bearer {key}", n), "split_nokey": count(18080, None, 5),
                  "candidate_nokey": count(18081, None, 5), "candidate_wrongkey": count(18081, "Bearer " + "x" * 43, 5),
                  "candidate_key": count(18081, f"Bearer {key}", 5)}))
"""


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_candidate_behind_its_own_front_end_gets_the_key_the_split_forwards_and_401_without_it(tls: bool, tmp_path) -> None:
    """A Kubernetes canary's shape in one container: a serving front end (the split, rendered by
    `render_service_conf`) and the candidate's own front end (the same renderer, the same keys), each before a
    scoring stand-in on 127.0.0.1. The candidate's share and the mirrored copies reach it with the client's key
    and pass its check; without a key, or with a wrong one, it answers 401; no scoring server ever sees a key."""
    from mldeploy.providers.front import tls as front_tls
    from mldeploy.providers.front.gateway_config import SplitRoute, render_nginx_conf, render_service_conf

    key = "k" * 43
    scheme = "https" if tls else "http"
    serving = render_service_conf("svc", 18080, 15001, [key], runtime_dir="/tmp/fe/run",
                                  split=SplitRoute("127.0.0.1:18081", 50, LOG, mirror_percent=50,
                                                   candidate_front="/api/v1/service/svc/score", candidate_tls=tls))
    candidate = render_service_conf("svc", 18081, 15002, [key], runtime_dir="/tmp/cand/run")
    files = ""
    if tls:
        from tls_certs import make_ca_and_cert

        pem = make_ca_and_cert(tmp_path / "pem")
        serving, candidate = front_tls.with_tls(serving, "/tmp/tls"), front_tls.with_tls(candidate, "/tmp/tls")
        files = (f"mkdir -p /tmp/tls\ncat > /tmp/tls/{front_tls.CERT_FILE} <<'PEM'\n{pem['cert'].read_text()}PEM\n"
                 f"cat > /tmp/tls/{front_tls.KEY_FILE} <<'PEM'\n{pem['key'].read_text()}PEM\n")
    conf = {}
    for name, route in (("fe", serving), ("cand", candidate)):
        conf[name] = render_nginx_conf(include_dir=f"/tmp/{name}/routes", runtime_dir=f"/tmp/{name}/run", user="root")
        conf[f"{name}-route"] = route
    script = "set -e\n" + files + "".join(
        f"mkdir -p /tmp/{n}/routes /tmp/{n}/run\ncat > /tmp/{n}/nginx.main <<'CONF'\n{conf[n]}\nCONF\n"
        f"cat > /tmp/{n}/routes/svc.conf <<'CONF'\n{conf[n + '-route']}\nCONF\n" for n in ("fe", "cand")) + f"""
cat > /tmp/backend.py <<'PY'
{TCP_BACKEND}PY
cat > /tmp/client.py <<'PY'
{KEY_CLIENT}PY
python3 /tmp/backend.py 15001 current &
python3 /tmp/backend.py 15002 candidate &
nginx -e stderr -c /tmp/fe/nginx.main
nginx -e stderr -c /tmp/cand/nginx.main
for i in $(seq 50); do python3 -c 'import socket; [socket.create_connection(("127.0.0.1", p)).close() for p in (15001, 15002)]' 2>/dev/null && break; sleep 0.1; done
echo {key} | python3 /tmp/client.py {scheme} 100
sleep 1
echo ===LOG===
cat {LOG}
"""
    done = subprocess.run(["docker", "run", "--rm", "-i", "--network", "none", IMAGE, "bash", "-s"],
                          input=script, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    out, log = done.stdout.split("===LOG===\n", 1)
    answers = json.loads(out.strip().splitlines()[-1])
    # Through the split, with the key: every answer a 200, from both versions; neither scoring server saw the key.
    assert set(answers["split"]) == {"200 current /score nokey", "200 candidate /score nokey"}, answers
    assert sum(answers["split"].values()) == 100 and min(answers["split"].values()) >= 25, answers
    assert all(a.startswith("401 ") for a in answers["split_nokey"]), answers
    # The candidate's own front end: 401 without the key or with a wrong one, 200 with it.
    assert all(a.startswith("401 ") for a in answers["candidate_nokey"]) and sum(answers["candidate_nokey"].values()) == 5, answers
    assert all(a.startswith("401 ") for a in answers["candidate_wrongkey"]), answers
    assert answers["candidate_key"] == {"200 candidate /score nokey": 5}, answers
    since = time.time() - 3600
    lines = log.splitlines()
    cand, mirrored = split.metrics_from_log(lines, "candidate", since), split.metrics_from_log(lines, "mirror", since)
    # The split log: the candidate's share and the mirrored copies passed its key check (no 401 among them).
    assert cand.requests == answers["split"]["200 candidate /score nokey"] and cand.errors == 0, (cand, lines[:5])
    assert mirrored.requests >= 20 and mirrored.errors == 0, (mirrored, [ln for ln in lines if " mirror " in ln][:5])
