"""The benchmark's pure pieces: reading `wrk` output. No figure is asserted about speed."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import ROOT

WRK_OUTPUT = """Running 3s test @ http://127.0.0.1:26801/api/v1/service/svc/score
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     7.88ms    2.06ms   1.02s    76.95%
    Req/Sec   519.91    100.32   767.00     72.50%
  Latency Distribution
     50%  753.00us
     75%    4.27ms
     90%    4.94ms
     99%   17.67ms
  3103 requests in 3.02s, 1.37MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:   1027.25
Transfer/sec:    467.63KB
"""


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("mldeploy_bench", ROOT / "bench" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mldeploy_bench"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("mldeploy_bench", None)


def test_wrk_output_is_read_in_milliseconds(bench) -> None:
    m = bench.parse_wrk(WRK_OUTPUT)
    assert m == {"p50": pytest.approx(0.753), "p99": pytest.approx(17.67), "max": pytest.approx(1020.0),
                 "throughput": pytest.approx(1027.25), "requests": 3103.0, "errors": 7.0}


def test_wrk_output_without_errors(bench) -> None:
    text = "\n".join(ln for ln in WRK_OUTPUT.splitlines() if "errors" not in ln and "Non-2xx" not in ln)
    assert bench.parse_wrk(text)["errors"] == 0


def test_unexpected_wrk_output_is_an_error(bench) -> None:
    with pytest.raises(ValueError, match="unexpected wrk output"):
        bench.parse_wrk("unable to connect to 127.0.0.1:9 Connection refused")


def test_serving_options(bench) -> None:
    a = bench.parse_args(["--only", "serve", "--runs", "1", "--serve-seconds", "3"])
    assert (a.only, a.runs, a.serve_seconds, a.concurrency, a.wrk_threads) == (["serve"], 1, 3, 8, 2)
    with pytest.raises(SystemExit):
        bench.parse_args(["--concurrency", "1", "--wrk-threads", "2"])
