#!/usr/bin/env python3
"""Profile a deployed service, as Azure ML's `Model.profile` does, and recommend its size.

    scripts/stack.py profile <stack> <service> [--input FILE] [--duration S]
        [--cpu 0.5,1,2] [--target-p99-ms 50] [--target-rps 20]

It never touches the live service: for each CPU size it starts a throwaway
backend from the same image and model versions (a container on 127.0.0.1 with
that CPU limit), loads it with the entry script's own sample (from the Swagger
document) or with a JSON-lines file of request bodies, and reads peak memory
from the container's cgroup. It prints a Markdown table and writes it, with a
PNG chart, beside the stack's state (`<stateDir>/profiles/`).

The load comes from threads of this process on the same machine, so on a small
machine the client's own CPU limits what it can see; compare sizes with each
other, not with another machine's numbers.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import requests

MEMORY_STEP_GB = 0.25


class ProfileError(ValueError):
    """Bad profile input: the message names the argument or the file."""


@dataclass
class Backend:
    """What a throwaway copy of a service needs: the same image, models and environment."""

    service_name: str
    image: str
    environment: dict[str, str]
    mounts: dict[str, str]


@dataclass
class Row:
    cpu_cores: float
    requests: int
    errors: int
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    peak_memory_mb: float


def load_requests(path: str | os.PathLike[str]) -> list[Any]:
    """Request bodies, one JSON document per line; blank lines are skipped."""
    p = Path(path)
    if not p.is_file():
        raise ProfileError(f"--input: {p} is not a file")
    bodies = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            bodies.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ProfileError(f"--input: {p} line {n} is not JSON ({exc.msg}); the file must be JSON lines") from None
    if not bodies:
        raise ProfileError(f"--input: {p} holds no request")
    return bodies


def sample_from_swagger(swagger: dict[str, Any]) -> Any:
    """The entry script's input sample, as inference-schema put it in the Swagger document."""
    example = ((swagger.get("definitions") or {}).get("ServiceInput") or {}).get("example")
    if example is None:
        raise ProfileError("the entry script declares no input sample (inference-schema); give --input FILE")
    return example


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


