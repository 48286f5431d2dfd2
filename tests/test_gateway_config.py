"""Tests of the pure gateway renderers (`mldeploy.providers.front.gateway_config`).

Auth, validation, no keys in logs, TCP and Unix-socket backends, the retry rule
that never sends a POST twice, and (with Docker) that the output passes the
gateway image's own ``nginx -t``.
"""

from __future__ import annotations

import re

import pytest

from mldeploy.providers.front.gateway_config import (
    DEFAULT_IMAGE,
    backend_socket,
    parse_route_meta,
    render_nginx_conf,
    render_service_conf,
)

KEY1 = "k1_" + "A" * 20 + "-x"
KEY2 = "k2_" + "b" * 30


# ------------------------------------------------------------------ renderers


def test_service_conf_with_keys_has_exact_bearer_check():
    conf = render_service_conf("iris", 18080, 18081, [KEY1, KEY2], max_body_bytes=4096)
    assert "listen 127.0.0.1:18080;" in conf
    assert "server 127.0.0.1:18081" in conf
    assert f'"~^Bearer (?:{KEY1}|{KEY2})$" 1;' in conf
    assert "return 401" in conf and "WWW-Authenticate 'Bearer" in conf
    assert "client_max_body_size 4096;" in conf
    assert "proxy_pass http://mldeploy_backend_iris/score;" in conf
    assert "proxy_pass http://mldeploy_backend_iris/swagger.json;" in conf
    assert "proxy_http_version 1.1;" in conf and "keepalive 16;" in conf
    assert "proxy_read_timeout 60s;" in conf
    assert "proxy_next_upstream error" in conf
    assert 'proxy_set_header Authorization "";' in conf
    # The auth check sits in the score location only: swagger stays open.
    score = conf.split("location = /api/v1/service/iris/score {")[1].split("\n    }")[0]
    swagger = conf.split("location = /api/v1/service/iris/swagger.json {")[1].split("\n    }")[0]
    assert "mldeploy_authorized_iris" in score
    assert "mldeploy_authorized_iris" not in swagger


def test_service_conf_without_keys_has_no_auth():
    conf = render_service_conf("my-model-2", 20000, 20001, None)
    assert "map $http_authorization" not in conf
    assert "return 401" not in conf
    assert "WWW-Authenticate" not in conf
    assert "client_max_body_size 1048576;" in conf
    # Dashes become underscores in nginx identifiers.
    assert "upstream mldeploy_backend_my_model_2 {" in conf


def test_route_meta_roundtrip_carries_no_keys():
    conf = render_service_conf("iris", 18080, 18081, [KEY1, KEY2])
    meta = parse_route_meta(conf)
    assert meta == {"service": "iris", "port": 18080, "backend_port": 18081, "auth": True, "max_body_bytes": 1048576}
    header = conf.splitlines()[0]
    assert KEY1 not in header and KEY2 not in header


@pytest.mark.parametrize("name", ["", "A", "Iris", "-a", "a-", "a_b", "a.b", "a" * 33, "a b", None, 7])
def test_bad_service_name_is_named(name):
    with pytest.raises(ValueError, match=r"^service_name:"):
        render_service_conf(name, 18080, 18081, None)


@pytest.mark.parametrize("name", ["a", "0", "a-b", "a" * 32, "x1-y2-z3"])
def test_good_service_names(name):
    assert f"/api/v1/service/{name}/score" in render_service_conf(name, 18080, 18081, None)


@pytest.mark.parametrize(
    "field,kwargs",
    [
        ("port", {"port": 80}),
        ("port", {"port": 1023}),
        ("port", {"port": 65536}),
        ("port", {"port": "18080"}),
        ("port", {"port": True}),
        ("backend_port", {"backend_port": 0}),
        ("backend_port", {"backend_port": 70000}),
        ("backend_port", {"backend_port": 18081.0}),
        ("port", {"port": 18081, "backend_port": 18081}),
        ("max_body_bytes", {"max_body_bytes": 0}),
        ("max_body_bytes", {"max_body_bytes": -1}),
        ("max_body_bytes", {"max_body_bytes": "1m"}),
    ],
)
def test_bad_ports_and_limits_are_named(field, kwargs):
    args = {"service_name": "iris", "port": 18080, "backend_port": 18081, "keys": None} | kwargs
    with pytest.raises(ValueError, match=rf"^{field}:"):
        render_service_conf(**args)


