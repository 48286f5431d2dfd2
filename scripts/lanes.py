"""The whole test suite in lanes: the cluster's tests beside the rest, then the ones that must run alone.

Three pytest sessions run side by side:
- lane cluster: the Kubernetes tests (they spend most of their time waiting on the cluster:
  pods starting, rollouts settling), then `BESIDE_THE_CLUSTER`, then (under .ci/run) the
  cluster's restart, which only the cluster's own tests could notice;
- lane rest: most end-to-end files;
- lane rest2: `SECOND_REST`, end-to-end files that mostly wait (containers starting, canary
  steps, paced clients).
The suite then takes about as long as its longest lane instead of the sum. What the lanes share
(the local registry, the cluster, Azurite) is started here first (the cluster by its own lane,
while the others begin), so no lane's session stops it under another, and is stopped at the end
if started here. Tests that stop or change what the lanes share (`alone`: the registry;
`restarts_docker`) run last, without the lanes; beside them run the unit tests, which touch
nothing the lanes share.

    python scripts/lanes.py [pytest options]    # what scripts/test.sh runs for the whole suite

Each lane's session is its own pytest session with its own temporary folder, so the
end-of-session check (nothing left behind) judges only its own tests. The other lanes' output
is kept in files and printed when they end, so lanes never interleave.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXCLUSIVE = "alone or restarts_cluster or restarts_docker"
# The tests that stop dockerd or the cluster run only when asked for (.ci/run), as in a plain run.
ALL_TESTS = os.environ.get("MLDEPLOY_ALL_TESTS") == "1"
# Restarting the cluster disturbs only the cluster's tests, and they all run in the cluster's lane:
# it runs there, after them (a session of its own), beside the other lanes. The upgrade tests swap
# the registry every lane pulls from, and a dockerd restart stops every lane's containers: those
# run last, by themselves.
LAST = "alone or restarts_docker" if ALL_TESTS else "alone"
# The unit tests need neither Docker, nor the registry, nor the cluster: they run beside the last
# session, which mostly waits (on pods, a registry swap, dockerd coming back), rather than in the
# lanes, which keep both cores busy. Measured (.ci/run of 1e4e06a): the last session took 80 s alone,
# the unit tests about 60 s of CPU inside the lanes.
UNIT = "unit"
LANES = {
    "cluster": f"k8s and not ({EXCLUSIVE})",
    "rest": f"not k8s and not {UNIT} and not ({EXCLUSIVE})",
}
# The rest is two sessions side by side: most end-to-end tests wait (on containers starting, a
# canary's steps, a client's paced requests) more than they compute, so two of them share the
# machine's 2 cores with the cluster's lane without taking twice as long. These files make the
# second one; measured on 2026-12-05 (one serial session: 1,075 s for the whole rest), they are
# about half of it. The cluster's lane also takes the file below after its own tests.
SECOND_REST = (
    "tests/test_canary_e2e.py", "tests/test_operations_e2e.py", "tests/test_aci_e2e.py", "tests/test_sample_gate_e2e.py",
    "tests/test_azureml_e2e.py", "tests/test_engine_e2e.py",
    "tests/test_image_cache_e2e.py", "tests/test_package_e2e.py", "tests/test_aci_tls_e2e.py",
)
# Measured by one run of these lanes on 2026-12-05 (other work on the machine): lane rest 718 s,
# rest2 578 s, cluster 470 s (with the file below); so ACI's end-to-end file (about 85 s) moved
# from rest to rest2, and the cluster's lane keeps room for its canary test. Then (.ci/run of
# d476ec4, 17:45, load from other work, seconds per file printed by this script): rest 686 s of
# tests, rest2 668, cluster 570 (its canary test has grown by about 40 s since); so the ACI TLS
# and pull-request preview files (21 + 16 s) moved beside the cluster and the warm standby's
# (15 s) from rest2 to rest. Then (fe5962e, 14 min 12 s: rest 755 s, rest2 693, cluster 703, then 94 s alone)
# about 60 s left rest2 (issue 22: bad-config cases of the operations file proven at the unit level, the sample
# gate's two failing modes on one stack, the local canary's p99 rollback no longer a third roll), so the wheel's
# file (68 s there, mostly waiting on pip and the engine) moved from rest to rest2. Then (67c2e38 plus the
# issue 20 commits after it: lanes ended at rest 648 s, rest2 673, cluster 685, then 95 s alone; the cluster's
# canary file grew by an interrupted canary whose next up rolls nothing) the pull-request preview file (18 s)
# went back from beside the cluster to rest.
# Then (.ci/run of f648b28, the Automation API's outputs deferred, 2026-12-05 23:06: rest 661 s,
# rest2 643, cluster 627 with a failing test cut short, about 677 with it passing) the ACI TLS file (19 s)
# moved from beside the cluster to rest2.
# Then (.ci/run of 348b478, 2026-12-06, the unit tests beside the last session: rest 570 s, rest2 622, cluster
# 624) the AKS file (39 s) went from beside the cluster to rest, and the deploy file (29 s) from rest2 beside the cluster.
BESIDE_THE_CLUSTER = ("tests/test_deploy_e2e.py",)
NO_TESTS = 5  # pytest's exit code when a selection is empty


def files_marked(*markers: str) -> list[str]:
    """The test files that name one of these markers (`mark.<name>`). A session that runs only such tests
    collects these files instead of the whole suite (about 5 s of CPU each time); none found: the whole suite."""
    names = tuple(f"mark.{m}" for m in markers)
    return [str(f.relative_to(ROOT)) for f in sorted((ROOT / "tests").glob("test_*.py"))
            if any(n in f.read_text() for n in names)]


def say(msg: str) -> None:
    print(f"[lanes] {msg}", file=sys.stderr, flush=True)


SHARED = {name: str(ROOT / "scripts" / p) for name, p in
          (("registry", "k8s/registry.sh"), ("cluster", "k8s/cluster.sh"), ("azurite", "azurite.sh"))}


def shared_up(names: tuple[str, ...], stops: list[list[str]], out: Any = None) -> None:
    """Start these shared services when not running; how to stop what was started goes first in `stops`."""
    for name in names:
        script = SHARED[name]
        if subprocess.run([script, "status"], capture_output=True).returncode == 0:
            continue
        t0 = time.monotonic()
        subprocess.run([script, "up"], check=True, stdout=out, stderr=out and subprocess.STDOUT)
        say(f"{name} started in {time.monotonic() - t0:.0f} s (stopped at the end)")
        stops.insert(0, [script, "down"])


REPORTS = Path(tempfile.mkdtemp(prefix="mldeploy-lanes-"))
"""Each session's JUnit report (its tests' times), summed per file at the end: the figures to balance the lanes by."""


def pytest(markexpr: str, args: list[str], lane: str = "rest", **kw: object) -> subprocess.Popen:
    report = REPORTS / f"{lane}-{len(list(REPORTS.iterdir()))}.xml"
    return subprocess.Popen([sys.executable, "-m", "pytest", "-m", markexpr, f"--junitxml={report}", *args],  # type: ignore[call-overload]
                            cwd=ROOT, **kw)


def file_times() -> str:
    """Seconds per test file in each lane (setup, call and teardown), slowest first, from the sessions' reports."""
    import xml.etree.ElementTree as ET

    lanes: dict[str, dict[str, float]] = {}
    for report in sorted(REPORTS.glob("*.xml")):
        files = lanes.setdefault(report.stem.rsplit("-", 1)[0], {})
        try:
            cases = ET.parse(report).getroot().iter("testcase")
        except (ET.ParseError, OSError):
            continue
        for case in cases:
            path = "/".join(case.get("classname", "?").split(".")[:2]) + ".py"
            files[path] = files.get(path, 0.0) + float(case.get("time") or 0)
    lines = []
    for lane, files in lanes.items():
        ranked = sorted(files.items(), key=lambda kv: -kv[1])
        lines.append(f"lane {lane}: {sum(files.values()):.0f} s in tests; " + ", ".join(f"{f.removeprefix('tests/')} {s:.0f}" for f, s in ranked if s >= 1))
    return "\n".join(lines)