def run_load(
    uri: str,
    bodies: Sequence[Any],
    duration: float,
    clients: int = 2,
    max_requests: int = 20_000,
    post: Callable[..., Any] | None = None,
) -> tuple[list[float], int, float]:
    """Closed-loop clients for `duration` seconds (bounded by max_requests): latencies (s), errors, elapsed."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + duration
    sent = [0]

    def client(i: int) -> None:
        session = requests.Session()
        send = post or session.post
        while time.monotonic() < stop_at:
            with lock:
                if sent[0] >= max_requests:
                    break
                n = sent[0]
                sent[0] += 1
            body = bodies[n % len(bodies)]  # the file's requests in turn, across all clients
            t0 = time.perf_counter()
            try:
                r = send(uri, json=body, timeout=30)
                ok = r.status_code == 200
            except requests.RequestException:
                ok = False
            dt = time.perf_counter() - t0
            with lock:
                if ok:
                    latencies.append(dt)
                else:
                    errors[0] += 1
        session.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration + 60)
    return latencies, errors[0], time.monotonic() - t0


def cgroup_memory_file(pid: int, proc: Path = Path("/proc"), sys_cgroup: Path = Path("/sys/fs/cgroup")) -> Path:
    """The peak-memory file of the cgroup a process is in (cgroup v1 or v2)."""
    for line in (proc / str(pid) / "cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return sys_cgroup / "memory" / path.lstrip("/") / "memory.max_usage_in_bytes"
        if hierarchy == "0" and controllers == "":
            v2 = sys_cgroup / path.lstrip("/") / "memory.peak"
            if v2.exists():
                return v2
    raise ProfileError(f"no memory cgroup found for pid {pid}")


def recommend(rows: Sequence[Row], target_p99_ms: float, target_rps: float) -> tuple[float | None, float]:
    """The smallest CPU size that meets both targets, and memory with a quarter of headroom."""
    meeting = [r for r in rows if r.errors == 0 and r.p99_ms <= target_p99_ms and r.throughput_rps >= target_rps]
    cpu = min((r.cpu_cores for r in meeting), default=None)
    peak_gb = max((r.peak_memory_mb for r in rows), default=0.0) / 1024
    memory = max(0.5, math.ceil(peak_gb * 1.25 / MEMORY_STEP_GB) * MEMORY_STEP_GB)
    return cpu, memory


def render_markdown(service: str, rows: Sequence[Row], cpu: float | None, memory: float, target_p99_ms: float, target_rps: float) -> str:
    lines = [
        f"### Profile of service `{service}`",
        "",
        "| cpu_cores | requests | errors | throughput (req/s) | p50 (ms) | p99 (ms) | peak memory (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.cpu_cores:g} | {r.requests} | {r.errors} | {r.throughput_rps:.1f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.peak_memory_mb:.0f} |"
        )
    lines.append("")
    target = f"p99 ≤ {target_p99_ms:g} ms at ≥ {target_rps:g} req/s"
    if cpu is None:
        lines.append(f"No size tried meets {target}; try larger `cpu_cores` or relax the target. Recommended `memory_gb`: {memory:g}.")
    else:
        lines.append(f"Recommended for {target}: `cpu_cores={cpu:g}`, `memory_gb={memory:g}`.")
    return "\n".join(lines) + "\n"


def render_chart(service: str, rows: Sequence[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    cpus = [r.cpu_cores for r in rows]
    ax.plot(cpus, [r.throughput_rps for r in rows], marker="o", label="throughput (req/s)")
    ax.set_xlabel("cpu_cores")
    ax.set_ylabel("req/s")
    ax2 = ax.twinx()
    ax2.plot(cpus, [r.p99_ms for r in rows], marker="s", color="tab:red", label="p99 (ms)")
    ax2.set_ylabel("p99 latency (ms)")
    ax.set_title(f"Profile of {service}")
    fig.legend(loc="lower center", ncol=2, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def profile_size(backend: Backend, cpu: float, memory_gb: float, bodies: Sequence[Any] | None, duration: float, labels: dict[str, str]) -> tuple[Row, Any]:
    """One throwaway backend at one CPU size; removed whatever happens."""
    import docker

    from mldeploy.providers.core import containers

    import json as jsonlib
    import shutil
    import tempfile
    from types import SimpleNamespace

    from mldeploy.providers.front.gateway_config import SCORING_SOCKET_DIR
    from mldeploy.providers.core.scoring import unix_request
    from mldeploy.providers.targets.local import workers_for

    name = f"mldeploy-profile-{backend.service_name}-{uuid.uuid4().hex[:8]}"
    # As a service runs: no network, a Unix socket, nobody, and its workers by the service's rule.
    run_dir = Path(tempfile.mkdtemp(prefix="mldeploy-profile-"))
    if os.geteuid() == 0:
        os.chown(run_dir, 65534, 65534)
    os.chmod(run_dir, 0o750)
    env = {**backend.environment, "WORKER_COUNT": str(workers_for(cpu))}
    rc = containers.run_socket_container(name, backend.image, labels, env, backend.mounts, cpu, memory_gb,
                                         str(run_dir), "profile.sock", SCORING_SOCKET_DIR)
    sock = rc.socket or ""

    def post(uri: str, json: Any = None, timeout: float = 30) -> Any:  # noqa: A002 - requests' own keyword
        body = jsonlib.dumps(json).encode()
        return SimpleNamespace(status_code=unix_request(sock, "POST", uri, body, timeout).status)

    try:
        containers.wait_healthy(rc, timeout=180)
        if bodies is None:
            bodies = [sample_from_swagger(json.loads(unix_request(sock, "GET", "/swagger.json", timeout=30).body))]
        post("/score", json=bodies[0], timeout=60)  # warm-up: the first call loads lazily
        latencies, errors, elapsed = run_load("/score", bodies, duration, post=post)
        pid = docker.from_env().containers.get(rc.id).attrs["State"]["Pid"]
        peak = int(cgroup_memory_file(pid).read_text().strip())
        row = Row(
            cpu_cores=cpu,
            requests=len(latencies) + errors,
            errors=errors,
            throughput_rps=len(latencies) / elapsed if elapsed else 0.0,
            p50_ms=statistics.median(latencies) * 1000 if latencies else float("nan"),
            p99_ms=percentile(latencies, 99) * 1000,
            peak_memory_mb=peak / 2**20,
        )
        return row, bodies
    finally:
        containers.remove(rc.id, stop_timeout=2)
        shutil.rmtree(run_dir, ignore_errors=True)


# ------------------------------------------------------------------ the stack


MODELS_ROOT = "/var/azureml-app/azureml-models"
LOCAL_TYPE = "pulumi-python:dynamic/mldeploy:Service"
DEPLOYMENT_TYPE = "kubernetes:apps/v1:Deployment"


def backend_from_state(deployment: dict[str, Any], service: str, resolve: Callable[[str], Path]) -> Backend:
    """The service's image, models and environment, read from the stack's state."""
    found = []
    for res in deployment.get("resources") or []:
        inputs = res.get("inputs") or {}
        if res.get("type") == LOCAL_TYPE:
            found.append(inputs.get("service_name"))
            if inputs.get("service_name") == service:
                models = inputs.get("models") or []
                mounts = {str(resolve(m["model_dir"])): f"{MODELS_ROOT}/{m['name']}/{int(m['version'])}" for m in models}
                model_dir = f"{MODELS_ROOT}/{models[0]['name']}/{int(models[0]['version'])}" if len(models) == 1 else MODELS_ROOT
                env = {**(inputs.get("environment_variables") or {}), "AZUREML_MODEL_DIR": model_dir}
                return Backend(service, inputs["image_name"], env, mounts)
        elif res.get("type") == DEPLOYMENT_TYPE:
            name = (inputs.get("metadata") or {}).get("name")
            found.append(name)
            if name == service:
                pod = ((inputs.get("spec") or {}).get("template") or {}).get("spec") or {}
                scoring = next(c for c in pod.get("containers") or [] if c.get("name") == "scoring")
                # The model is in the image; only the pod-only loopback binding is left out.
                env = {e["name"]: e.get("value", "") for e in scoring.get("env") or [] if e["name"] != "MLDEPLOY_BIND_HOST"}
                return Backend(service, scoring["image"], env, {})
    known = ", ".join(sorted(n for n in found if n)) or "none"
    raise ProfileError(f"service {service!r} is not in the stack; its services: {known}")


def stack_state_dir(st: Any) -> str | None:
    """`mldeploy:stateDir` from the stack's config, when it sets one (stack config wins, as everywhere)."""
    try:
        value = st.get_config("mldeploy:stateDir").value
    except Exception:
        return None
    return value or None


