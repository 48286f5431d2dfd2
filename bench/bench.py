#!/usr/bin/env python3
"""Benchmarks: how fast mldeploy deploys, rolls and serves, next to the bare server.

Everything is measured in one run, on this machine, against the real engine
(Automation API, as scripts/stack.py and the end-to-end tests drive it) and
real containers, on 127.0.0.1 only:

- deploy: cold first `pulumi up` of the dev program (base image present,
  wheelhouse empty, no Docker layer cache), warm `up` after `destroy`, destroy;
- no-op `pulumi up` and `pulumi preview`;
- model-only update: `up` start to the new version answering, image builds
  (engine events), failed requests and latency while a client scores at a
  steady rate for the whole update;
- serving: p50/p99/max latency and throughput, measured by `wrk` (a C load
  generator, so the clients are not the bottleneck), of bare single-worker
  `azmlinfsrv` on the host and of the deployed service at `cpu_cores` 1 and 2,
  side by side with their ratios and the load average of each run;
- scale: preview/up/no-op/destroy of stacks with 1, 5 and 10 services.

The project is copied into a temporary folder with its own state backend,
registry and stack names (`bench-...`), so the developer's dev stack is never
touched; every stack is destroyed and removed at the end, even on failure.
Writes bench/results/<UTC timestamp>.md and bench/results/latest.md and prints
the table. Nothing here asserts a figure.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
DEFAULT_BASE_IMAGE = "mldeploy/base:bookworm-py3.11"
MODEL_FILE = "sklearn_regression_model.pkl"
ROW = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
BODY = {"data": [ROW]}
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", ".pulumi-state", "__pycache__", ".pytest_cache", "models",
                                     "results", "bench")
IMAGE_TYPE_SUFFIX = ":Image"  # pulumi-python:dynamic/mldeploy:Image
BUILD_OPS = {"create", "update", "replace", "create-replacement"}
# The bare server: azmlinfsrv's own entry point (what the `azmlinfsrv` script
# runs), with its listen host set to loopback; the CLI always binds 0.0.0.0.
BASELINE_LAUNCHER = (
    "import sys\n"
    "import azureml_inference_server_http.constants as c\n"
    "c.DEFAULT_HOST = '127.0.0.1'\n"
    "from azureml_inference_server_http.amlserver import run\n"
    "sys.argv[0] = 'azmlinfsrv'\n"
    "sys.exit(run())\n"
)

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[bench {time.perf_counter() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# --- results -----------------------------------------------------------------


@dataclass
class Row:
    section: str
    metric: str
    unit: str
    values: list[float] = field(default_factory=list)


class Results:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.errors: list[str] = []
        self.serving: dict[str, dict[str, list[float]]] = {}

    def add(self, section: str, metric: str, unit: str, value: float) -> None:
        for row in self.rows:
            if row.section == section and row.metric == metric:
                row.values.append(float(value))
                return
        self.rows.append(Row(section, metric, unit, [float(value)]))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "n/a"
    if unit in ("count", "requests", "builds"):
        return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
    if unit == "ms":
        return f"{value:.2f}" if value < 10 else f"{value:.1f}"
    if unit == "req/s":
        return f"{value:.1f}" if value < 100 else f"{value:.0f}"
    if unit == "s":
        return f"{value:.2f}" if value < 100 else f"{value:.1f}"
    return f"{value:.3g}"


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation); NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


# --- machine facts -----------------------------------------------------------


def _cmd(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine_facts() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")).split()[1])
        mem = f"{kb / 1024**2:.1f} GiB"
    try:
        from importlib.metadata import version

        aml = version("azureml-inference-server-http")
        sk = version("scikit-learn")
    except Exception:  # noqa: BLE001
        aml = sk = "?"
    return {
        "CPU": f"{cpu}, {os.cpu_count()} logical CPUs (`nproc`: {_cmd(['nproc'])})",
        "memory": mem,
        "OS": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "Docker": _cmd(["docker", "version", "-f", "{{.Server.Version}}"]),
        "Pulumi": _cmd(["pulumi", "version"]),
        "Python": platform.python_version(),
        "azmlinfsrv": aml,
        "scikit-learn": sk,
    }


def loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


def dir_size(path: Path) -> int:
    total = 0
    if path.is_dir():
        for p in path.rglob("*"):
            with contextlib.suppress(OSError):
                if p.is_file():
                    total += p.stat().st_size
    return total


# --- HTTP clients ------------------------------------------------------------


def close_to(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


class PacedClient(threading.Thread):
    """One client scoring at a steady rate (fixed schedule), bounded in count and time.

    Records every request: (start, latency, ok, first prediction or None, error).
    """

    def __init__(self, uri: str, key: str | None, rate: float, max_seconds: float, max_requests: int):
        super().__init__(daemon=True)
        self.uri, self.key = uri, key
        self.period = 1.0 / rate
        self.max_seconds, self.max_requests = max_seconds, max_requests
        self.stop_event = threading.Event()
        self.records: list[tuple[float, float, bool, float | None, str]] = []

    def run(self) -> None:
        import requests

        session = requests.Session()
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        start = time.perf_counter()
        next_at = start
        for _ in range(self.max_requests):
            if self.stop_event.is_set() or time.perf_counter() - start > self.max_seconds:
                break
            t = time.perf_counter()
            try:
                r = session.post(self.uri, json=BODY, headers=headers, timeout=10)
                lat = time.perf_counter() - t
                if r.status_code == 200:
                    self.records.append((t, lat, True, float(r.json()[0]), ""))
                else:
                    self.records.append((t, lat, False, None, f"HTTP {r.status_code} {r.text[:120]}"))
            except Exception as exc:  # noqa: BLE001 - every failure counts
                self.records.append((t, time.perf_counter() - t, False, None, repr(exc)[:160]))
            next_at += self.period
            delay = next_at - time.perf_counter()
            if delay > 0:
                self.stop_event.wait(delay)
            else:
                next_at = time.perf_counter()  # behind schedule: no burst to catch up

    def finish(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
%s
"""


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}[unit]


