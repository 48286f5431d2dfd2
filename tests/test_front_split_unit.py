"""The nginx split's pure parts (issue 20): what is rendered for each weight, bad input named, and
the per-version metrics read back from the split log."""

from __future__ import annotations

import pytest

from mldeploy.providers.front import split

pytestmark = pytest.mark.unit

SOCKETS = {"current": "/run/b/svc/current.sock", "candidate": "/run/b/svc/candidate.sock"}


def test_weights_render_as_split_clients_and_0_or_100_as_one_catch_all() -> None:
    conf = split.render_split("svc", SOCKETS, 10)
    assert 'split_clients "${request_id}" $mldeploy_svc_version {\n    10% candidate;\n    * current;\n}' in conf
    assert "upstream mldeploy_svc_candidate {\n    server unix:/run/b/svc/candidate.sock max_fails=0;" in conf
    assert "{\n    * current;\n}" in split.render_split("svc", SOCKETS, 0)
    assert "{\n    * candidate;\n}" in split.render_split("svc", SOCKETS, 100)
    assert "0%" not in split.render_split("svc", SOCKETS, 0)  # nginx refuses a 0 % line


def test_the_mirror_share_and_its_own_log_format() -> None:
    relay = split.MirrorRelay("/tmp/gw/mirror-svc.sock", "/tmp/gw/split-svc.log", 1_048_576)
    conf = split.render_split("svc", SOCKETS, 0, mirror_percent=20, relay=relay)
    assert '$mldeploy_svc_mirror {\n    20% 1;\n    * "";\n}' in conf
    assert "log_format mldeploy_svc_mirror '$msec mirror $status $request_time';" in conf
    # The copy goes to the relay, which answers at once and mirrors it on to the candidate, logging its answer.
    location = split.render_mirror_location("svc", relay.socket)
    assert "internal;" in location and "return 204;" in location
    assert "proxy_pass http://unix:/tmp/gw/mirror-svc.sock:/relay;" in location
    assert "listen unix:/tmp/gw/mirror-svc.sock;" in conf and "empty_gif;" in conf
    assert "proxy_pass http://mldeploy_svc_candidate/score;" in conf
    assert "access_log /tmp/gw/split-svc.log mldeploy_svc_mirror;" in conf
    assert "listen unix" not in split.render_split("svc", SOCKETS, 10, relay=relay), "no relay without a mirror"
    score = split.render_score_location("svc", "/tmp/gw/split-svc.log")
    assert "proxy_pass http://mldeploy_svc_$mldeploy_svc_version/score;" in score and "mirror_request_body on;" in score