@pytest.mark.parametrize(
    "keys",
    [
        [],
        "a-single-string-key-0123",
        ["short"],
        ["x" * 129],
        ["has spaces in it 0123"],
        ['quote"inside0123456'],
        ["semi;colon012345678"],
        ["dollar$var012345678"],
        ["ok_key_0123456789", "bad key!"],
        [None],
    ],
)
def test_bad_keys_are_named(keys):
    with pytest.raises(ValueError, match=r"^keys(\[\d+\])?:") as err:
        render_service_conf("iris", 18080, 18081, keys)
    for k in keys if isinstance(keys, list) else []:
        if isinstance(k, str) and len(k) > 5:
            assert k not in str(err.value), "the key itself must not be echoed"


@pytest.mark.parametrize("access_log", [False, True])
def test_no_log_directive_can_carry_a_key(access_log):
    main = render_nginx_conf(access_log=access_log)
    service = render_service_conf("iris", 18080, 18081, [KEY1, KEY2])
    # Services never define their own logs.
    assert not re.search(r"^\s*(access_log|error_log|log_format)\b", service, re.M)
    logs = [line for line in main.splitlines() if re.match(r"\s*(access_log|error_log|log_format)\b", line)]
    assert logs
    for line in logs:
        assert "$http_" not in line and "$args" not in line and "$query_string" not in line
        assert "$request_uri" not in line and "$request " not in line and "$request'" not in line
        assert "$request_body" not in line
    assert "error_log stderr" in main
    if not access_log:
        assert "access_log off;" in main
    # Keys appear exactly once, in the map.
    assert service.count(KEY1) == 1 and service.count(KEY2) == 1


def test_main_conf_paths_and_include():
    main = render_nginx_conf(include_dir="/x/services", runtime_dir="/run/gw", worker_processes="auto")
    assert "include /x/services/*.conf;" in main
    assert "pid /run/gw/nginx.pid;" in main
    assert "client_body_temp_path /run/gw/client_body;" in main
    assert "worker_processes auto;" in main
    with pytest.raises(ValueError, match="^worker_processes:"):
        render_nginx_conf(worker_processes=0)
    with pytest.raises(ValueError, match="^include_dir:"):
        render_nginx_conf(include_dir="relative/dir")
    with pytest.raises(ValueError, match="^runtime_dir:"):
        render_nginx_conf(runtime_dir="/tmp/x; evil")


