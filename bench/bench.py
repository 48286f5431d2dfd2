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
- scale: preview/up/no-op/destroy of stacks with 1, 5 and 10 services;
- rollouts (`rollout` on the local target, `krollout` on the local cluster): a
  canary's `up` to full promotion against its declared step time, the latency
  of a held split and of a mirror against the plain route, failed requests
  during a promoted canary and during a rollback.

The project is copied into a temporary folder with its own state backend,
registry and stack names (`bench-...`), so the developer's dev stack is never
touched; every stack is destroyed and removed at the end, even on failure.
Writes bench/results/<UTC timestamp>.md and bench/results/latest.md and prints
the table. Nothing here asserts a figure.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
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
K8S_LOCK = "/tmp/k8s.lock"  # the shared local cluster: held per section, as `flock /tmp/k8s.lock` does
KUBECTL = os.path.join(os.environ.get("MLDEPLOY_K8S_HOME", ""), "bin", "kubectl")
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
        self.kserving: dict[str, dict[str, list[float]]] = {}
        self.paced: dict[str, dict[str, list[float]]] = {}
        """Serving below saturation (`--paced-connections`): CPU per request without the cores oversubscribed."""
        self.loads: list[tuple[str, str, str]] = []  # (section, load at start, load at end)

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


def checkout_words(head: str, porcelain: str) -> str:
    """The measured checkout: its commit, and how many files differed from it (others' work in progress is
    copied with the tree). Pure."""
    changed = [ln for ln in porcelain.splitlines() if ln.strip()]
    if not changed:
        return f"{head}, nothing uncommitted"
    return f"{head} with {len(changed)} uncommitted file{'s' if len(changed) > 1 else ''} ({', '.join(ln.split(None, 1)[-1] for ln in changed[:6])}" + (
        ", …)" if len(changed) > 6 else ")")


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
        "checkout": checkout_words(_cmd(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
                                   _cmd(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])),
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


def loopback_uri(uri: str) -> str:
    """`uri` itself when it is on 127.0.0.1 (or localhost); the bench's clients send nothing anywhere else. Pure."""
    from urllib.parse import urlsplit

    host = urlsplit(uri).hostname
    if host not in ("127.0.0.1", "localhost"):
        raise ValueError(f"not a loopback address: {uri!r} (the bench sends requests to 127.0.0.1 only)")
    return uri


def answered_by(answers: list[float], prediction: float) -> int:
    """How many answers are `prediction` (one version's answer to the bench's row). Pure."""
    return sum(1 for a in answers if close_to(a, prediction))


def share_percent(answers: list[float], prediction: float) -> float:
    """The share (%) of answers that are `prediction`; NaN for no answers. Pure."""
    return 100.0 * answered_by(answers, prediction) / len(answers) if answers else float("nan")


def first_mark(marks: list[tuple[float, str]], text: str) -> float:
    """Seconds from an operation's start to its first engine line containing `text`; NaN when none does. Pure."""
    return next((at for at, line in marks if text in line), float("nan"))


class PacedClient(threading.Thread):
    """One client scoring at a steady rate (fixed schedule), bounded in count and time.

    Records every request: (start, latency, ok, first prediction or None, error).
    """

    def __init__(self, uri: str | Callable[[], str], key: str | None, rate: float, max_seconds: float,
                 max_requests: int):
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
                uri = self.uri() if callable(self.uri) else self.uri  # a callable: looked up for every request
                r = session.post(uri, json=BODY, headers=headers, timeout=10)
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


class SplitProbe:
    """The CPU (ns) of whole cgroups, as a cpu_probe; and, per named part (a container's cgroup
    inside them), its share of the interval between the last two calls. What the parts leave
    (the pause container, the pod's own cgroup) is reported as `other`."""

    def __init__(self, wholes: list[Path], parts: dict[str, list[Path]]):
        self.wholes, self.parts = wholes, parts
        self.snaps: list[tuple[int, dict[str, int]]] = []

    def __call__(self) -> int:
        total = sum(cgroup_cpu_ns(p) for p in self.wholes)
        self.snaps.append((total, {n: sum(cgroup_cpu_ns(p) for p in ps) for n, ps in self.parts.items()}))
        return total

    def last_split(self) -> dict[str, int]:
        (t0, a), (t1, b) = self.snaps[-2:]
        split = {n: b[n] - a[n] for n in b}
        split["other"] = (t1 - t0) - sum(split.values())
        return split


def wrk_load(uri: str, key: str | None, threads: int, connections: int, seconds: float, warmup: float,
             script_dir: Path, cpu_probe: Callable[[], int] | None = None) -> dict[str, float]:
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
        cpu_before = cpu_probe() if cpu_probe else 0
        run = subprocess.run([*base, "--latency", f"-d{max(1, round(seconds))}s", uri], capture_output=True,
                             text=True, timeout=seconds + 60)
        cpu_after = cpu_probe() if cpu_probe else 0
        if run.returncode != 0:
            raise RuntimeError(f"wrk failed ({run.returncode}): {run.stderr[-500:]}")
        m = parse_wrk(run.stdout)
        m["cpu_per_1k"] = cpu_ms_per_1000(cpu_after - cpu_before, m["requests"]) if cpu_probe else float("nan")
        m["load1"] = float(load_before.split()[0]) if load_before != "?" else float("nan")
        return m
    finally:
        script.unlink(missing_ok=True)


def wrk_version() -> str:
    out = _cmd(["wrk", "--version"])
    return out.splitlines()[0].split(" [")[0] if out and out != "?" else "?"


# --- CPU time per request ------------------------------------------------------

CGROUP_ROOT = Path("/sys/fs/cgroup")


def parse_cgroup_cpu_ns(name: str, text: str) -> int:
    """CPU time (ns) a cgroup has used, from its own file. Pure.

    cgroup v2: `cpu.stat`, line `usage_usec N`; cgroup v1: `cpuacct.usage`, one number in ns."""
    if name == "cpu.stat":
        for line in text.splitlines():
            k, _, v = line.partition(" ")
            if k == "usage_usec":
                return int(v) * 1000
        raise ValueError("cpu.stat has no usage_usec line")
    if name == "cpuacct.usage":
        return int(text.strip())
    raise ValueError(f"not a CPU accounting file: {name}")


def cgroup_cpu_ns(path: Path) -> int:
    for name in ("cpu.stat", "cpuacct.usage"):
        f = path / name
        if f.is_file():
            return parse_cgroup_cpu_ns(name, f.read_text())
    raise FileNotFoundError(f"no cpu.stat or cpuacct.usage in {path}")


def docker_cgroup(container_id: str) -> Path:
    """The cgroup of a running Docker container (v2 systemd or cgroupfs, or v1 cpuacct)."""
    for c in (CGROUP_ROOT / "system.slice" / f"docker-{container_id}.scope", CGROUP_ROOT / "docker" / container_id,
              CGROUP_ROOT / "cpuacct" / "docker" / container_id, CGROUP_ROOT / "cpu,cpuacct" / "docker" / container_id):
        if c.is_dir():
            return c
    raise FileNotFoundError(f"no cgroup found for container {container_id[:12]} under {CGROUP_ROOT}")


def pod_cgroup(uid: str) -> Path:
    """The cgroup of a pod (all its containers, pause included), by the pod's UID."""
    for base in (CGROUP_ROOT / "cpuacct", CGROUP_ROOT / "cpu,cpuacct", CGROUP_ROOT):
        for pattern in (f"kubepods*/pod{uid}", f"kubepods*/*/pod{uid}",
                        f"kubepods*/*pod{uid.replace('-', '_')}.slice", f"kubepods*/*/*pod{uid.replace('-', '_')}.slice"):
            hits = [h for h in base.glob(pattern) if h.is_dir()]
            if hits:
                return hits[0]
    raise FileNotFoundError(f"no cgroup found for pod {uid} under {CGROUP_ROOT}")


