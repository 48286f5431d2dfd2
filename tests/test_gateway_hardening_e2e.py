"""Requests without a key cannot exhaust the shared gateway (issue 18, item 9), on 127.0.0.1 only.

The Swagger and health routes need no key, so they take a bodiless GET or HEAD
and nothing else; a body over the limit is a 413; the access log records
status codes and never a key. A bounded burst of 100 concurrent unauthenticated
POSTs to /swagger.json leaves an authorised /score answering 200.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import docker
import pytest
import requests

from test_raw_script_e2e import ROW, raw_program, raw_project

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


def test_keyless_routes_take_only_a_bodiless_get_and_the_score_route_stays_up(workdir: Path, engine_stack) -> None:
    raw_project(workdir, 2)
    st = engine_stack(raw_program({"max_request_bytes": 4096}))
    out = {k: v.value for k, v in st.up().outputs.items()}
    uri, key = out["scoring_uri"], out["primary_key"]
    base = uri.rsplit("/score", 1)[0]
    auth = {"Authorization": f"Bearer {key}"}

    assert requests.get(f"{base}/swagger.json", timeout=10).status_code == 200
    assert requests.head(f"{base}/swagger.json", timeout=10).status_code == 200
    for path in ("/swagger.json", "", "/", "/health"):
        r = requests.post(f"{base}{path}", timeout=10)
        assert r.status_code == 405 and r.headers.get("Allow") == "GET, HEAD", (path, r.status_code, r.text)
        assert requests.get(f"{base}{path}", data=b"x" * 2048, timeout=10).status_code == 413, path
    # Over the limit on the score route: 413 with words, not a 500.
    r = requests.post(uri, data=b"{" + b" " * 8192 + b"}", headers={**auth, "Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 413 and "the limit is 4096 bytes" in r.text, (r.status_code, r.text)

    # 100 concurrent unauthenticated POSTs with bodies, bounded; meanwhile the key holder scores.
    def stranger(_: int) -> int:
        return requests.post(f"{base}/swagger.json", data=b"x" * 100_000, timeout=30).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=100) as pool:
        burst = pool.map(stranger, range(100))
        scored = requests.post(uri, json={"data": [ROW]}, headers=auth, timeout=30)
        codes = list(burst)
    assert scored.status_code == 200 and scored.json() == [110.0], scored.text
    assert set(codes) <= {405, 413}, set(codes)
    assert requests.post(uri, json={"data": [ROW]}, headers=auth, timeout=30).status_code == 200

    # The access log: status codes and paths, rotated with the container's log, and no key.
    gateway = docker.from_env().containers.get(f"mldeploy-gw-mldeploy-{st.name}")
    log = gateway.logs().decode()
    assert '"POST /api/v1/service/rawservice/swagger.json" 413' in log or '"POST /api/v1/service/rawservice/swagger.json" 405' in log, log[-2000:]
    assert '"POST /api/v1/service/rawservice/score" 200' in log
    assert key not in log
    assert gateway.attrs["HostConfig"]["LogConfig"]["Config"] == {"max-size": "10m", "max-file": "3"}


def test_max_request_bytes_above_what_the_front_end_holds_fails_naming_it(workdir: Path) -> None:
    from mldeploy.components import ContainerInstanceService  # noqa: F401 - the args model
    from mldeploy.components.container_instance_service import ContainerInstanceServiceSpec
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="max_request_bytes"):
        ContainerInstanceServiceSpec.model_validate({"service_name": "svc", "models": [], "image": None,
                                                     "max_request_bytes": 64 * 1024 * 1024})