def parse_wrk(text: str) -> dict[str, float]:
    """p50/p99/max (ms), throughput (req/s), requests, errors from `wrk --latency` output. Pure."""
    import re

    lat = {m.group(1): _ms(m.group(2), m.group(3))
           for m in re.finditer(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)}
    mx = re.search(r"^\s+Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s|m|h)", text, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    total = re.search(r"^\s+(\d+) requests in", text, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if not (lat.get("50") and lat.get("99") and mx and rps and total):
        raise ValueError(f"unexpected wrk output:\n{text[-1500:]}")
    return {
        "p50": lat["50"], "p99": lat["99"], "max": _ms(mx.group(1), mx.group(2)),
        "throughput": float(rps.group(1)), "requests": float(total.group(1)),
        "errors": float((int(non2xx.group(1)) if non2xx else 0) + (sum(int(x) for x in sock.groups()) if sock else 0)),
    }


def wrk_load(uri: str, key: str | None, threads: int, connections: int, seconds: float, warmup: float,
             script_dir: Path) -> dict[str, float]:
    """`wrk` (keep-alive, closed loop: each connection sends the next request when the last
    answered) for `warmup` seconds (discarded), then `seconds` measured; bounded in time."""
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"' if key else ""
    script = script_dir / f"wrk-{uuid.uuid4().hex[:6]}.lua"
    script.write_text(WRK_SCRIPT % (json.dumps(BODY), auth))
    os.chmod(script, 0o600)  # it holds the key
    try:
        base = ["wrk", f"-t{threads}", f"-c{connections}", "--timeout", "10s", "-s", str(script)]
        if warmup > 0:
            subprocess.run([*base, f"-d{max(1, round(warmup))}s", uri], capture_output=True, text=True,
                           timeout=warmup + 60)
        load_before = loadavg()
        run = subprocess.run([*base, "--latency", f"-d{max(1, round(seconds))}s", uri], capture_output=True,
                             text=True, timeout=seconds + 60)
        if run.returncode != 0:
            raise RuntimeError(f"wrk failed ({run.returncode}): {run.stderr[-500:]}")
        m = parse_wrk(run.stdout)
        m["load1"] = float(load_before.split()[0]) if load_before != "?" else float("nan")
        return m
    finally:
        script.unlink(missing_ok=True)


def wrk_version() -> str:
    out = _cmd(["wrk", "--version"])
    return out.splitlines()[0].split(" [")[0] if out and out != "?" else "?"


# --- the benchmark -----------------------------------------------------------


class BenchStack:
    """A real stack driven through the Automation API; every operation timed and logged."""

    def __init__(self, bench: "Bench", name: str, program: Callable[[], None]):
        import stack as stack_cli  # scripts/stack.py of the copy

        self.bench, self.name = bench, name
        self.stack = stack_cli.select_stack(name, program=program, root=bench.work)
        bench.stacks.append(self)

    def run(self, op: str, **kw: Any) -> tuple[Any, float, list[tuple[str, str]]]:
        lines: list[str] = []
        events: list[tuple[str, str]] = []

        def on_event(ev: Any) -> None:
            pre = getattr(ev, "resource_pre_event", None)
            if pre is not None and pre.metadata is not None:
                events.append((str(getattr(pre.metadata.op, "value", pre.metadata.op)), pre.metadata.type))

        self.bench.last_op = f"`{op}` of {self.name}"
        t = time.perf_counter()
        try:
            res = getattr(self.stack, op)(on_output=lines.append, on_event=on_event, color="never", **kw)
        except BaseException:
            self.bench.engine_log(self.name, op, lines)
            raise
        dt = time.perf_counter() - t
        self.bench.engine_log(self.name, op, lines)
        return res, dt, events

    def outputs(self) -> dict[str, Any]:
        return {k: v.value for k, v in self.stack.outputs().items()}


def error_summary(exc: BaseException) -> str:
    """The engine's own error lines (diagnostics), else the exception's last lines."""
    text = str(exc)
    errs: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("error:") and line != "error: update failed" and line not in errs:
            errs.append(line)
    picked = errs[:3] or [ln.strip() for ln in text.strip().splitlines()[-6:] if ln.strip()]
    return f"{type(exc).__name__}: " + " / ".join(picked)[:1500]


def changes(summary: dict[str, int] | None) -> dict[str, int]:
    return {str(getattr(k, "value", k)): v for k, v in (summary or {}).items() if str(getattr(k, "value", k)) != "same" and v}


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.run_id = uuid.uuid4().hex[:6]
        self.tmp = Path(tempfile.mkdtemp(prefix=f"mldeploy-bench-{self.run_id}-"))
        self.work = self.tmp / "project"
        self.results = Results()
        self.stacks: list[BenchStack] = []
        self.base_images: list[str] = []
        self.baseline: subprocess.Popen[bytes] | None = None
        self.log_path = self.tmp / "engine.log"
        self.dev: BenchStack | None = None
        self.last_op = ""
        self.model_path = self.work / "sample" / "models" / MODEL_FILE

    # -- set-up ---------------------------------------------------------------

    def prepare(self) -> None:
        shutil.copytree(ROOT, self.work, ignore=COPY_IGNORE)
        for f in (self.work / "stacks").glob("Pulumi.*.yaml"):
            if f.name != "Pulumi.dev.yaml":
                f.unlink()
        state = self.work / ".pulumi-state"
        (state / "backend").mkdir(parents=True)
        os.environ["PULUMI_BACKEND_URL"] = f"file://{state / 'backend'}"
        os.environ.setdefault("PULUMI_CONFIG_PASSPHRASE", "mldeploy-bench")
        os.environ["MLDEPLOY_PROJECT_DIR"] = str(self.work)
        os.environ["MLDEPLOY_STATE_DIR"] = str(state)
        for k in ("MLDEPLOY_REGISTRY_PATH", "MLDEPLOY_BASE_IMAGE", "MLDEPLOY_GATEWAY_IMAGE"):
            os.environ.pop(k, None)
        # The copy's modules, never the checkout's: the provider processes import them too.
        sys.path[:0] = [str(self.work), str(self.work / "scripts")]
        self.train(0.1)
        log(f"project copied to {self.work}; stacks are named bench-*-{self.run_id}")

    def train(self, alpha: float, path: Path | None = None) -> float:
        """Train the sample model; return its prediction for ROW (computed locally)."""
        import joblib
        import numpy as np

        path = path or self.model_path
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(self.work / "sample" / "train.py"), "--out", str(path), "--alpha", str(alpha)],
                       check=True, capture_output=True)
        return float(joblib.load(path).predict(np.array([ROW], dtype=float))[0])

    def engine_log(self, stack: str, op: str, lines: list[str]) -> None:
        with open(self.log_path, "a") as fh:
            fh.write(f"===== {stack} {op} =====\n" + "\n".join(lines) + "\n")

    def bench_base_image(self) -> str:
        """A base image with the same content and a new id: no Docker layer cache can match it."""
        import docker

        nonce = uuid.uuid4().hex[:10]
        tag = f"mldeploy-bench/base:py3.11-{self.run_id}-{nonce}"
        dockerfile = f"FROM {DEFAULT_BASE_IMAGE}\nLABEL mldeploy.bench.run={self.run_id} mldeploy.bench.nonce={nonce}\n"
        docker.from_env().images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, pull=False)
        self.base_images.append(tag)
        return tag

    def image_id(self, name: str) -> str | None:
        import docker
        import docker.errors

        try:
            return docker.from_env().images.get(name).id
        except docker.errors.ImageNotFound:
            return None

    def cached_layers_on(self, base: str) -> int:
        """Intermediate images whose parent is `base`: the Docker layer cache a build could reuse."""
        import docker

        base_id = self.image_id(base)
        if not base_id:
            return 0
        return sum(1 for im in docker.from_env().images.list(all=True) if im.attrs.get("Parent") == base_id)

    def score_once(self, uri: str, key: str | None) -> float:
        import requests

        headers = {"Authorization": f"Bearer {key}"} if key else {}
        r = requests.post(uri, json=BODY, headers=headers, timeout=30)
        r.raise_for_status()
        return float(r.json()[0])

    # -- phases ---------------------------------------------------------------

    def phase_deploy(self) -> None:
        """Cold up (empty wheelhouse, new base id), destroy, warm up; `runs` times."""
        import stack as stack_cli

        R, S = self.results, "deploy (dev program: 1 model, 1 image, 1 service)"
        self.dev = BenchStack(self, f"bench-dev-{self.run_id}", stack_cli.project_program(self.work))
        pip_cache = Path(os.environ.get("PIP_CACHE_DIR") or Path.home() / ".cache" / "pip")
        pip_before = dir_size(pip_cache)
        for i in range(self.args.runs):
            cache = self.tmp / f"cache-{i}"
            cache.mkdir()
            os.environ["MLDEPLOY_CACHE"] = str(cache)  # the provider process inherits it: empty wheelhouse
            if self.args.fresh_pip_cache:
                os.environ["PIP_CACHE_DIR"] = str(self.tmp / f"pip-cache-{i}")
            os.environ["MLDEPLOY_BASE_IMAGE"] = self.bench_base_image()
            log(f"deploy run {i + 1}/{self.args.runs}: cold up")
            res, dt, _ = self.dev.run("up")
            R.add(S, "cold `pulumi up` (first deploy)", "s", dt)
            out = self.dev.outputs()
            self.score_once(out["scoring_uri"], out["primary_key"])
            wheels = list((cache / "wheelhouse").rglob("*.whl"))
            R.note(f"Cold deploy run {i + 1}: the empty wheelhouse was filled with {len(wheels)} wheels "
                   f"({sum(w.stat().st_size for w in wheels) / 1e6:.0f} MB).")
            if not self.args.fresh_pip_cache:
                pip_after = dir_size(pip_cache)
                R.note(f"Cold deploy run {i + 1}: pip's own HTTP cache ({pip_cache}, left as the machine has it; "
                       f"`--fresh-pip-cache` empties it for every cold run) held {pip_before / 1e6:.0f} MB before "
                       f"and {pip_after / 1e6:.0f} MB after"
                       + (": pip kept nothing, so the wheels were downloaded from the package index."
                          if pip_after == 0 else "."))
                pip_before = pip_after
            if self.args.fresh_pip_cache:
                os.environ.pop("PIP_CACHE_DIR", None)
            log(f"deploy run {i + 1}: destroy")
            _, dt, _ = self.dev.run("destroy")
            R.add(S, "`pulumi destroy`", "s", dt)
            layers = self.cached_layers_on(os.environ["MLDEPLOY_BASE_IMAGE"])
            R.note(f"Warm deploy: after `destroy`, {layers} image(s) remained on the base image: the cached "
                   "environment image (base + installed wheels), which `destroy` keeps, so the warm `up` builds "
                   "only the launcher and source layers on top of it.")
            log(f"deploy run {i + 1}: warm up")
            _, dt, _ = self.dev.run("up")
            R.add(S, "warm `pulumi up` (after destroy, caches warm)", "s", dt)
            out = self.dev.outputs()
            self.score_once(out["scoring_uri"], out["primary_key"])
            if i < self.args.runs - 1:
                _, dt, _ = self.dev.run("destroy")
                R.add(S, "`pulumi destroy`", "s", dt)

    def ensure_dev_up(self) -> None:
        import stack as stack_cli

        if self.dev is None:
            os.environ.setdefault("MLDEPLOY_BASE_IMAGE", self.bench_base_image())
            self.dev = BenchStack(self, f"bench-dev-{self.run_id}", stack_cli.project_program(self.work))
            log("dev stack: up (untimed; the deploy phase was skipped)")
            self.dev.run("up")

    def phase_noop(self) -> None:
        self.ensure_dev_up()
        assert self.dev is not None
        R, S = self.results, "no-op (dev program, nothing changed)"
        for i in range(self.args.runs):
            log(f"no-op run {i + 1}/{self.args.runs}")
            res, dt, _ = self.dev.run("up")
            R.add(S, "`pulumi up`", "s", dt)
            if changes(res.summary.resource_changes):
                R.note(f"no-op `up` run {i + 1} changed something: {changes(res.summary.resource_changes)}")
            res, dt, _ = self.dev.run("preview")
            R.add(S, "`pulumi preview`", "s", dt)
            if changes(res.change_summary):
                R.note(f"no-op `preview` run {i + 1} planned changes: {changes(res.change_summary)}")

    def phase_update(self) -> None:
        self.ensure_dev_up()
        assert self.dev is not None
        R, S = self.results, f"model-only update (client at {self.args.update_rate:g} req/s)"
        out = self.dev.outputs()
        uri, key = out["scoring_uri"], out["primary_key"]
        same_image = 0
        for i in range(self.args.runs):
            old_expected = self.score_once(uri, key)
            alpha = 50.0 * 4**i
            new_expected = self.train(alpha)
            if close_to(old_expected, new_expected):
                R.note(f"update run {i + 1}: the new model predicts like the old one; its time to answer is n/a")
            image_before = self.image_id(out["image_name"])
            client = PacedClient(uri, key, self.args.update_rate, max_seconds=self.args.update_timeout,
                                 max_requests=int(self.args.update_rate * self.args.update_timeout) + 1)
            log(f"update run {i + 1}/{self.args.runs}: retrained (alpha={alpha:g}), up with the client scoring")
            client.start()
            time.sleep(1.0)  # the client is in its stride before the update starts
            t0 = time.perf_counter()
            try:
                res, dt, events = self.dev.run("up")
                t1 = time.perf_counter()
                # Keep scoring until the new version answers (bounded), then one more second.
                deadline = time.perf_counter() + 30
                while time.perf_counter() < deadline and not any(
                        r[2] and r[3] is not None and close_to(r[3], new_expected) for r in list(client.records)):
                    time.sleep(0.1)
                time.sleep(1.0)
            finally:
                client.finish()
            recs = list(client.records)
            new_at = [r[0] + r[1] for r in recs if r[2] and r[3] is not None and close_to(r[3], new_expected)]
            during = [r for r in recs if t0 <= r[0] <= t1]
            failed = [r for r in recs if r[0] >= t0 and not r[2]]
            lat = [r[1] * 1000 for r in during if r[2]]
            out2 = self.dev.outputs()
            builds = sum(1 for op, typ in events if typ.endswith(IMAGE_TYPE_SUFFIX) and op in BUILD_OPS)
            image_after = self.image_id(out2["image_name"])
            R.add(S, "`pulumi up` duration", "s", dt)
            R.add(S, "`up` start to the new version answering", "s", (min(new_at) - t0) if new_at else float("nan"))
            R.add(S, "image builds caused (engine events)", "builds", builds)
            R.add(S, "requests sent from `up` start to the end", "requests", len([r for r in recs if r[0] >= t0]))
            R.add(S, "failed requests", "requests", len(failed))
            R.add(S, "latency p50 during `up`", "ms", percentile(lat, 50))
            R.add(S, "latency p99 during `up`", "ms", percentile(lat, 99))
            R.add(S, "latency max during `up`", "ms", max(lat) if lat else float("nan"))
            if out2.get("model_version") == out.get("model_version"):
                R.note(f"update run {i + 1}: the model version did not change ({out2.get('model_version')})")
            if image_after != image_before or out2["image_name"] != out["image_name"]:
                R.note(f"update run {i + 1}: the image changed ({out['image_name']} -> {out2['image_name']})")
            else:
                same_image += 1
            for r in failed[:3]:
                R.note(f"update run {i + 1}: a failed request at +{r[0] - t0:.2f}s: {r[4]}")
            if not new_at:
                R.note(f"update run {i + 1}: the new version was not seen answering within 30 s after `up`")
            out = out2
        R.note(f"Model-only update: the service's image (name and id) was the same before and after "
               f"{same_image} of {self.args.runs} update(s).")

    def start_baseline(self, model_dir: Path) -> tuple[str, float]:
        """azmlinfsrv on the host, same entry script and model file, 127.0.0.1 only."""
        import requests

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        src = self.work / "sample" / "src"
        env = {**os.environ, "AZUREML_MODEL_DIR": str(model_dir), "AML_APP_ROOT": str(src),
               "AZUREML_SOURCE_DIRECTORY": str(src), "PYTHONUNBUFFERED": "1"}
        for k in ("WORKER_COUNT", "AZUREML_SEPERATE_HEALTH_ENDPOINT"):
            env.pop(k, None)
        logf = open(self.tmp / "azmlinfsrv.log", "wb")
        t = time.perf_counter()
        self.baseline = subprocess.Popen(
            [sys.executable, "-c", BASELINE_LAUNCHER, "--entry_script", str(src / "score.py"), "--port", str(port)],
            cwd=str(src), env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = t + 90
        while True:
            if self.baseline.poll() is not None:
                raise RuntimeError(f"azmlinfsrv exited with {self.baseline.returncode}; see {self.tmp / 'azmlinfsrv.log'}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                    break
            if time.perf_counter() > deadline:
                raise RuntimeError(f"azmlinfsrv was not healthy after 90 s; see {self.tmp / 'azmlinfsrv.log'}")
            time.sleep(0.2)
        return f"http://127.0.0.1:{port}/score", time.perf_counter() - t

    def stop_baseline(self) -> None:
        if self.baseline is None or self.baseline.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.baseline.pid, signal.SIGTERM)  # our own process group (start_new_session)
        try:
            self.baseline.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.baseline.pid, signal.SIGKILL)
            self.baseline.wait(timeout=15)

    def phase_serve(self) -> None:
        """Bare single-worker azmlinfsrv vs the service at cpu_cores 1 and 2, under the same wrk load."""
        R, a = self.results, self.args
        if shutil.which("wrk") is None:
            raise RuntimeError("wrk is missing: bench/run.sh installs it (apt-get install wrk)")
        S = f"serving (wrk, {a.wrk_threads} threads, {a.concurrency} connections, {a.serve_seconds:g} s per run)"
        model_dir = self.tmp / "baseline-model"
        model_dir.mkdir(exist_ok=True)
        shutil.copy2(self.model_path, model_dir / MODEL_FILE)
        import joblib
        import numpy as np

        expected = float(joblib.load(model_dir / MODEL_FILE).predict(np.array([ROW], dtype=float))[0])
        cores = [c for c in (1, 2) if c <= (os.cpu_count() or 1)]
        serve_model = self.work / "bench_models" / "serve" / MODEL_FILE  # inside the project, as a user's would be
        serve_model.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.model_path, serve_model)
        st = BenchStack(self, f"bench-serve-{self.run_id}", serve_program(serve_model, cores))
        log(f"serving: up of the serving stack (cpu_cores {cores}; untimed)")
        st.run("up")
        out = st.outputs()
        targets: dict[str, tuple[str, str | None]] = {}
        bare_uri, started = self.start_baseline(model_dir)
        R.add(S, "bare azmlinfsrv: start to healthy (for reference)", "s", started)
        try:
            targets["bare"] = (bare_uri, None)
            for c in cores:
                targets[f"ours{c}"] = (out[f"scoring_uri_{c}"], out[f"key_{c}"])
            for name, (uri, key) in targets.items():
                got = self.score_once(uri, key)
                if not close_to(got, expected):
                    R.note(f"serving: {name} answered {got}, the model file predicts {expected}")
            for i in range(a.runs):
                for name, (uri, key) in targets.items():
                    log(f"serving run {i + 1}/{a.runs}: {SERVING_LABELS[name]}")
                    m = wrk_load(uri, key, a.wrk_threads, a.concurrency, a.serve_seconds, a.serve_warmup, self.tmp)
                    for k, unit, what in SERVING_METRICS:
                        R.add(S, f"{SERVING_LABELS[name]}: {what}", unit, m[k])
                        R.serving.setdefault(name, {}).setdefault(k, []).append(m[k])
                    if m["errors"]:
                        R.add(S, f"{SERVING_LABELS[name]}: failed requests (non-2xx, socket errors)", "requests", m["errors"])
                        R.note(f"serving run {i + 1} ({SERVING_LABELS[name]}): {m['errors']:.0f} failed requests")
        finally:
            self.stop_baseline()
            st.run("destroy")

    def phase_scale(self) -> None:
        R, a = self.results, self.args
        self.ensure_dev_up()  # its image keeps the Docker layer cache warm for the scale stacks' builds
        scale_model = self.work / "bench_models" / "scale" / MODEL_FILE
        self.train(0.1, scale_model)
        for n in a.scale:
            st = BenchStack(self, f"bench-s{n}-{self.run_id}", scale_program(n, scale_model))
            try:
                self.scale_step(st, n)
            except Exception as exc:  # noqa: BLE001 - report it, clean the stack, go on with the next size
                R.errors.append(f"phase `scale`, {n} services, during {self.last_op}: {error_summary(exc)}")
                log(f"scale {n} failed: {error_summary(exc)}")
                with contextlib.suppress(Exception):
                    st.run("destroy")
        R.note("Scale stacks build their own image, but the dev stack is up then and its image has the same "
               "base, wheels and source, so that build reuses Docker's layer cache: the scale figures are about "
               "services, not image builds.")

    def scale_step(self, st: BenchStack, n: int) -> None:
        R, a = self.results, self.args
        S = f"scale: {n} service{'s' if n > 1 else ''} (1 model, 1 image)"
        kw: dict[str, Any] = {}
        if a.scale_parallel:
            kw["parallel"] = a.scale_parallel
            S += f", `parallel={a.scale_parallel}`"
        for i in range(a.scale_runs):
            log(f"scale {n} run {i + 1}/{a.scale_runs}: preview, up, no-op preview, no-op up, destroy")
            _, dt, _ = st.run("preview", **kw)
            R.add(S, "`pulumi preview` (empty stack)", "s", dt)
            _, dt, _ = st.run("up", **kw)
            R.add(S, "`pulumi up` (create all)", "s", dt)
            out = st.outputs()
            for uri, key in zip(out["scoring_uris"], out["keys"]):
                self.score_once(uri, key)
            res, dt, _ = st.run("preview", **kw)
            R.add(S, "no-op `pulumi preview`", "s", dt)
            if changes(res.change_summary):
                R.note(f"scale {n}: no-op preview planned changes: {changes(res.change_summary)}")
            res, dt, _ = st.run("up", **kw)
            R.add(S, "no-op `pulumi up`", "s", dt)
            if changes(res.summary.resource_changes):
                R.note(f"scale {n}: no-op up changed something: {changes(res.summary.resource_changes)}")
            _, dt, _ = st.run("destroy", **kw)
            R.add(S, "`pulumi destroy`", "s", dt)

    # -- clean-up -------------------------------------------------------------

    def cleanup(self) -> list[str]:
        problems: list[str] = []
        self.stop_baseline()
        for st in reversed(self.stacks):
            try:
                st.stack.destroy(color="never", on_output=lambda _l: None)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"destroy {st.name}: {str(exc)[-400:]}")
            try:
                st.stack.workspace.remove_stack(st.name)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"remove stack {st.name}: {str(exc)[-200:]}")
        try:
            import docker

            dc = docker.from_env()
            for st in self.stacks:
                flt = {"label": [f"mldeploy.stack={st.name}"]}
                for c in dc.containers.list(all=True, filters=flt):
                    problems.append(f"leftover container {c.name} removed")
                    c.remove(force=True)
                for im in dc.images.list(filters=flt):
                    problems.append(f"leftover image {im.tags or im.id} removed")
                    dc.images.remove(im.id, force=True)
            # Environment images of the cold runs' own caches (built on the bench's bases) go first,
            # or the bases could only be untagged.
            from mldeploy.providers.images import env_cache

            for index in self.tmp.glob("cache-*/env-images"):
                env_cache.EnvCache(dc.api, root=index).prune(0)
            for tag in self.base_images:
                with contextlib.suppress(docker.errors.ImageNotFound):
                    dc.images.remove(tag)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"docker clean-up: {exc}")
        return problems