@pytest.mark.parametrize("call, field", [
    (lambda: split.render_split("svc", SOCKETS, 101), "candidate"),
    (lambda: split.render_split("svc", SOCKETS, True), "candidate"),
    (lambda: split.render_split("svc", SOCKETS, 10, -1), "mirror_percent"),
    (lambda: split.render_split("Svc;", SOCKETS, 10), "ident"),
    (lambda: split.render_split("svc", {"current": SOCKETS["current"]}, 10), "sockets"),
    (lambda: split.render_split("svc", {**SOCKETS, "candidate": "/run/../x.sock"}, 10), "sockets.candidate"),
    (lambda: split.render_score_location("svc", "relative.log"), "log_path"),
    (lambda: split.render_mirror_location("svc", "/tmp/x.log"), "relay_socket"),
    (lambda: split.render_mirror_relay("svc", split.MirrorRelay("/tmp/m.sock", "/tmp/x.log", 1024, "score")), "backend_path"),
    (lambda: split.render_mirror_relay("svc", split.MirrorRelay("/tmp/m.sock", "/tmp/x.log", 0)), "relay.max_body_bytes"),
])
def test_bad_input_names_the_field(call, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        call()


def test_metrics_are_each_versions_own_since_a_moment() -> None:
    log = [
        "100.000 candidate 200 0.010",  # before `since`
        "200.000 candidate 200 0.020",
        "200.500 candidate 500 0.030",
        "201.000 current 500 0.900",
        "201.500 mirror 502 0.001",
        "202.000 candidate 2",  # a half-written line
        "202.5 candidate",
    ]
    m = split.metrics_from_log(log, "candidate", since=150)
    assert m == (2, 1, 30.0)
    assert split.metrics_from_log(log, "mirror", 0).errors == 1
    assert split.metrics_from_log([], "candidate", 0).p99_ms is None


def test_p99_is_the_nearest_rank() -> None:
    assert split.p99([float(i) for i in range(1, 101)]) == 99.0
    assert split.p99([5.0]) == 5.0


def test_a_route_with_a_split_names_both_links_and_a_weight_is_a_new_marker() -> None:
    from mldeploy.providers.front.gateway_config import SplitRoute, parse_route_meta, render_service_conf

    current = "/run/mldeploy-backends/svc-a/current.sock"
    split = SplitRoute("/run/mldeploy-backends/svc-a/candidate.sock", 25, "/tmp/mldeploy-gw/split-svc-a-1.log")
    keys = ["k" * 20]
    plain = render_service_conf("svc-a", 21000, None, keys, backend_socket=current)
    at25 = render_service_conf("svc-a", 21000, None, keys, backend_socket=current, split=split)
    at100 = render_service_conf("svc-a", 21000, None, keys, backend_socket=current,
                                split=SplitRoute(split.candidate_socket, 100, split.log_path))
    markers = {parse_route_meta(t)["marker"] for t in (plain, at25, at100)}
    assert len(markers) == 3, "each weight is a reload Gateway.put_route can confirm"
    assert "split_clients" not in plain and "mirror" not in plain
    assert "25% candidate;" in at25 and f"server unix:{split.candidate_socket}" in at25 and f"server unix:{current}" in at25
    # A wrong key never reaches either version: not logged against the candidate.
    assert f"access_log {split.log_path} mldeploy_svc_a_split if=$mldeploy_authorized_svc_a;" in at25
    keyless = render_service_conf("svc-a", 21000, None, None, backend_socket=current, split=split)
    assert f"access_log {split.log_path} mldeploy_svc_a_split;" in keyless
    # Swagger and health stay on the current version.
    assert "proxy_pass http://mldeploy_backend_svc_a/swagger.json;" in at25


def test_a_split_beside_a_port_backend_takes_the_candidate_s_address() -> None:
    """A Kubernetes pod's front end: its own scoring server on 127.0.0.1, the candidate at an address:port."""
    from mldeploy.providers.front.gateway_config import SplitRoute, render_service_conf

    conf = render_service_conf("svc-a", 21000, 21001, None, split=SplitRoute("10.96.0.7:5001", 10, "/tmp/x.log"))
    assert "upstream mldeploy_svc_a_current {\n    server 127.0.0.1:21001 max_fails=0;" in conf
    assert "upstream mldeploy_svc_a_candidate {\n    server 10.96.0.7:5001 max_fails=0;" in conf
    with pytest.raises(ValueError, match="sockets.candidate"):
        render_service_conf("svc-a", 21000, 21001, None, split=SplitRoute("candidate-host:5001", 10, "/tmp/x.log"))


def test_a_candidate_front_end_gets_the_key_and_nothing_else_does() -> None:
    """`candidate_front`: the candidate's share and the mirrored copies carry the client's key to the candidate's
    own front end (which checks it again); the current scoring server, and every keyless route, never get it."""
    from mldeploy.providers.front.gateway_config import PROXY_HEADERS, SplitRoute, render_service_conf

    key = "k" * 43
    route = render_service_conf("svc", 8080, 5001, [key], listen_host="0.0.0.0", runtime_dir="/tmp/fe",
                                split=SplitRoute("10.96.0.7:8080", 10, "/tmp/fe/split.log", 20,
                                                 candidate_front="/api/v1/service/svc/score", candidate_tls=True))
    assert ("map $mldeploy_svc_version $mldeploy_svc_pass {\n    candidate https://mldeploy_svc_candidate/api/v1/service/svc/score;\n"
            "    default http://mldeploy_svc_current/score;\n}") in route
    assert "map $mldeploy_svc_version $mldeploy_svc_upstream_key {\n    candidate $http_authorization;\n    default \"\";\n}" in route
    score = route.split("location = /api/v1/service/svc/score {")[1].split("\n    }\n")[0]
    assert "proxy_set_header Authorization $mldeploy_svc_upstream_key;" in score and "proxy_pass $mldeploy_svc_pass;" in score
    # A location that sets a header drops all of the server's: every one is said again.
    assert [ln.split()[1] for ln in score.splitlines() if "proxy_set_header" in ln] == [n for n, _ in PROXY_HEADERS]
    assert score.index("return 401") < score.index("proxy_pass"), "the serving front end checks the key first"
    mirror = route.split("location = /_mldeploy_mirror_svc {")[1].split("\n    }\n")[0]
    assert "proxy_set_header Authorization $http_authorization;" in mirror  # to the relay, its own socket
    relay = route.split("location = /_mldeploy_relay_svc {")[1].split("\n    }\n")[0]
    assert "proxy_pass https://mldeploy_svc_candidate/api/v1/service/svc/score;" in relay and "proxy_set_header" not in relay
    # The server's own line still strips the key; no keyless route sets a header of its own.
    assert route.count('proxy_set_header Authorization "";') == 1
    for path in ("/swagger.json", "", "/", "/health"):
        keyless = route.split(f"location = /api/v1/service/svc{path} {{")[1].split("\n    }\n")[0]
        assert "proxy_set_header" not in keyless and "$mldeploy_svc_pass" not in keyless, path
    # A bare candidate (the local target's socket): the route is what it was, no key goes anywhere.
    bare = render_service_conf("svc", 18080, None, [key], backend_socket="/run/x/current.sock",
                               split=SplitRoute("/run/x/candidate.sock", 10, "/tmp/s.log", 20))
    assert "proxy_set_header Authorization $" not in bare and "upstream_key" not in bare and "candidate_front" not in bare
    with pytest.raises(ValueError, match="front.scheme"):
        split.CandidateFront("/score", "ftp")
    with pytest.raises(ValueError, match="backend_path"):
        split.CandidateFront("/../score")