def parse_proc_stat_cpu_ticks(text: str) -> tuple[int, int]:
    """(process group id, utime+stime+cutime+cstime in clock ticks) from /proc/<pid>/stat. Pure."""
    rest = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    # rest[0] is field 3 (state); pgrp is field 5; utime..cstime are fields 14..17.
    return int(rest[2]), sum(int(x) for x in rest[11:15])


def process_group_cpu_ns(pgid: int) -> int:
    """CPU time (ns) of every live process of a process group, with its reaped children's."""
    total = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            group, ticks = parse_proc_stat_cpu_ticks((d / "stat").read_text())
            if group == pgid:
                total += ticks
    return total * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def cpu_ms_per_1000(cpu_ns: float, requests: float) -> float:
    """CPU milliseconds per 1,000 requests. Pure; NaN for no requests."""
    if requests <= 0:
        return float("nan")
    return cpu_ns / 1e6 / requests * 1000


# --- the benchmark -----------------------------------------------------------


class BenchStack:
    """A real stack driven through the Automation API; every operation timed and logged."""

    def __init__(self, bench: "Bench", name: str, program: Callable[[], None]):
        import stack as stack_cli  # scripts/stack.py of the copy

        self.bench, self.name = bench, name
        self.stack = stack_cli.select_stack(name, program=program, root=bench.work)
        self.marks: list[tuple[float, str]] = []
        """The last operation's engine lines (output and diagnostics), each with its seconds since the call."""
        bench.stacks.append(self)

    def run(self, op: str, **kw: Any) -> tuple[Any, float, list[tuple[str, str]]]:
        lines: list[str] = []
        events: list[tuple[str, str]] = []
        marks: list[tuple[float, str]] = []
        self.marks = marks

        def on_output(line: str) -> None:
            lines.append(line)
            marks.append((time.perf_counter() - t, line))

        timeline: list[str] = []  # when each engine event reached us, after the call: where the time goes

        def on_event(ev: Any) -> None:
            at = time.perf_counter() - t
            pre = getattr(ev, "resource_pre_event", None)
            if pre is not None and pre.metadata is not None:
                events.append((str(getattr(pre.metadata.op, "value", pre.metadata.op)), pre.metadata.type))
                timeline.append(f"+{at:6.2f}s pre {pre.metadata.op} {pre.metadata.urn.split('::')[-1]}")
            outs = getattr(ev, "res_outputs_event", None)
            if outs is not None and outs.metadata is not None:
                timeline.append(f"+{at:6.2f}s done {outs.metadata.op} {outs.metadata.urn.split('::')[-1]}")
            diag = getattr(ev, "diagnostic_event", None)
            if diag is not None:
                timeline.append(f"+{at:6.2f}s {diag.message.strip()[:160]}")
                marks.append((at, diag.message))

        self.bench.last_op = f"`{op}` of {self.name}"
        t = time.perf_counter()
        try:
            res = getattr(self.stack, op)(on_output=on_output, on_event=on_event, color="never", **kw)
        except BaseException:
            self.bench.engine_log(self.name, op, lines + ["--- timeline ---", *timeline])
            raise
        dt = time.perf_counter() - t
        self.bench.engine_log(self.name, op, lines + ["--- timeline ---", *timeline])
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
        # The machine's cache: the local cluster, its registry and their credentials live there, so the
        # Kubernetes sections use it (the local deploy phase points MLDEPLOY_CACHE at empty folders).
        self.machine_cache = os.environ.get("MLDEPLOY_CACHE") or str(Path.home() / ".cache" / "mldeploy")

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
        S = f"model-only update (client at {self.args.update_rate:g} req/s)"
        same_image = 0
        for i in range(self.args.runs):
            same_image += self.timed_update(self.dev, S, i, self.model_path, 50.0 * 4**i)
        self.results.note(f"Model-only update: the service's image (name and id) was the same before and after "
                          f"{same_image} of {self.args.runs} update(s).")
        # The same updates with a warm standby (`warm_standby=True`; the dev stack's `mldeploy:warmStandby`).
        from pulumi import automation as auto

        S = f"model-only update, warm standby (client at {self.args.update_rate:g} req/s)"
        self.dev.stack.set_config("mldeploy:warmStandby", auto.ConfigValue("true"))
        try:
            self.dev.run("up")  # starts the standby, untimed
            # One untimed model update: a backend started before warm_standby was on never recorded what its
            # worker imports, so the first standby imports nothing; from this update on, each one does.
            self.train(7.0, self.model_path)
            self.dev.run("up")
            for i in range(self.args.runs):
                waited = self.wait_for_standby(self.dev)
                if waited is None:
                    self.results.note(f"{S}, run {i + 1}: the standby did not say it was waiting within 60 s")
                self.timed_update(self.dev, S, i, self.model_path, 50.0 * 4 ** (i + self.args.runs))
        finally:
            self.dev.stack.set_config("mldeploy:warmStandby", auto.ConfigValue("false"))
            self.dev.run("up")
        self.results.note("Warm standby: before each timed update the bench waits until the standby has imported its "
                          "libraries (its log says so), as it has long before a user's next model version; the update "
                          "hands it the new model folder instead of starting a container (docs/usage.md).")

    def wait_for_standby(self, st: "BenchStack", limit: float = 60.0) -> float | None:
        """Seconds until the service's standby logs that it waits; None if it never does."""
        import docker

        t0 = time.perf_counter()
        res = [r for r in st.stack.export_stack().deployment["resources"] if r["type"].endswith("mldeploy:Service")]
        standby = (res[0]["outputs"].get("standby") if res else None) or {}
        if not standby.get("id"):
            return None
        while time.perf_counter() - t0 < limit:
            if b"waiting for" in docker.from_env().containers.get(standby["id"]).logs():
                return time.perf_counter() - t0
            time.sleep(0.2)
        return None

    def timed_update(self, st: BenchStack, S: str, i: int, model_path: Path, alpha: float,
                     uri_of: Callable[[str], str] = lambda u: u, resolve_each: bool = False) -> int:
        """Retrain the model at `model_path`, `up` with one client scoring at a steady rate; 1 if the image stayed."""
        R = self.results
        out = st.outputs()
        uri, key = uri_of(out["scoring_uri"]), out.get("primary_key")
        old_expected = self.score_once(uri, key)
        new_expected = self.train(alpha, model_path)
        if close_to(old_expected, new_expected):
            R.note(f"{S}, run {i + 1}: the new model predicts like the old one; its time to answer is n/a")
        image_before = self.image_id(out["image_name"]) if "image_name" in out else None
        client = PacedClient((lambda: uri_of(out["scoring_uri"])) if resolve_each else uri, key, self.args.update_rate, max_seconds=self.args.update_timeout,
                             max_requests=int(self.args.update_rate * self.args.update_timeout) + 1)
        log(f"{S} run {i + 1}/{self.args.runs}: retrained (alpha={alpha:g}), up with the client scoring")
        client.start()
        time.sleep(1.0)  # the client is in its stride before the update starts
        t0 = time.perf_counter()
        try:
            res, dt, events = st.run("up")
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
        out2 = st.outputs()
        builds = sum(1 for op, typ in events if typ.endswith(IMAGE_TYPE_SUFFIX) and op in BUILD_OPS)
        image_after = self.image_id(out2["image_name"]) if "image_name" in out2 else None
        R.add(S, "`pulumi up` duration", "s", dt)
        R.add(S, "`up` start to the new version answering", "s", (min(new_at) - t0) if new_at else float("nan"))
        R.add(S, "image builds caused (engine events)", "builds", builds)
        R.add(S, "requests sent from `up` start to the end", "requests", len([r for r in recs if r[0] >= t0]))
        R.add(S, "failed requests", "requests", len(failed))
        R.add(S, "latency p50 during `up`", "ms", percentile(lat, 50))
        R.add(S, "latency p99 during `up`", "ms", percentile(lat, 99))
        R.add(S, "latency max during `up`", "ms", max(lat) if lat else float("nan"))
        if out2.get("model_version") == out.get("model_version"):
            R.note(f"{S}, run {i + 1}: the model version did not change ({out2.get('model_version')})")
        for r in failed[:3]:
            R.note(f"{S}, run {i + 1}: a failed request at +{r[0] - t0:.2f}s: {r[4]}")
        if not new_at:
            R.note(f"{S}, run {i + 1}: the new version was not seen answering within 30 s after `up`")
        if image_after != image_before or out2.get("image_name") != out.get("image_name"):
            R.note(f"{S}, run {i + 1}: the image changed ({out['image_name']} -> {out2['image_name']})")
            return 0
        return 1

    # -- CPU probes (CPU ns so far of everything on the request path) ----------

    def bare_cpu_probe(self) -> Callable[[], int]:
        assert self.baseline is not None
        pgid = self.baseline.pid  # start_new_session: the server and its workers share this group
        return lambda: process_group_cpu_ns(pgid)

    def local_cpu_probe(self, stack: str, service: str) -> Callable[[], int]:
        """The stack's gateway container and the service's scoring container(s), from their cgroups."""
        import docker

        found = docker.from_env().containers.list(filters={"label": [f"mldeploy.stack={stack}"]})
        picked = [c for c in found if c.labels.get("mldeploy.resource") in ("gateway", service)]
        kinds = sorted(c.labels.get("mldeploy.resource", "?") for c in picked)
        if "gateway" not in kinds or service not in kinds:
            raise RuntimeError(f"CPU probe for {service}: containers found {kinds}, want the gateway and {service}")
        paths = [docker_cgroup(c.id) for c in picked]
        self.results.note(f"CPU of {service}: the cgroups of {len(paths)} containers ({', '.join(kinds)}): "
                          f"{', '.join(str(p) for p in paths)}")
        return lambda: sum(cgroup_cpu_ns(p) for p in paths)

    def pod_cpu_probe(self, ns: str, service: str) -> tuple["SplitProbe", int]:
        """Every pod of the service (front end, scoring server, pause), from the pods' cgroups; and their count.

        The probe also keeps each container's share, so the report can say which one costs what."""
        kubeconfig = os.environ.get("MLDEPLOY_KUBECONFIG") or str(Path.home() / ".cache/mldeploy/kubernetes/run/admin.kubeconfig")
        out = subprocess.run([KUBECTL, "--kubeconfig", kubeconfig, "get", "pods", "-n", ns, "-l",
                              f"mldeploy.azureml.net/service={service}", "-o", "json"],
                             capture_output=True, text=True, timeout=60, check=True)
        pods = [p for p in json.loads(out.stdout)["items"] if p["status"].get("phase") == "Running"
                and not p["metadata"].get("deletionTimestamp")]
        paths = [pod_cgroup(p["metadata"]["uid"]) for p in pods]
        names = sorted(c["name"] for c in pods[0]["spec"]["containers"]) if pods else []
        parts: dict[str, list[Path]] = {}
        for pod, path in zip(pods, paths):
            for c in pod["status"].get("containerStatuses", []):
                cid = (c.get("containerID") or "").split("://")[-1]
                hits = [h for h in path.iterdir() if h.is_dir() and cid and h.name.endswith(cid)]
                if hits:
                    parts.setdefault(c["name"], []).append(hits[0])
        self.results.note(f"CPU of Kubernetes service {service}: the cgroups of {len(paths)} pod(s) (containers "
                          f"{', '.join(names)}, and the pause container): {', '.join(str(p) for p in paths)}")
        return SplitProbe(paths, parts), len(pods)

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
        S2 = f"serving below saturation (wrk, 1 thread, {a.paced_connections} connections, {a.serve_seconds:g} s per run)"
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
            probes = {"bare": self.bare_cpu_probe()}
            for c in cores:
                probes[f"ours{c}"] = self.local_cpu_probe(st.name, f"serve{c}")
            for i in range(a.runs):
                for name, (uri, key) in targets.items():
                    log(f"serving run {i + 1}/{a.runs}: {SERVING_LABELS[name]}")
                    m = wrk_load(uri, key, a.wrk_threads, a.concurrency, a.serve_seconds, a.serve_warmup, self.tmp,
                                 cpu_probe=probes[name])
                    for k, unit, what in SERVING_METRICS:
                        R.add(S, f"{SERVING_LABELS[name]}: {what}", unit, m[k])
                        R.serving.setdefault(name, {}).setdefault(k, []).append(m[k])
                    if m["errors"]:
                        R.add(S, f"{SERVING_LABELS[name]}: failed requests (non-2xx, socket errors)", "requests", m["errors"])
                        R.note(f"serving run {i + 1} ({SERVING_LABELS[name]}): {m['errors']:.0f} failed requests")
                # Below saturation: wrk's one thread, nginx and the workers leave the cores room, so CPU per
                # request is the work itself, not the cost of sharing 2 cores among 4 busy processes.
                for name, (uri, key) in targets.items():
                    log(f"serving run {i + 1}/{a.runs}, below saturation ({a.paced_connections} connections): {SERVING_LABELS[name]}")
                    m = wrk_load(uri, key, 1, a.paced_connections, a.serve_seconds, a.serve_warmup, self.tmp, cpu_probe=probes[name])
                    for k, unit, what in SERVING_METRICS:
                        R.add(S2, f"{SERVING_LABELS[name]}: {what}", unit, m[k])
                        R.paced.setdefault(name, {}).setdefault(k, []).append(m[k])
                    if m["errors"]:
                        R.note(f"serving below saturation, run {i + 1} ({SERVING_LABELS[name]}): {m['errors']:.0f} failed requests")
        finally:
            self.stop_baseline()
            st.run("destroy")

    # -- Kubernetes (the local cluster) -----------------------------------------

    @contextlib.contextmanager
    def cluster_lock(self):
        with open(K8S_LOCK, "a") as fh:
            t = time.perf_counter()
            fcntl.flock(fh, fcntl.LOCK_EX)
            if time.perf_counter() - t > 1:
                log(f"waited {time.perf_counter() - t:.0f} s for {K8S_LOCK}")
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def cluster_up(self) -> None:
        """`scripts/cluster.sh up`, timed and reported apart (a check when the cluster already runs)."""
        status = subprocess.run(["bash", str(ROOT / "scripts" / "cluster.sh"), "status"], capture_output=True,
                                text=True, timeout=60).stdout
        running = "not Ready" not in status and "stopped" not in status
        t = time.perf_counter()
        up = subprocess.run(["bash", str(ROOT / "scripts" / "cluster.sh"), "up"], capture_output=True, text=True,
                            timeout=900)
        if up.returncode != 0:
            raise RuntimeError(f"scripts/cluster.sh up failed ({up.returncode}): {(up.stdout + up.stderr)[-800:]}")
        what = ("`cluster.sh up` with the cluster already running (a check)" if running
                else "cluster start-up (`cluster.sh up`, cluster stopped before)")
        self.results.add("Kubernetes: cluster (reported apart, not in any figure below)", what, "s",
                         time.perf_counter() - t)

    def phase_kubernetes(self) -> None:
        """The prod program's Kubernetes service: cold up, no-op up and preview, model-only update, destroy."""
        R, a = self.results, self.args
        S = "Kubernetes (prod program: 2 replicas, cpu_cores 0.25, local cluster)"
        SU = f"Kubernetes model-only update (client at {a.update_rate:g} req/s)"
        os.environ["MLDEPLOY_CACHE"] = self.machine_cache
        with self.cluster_lock():
            self.cluster_up()
        model = self.work / "bench_models" / "k8s" / MODEL_FILE
        for i in range(a.runs):
            self.train(0.1, model)
            ns = f"bench-k8s-{self.run_id}-{i}"
            st = BenchStack(self, f"bench-k8s-{self.run_id}-{i}", k8s_program(model, ns))
            os.environ["MLDEPLOY_BASE_IMAGE"] = self.bench_base_image()
            with self.cluster_lock():
                log(f"kubernetes run {i + 1}/{a.runs}: cold up (namespace {ns})")
                _, dt, _ = st.run("up")
                R.add(S, "cold `pulumi up` (new stack and namespace, new base id: image built and pushed)", "s", dt)
                out = st.outputs()
                self.score_once(out["scoring_uri"], out["primary_key"])
                log(f"kubernetes run {i + 1}: no-op up and preview")
                res, dt, _ = st.run("up")
                R.add(S, "no-op `pulumi up`", "s", dt)
                if changes(res.summary.resource_changes):
                    R.note(f"Kubernetes no-op `up` run {i + 1} changed something: {changes(res.summary.resource_changes)}")
                res, dt, _ = st.run("preview")
                R.add(S, "no-op `pulumi preview`", "s", dt)
                if changes(res.change_summary):
                    R.note(f"Kubernetes no-op `preview` run {i + 1} planned changes: {changes(res.change_summary)}")
                self.timed_update(st, SU, i, model, 50.0 * 4**i)
                log(f"kubernetes run {i + 1}: destroy")
                _, dt, _ = st.run("destroy")
                R.add(S, "`pulumi destroy`", "s", dt)
            with contextlib.suppress(Exception):
                st.stack.workspace.remove_stack(st.name)
                self.stacks.remove(st)

    def phase_kserve(self) -> None:
        """wrk through the NodePort on 127.0.0.1 (one replica) against the bare server, with CPU per request."""
        R, a = self.results, self.args
        if shutil.which("wrk") is None:
            raise RuntimeError("wrk is missing: bench/run.sh installs it (apt-get install wrk)")
        S = (f"serving on Kubernetes (wrk, {a.wrk_threads} threads, {a.concurrency} connections, "
             f"{a.serve_seconds:g} s per run)")
        model = self.work / "bench_models" / "kserve" / MODEL_FILE
        self.train(0.1, model)
        model_dir = self.tmp / "baseline-model"
        model_dir.mkdir(exist_ok=True)
        shutil.copy2(model, model_dir / MODEL_FILE)
        ns = f"bench-kserve-{self.run_id}"
        os.environ["MLDEPLOY_CACHE"] = self.machine_cache
        with self.cluster_lock():
            self.cluster_up()
            st = BenchStack(self, f"bench-kserve-{self.run_id}", k8s_program(model, ns, replicas=1, cpu_cores=1.0,
                                                                             memory_gb=1.0))
            log(f"kubernetes serving: up (1 replica, cpu_cores 1; untimed), namespace {ns}")
            try:
                st.run("up")
                out = st.outputs()
                probe, pods = self.pod_cpu_probe(ns, "aksservice")
                R.note(f"Kubernetes serving: {pods} pod(s) of the service were running during the runs.")
                bare_uri, _ = self.start_baseline(model_dir)
                targets = {"bare": (bare_uri, None, self.bare_cpu_probe()),
                           "k8s1": (out["scoring_uri"], out["primary_key"], probe)}
                for i in range(a.runs):
                    for name, (uri, key, pr) in targets.items():
                        log(f"kubernetes serving run {i + 1}/{a.runs}: {SERVING_LABELS[name]}")
                        m = wrk_load(uri, key, a.wrk_threads, a.concurrency, a.serve_seconds, a.serve_warmup,
                                     self.tmp, cpu_probe=pr)
                        if isinstance(pr, SplitProbe) and m["requests"]:
                            split = pr.last_split()
                            for part, ns_ in sorted(split.items()):
                                R.add(S, f"{SERVING_LABELS[name]}: CPU per 1,000 requests, container {part}", "ms",
                                      cpu_ms_per_1000(ns_, m["requests"]))
                        for k, unit, what in SERVING_METRICS:
                            R.add(S, f"{SERVING_LABELS[name]}: {what}", unit, m[k])
                            R.kserving.setdefault(name, {}).setdefault(k, []).append(m[k])
                        if m["errors"]:
                            R.note(f"Kubernetes serving run {i + 1} ({SERVING_LABELS[name]}): "
                                   f"{m['errors']:.0f} failed requests")
            finally:
                self.stop_baseline()
                st.run("destroy")

    # -- IoT Edge (this machine as the device) and ACI (against the fake ARM) ------

    def phase_iotedge(self) -> None:
        """`__main__.py` with target iotedge (stacks/Pulumi.edge.yaml): cold up, model-only update, destroy."""
        from pulumi import automation as auto

        import stack as stack_cli

        R, a = self.results, self.args
        S = "IoT Edge (edge program, this machine as the device)"
        SU = f"IoT Edge model-only update (client at {a.update_rate:g} req/s)"
        os.environ["MLDEPLOY_CACHE"] = self.machine_cache  # the local registry's credentials live there
        model = self.work / "bench_models" / "edge" / MODEL_FILE
        for i in range(a.runs):
            self.train(0.1, model)
            os.environ["MLDEPLOY_BASE_IMAGE"] = self.bench_base_image()
            st = BenchStack(self, f"bench-edge-{self.run_id}-{i}", stack_cli.project_program(self.work))
            for k, v in {"target": "iotedge", "edgeDevice": "local-device", "modelPath": str(model)}.items():
                st.stack.set_config(f"mldeploy:{k}", auto.ConfigValue(v))
            log(f"iotedge run {i + 1}/{a.runs}: cold up")
            _, dt, _ = st.run("up")
            R.add(S, "cold `pulumi up` (new stack, new base id: image built and pushed)", "s", dt)
            self.score_once(st.outputs()["scoring_uri"], None)
            self.timed_update(st, SU, i, model, 50.0 * 4**i)
            _, dt, _ = st.run("destroy")
            R.add(S, "`pulumi destroy`", "s", dt)
            with contextlib.suppress(Exception):
                st.stack.workspace.remove_stack(st.name)
                self.stacks.remove(st)

    def phase_aci(self) -> None:
        """ACI against the local fake ARM (tests/fake_arm.py): up and a model-only update, with ARM requests."""
        from pulumi import automation as auto

        R, a = self.results, self.args
        S = "ACI against the local fake ARM (our side only)"
        SU = f"ACI model-only update against the fake ARM (client at {a.update_rate:g} req/s)"
        sys.path.insert(0, str(self.work / "tests"))
        from fake_arm import FakeArm

        os.environ["MLDEPLOY_CACHE"] = self.machine_cache  # the local registry (ACR's stand-in) and its credentials
        model = self.work / "bench_models" / "aci" / MODEL_FILE
        fake = FakeArm(self.tmp / "arm")
        saved = {k: os.environ.get(k) for k in fake.env()}
        os.environ.update(fake.env())
        try:
            for i in range(a.runs):
                self.train(0.1, model)
                os.environ["MLDEPLOY_BASE_IMAGE"] = self.bench_base_image()
                name = f"bench-aci-{self.run_id}-{i}"
                st = BenchStack(self, name, aci_program(model))
                for k, v in {"azureSubscriptionId": "00000000-1111-2222-3333-444444444444",
                             "azureResourceGroup": "rg-bench", "azureLocation": "westeurope",
                             "armEndpoint": fake.url}.items():
                    st.stack.set_config(f"mldeploy:{k}", auto.ConfigValue(v))
                group = f"mldeploy-{name}-aciservice"

                def local(uri: str, group: str = group) -> str:  # the fake publishes the group on 127.0.0.1
                    return f"http://127.0.0.1:{fake.host_port(group)}{uri.split('.azurecontainer.io', 1)[1]}"

                log(f"aci run {i + 1}/{a.runs}: up against the fake ARM")
                n0 = len(fake.requests)
                _, dt, _ = st.run("up")
                R.add(S, "`pulumi up` (new stack, new base id: image built and pushed)", "s", dt)
                R.add(S, "ARM requests sent by `up`", "requests", len(fake.requests) - n0)
                out = st.outputs()
                self.score_once(local(out["scoring_uri"]), out["primary_key"])
                n0 = len(fake.requests)
                # The fake publishes the restarted group on a new host port: the client looks it up each time.
                self.timed_update(st, SU, i, model, 50.0 * 4**i, uri_of=local, resolve_each=True)
                R.add(SU, "ARM requests sent by the update's `up`", "requests", len(fake.requests) - n0)
                _, dt, _ = st.run("destroy")
                R.add(S, "`pulumi destroy`", "s", dt)
                with contextlib.suppress(Exception):
                    st.stack.workspace.remove_stack(st.name)
                    self.stacks.remove(st)
            R.note("ACI: the fake ARM answers at once and runs the group in local Docker; these figures are our "
                   "side only (engine, providers, image build and push, ARM calls), not Azure's provisioning time. "
                   "A model-only update redeploys the group in place, which ACI does by restarting it: the failed "
                   "requests are that outage as the fake plays it (the preview says so), and the client looks the "
                   "group's host port up for every request, since the fake publishes the restarted group anew.")
        finally:
            for st in [s for s in self.stacks if s.name.startswith(f"bench-aci-{self.run_id}")]:
                with contextlib.suppress(Exception):
                    st.stack.destroy(color="never", on_output=lambda _l: None)
                    st.stack.workspace.remove_stack(st.name)
                    self.stacks.remove(st)
            fake.close()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

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

    def steady_latency(self, uri: str, key: str | None, seconds: float) -> tuple[list[float], int, list[float]]:
        """Latencies (ms) of a client at the update rate for `seconds`, its failed requests, and the
        predictions it was answered with (which version answered)."""
        client = PacedClient(uri, key, self.args.update_rate, max_seconds=seconds, max_requests=int(self.args.update_rate * seconds) + 1)
        client.start()
        client.join(timeout=seconds + 30)
        client.finish()
        recs = list(client.records)
        return ([r[1] * 1000 for r in recs if r[2]], sum(1 for r in recs if not r[2]),
                [r[3] for r in recs if r[2] and r[3] is not None])

    def canary_source(self) -> None:
        """`bench_rollout_src/score.py`: the sample plus the switches the canary tests use
        (tests/fixtures/canary_run.py): an environment variable makes a version fail or slow down."""
        src = self.work / ROLLOUT_SRC
        src.mkdir(exist_ok=True)
        (src / "score.py").write_text((self.work / "sample" / "src" / "score.py").read_text() + "\n\n"
                                      + (self.work / "tests" / "fixtures" / "canary_run.py").read_text())

    def phase_rollout(self) -> None:
        """The local target's rollouts: a canary's time to promotion against its declared steps, the latency a
        held split and a mirror add against the plain route, and the requests that fail while one rolls back."""
        a = self.args
        S = (f"rollout (local target; canary {' → '.join(f'{x} %' for x in ROLLOUT_STEPS)}, "
             f"{ROLLOUT_STEP_SECONDS:g} s a step; client at {a.update_rate:g} req/s)")
        self.canary_source()
        model = self.work / "bench_models" / "rollout" / MODEL_FILE
        self.train(0.1, model)

        def declare(env: dict[str, str], canary: bool = False, traffic: int | None = None,
                    mirror: int | None = None) -> Callable[[], None]:
            return rollout_program(model, env, canary=canary, traffic=traffic, mirror=mirror)

        st = BenchStack(self, f"bench-rollout-{self.run_id}", declare({}))
        st.run("up")
        self.rollout_runs(st, S, model, declare)
        st.run("destroy")
        self.results.note(f"{S}: each latency figure is {self.rollout_measure():g} s of one client at {a.update_rate:g} "
                          "req/s through the gateway; the split and the mirror cost what nginx adds per request plus, "
                          "for the mirror, the candidate's work on the same 2 cores.")

    def phase_krollout(self) -> None:
        """The same rollouts on the local cluster (`AksService`): the canary's `up` to full promotion (candidate
        Deployment gated on the sample, the steps, then the service's Deployment rolled to it), the held split's
        and the mirror's latency against the plain route through the NodePort, failed requests in both canaries."""
        a = self.args
        S = (f"rollout on Kubernetes (1 replica, local cluster; canary {' → '.join(f'{x} %' for x in ROLLOUT_STEPS)}, "
             f"{ROLLOUT_STEP_SECONDS:g} s a step; client at {a.update_rate:g} req/s on the NodePort)")
        os.environ["MLDEPLOY_CACHE"] = self.machine_cache  # the cluster and its registry's credentials live there
        self.canary_source()
        model = self.work / "bench_models" / "krollout" / MODEL_FILE
        self.train(0.1, model)
        ns = f"bench-krollout-{self.run_id}"

        def declare(env: dict[str, str], canary: bool = False, traffic: int | None = None,
                    mirror: int | None = None) -> Callable[[], None]:
            return k8s_program(model, ns, replicas=1, source_directory=ROLLOUT_SRC, env=env,
                               **k8s_rollout_declaration(canary, traffic, mirror))

        st = BenchStack(self, f"bench-krollout-{self.run_id}", declare({}))
        # The lock for the whole section, destroy included: released between runs, the bench's namespace stayed
        # on the cluster while others' cluster tests ran, and the destroy queued behind a whole CI run.
        with self.cluster_lock():
            self.cluster_up()
            log(f"kubernetes rollout: up (1 replica, the canary declared; untimed), namespace {ns}")
            st.run("up")
            try:
                self.rollout_runs(st, S, model, declare)
            finally:
                st.run("destroy")
        self.results.note(
            f"{S}: each latency figure is {self.rollout_measure():g} s of one client at {a.update_rate:g} req/s on the "
            "service's NodePort on 127.0.0.1 (kube-proxy, then the pod's front end, nginx, which splits or mirrors; the "
            "candidate is a second Deployment reached through its ClusterIP). The *plain route* is the same pods with "
            "the canary declared and no candidate. A canary's `up` is its full promotion: the candidate Deployment "
            "created and gated on the sample, the steps, then the service's Deployment rolled to the new version and "
            "the candidate removed; *to the promotion decision* is when the last step passed (the engine's progress "
            "line, as the Automation API streamed it). Each held step (slow mirror, mirror, held split) declares a newer "
            "model, so each starts its own candidate Deployment: when this section was written, a changed `traffic` or "
            "`mirror_percent` alone, with the same version, left the running split as it was on Kubernetes (the "
            "`KubernetesCanary` resource's diff watched neither; fixed since), and the *answers from* rows check from the client's "
            "side which version answered.")

    def rollout_measure(self) -> float:
        return max(5.0, self.args.serve_seconds)

    def rollout_runs(self, st: BenchStack, S: str, model: Path, declare: Callable[..., Callable[[], None]]) -> None:
        """One target's rollout figures, `runs` times, on a stack whose service `declare(env, canary=, traffic=,
        mirror=)` describes: the plain route, a 50 % mirror to a slow candidate, a 50 % mirror to a newer version
        and a held 50/50 split to a newer one still (latency, failures, which version answered), the held version
        released (it takes every request), a canary to promotion (timed against its declared steps), and a version
        failing one request in three rolled back."""
        R, a = self.results, self.args
        out = st.outputs()
        uri, key = loopback_uri(out["scoring_uri"]), out.get("primary_key")
        measure = self.rollout_measure()
        bound = int(a.update_rate * a.update_timeout) + 1
        for i in range(a.runs):
            log(f"{S} run {i + 1}/{a.runs}: plain, slow mirror, mirror 50 %, held split 50/50, release, canary, rollback")
            lat, _, _ = self.steady_latency(uri, key, measure)
            R.add(S, "plain route: latency p50", "ms", percentile(lat, 50))
            R.add(S, "plain route: latency p99", "ms", percentile(lat, 99))
            # Each held step declares a newer version, so each starts its own candidate (when this was written a
            # changed `traffic` or `mirror_percent` alone was not applied on Kubernetes; fixed since, kept comparable).
            # A 50 % mirror to a candidate that takes 1.5 s a request: live answers must not wait for it.
            cand = self.train(1.0 + i, model)
            st.run("up", program=declare({"CANARY_SLOW_EVERY": "1"}, mirror=50))
            lat, failed3, answers = self.steady_latency(uri, key, measure)
            R.add(S, "mirror 50 % to a candidate taking 1.5 s a request: latency p50", "ms", percentile(lat, 50))
            R.add(S, "mirror 50 % to a candidate taking 1.5 s a request: latency p99", "ms", percentile(lat, 99))
            R.add(S, "mirror 50 % to a slow candidate: failed requests", "requests", failed3)
            R.add(S, "mirror 50 % to a slow candidate: answers from the candidate (discarded: 0 expected)", "requests",
                  answered_by(answers, cand))
            # A 50 % mirror to a newer version.
            cand = self.train(2.0 + i, model)
            st.run("up", program=declare({}, mirror=50))
            lat, failed2, answers = self.steady_latency(uri, key, measure)
            R.add(S, "mirror 50 % (answers discarded): latency p50", "ms", percentile(lat, 50))
            R.add(S, "mirror 50 % (answers discarded): latency p99", "ms", percentile(lat, 99))
            R.add(S, "mirror 50 %: answers from the candidate (discarded: 0 expected)", "requests", answered_by(answers, cand))
            # A newer version held beside the current one, taking half the requests.
            cand = self.train(3.0 + i, model)
            st.run("up", program=declare({}, traffic=50))
            lat, failed, answers = self.steady_latency(uri, key, measure)
            R.add(S, "held split 50/50: latency p50", "ms", percentile(lat, 50))
            R.add(S, "held split 50/50: latency p99", "ms", percentile(lat, 99))
            R.add(S, "held split 50/50: answers from the held version", "%", share_percent(answers, cand))
            R.add(S, "failed requests while split or mirrored", "requests", failed + failed2)
            st.run("up", program=declare({}))  # dropped: the held version takes every request
            # A canary to promotion, timed against its declared steps.
            self.train(50.0 * 4**i, model)
            client = PacedClient(uri, key, a.update_rate, max_seconds=a.update_timeout, max_requests=bound)
            client.start()
            t0 = time.perf_counter()
            try:
                _, dt, _ = st.run("up", program=declare({}, canary=True))
            finally:
                client.finish()
            recs = [r for r in client.records if r[0] >= t0]
            R.add(S, f"canary `up` to promotion (its steps declare {len(ROLLOUT_STEPS) * ROLLOUT_STEP_SECONDS:g} s)", "s", dt)
            R.add(S, "canary `up` start to its promotion decision (last step passed)", "s",
                  first_mark(st.marks, "canary: promoted"))
            R.add(S, "failed requests during a promoted canary", "requests", sum(1 for r in recs if not r[2]))
            R.add(S, "requests sent during a promoted canary", "requests", len(recs))
            for r in [r for r in recs if not r[2]][:3]:
                R.note(f"{S}, run {i + 1}: a request failed during the promoted canary at +{r[0] - t0:.2f} s: {r[4]}")
            self.note_late_candidate(st, S, i)
            # A version failing one request in three, rolled back at its first step.
            client = PacedClient(uri, key, a.update_rate, max_seconds=a.update_timeout, max_requests=bound)
            client.start()
            t0 = time.perf_counter()
            try:
                st.run("up", program=declare({"CANARY_FAIL_EVERY": "3"}, canary=True))
                R.note(f"{S}, run {i + 1}: the failing version was promoted, not rolled back")
            except Exception:  # noqa: BLE001 - the rollback fails `up`, as it should
                pass
            finally:
                dt = time.perf_counter() - t0
                client.finish()
            recs = [r for r in client.records if r[0] >= t0]
            R.add(S, "rollback: `up` start to failing (rolled back)", "s", dt)
            R.add(S, "rollback: failed requests (the candidate's share of its first step)", "requests", sum(1 for r in recs if not r[2]))
            R.add(S, "rollback: requests sent meanwhile", "requests", len(recs))

    def note_late_candidate(self, st: BenchStack, S: str, i: int) -> None:
        """A Kubernetes canary's serving pods that reached the candidate's ClusterIP only after some tries (the
        provider says so before the first weight; at once, it says nothing of it): a note, once per run."""
        seen = {line.split("[mldeploy] ", 1)[-1].strip() for _, line in st.marks if "not at once:" in line}
        for line in sorted(seen):
            self.results.note(f"{S}, run {i + 1}, promoted canary: {line}")

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
            # Images the fake ARM pulled from the local registry for the ACI stacks (named after the stack).
            for im in dc.images.list():
                for tag in im.tags:
                    if f"mldeploy-bench-aci-{self.run_id}-" in tag:
                        with contextlib.suppress(docker.errors.APIError):
                            dc.images.remove(tag)
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
    "ours1": "mldeploy service, cpu_cores=1 (1 worker)",
    "ours2": "mldeploy service, cpu_cores=2 (2 workers; bound by this machine's 2 cores)",
    "k8s1": "mldeploy on Kubernetes, 1 replica, cpu_cores=1 (1 worker)",
}
SERVING_METRICS = (
    ("p50", "ms", "latency p50"),
    ("p99", "ms", "latency p99"),
    ("max", "ms", "latency max"),
    ("throughput", "req/s", "throughput"),
    ("cpu_per_1k", "ms", "CPU per 1,000 requests (CPU-ms, request path)"),
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


def k8s_program(model_path: Path, namespace: str, replicas: int = 2, cpu_cores: float = 0.25,
                memory_gb: float = 0.5, source_directory: str = "sample/src", env: dict[str, str] | None = None,
                **rollout: Any) -> Callable[[], None]:
    """`__main__.py`'s Kubernetes branch with stacks/Pulumi.prod.yaml's settings (DevTest, 2 replicas,
    0.25 cores, 0.5 GB), in the bench's own namespace, so the shared cluster's `default` is never touched.
    `env` and `rollout` (`rollout_declaration`'s keywords), when given, go to the service as they are."""
    extra = {**({"environment_variables": env} if env is not None else {}), **rollout}

    def program() -> None:
        import pulumi

        from mldeploy.components import AksCluster, AksService, InferenceImage, RegisteredModel

        model = RegisteredModel("ridge", model_name="sklearn_regression_model", model_path=str(model_path))
        image = InferenceImage("scoring", entry_script="score.py", source_directory=source_directory,
                               conda_file="sample/env/myenv.yml")
        cluster = AksCluster("aks", cluster_purpose="DevTest")
        service = AksService("aksservice", cluster=cluster, models=[model], image=image, num_replicas=replicas,
                             cpu_cores=cpu_cores, memory_gb=memory_gb, auth_enabled=True, namespace=namespace, **extra)
        pulumi.export("model_version", model.version)
        pulumi.export("image_name", image.image_name)
        pulumi.export("scoring_uri", service.scoring_uri)
        pulumi.export("primary_key", service.primary_key)

    return program


def aci_program(model_path: Path) -> Callable[[], None]:
    """`__main__.py`'s ACI branch (its defaults: 1 core, 1 GB, keys on), with target `aci`."""

    def program() -> None:
        import pulumi

        from mldeploy.components import ContainerInstanceService, InferenceImage, RegisteredModel

        model = RegisteredModel("ridge", model_name="sklearn_regression_model", model_path=str(model_path))
        image = InferenceImage("scoring", entry_script="score.py", source_directory="sample/src",
                               conda_file="sample/env/myenv.yml")
        svc = ContainerInstanceService("aciservice", models=[model], image=image, target="aci", cpu_cores=1,
                                       memory_gb=1, auth_enabled=True)
        pulumi.export("model_version", model.version)
        pulumi.export("image_name", image.image_name)
        pulumi.export("scoring_uri", svc.scoring_uri)
        pulumi.export("primary_key", svc.primary_key)

    return program


ROLLOUT_STEPS, ROLLOUT_STEP_SECONDS = [25, 100], 5.0
ROLLOUT_SRC = "bench_rollout_src"  # in the project copy: the sample's score.py with tests/fixtures/canary_run.py


def rollout_declaration(canary: bool = False, traffic: int | None = None, mirror: int | None = None) -> dict[str, Any]:
    """The rollout keywords of a bench service, the same on every target: the bench's canary
    (`ROLLOUT_STEPS`, `ROLLOUT_STEP_SECONDS`, at least 10 requests a step, ≤ 5 % errors), a held split with
    `traffic` % to the candidate, and/or `mirror` % mirrored. Pure."""
    from mldeploy.components import Canary

    return {"rollout": Canary(steps=ROLLOUT_STEPS, step_seconds=ROLLOUT_STEP_SECONDS, min_requests=10, max_error_rate=0.05,
                              max_wait_seconds=30) if canary else None,
            "traffic": {"current": 100 - traffic, "candidate": traffic} if traffic is not None else None,
            "mirror_percent": mirror}


def k8s_rollout_declaration(canary: bool = False, traffic: int | None = None, mirror: int | None = None) -> dict[str, Any]:
    """`rollout_declaration` for `AksService`: the canary stays declared whenever nothing is held, so the pods
    start with a front end that can split (the first `up`: a first `traffic=` on pods without one is refused)
    and dropping a held split hands every request to the held version (docs/rollouts.md, "On Kubernetes"). Pure."""
    return rollout_declaration(canary or (traffic is None and mirror is None), traffic, mirror)


def rollout_program(model_path: Path, env: dict[str, str], canary: bool = False, traffic: int | None = None,
                    mirror: int | None = None) -> Callable[[], None]:
    """One local service whose rollout the bench declares: a canary, a held split or a mirror."""
    def program() -> None:
        import pulumi

        from mldeploy.components import ContainerInstanceService, InferenceImage, RegisteredModel

        model = RegisteredModel("ridge", model_name="bench_rollout_model", model_path=str(model_path))
        image = InferenceImage("scoring", entry_script="score.py", source_directory=ROLLOUT_SRC,
                               conda_file="sample/env/myenv.yml")
        svc = ContainerInstanceService(
            "rollout", models=[model], image=image, cpu_cores=1, memory_gb=0.5, auth_enabled=True, environment_variables=env,
            **rollout_declaration(canary, traffic, mirror))
        pulumi.export("scoring_uri", svc.scoring_uri)
        pulumi.export("primary_key", svc.primary_key)

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
    if R.loads:
        lines += ["", "## Load average per section", "", "1, 5 and 15 minutes, at the start and the end of each section.",
                  "", "| section | at start | at end |", "|---|---|---|"]
        lines += [f"| {sec} | {l0} | {l1} |" for sec, l0, l1 in R.loads]
    for title, data, ours, threads, conns in (
            ("Serving: bare azmlinfsrv and mldeploy side by side (local target)", R.serving, ["ours1", "ours2"],
             a.wrk_threads, a.concurrency),
            ("Serving below saturation (local target): the same, with room on the cores", R.paced, ["ours1", "ours2"],
             1, a.paced_connections),
            ("Serving on Kubernetes: bare azmlinfsrv and one replica through the NodePort", R.kserving, ["k8s1"],
             a.wrk_threads, a.concurrency)):
        if not (data.get("bare") and len(data) > 1):
            continue
        ours = [n for n in ours if n in data]
        lines += ["", f"## {title}", "",
                  f"Load generator: **{wrk_version()}**, {threads} thread{'s' if threads > 1 else ''}, {conns} keep-alive "
                  f"connections (closed loop), {a.serve_warmup:g} s warm-up then {a.serve_seconds:g} s measured, "
                  "runs alternating. Same model file, entry script and request body (one row of 10 features). "
                  "Each figure is the median over the runs; ratio = ours / bare single-worker azmlinfsrv (above 1: "
                  "more latency, more throughput, or more CPU per request). Load average: 1-minute, at the start "
                  "of each run (median).", "",
                  "| metric | unit | runs | bare azmlinfsrv (1 worker) | "
                  + " | ".join(f"{SERVING_LABELS[n].removeprefix('mldeploy service, ')} | ratio" for n in ours) + " |",
                  "|---|---|---:|---:|" + "---:|---:|" * len(ours)]
        for k, unit, label in SERVING_METRICS:
            bare = [x for x in data["bare"].get(k, []) if not math.isnan(x)]
            if not bare:
                continue
            mb = statistics.median(bare)
            cells = [fmt(mb, unit) if unit != "load" else f"{mb:.2f}"]
            runs = len(bare)
            for n in ours:
                vals = [x for x in data[n].get(k, []) if not math.isnan(x)]
                if not vals:
                    cells += ["n/a", "n/a"]
                    continue
                mo = statistics.median(vals)
                runs = min(runs, len(vals))
                cells += [fmt(mo, unit) if unit != "load" else f"{mo:.2f}",
                          "" if unit == "load" else (f"{mo / mb:.2f}" if mb else "n/a")]
            lines.append(f"| {label} | {unit} | {runs} | " + " | ".join(cells) + " |")
    goals = cpu_goals(R.serving, R.kserving, R.paced)
    if goals:
        lines += ["", "## CPU per request against the goals (issue 22)", "",
                  "| goal | measured | met |", "|---|---:|---|"] + goals
    lines += ["", "## What is measured", ""] + [f"- {d}" for d in DEFINITIONS(a)]
    if R.notes:
        lines += ["", "## Notes from this run", ""] + [f"- {n}" for n in R.notes]
    if R.errors:
        lines += ["", "## Errors", ""] + [f"- {e}" for e in R.errors]
    return "\n".join(lines) + "\n"


def median_of(data: dict[str, dict[str, list[float]]], name: str, key: str) -> float:
    vals = [x for x in data.get(name, {}).get(key, []) if not math.isnan(x)]
    return statistics.median(vals) if vals else float("nan")


def cpu_goals(local: dict[str, dict[str, list[float]]], k8s: dict[str, dict[str, list[float]]],
              paced: dict[str, dict[str, list[float]]] | None = None) -> list[str]:
    """Table rows: each CPU-per-request goal, the measured ratio of medians, and whether it is met. Pure.

    The two-workers goal is judged below saturation (`paced`) where measured: at saturation the load
    generator, nginx and two workers share 2 cores, and the CPU each request takes grows with that
    sharing whatever the workers do; the saturated ratio stays in the table beside it."""
    paced = paced or {}
    rows = []
    for label, num, den, limit in (
            ("ours (`cpu_cores=1`) / bare, CPU per request", (local, "ours1"), (local, "bare"), 1.10),
            ("ours on Kubernetes (1 replica) / bare, CPU per request", (k8s, "k8s1"), (k8s, "bare"), 1.10),
            ("2 workers / 1 worker (`cpu_cores` 2 / 1), CPU per request, below saturation", (paced, "ours2"), (paced, "ours1"), 1.05),
            ("2 workers / 1 worker (`cpu_cores` 2 / 1), CPU per request, at saturation (bound by 2 cores)",
             (local, "ours2"), (local, "ours1"), 1.05)):
        n, d = median_of(num[0], num[1], "cpu_per_1k"), median_of(den[0], den[1], "cpu_per_1k")
        if math.isnan(n) or math.isnan(d) or not d:
            continue
        r = n / d
        rows.append(f"| {label} ≤ {limit:.2f}× | {r:.3f}× | {'yes' if r <= limit else '**no**'} |")
    return rows


def DEFINITIONS(a: argparse.Namespace) -> list[str]:  # noqa: N802 - reads like a constant
    return [
        "Times are wall-clock (`time.perf_counter`) around one Automation API call (`stack.up()`, "
        "`stack.preview()`, `stack.destroy()`), as `scripts/stack.py` runs them: they include starting the "
        "`pulumi` CLI, running the program inline and the dynamic providers. Since 2026-12-05 23:00 they no "
        "longer include the `stack output` (twice) and `stack history` runs the SDK's Stack made after every `up`, "
        "`refresh` and `destroy` (`scripts/lazy_stack.py`): those run when the outputs or the summary are first "
        "read, after the timer stopped. Every stack lives in a "
        "temporary copy of the project with its own file backend, registry and stack names (`bench-*`).",
        "**cold `pulumi up`**: first deploy of the dev program (`__main__.py`) on a new stack. The base image "
        f"(`{DEFAULT_BASE_IMAGE}`) is present; the wheelhouse is empty (`MLDEPLOY_CACHE` points at a new empty "
        "folder for the provider process, so uv's cache of resolutions in it starts empty too); the image is built on a base with the same content but a new image id "
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
        "**CPU per request** (beside every serving figure): CPU-milliseconds per 1,000 answered requests, "
        "= CPU time used during the measured wrk window / requests wrk counted × 1,000. *ours, local*: the sum "
        "over the stack's gateway container (nginx) and the service's scoring container, each read from its "
        "cgroup's CPU accounting (`cpu.stat` `usage_usec` on cgroup v2, `cpuacct.usage` on v1, whichever the "
        "machine has; the notes name the cgroups read). *ours, Kubernetes*: the sum over the service's pods' "
        "cgroups (front end, scoring server and pause container). *bare*: utime+stime (and reaped children's) "
        "of every process in the bare server's process group, from `/proc/<pid>/stat`. wrk's own CPU and "
        "the kernel's packet work outside these cgroups (loopback, kube-proxy's NAT) are in none of them. The "
        "goals of issue 22 are compared with the ratios of medians; nothing asserts them.",
        "**Kubernetes**: the local single-node cluster (`scripts/cluster.sh`), taken with `flock "
        f"{K8S_LOCK}` for each section, never for the whole run; its start-up is timed apart (`cluster.sh "
        "up`; when it already runs that is only a check and says so). The program is `__main__.py`'s "
        "Kubernetes branch with `stacks/Pulumi.prod.yaml`'s settings (DevTest, 2 replicas, `cpu_cores` 0.25, "
        "`memory_gb` 0.5, keys on) in a namespace of the bench's own (`bench-k8s-<id>-<run>`), so the cluster's "
        "`default` namespace, where a developer's `prod` stack lives, is never touched. Each run: a cold `up` "
        "(new stack and namespace, and a base with a new image id, so no Docker layer cache matches: the "
        "environment image is built again, from the machine's wheelhouse, which is *not* emptied here because "
        "the cluster and its registry credentials live in the same cache folder; the image is pushed to the "
        "local registry on 127.0.0.1:5000 and pulled by the cluster), no-op `up` and "
        "`preview`, a model-only update measured as the local one (client through the NodePort on 127.0.0.1; "
        "`up` returns when the rollout is done), then `destroy` (the namespace goes with it).",
        "**serving on Kubernetes**: the same program with 1 replica, `cpu_cores=1`, `memory_gb=1` (1 worker), "
        "wrk through the service's NodePort on 127.0.0.1 (kube-proxy, the pod's key-checking front end, the "
        "scoring server on the pod's loopback), alternating with the bare server, same load as the local "
        "serving section.",
        "**rollouts** (local target, and on Kubernetes `krollout`: `AksService`, 1 replica, `cpu_cores` 0.25, in a "
        "namespace of the bench's own, the cluster's lock held for the whole section): one service whose score.py is the "
        "sample's plus `tests/fixtures/canary_run.py` (an environment variable makes a version fail every third "
        "request or take 1.5 s a request, as the canary tests do). Per run, with one client at "
        f"{a.update_rate:g} req/s on 127.0.0.1 (fixed schedule, keep-alive): latency through the plain route, a held "
        "50 % mirror to a candidate taking 1.5 s a request, a 50 % mirror to a newer model, and a held 50/50 split to a "
        "newer one still (each its own candidate), with how many answers came from the candidate (a mirror's: 0; the "
        "held split's: about half); the held version released; a canary of a newer model (steps "
        f"{' → '.join(f'{x} %' for x in ROLLOUT_STEPS)}, {ROLLOUT_STEP_SECONDS:g} s each, ≥ 10 requests, ≤ 5 % errors) "
        "timed from `up` start to `up` returning, against the steps' declared time, with the failed requests from "
        "`up` start to its end; a version failing one request in three, rolled back at its first step, with the "
        "failed requests meanwhile (only the candidate's share of that step can fail). On Kubernetes the plain route "
        "is the same pods with the canary declared (their front end can split) and no candidate, and a canary's "
        "`up` includes the candidate Deployment's start and sample gate, the serving pods reaching it through its "
        "ClusterIP (a note says when one needed more than one try) and, after the steps, the service's "
        "Deployment rolling to the new version.",
    ]


# --- main ----------------------------------------------------------------------


PHASES = ("deploy", "noop", "update", "serve", "scale", "rollout", "kubernetes", "kserve", "krollout", "iotedge", "aci")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], prog="bash bench/run.sh")
    p.add_argument("--runs", type=int, default=3, help="runs of each deploy/no-op/update/serving figure (default 3)")
    p.add_argument("--scale", default="1,5,10", help="service counts of the scale stacks (default 1,5,10)")
    p.add_argument("--scale-runs", type=int, default=2, help="runs of each scale step (default 2)")
    p.add_argument("--scale-parallel", type=int, default=0,
                   help="limit the engine's parallelism (`parallel=N`) in the scale stacks; default: the engine's")
    p.add_argument("--concurrency", type=int, default=8, help="wrk connections while serving (default 8)")
    p.add_argument("--wrk-threads", type=int, default=2, help="wrk threads while serving (default 2)")
    p.add_argument("--paced-connections", type=int, default=2,
                   help="wrk connections (1 thread) of the below-saturation serving runs (default 2: one per worker)")
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
            load0 = loadavg()
            try:
                getattr(bench, f"phase_{phase}")()
            except KeyboardInterrupt:
                bench.results.loads.append((phase, load0, loadavg()))
                raise
            except Exception as exc:  # noqa: BLE001 - report it, go on with the next phase
                failed = True
                bench.results.errors.append(f"phase `{phase}`, last engine operation {bench.last_op or '(none)'}: "
                                            f"{error_summary(exc)}")
                log(f"phase {phase} failed:\n{traceback.format_exc()[-3000:]}")
            bench.results.loads.append((phase, load0, loadavg()))
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
