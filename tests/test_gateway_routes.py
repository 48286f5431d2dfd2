"""The gateway's keyless routes (issue 18, item 9): what the route file says, and how a route that an
earlier release rendered gets the guard in place, without a roll (its keys live only in that file)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT
from mldeploy.providers.front import gateway_config
from mldeploy.providers.front.gateway_config import render_service_conf, upgrade_route

PREVIOUS_RELEASE = "367aa84d43074b008dab6eb4b5a789c251693143"
KEY = "k" * 32
ROUTES = [
    dict(service_name="svc", port=40001, backend_port=None, keys=[KEY, "s" * 32], max_body_bytes=4096,
         backend_socket="/run/mldeploy/backends/svc.sock"),
    dict(service_name="open-svc", port=40002, backend_port=None, keys=None, max_body_bytes=1_048_576,
         backend_socket="/run/mldeploy/backends/open-svc.sock"),
    dict(service_name="bridged", port=40003, backend_port=40103, keys=[KEY], max_body_bytes=65536),
]


def locations(conf: str) -> dict[str, str]:
    """`location = <path>` -> its block's text (the route files nest at most one `if` in a location)."""
    found = {}
    for m in re.finditer(r"^    location = (\S+) \{\n(.*?)^    \}\n", conf, re.M | re.S):
        found[m.group(1)] = m.group(2)
    return found


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r["service_name"])
def test_keyless_routes_keep_the_servers_header_rules(route: dict) -> None:
    """A `proxy_set_header` in a location drops all of the server's, `Authorization ""` with them:
    a key sent to /swagger.json would reach the scoring container."""
    conf = render_service_conf(**route)
    name = route["service_name"]
    blocks = locations(conf)
    keyless = [f"/api/v1/service/{name}{s}" for s in ("/swagger.json", "", "/", "/health")]
    assert set(keyless) <= set(blocks), sorted(blocks)
    for path in keyless:
        assert "proxy_set_header" not in blocks[path], (path, blocks[path])
        assert "return 405;" in blocks[path] and "return 413;" in blocks[path], path
        # An error_page here drops the server's: the JSON answers for a down backend are said again.
        assert "error_page 502 503 @mldeploy_unavailable;" in blocks[path], path
    server_level = conf.split("    location ", 1)[0]
    assert 'proxy_set_header Authorization "";' in server_level


def _after_reload(ask, want: int, tries: int = 100, in_a_row: int = 5) -> int:
    """nginx swaps its workers a moment after `reload` returns, and for ~100 ms an old worker may still
    take a new connection: ask again (bounded) until the new config answers several times in a row."""
    import time

    streak, got = 0, None
    for _ in range(tries):
        got = ask()
        streak = streak + 1 if got == want else 0
        if streak == in_a_row:
            break
        time.sleep(0.1)
    return got


def _previous_release_templates(dest: Path) -> Path:
    dest.mkdir()
    for name in ("service.conf.tmpl", "service-auth-map.conf.tmpl", "service-auth-check.conf.tmpl", "nginx.conf.tmpl"):
        run = subprocess.run(["git", "-C", str(ROOT), "show", f"{PREVIOUS_RELEASE}:runtime/nginx/{name}"],
                             capture_output=True, timeout=60)
        if run.returncode != 0:
            pytest.fail(f"this test needs the repository's history (commit {PREVIOUS_RELEASE[:12]}): {run.stderr.decode()[-300:]}")
        (dest / name).write_bytes(run.stdout)
    return dest


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r["service_name"])
def test_a_route_of_the_previous_release_is_upgraded_to_exactly_what_this_one_renders(route: dict, tmp_path: Path) -> None:
    current = render_service_conf(**route)
    # The previous release's renderer differs from this one only in its templates and the guard it did not have.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gateway_config, "TEMPLATE_DIR", _previous_release_templates(tmp_path / "nginx"))
        previous = render_service_conf(**route)
    assert previous != current and "Keyless routes" not in previous
    assert upgrade_route(previous) == current
    assert upgrade_route(current) == current, "a current route is left as it is"
    # The first cut of this guard (a proxy_set_header in each keyless location) is replaced too.
    first_cut = current.replace(gateway_config.KEYLESS_GUARD, gateway_config._OLD_KEYLESS_GUARDS[0])
    assert first_cut != current and upgrade_route(first_cut) == current


@pytest.mark.e2e
@pytest.mark.docker
def test_the_gateway_upgrades_a_previous_releases_route_in_place(workdir: Path, engine_stack, tmp_path: Path) -> None:
    import docker
    import requests

    from mldeploy.providers.targets.local import TARGET
    from test_raw_script_e2e import ROW, raw_program, raw_project

    raw_project(workdir, 2)
    st = engine_stack(raw_program({"max_request_bytes": 4096}))
    out = {k: v.value for k, v in st.up().outputs.items()}
    uri, auth = out["scoring_uri"], {"Authorization": f"Bearer {out['primary_key']}"}
    swagger = uri.rsplit("/score", 1)[0] + "/swagger.json"
    service = next(r for r in st.stack.export_stack().deployment["resources"] if r["type"].endswith("mldeploy:Service"))
    props = {k: json.loads(v["plaintext"]) if isinstance(v, dict) and "plaintext" in v else v
             for k, v in {**service["inputs"], **service["outputs"]}.items()}  # --show-secrets' shape
    gw = TARGET._gateway(props)
    route = gw._route_file(props["service_name"])
    current = route.read_text()
    # The route as the previous release rendered it (same keys, same socket), as a `git pull` leaves it.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gateway_config, "TEMPLATE_DIR", _previous_release_templates(tmp_path / "nginx"))
        previous = render_service_conf(props["service_name"], int(props["port"]), None,
                                       [out["primary_key"], props["secondary_key"]], 4096,
                                       backend_socket=gateway_config.backend_socket(props["service_name"]))
    assert previous != current
    route.write_text(previous)
    gw._test_and_reload(docker.from_env().containers.get(gw.container_name))
    body = b"x" * 2048
    passed_on = _after_reload(lambda: requests.get(swagger, data=body, timeout=10).status_code, 200)
    assert passed_on == 200, "the previous release's route passes a body on"

    backend = docker.from_env().containers.get(props["container_id"])
    started = backend.attrs["State"]["StartedAt"]
    gw.ensure()  # what the next up that touches the stack's gateway does first
    assert route.read_text() == current
    _after_reload(lambda: requests.get(swagger, data=body, timeout=10).status_code, 413)
    r = requests.get(swagger, data=body, timeout=10)
    logs = docker.from_env().containers.get(gw.container_name).logs(tail=40).decode(errors="replace")
    assert r.status_code == 413 and "takes GET or HEAD with no body" in r.text, (r.status_code, r.text[:200], logs)
    assert requests.post(swagger, timeout=10).status_code == 405
    assert requests.get(swagger, timeout=10).status_code == 200
    backend.reload()
    assert backend.id == props["container_id"] and backend.attrs["State"]["StartedAt"] == started, "no roll, no restart"
    assert requests.post(uri, json={"data": [ROW]}, headers=auth, timeout=30).status_code == 200
