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