SERVING_LABELS = {
    "bare": "bare azmlinfsrv (host, 1 worker)",
    "ours1": "mldeploy service, cpu_cores=1",
    "ours2": "mldeploy service, cpu_cores=2",
}
SERVING_METRICS = (
    ("p50", "ms", "latency p50"),
    ("p99", "ms", "latency p99"),
    ("max", "ms", "latency max"),
    ("throughput", "req/s", "throughput"),
    ("load1", "load", "load average (1 min) at the start of the run"),
)


def serve_program(model_path: Path, cores: list[int]) -> Callable[[], None]:
    """One model, one image, one service per CPU size (workers follow cpu_cores: the default rule)."""

    def program() -> None:
        import pulumi

        from mldeploy.components import ContainerInstanceService, InferenceImage, RegisteredModel

        model = RegisteredModel("ridge", model_name="bench_serve_model", model_path=str(model_path))
        image = InferenceImage("scoring", entry_script="score.py", source_directory="sample/src",
                               conda_file="sample/env/myenv.yml")
        for c in cores:
            svc = ContainerInstanceService(f"serve{c}", models=[model], image=image, cpu_cores=c,
                                           memory_gb=1, auth_enabled=True)
            pulumi.export(f"scoring_uri_{c}", svc.scoring_uri)
            pulumi.export(f"key_{c}", svc.primary_key)

    return program