class ClusterLane(threading.Thread):
    """The cluster's tests, then the files moved beside them: two pytest sessions, one after the other, one log."""

    def __init__(self, args: list[str], log: Any, stops: list[list[str]]):
        super().__init__(daemon=True)
        self.args, self.log, self.stops, self.code, self.ended = args, log, stops, 0, 0.0

    def run(self) -> None:
        # The cluster starts here (about 10 s), while the other lanes, which never use it, have begun.
        try:
            shared_up(("cluster",), self.stops, self.log)
        except subprocess.CalledProcessError as exc:
            self.log.write(f"[lanes] the cluster did not start: {exc}\n")
            self.code, self.ended = 1, time.monotonic()
            return
        moved = [f for f in BESIDE_THE_CLUSTER if (ROOT / f).exists()]
        codes = [pytest(LANES["cluster"], self.args, "cluster", stdout=self.log, stderr=subprocess.STDOUT).wait()]
        if moved:
            codes.append(pytest(LANES["rest"], [*self.args, *moved], "cluster", stdout=self.log, stderr=subprocess.STDOUT).wait())
        if ALL_TESTS:  # no other lane uses the cluster: its restart disturbs nobody's test
            codes.append(pytest("restarts_cluster and not (alone or restarts_docker)",
                                [*self.args, *files_marked("restarts_cluster")], "cluster",
                                stdout=self.log, stderr=subprocess.STDOUT).wait())
        failed = [c for c in codes if c not in (0, NO_TESTS)]
        self.code = max(failed) if failed else (NO_TESTS if all(c == NO_TESTS for c in codes) else 0)
        self.ended = time.monotonic()


