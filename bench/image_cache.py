#!/usr/bin/env python3
"""Image build bench (issue 11, parts 3 and 4): cold, warm and model-only deploys, and image size.

Run: `source scripts/env.sh && python bench/image_cache.py [--runs 2]`. For each run,
on a copy of the project with its own state backend and stack names (`imgbench-…`),
and a base image with a new id (so no environment image or Docker layer can match):

- **cold `up`**: run 1 with an empty MLDEPLOY_CACHE (empty wheelhouse: pip fetches
  every wheel), later runs with a copy of the machine's wheelhouse (only the
  environment is cold);
- **warm `up` after `destroy`** and **a second stack with the same inputs**;
- **model-only update**: `up` start to the first answer from the new model, seen by a
  client polling the scoring URI every 20 ms; image builds during it;
- **image size** against the base plus the installed environment (`du -sb`).

`up` is the Automation API's `up` (no separate preview), as bench/bench.py measures.
Builds are counted from the build record the providers write. Everything made is
destroyed and removed at the end (stacks, images, the run's cache entries). Writes
bench/results/image-cache-<UTC stamp>.md. Nothing here asserts a figure.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
RESULTS = ROOT / "bench" / "results"
BASE = "mldeploy/base:bookworm-py3.11"
ROW = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]
IGNORE = shutil.ignore_patterns(".git", ".venv", ".pulumi-state", "__pycache__", ".pytest_cache", "models",
                                "results", "bench")


def log(msg: str) -> None:
    print(f"[image-bench] {msg}", file=sys.stderr, flush=True)


class Poller(threading.Thread):
    """Scores every 20 ms; remembers when each answer was first seen."""

    def __init__(self, uri: str, key: str):
        super().__init__(daemon=True)
        self.uri, self.key = uri, key
        self.first_seen: dict[float, float] = {}
        self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        import requests

        s = requests.Session()
        while not self.stop.is_set():
            try:
                r = s.post(self.uri, json={"data": ROW}, headers={"Authorization": f"Bearer {self.key}"}, timeout=5)
                if r.status_code == 200:
                    self.first_seen.setdefault(round(r.json()[0], 6), time.monotonic())
                else:
                    self.failures += 1
            except Exception:  # noqa: BLE001 - counted, the poll goes on
                self.failures += 1
            time.sleep(0.02)


class Bench:
    def __init__(self, runs: int, fresh_pip_cache: bool = False):
        self.runs = runs
        self.fresh_pip_cache = fresh_pip_cache
        self.id = uuid.uuid4().hex[:6]
        self.tmp = Path(tempfile.mkdtemp(prefix=f"mldeploy-imgbench-{self.id}-"))
        self.work = self.tmp / "project"
        shutil.copytree(ROOT, self.work, ignore=IGNORE)
        state = self.tmp / "state"
        (state / "backend").mkdir(parents=True)
        os.environ["PULUMI_BACKEND_URL"] = f"file://{state / 'backend'}"
        os.environ.setdefault("PULUMI_CONFIG_PASSPHRASE", "mldeploy-bench")
        os.environ["MLDEPLOY_PROJECT_DIR"] = str(self.work)
        os.environ["MLDEPLOY_STATE_DIR"] = str(state)
        self.real_cache = Path(os.environ.get("MLDEPLOY_CACHE") or Path.home() / ".cache" / "mldeploy")
        self.rows: list[tuple[str, str, str]] = []
        self.notes: list[str] = []
        self.stacks: list[Any] = []
        self.bases: list[str] = []
        self.caches: list[Path] = []

    # -- helpers --------------------------------------------------------------

    def stack(self, name: str) -> Any:
        import stack as stack_cli

        st = stack_cli.select_stack(name, program=stack_cli.project_program(self.work), root=self.work)
        self.stacks.append(st)
        return st

    def timed(self, st: Any, op: str) -> tuple[Any, float]:
        lines: list[str] = []
        t = time.perf_counter()
        res = getattr(st, op)(on_output=lines.append, color="never")
        return res, time.perf_counter() - t

    def train(self, alpha: float) -> float:
        path = self.work / "sample" / "models" / "sklearn_regression_model.pkl"
        subprocess.run([sys.executable, str(self.work / "sample" / "train.py"), "--out", str(path),
                        "--alpha", str(alpha)], check=True, capture_output=True)
        import joblib
        import numpy as np

        return round(float(joblib.load(path).predict(np.array(ROW, dtype=float))[0]), 6)

    def new_base(self) -> str:
        import docker

        tag = f"mldeploy-bench/base:py3.11-img{self.id}-{uuid.uuid4().hex[:6]}"
        docker.from_env().images.build(fileobj=io.BytesIO(f"FROM {BASE}\nLABEL mldeploy.bench={tag}\n".encode()),
                                       tag=tag, rm=True, pull=False)
        self.bases.append(tag)
        return tag

    def builds(self, since: float) -> str:
        """Builds since `since`, from this run's own cache (MLDEPLOY_CACHE is the run's folder)."""
        from mldeploy.providers.images import env_cache

        recs = env_cache.read_builds(since=since)
        return (f"{sum(r['kind'] == 'env' for r in recs)} environment install(s), "
                f"{sum(r['kind'] == 'image' for r in recs)} image build(s)")

    def add(self, what: str, value: str, note: str = "") -> None:
        self.rows.append((what, value, note))
        log(f"{what}: {value} {note}")

    # -- phases ---------------------------------------------------------------

    def run_once(self, i: int) -> None:
        from mldeploy.providers.images import env_cache

        cache = self.tmp / f"cache-{i}"
        (cache / "wheelhouse").mkdir(parents=True)
        if i > 0:  # later runs: the machine's wheelhouse (hard links), only the environment is cold
            subprocess.run(["cp", "-al", str(self.real_cache / "wheelhouse" / "cp311"), str(cache / "wheelhouse")],
                           check=True)
        self.caches.append(cache)
        os.environ["MLDEPLOY_CACHE"] = str(cache)  # the provider processes inherit it
        os.environ["MLDEPLOY_BASE_IMAGE"] = self.new_base()
        kind = "empty wheelhouse" if i == 0 else "warm wheelhouse"
        pip_cache = Path(os.environ.get("PIP_CACHE_DIR") or Path.home() / ".cache" / "pip")
        if i == 0 and self.fresh_pip_cache:
            os.environ["PIP_CACHE_DIR"] = str(self.tmp / "pip-cache")  # every wheel comes from the package index
            kind += ", empty pip cache"
        elif i == 0:
            self.notes.append(f"Run 1 had an empty wheelhouse, but pip's own HTTP cache ({pip_cache}) was left as "
                              "the machine has it, so wheels fetched before were not downloaded again "
                              "(`--fresh-pip-cache` empties it for run 1).")
        answer_v1 = self.train(0.1)
        st = self.stack(f"imgbench-{self.id}-a{i}")
        since = time.time()
        res, dt = self.timed(st, "up")
        out = {k: v.value for k, v in res.outputs.items()}
        envs = [r for r in env_cache.read_builds(since=since) if r["kind"] == "env"]
        self.add(f"run {i + 1}: cold `up` ({kind}, new base id)", f"{dt:.1f} s",
                 f"{self.builds(since)}; environment install {sum(r['seconds'] for r in envs):.1f} s")
        image = self.image_name(st)
        self.measure_size(image)

        if self.fresh_pip_cache:
            os.environ.pop("PIP_CACHE_DIR", None)
        _, dt = self.timed(st, "destroy")
        self.add(f"run {i + 1}: `destroy`", f"{dt:.1f} s")
        since = time.time()
        res, dt = self.timed(st, "up")
        self.add(f"run {i + 1}: warm `up` after `destroy`", f"{dt:.1f} s", f"{self.builds(since)}")

        st2 = self.stack(f"imgbench-{self.id}-b{i}")
        since = time.time()
        _, dt = self.timed(st2, "up")
        self.add(f"run {i + 1}: `up` of a second stack, same inputs", f"{dt:.1f} s", f"{self.builds(since)}")
        self.timed(st2, "destroy")

        out = {k: v.value for k, v in st.outputs().items()}
        poller = Poller(out["scoring_uri"], out["primary_key"])
        poller.start()
        time.sleep(0.5)
        answer_v2 = self.train(0.1 + 0.37 * (i + 1))
        since = time.time()
        t0 = time.monotonic()
        _, dt = self.timed(st, "up")
        time.sleep(0.3)
        poller.stop.set()
        poller.join(10)
        seen = poller.first_seen.get(answer_v2)
        self.add(f"run {i + 1}: model-only update, `up`", f"{dt:.1f} s", f"{self.builds(since)}")
        self.add(f"run {i + 1}: model-only update, new version answers after",
                 f"{seen - t0:.2f} s" if seen else "not seen",
                 f"{poller.failures} failed polls; v1 answer {answer_v1} → v2 {answer_v2}")
        self.timed(st, "destroy")

    def image_name(self, st: Any) -> str:
        res = st.export_stack().deployment["resources"]
        return next(r for r in res if r["type"].endswith("mldeploy:Image"))["outputs"]["image_name"]

    def measure_size(self, image: str) -> None:
        import docker

        dc = docker.from_env()
        size = dc.api.inspect_image(image)["Size"]
        base = dc.api.inspect_image(os.environ["MLDEPLOY_BASE_IMAGE"])["Size"]
        env = int(dc.containers.run(image, ["du", "-sb", "/opt/azureml-env"], remove=True,
                                    network_mode="none").split()[0])
        layers = [h for h in dc.api.history(image) if h["Size"] > 0]
        self.add("image size", f"{size / 1e6:.0f} MB",
                 f"base {base / 1e6:.0f} MB + installed environment {env / 1e6:.0f} MB = "
                 f"{(base + env) / 1e6:.0f} MB; ratio ×{size / (base + env):.3f}; {len(layers)} non-empty layers")

    def cleanup(self) -> None:
        import docker

        from mldeploy.providers.images import env_cache

        for st in self.stacks:
            try:
                st.destroy(on_output=lambda _l: None)
                st.workspace.remove_stack(st.name)
            except Exception as exc:  # noqa: BLE001 - clean what can be cleaned
                log(f"cleanup of {st.name}: {exc}"[:300])
        api = docker.APIClient(version="auto", timeout=120)
        for cache in self.caches:
            plan = env_cache.EnvCache(api, root=cache / "env-images").prune(0)
            log(f"pruned {len(plan.evict)} environment image(s) of {cache.name}; kept {len(plan.kept_in_use)}")
        for base in self.bases:
            try:
                api.remove_image(base)
            except docker.errors.APIError as exc:
                log(f"base {base}: {exc}"[:300])
        shutil.rmtree(self.tmp, ignore_errors=True)

    def report(self) -> Path:
        import docker

        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        load = os.getloadavg()
        lines = [
            f"# Image build bench ({stamp})", "",
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Docker "
            f"{docker.from_env().version()['Version']}, classic builder (no BuildKit). Load average at the end: "
            f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (the machine is shared with other engineers' test runs).",
            "", "| what | figure | notes |", "|---|---|---|",
            *[f"| {w} | {v} | {n} |" for w, v, n in self.rows], "", *self.notes,
            "", "Produced by `python bench/image_cache.py` (see its docstring for the method).", "",
        ]
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"image-cache-{stamp}.md"
        path.write_text("\n".join(lines))
        return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--fresh-pip-cache", action="store_true", help="run 1 downloads every wheel from the index")
    args = parser.parse_args()
    bench = Bench(args.runs, args.fresh_pip_cache)
    try:
        for i in range(args.runs):
            bench.run_once(i)
    finally:
        path = bench.report()
        bench.cleanup()
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