def parse_cpus(text: str) -> list[float]:
    try:
        cpus = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ProfileError(f"--cpu: {text!r} is not a comma-separated list of numbers") from None
    if not cpus or any(c <= 0 for c in cpus):
        raise ProfileError(f"--cpu: every size must be greater than 0, got {text!r}")
    return cpus


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="stack.py profile", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stack")
    parser.add_argument("service")
    parser.add_argument("--input", help="JSON lines: one request body per line (default: the entry script's sample)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per CPU size (default 10)")
    parser.add_argument("--cpu", default="0.5,1,2", help="CPU sizes to try (default 0.5,1,2)")
    parser.add_argument("--memory-gb", type=float, default=2.0, help="memory limit of the throwaway backends (default 2)")
    parser.add_argument("--target-p99-ms", type=float, default=100.0)
    parser.add_argument("--target-rps", type=float, default=20.0)
    args = parser.parse_args(argv)
    import stack as stack_cli

    if str(stack_cli.ROOT) not in sys.path:
        sys.path.insert(0, str(stack_cli.ROOT))
    try:
        if args.duration <= 0:
            raise ProfileError(f"--duration: must be greater than 0, got {args.duration:g}")
        if args.memory_gb <= 0:
            raise ProfileError(f"--memory-gb: must be greater than 0, got {args.memory_gb:g}")
        cpus = parse_cpus(args.cpu)
        bodies = load_requests(args.input) if args.input else None
        from mldeploy.providers.core.paths import local, project_dir

        st = stack_cli.select_stack(args.stack)
        backend = backend_from_state(st.export_stack().deployment or {}, args.service, local)
        labels = {"mldeploy.managed": "true", "mldeploy.stack": args.stack, "mldeploy.resource": f"profile-{args.service}"}
        rows = []
        for cpu in cpus:
            print(f"[profile] {args.service}: {cpu:g} CPU, {args.duration:g} s of load on a throwaway backend", file=sys.stderr, flush=True)
            row, bodies = profile_size(backend, cpu, args.memory_gb, bodies, args.duration, labels)
            rows.append(row)
        cpu, memory = recommend(rows, args.target_p99_ms, args.target_rps)
        markdown = render_markdown(args.service, rows, cpu, memory, args.target_p99_ms, args.target_rps)
        # Beside the stack's state: the stack's own mldeploy:stateDir when it sets one.
        out_dir = local(stack_state_dir(st) or os.environ.get("MLDEPLOY_STATE_DIR") or ".pulumi-state", project_dir()) / "profiles"
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = out_dir / f"{args.stack}-{args.service}"
        stem.with_suffix(".md").write_text(markdown)
        render_chart(args.service, rows, stem.with_suffix(".png"))
        print(markdown)
        print(f"[profile] wrote {stem.with_suffix('.md')} and {stem.with_suffix('.png')}", file=sys.stderr)
    except (ProfileError, stack_cli.PassphraseMissing) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