class LoggedLane(threading.Thread):
    """One pytest session whose output goes to a file, printed when it ends (lanes never interleave)."""

    def __init__(self, markexpr: str, args: list[str], log: Any):
        super().__init__(daemon=True)
        self.markexpr, self.args, self.log, self.code, self.ended = markexpr, args, log, 0, 0.0

    def run(self) -> None:
        self.code = pytest(self.markexpr, self.args, "rest2", stdout=self.log, stderr=subprocess.STDOUT).wait()
        self.ended = time.monotonic()


class LoadSampler(threading.Thread):
    """The machine's 1-minute load average every 15 s while the lanes run (other work on the machine counts too)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(15):
            self.samples.append(os.getloadavg()[0])

    def summary(self) -> str:
        self.stopped.set()
        s = self.samples or [os.getloadavg()[0]]
        return f"load average (1 min) while the lanes ran: mean {sum(s) / len(s):.1f}, max {max(s):.1f}, {len(s)} samples"


def main(args: list[str]) -> int:
    t0 = time.monotonic()
    stops: list[list[str]] = []
    shared_up(("registry", "azurite"), stops)  # the cluster's lane starts the cluster (after the registry)
    codes: dict[str, int] = {}
    second = [f for f in SECOND_REST if (ROOT / f).exists()]
    named = [a for a in args if a.startswith("tests/") or a.startswith(str(ROOT / "tests"))]
    try:
        with tempfile.NamedTemporaryFile("w+", prefix="mldeploy-lane-cluster-", suffix=".log") as log, \
                tempfile.NamedTemporaryFile("w+", prefix="mldeploy-lane-rest2-", suffix=".log") as log2:
            say(f"lane cluster ({LANES['cluster']}), lane rest and lane rest2 ({len(second)} files of the rest) side by side")
            load = LoadSampler()
            load.start()
            cluster = ClusterLane(args, log, stops)
            cluster.start()
            rest2 = LoggedLane(LANES["rest"], [*args, *second], log2) if second and not named else None
            if rest2 is not None:
                rest2.start()
            ignored = [f"--ignore={f}" for f in (*BESIDE_THE_CLUSTER, *(second if rest2 is not None else ()))]
            codes["rest"] = pytest(LANES["rest"], [*args, *ignored]).wait()
            say(f"lane rest ended ({codes['rest']}) after {time.monotonic() - t0:.0f} s; waiting for the others")
            for name, lane, lane_log in (("rest2", rest2, log2), ("cluster", cluster, log)):
                if lane is None:
                    continue
                lane.join()
                codes[name] = lane.code
                lane_log.seek(0)
                sys.stdout.write(f"\n===== lane {name} =====\n")
                sys.stdout.write(lane_log.read())
                sys.stdout.flush()
                say(f"lane {name} ended ({codes[name]}) after {lane.ended - t0:.0f} s")
            say(load.summary())
        with tempfile.NamedTemporaryFile("w+", prefix="mldeploy-lane-unit-", suffix=".log") as log3:
            unit = pytest(UNIT, args, "unit", stdout=log3, stderr=subprocess.STDOUT)
            codes["last"] = pytest(LAST, [*args, *files_marked("alone", "restarts_docker")], "last").wait()
            say(f"lane last ({LAST}) ended ({codes['last']}) after {time.monotonic() - t0:.0f} s")
            codes["unit"] = unit.wait()
            log3.seek(0)
            sys.stdout.write("\n===== lane unit (beside the last) =====\n")
            sys.stdout.write(log3.read())
            sys.stdout.flush()
            say(f"lane unit ended ({codes['unit']}) after {time.monotonic() - t0:.0f} s")
        say("seconds per file:\n" + file_times())
    finally:
        for stop in stops:
            subprocess.run(stop, check=False)
        shutil.rmtree(REPORTS, ignore_errors=True)
    if all(c == NO_TESTS for c in codes.values()):
        return NO_TESTS
    failed = {k: c for k, c in codes.items() if c not in (0, NO_TESTS)}
    if failed:
        say(f"failed lanes: {failed}")
    return max(failed.values(), default=0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