def scale_program(n: int, model_path: Path) -> Callable[[], None]:
    def program() -> None:
        import pulumi

        from mldeploy.components import ContainerInstanceService, InferenceImage, RegisteredModel

        model = RegisteredModel("ridge", model_name="bench_scale_model", model_path=str(model_path))
        image = InferenceImage("scoring", entry_script="score.py", source_directory="sample/src",
                               conda_file="sample/env/myenv.yml")
        services = [ContainerInstanceService(f"svc{i + 1}", models=[model], image=image, cpu_cores=1,
                                             memory_gb=0.5, auth_enabled=True) for i in range(n)]
        pulumi.export("scoring_uris", [s.scoring_uri for s in services])
        pulumi.export("keys", [s.primary_key for s in services])

    return program


# --- report --------------------------------------------------------------------


def render(bench: Bench, facts: dict[str, str], started: datetime, wall: float, load: tuple[str, str], argv: list[str]) -> str:
    R, a = bench.results, bench.args
    cmd = "bash bench/run.sh" + ("" if not argv else " " + " ".join(argv))
    lines = [
        "# mldeploy benchmarks",
        "",
        f"Run on {started:%Y-%m-%d %H:%M} UTC with `{cmd}`; wall time {wall / 60:.1f} min "
        f"(not counting `scripts/setup.sh`).",
    ]
    if a.quick:
        lines += ["", "**Quick run**: one run of each figure and small scale steps, to check the harness. "
                      "Do not compare these figures."]
    if R.errors:
        lines += ["", f"**Incomplete**: {len(R.errors)} phase(s) failed; see Errors below."]
    lines += ["", "## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in facts.items()]
    lines += [f"| load average (1, 5, 15 min) at start / end | {load[0]} / {load[1]} |", ""]
    lines += ["Other work on the machine during the run makes every figure noisier; the load average shows how busy "
              "it was.", "", "## Results", "",
              "Each figure: its unit, how many runs, and the min / median / max over those runs. "
              "Latency percentiles are over all requests of one run; the run's value is then summarised.", "",
              "| section | metric | unit | runs | min | median | max |", "|---|---|---|---:|---:|---:|---:|"]
    for row in R.rows:
        v = [x for x in row.values if not math.isnan(x)]
        if v:
            mn, md, mx = min(v), statistics.median(v), max(v)
            cells = [fmt(mn, row.unit), fmt(md, row.unit), fmt(mx, row.unit)]
        else:
            cells = ["n/a"] * 3
        runs = str(len(row.values)) + ("" if len(v) == len(row.values) else f" ({len(row.values) - len(v)} n/a)")
        lines.append(f"| {row.section} | {row.metric} | {row.unit} | {runs} | " + " | ".join(cells) + " |")
    if R.serving.get("bare") and len(R.serving) > 1:
        ours = [n for n in ("ours1", "ours2") if n in R.serving]
        lines += ["", "## Serving: bare azmlinfsrv and mldeploy side by side", "",
                  f"Load generator: **{wrk_version()}**, {a.wrk_threads} threads, {a.concurrency} keep-alive "
                  f"connections (closed loop), {a.serve_warmup:g} s warm-up then {a.serve_seconds:g} s measured, "
                  "runs alternating. Same model file, entry script and request body (one row of 10 features). "
                  "Each figure is the median over the runs; ratio = ours / bare single-worker azmlinfsrv (above 1: "
                  "more latency, or more throughput). Load average: 1-minute, at the start of each run (median).", "",
                  "| metric | unit | runs | bare azmlinfsrv (1 worker) | "
                  + " | ".join(f"{SERVING_LABELS[n].removeprefix('mldeploy service, ')} | ratio" for n in ours) + " |",
                  "|---|---|---:|---:|" + "---:|---:|" * len(ours)]
        for k, unit, label in SERVING_METRICS:
            bare = R.serving["bare"].get(k, [])
            if not bare:
                continue
            mb = statistics.median(bare)
            cells = [fmt(mb, unit) if unit != "load" else f"{mb:.2f}"]
            runs = len(bare)
            for n in ours:
                vals = R.serving[n].get(k, [])
                if not vals:
                    cells += ["n/a", "n/a"]
                    continue
                mo = statistics.median(vals)
                runs = min(runs, len(vals))
                cells += [fmt(mo, unit) if unit != "load" else f"{mo:.2f}",
                          "" if unit == "load" else (f"{mo / mb:.2f}" if mb else "n/a")]
            lines.append(f"| {label} | {unit} | {runs} | " + " | ".join(cells) + " |")
    lines += ["", "## What is measured", ""] + [f"- {d}" for d in DEFINITIONS(a)]
    if R.notes:
        lines += ["", "## Notes from this run", ""] + [f"- {n}" for n in R.notes]
    if R.errors:
        lines += ["", "## Errors", ""] + [f"- {e}" for e in R.errors]
    return "\n".join(lines) + "\n"


def DEFINITIONS(a: argparse.Namespace) -> list[str]:  # noqa: N802 - reads like a constant
    return [
        "Times are wall-clock (`time.perf_counter`) around one Automation API call (`stack.up()`, "
        "`stack.preview()`, `stack.destroy()`), as `scripts/stack.py` runs them: they include starting the "
        "`pulumi` CLI, running the program inline and the dynamic providers. Every stack lives in a "
        "temporary copy of the project with its own file backend, registry and stack names (`bench-*`).",
        "**cold `pulumi up`**: first deploy of the dev program (`__main__.py`) on a new stack. The base image "
        f"(`{DEFAULT_BASE_IMAGE}`) is present; the wheelhouse is empty (`MLDEPLOY_CACHE` points at a new empty "
        "folder for the provider process); the image is built on a base with the same content but a new image id "
        "(one `LABEL` on top of the base, made before the timer starts), so no Docker layer cache can match. "
        "Ends when `up` returns, which is after the service answered its health probe.",
        "**warm `pulumi up`**: the same program after `pulumi destroy`, with the wheelhouse filled and the same "
        "base; `destroy` removes the stack's image, so the image is rebuilt (from the local wheelhouse).",
        "**no-op**: `up` and `preview` right after an `up`, nothing changed (the notes say if anything did).",
        f"**model-only update**: the model file is retrained with another `alpha`, then `up` rolls the service "
        f"while one client scores at {a.update_rate:g} requests/s (fixed schedule, keep-alive, 10 s timeout), "
        "from 1 s before `up` until 1 s after the new version first answered (at most "
        f"{a.update_timeout:g} s). *New version answering*: first response whose prediction equals the new "
        "model's own (computed locally with joblib), minus the time `up` was called. *Image builds*: "
        "`ResourcePreEvent`s for `…:Image` resources with op create/update/replace. *Failed*: any non-200 "
        "answer or client error from `up` start on. Latencies are of requests started while `up` ran.",
        f"**serving**: `wrk` (C, event loop: it is not the bottleneck) with {a.wrk_threads} threads and "
        f"{a.concurrency} keep-alive connections, each sending the next request when the previous one answered; "
        f"{a.serve_warmup:g} s warm-up (discarded) then {a.serve_seconds:g} s with `--latency`; p50/p99 from wrk's "
        "latency distribution, max from its thread stats, throughput = wrk's Requests/sec; non-2xx answers and "
        "socket errors are reported as failed requests. *mldeploy*: a bench stack with one service per CPU size "
        "(`cpu_cores=1` and `2`, `memory_gb=1`, keys on, workers by the default rule: one per whole core), "
        "through its scoring URI (gateway nginx on 127.0.0.1, Bearer key check, a Unix socket to a container "
        "with no network, limited to `cpu_cores`). *bare*: `azmlinfsrv`'s own entry point on the host, from the "
        "project's virtual environment, same entry script and model file, default worker count (1), no CPU "
        "limit, its listen address set to 127.0.0.1 (the CLI always binds 0.0.0.0). Load generator, gateway and "
        "servers share the machine's CPUs.",
        "**scale**: a program with one model, one image and N services (`cpu_cores=1`, `memory_gb=0.5`, keys on). "
        "Per run: `preview` of the empty stack, `up` creating everything, no-op `preview` and `up`, `destroy`.",
    ]


# --- main ----------------------------------------------------------------------


PHASES = ("deploy", "noop", "update", "serve", "scale")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], prog="bash bench/run.sh")
    p.add_argument("--runs", type=int, default=3, help="runs of each deploy/no-op/update/serving figure (default 3)")
    p.add_argument("--scale", default="1,5,10", help="service counts of the scale stacks (default 1,5,10)")
    p.add_argument("--scale-runs", type=int, default=2, help="runs of each scale step (default 2)")
    p.add_argument("--scale-parallel", type=int, default=0,
                   help="limit the engine's parallelism (`parallel=N`) in the scale stacks; default: the engine's")
    p.add_argument("--concurrency", type=int, default=8, help="wrk connections while serving (default 8)")
    p.add_argument("--wrk-threads", type=int, default=2, help="wrk threads while serving (default 2)")
    p.add_argument("--serve-seconds", type=float, default=10, help="measured seconds per serving run (default 10)")
    p.add_argument("--serve-warmup", type=float, default=2, help="warm-up seconds before each serving run (default 2)")
    p.add_argument("--update-rate", type=float, default=20, help="requests/s of the client during a model update")
    p.add_argument("--update-timeout", type=float, default=300, help="bound (s) on the update client")
    p.add_argument("--fresh-pip-cache", action="store_true", help="give pip an empty HTTP cache on every cold deploy")
    p.add_argument("--only", default=",".join(PHASES), help=f"phases to run, comma-separated ({', '.join(PHASES)})")
    p.add_argument("--quick", action="store_true", help="1 run each, scale 1,5, 5 s serving: checks the harness")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temporary project copy and its logs")
    p.add_argument("--out-dir", default=str(RESULTS_DIR), help="where the Markdown goes (default bench/results)")
    a = p.parse_args(argv)
    if a.quick:
        a.runs, a.scale_runs, a.serve_seconds = 1, 1, min(a.serve_seconds, 5)
        if a.scale == "1,5,10":
            a.scale = "1,5"
    a.scale = [int(x) for x in str(a.scale).split(",") if x.strip()]
    a.only = [x.strip() for x in a.only.split(",") if x.strip()]
    bad = [x for x in a.only if x not in PHASES]
    if bad:
        p.error(f"unknown phase(s) {bad}; known: {', '.join(PHASES)}")
    if a.runs < 1 or a.scale_runs < 1 or a.concurrency < 1 or a.wrk_threads < 1:
        p.error("--runs, --scale-runs, --concurrency and --wrk-threads must be at least 1")
    if a.concurrency < a.wrk_threads:
        p.error("--concurrency must be at least --wrk-threads (wrk gives each thread a connection)")
    return a


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started = datetime.now(timezone.utc)
    load_start = loadavg()
    facts = machine_facts()

    def on_term(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt("terminated")

    signal.signal(signal.SIGTERM, on_term)
    bench = Bench(args)
    log(f"run {bench.run_id}: phases {', '.join(args.only)}; runs {args.runs}; scale {args.scale} x {args.scale_runs}")
    failed = False
    try:
        bench.prepare()
        for phase in PHASES:
            if phase not in args.only:
                continue
            try:
                getattr(bench, f"phase_{phase}")()
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - report it, go on with the next phase
                failed = True
                bench.results.errors.append(f"phase `{phase}`, last engine operation {bench.last_op or '(none)'}: "
                                            f"{error_summary(exc)}")
                log(f"phase {phase} failed:\n{traceback.format_exc()[-3000:]}")
    except KeyboardInterrupt:
        failed = True
        bench.results.errors.append("interrupted")
    finally:
        log("clean-up: destroying and removing every bench stack")
        problems = bench.cleanup()
        for p in problems:
            bench.results.note(f"clean-up: {p}")
            log(f"clean-up: {p}")
    wall = time.perf_counter() - T0
    text = render(bench, facts, started, wall, (load_start, loadavg()), argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{started:%Y%m%dT%H%M%SZ}.md"
    tmp = out_dir / (path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    shutil.copyfile(path, out_dir / "latest.md")
    print(text)
    log(f"wrote {path} and {out_dir / 'latest.md'}")
    if failed or bench.results.errors or args.keep_workdir:
        log(f"kept {bench.tmp} (engine log: {bench.log_path})")
    else:
        shutil.rmtree(bench.tmp, ignore_errors=True)
    return 1 if failed or bench.results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