@pytest.mark.docker
def test_rendered_configs_pass_nginx_t(tmp_path):
    """``nginx -t`` (parses and checks, binds nothing) with the gateway image's own nginx."""
    import docker

    services = tmp_path / "services"
    services.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "nginx.conf").write_text(
        render_nginx_conf(include_dir=str(services), runtime_dir=str(run), access_log=True, user="www-data", group="nogroup")
    )
    (services / "a.conf").write_text(render_service_conf("a", 18080, 18081, [KEY1, KEY2]))
    (services / "b-2.conf").write_text(render_service_conf("b-2", 18082, 18083, None, max_body_bytes=10))
    (services / "c.conf").write_text(render_service_conf("c", 18084, None, [KEY1], backend_socket=backend_socket("c")))
    client = docker.from_env()
    try:
        container = client.containers.run(
            DEFAULT_IMAGE,
            ["nginx", "-t", "-e", "stderr", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
            volumes={str(tmp_path): {"bind": str(tmp_path), "mode": "rw"}},
            network_mode="none",
            detach=True,
        )
        code = container.wait(timeout=60)["StatusCode"]
        output = container.logs().decode(errors="replace")
        container.remove(force=True)
    finally:
        client.close()
    assert code == 0, output
    assert "warn" not in output, output




# ------------------------------------------------------------------ socket backends and retries


def test_no_route_sends_a_post_twice():
    """nginx retries a request that reached the backend only with `non_idempotent`: never here."""
    for conf in (
        render_service_conf("iris", 18080, 18081, [KEY1]),
        render_service_conf("iris", 80, 5001, None, listen_host="0.0.0.0"),
        render_service_conf("iris", 18080, None, [KEY1], backend_socket=backend_socket("iris")),
    ):
        directives = [ln.strip() for ln in conf.splitlines() if ln.strip().startswith("proxy_next_upstream ")]
        assert directives == ["proxy_next_upstream error;"], directives
        assert "non_idempotent" not in re.sub(r"#.*", "", conf)


def test_socket_route_proxies_to_the_link_without_pooled_connections():
    conf = render_service_conf("my-svc", 20001, None, [KEY1], backend_socket=backend_socket("my-svc"))
    upstream = conf.split("upstream mldeploy_backend_my_svc {")[1].split("}")[0]
    assert "server unix:/run/mldeploy-backends/my-svc/current.sock max_fails=0;" in upstream
    # A pooled connection would outlive a roll's link switch: none.
    assert not re.search(r"^\s*keepalive\b", upstream, re.M)
    assert "127.0.0.1:" not in upstream
    meta = parse_route_meta(conf)
    assert meta["backend_socket"] == "/run/mldeploy-backends/my-svc/current.sock"
    assert "backend_port" not in meta and KEY1 not in conf.splitlines()[0]
    assert f"X-Mldeploy-Backend {meta['marker']} always;" in conf


def test_socket_route_marker_follows_keys_and_port_but_never_shows_them():
    sock = backend_socket("svc")
    a = parse_route_meta(render_service_conf("svc", 20001, None, [KEY1], backend_socket=sock))["marker"]
    b = parse_route_meta(render_service_conf("svc", 20001, None, [KEY2], backend_socket=sock))["marker"]
    c = parse_route_meta(render_service_conf("svc", 20002, None, [KEY1], backend_socket=sock))["marker"]
    again = parse_route_meta(render_service_conf("svc", 20001, None, [KEY1], backend_socket=sock))["marker"]
    assert len({a, b, c}) == 3 and a == again
    assert KEY1[:8] not in a and re.fullmatch(r"r[0-9a-f]{12}", a)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"backend_port": None},
        {"backend_port": 18081, "backend_socket": "/run/x/current.sock"},
        {"backend_port": None, "backend_socket": "relative/current.sock"},
        {"backend_port": None, "backend_socket": "/run/x/../y/current.sock"},
        {"backend_port": None, "backend_socket": "/run/x/current;evil.sock"},
        {"backend_port": None, "backend_socket": "/run/x/current"},
        {"backend_port": None, "backend_socket": "/" + "a" * 120 + ".sock"},
    ],
)
def test_bad_backend_is_named(kwargs):
    with pytest.raises(ValueError, match=r"^backend_(port|socket):"):
        render_service_conf("svc", 18080, kwargs.pop("backend_port"), None, **kwargs)


def test_main_conf_user_and_group():
    assert "\nuser www-data;\n" in render_nginx_conf()
    assert "\nuser www-data nogroup;\n" in render_nginx_conf(group="nogroup")
    assert "user " not in render_nginx_conf(user=None).split("worker_processes")[0].replace("# (no user", "")
    with pytest.raises(ValueError, match="^group:"):
        render_nginx_conf(user=None, group="nogroup")
    with pytest.raises(ValueError, match="^group:"):
        render_nginx_conf(group="no group")


def test_client_keepalive_is_rendered():
    assert "keepalive_timeout 65s;" in render_nginx_conf()
    assert "keepalive_timeout 0s;" in render_nginx_conf(client_keepalive_timeout=0)
    with pytest.raises(ValueError, match="^client_keepalive_timeout:"):
        render_nginx_conf(client_keepalive_timeout=-1)
