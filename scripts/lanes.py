"""The whole test suite in lanes: the cluster's tests beside the rest, then the ones that must run alone.

The Kubernetes tests spend most of their time waiting on the cluster (pods
starting, rollouts settling), while the rest keep the two cores busy with
Docker and the engine. Run side by side, the suite takes about as long as its
longer lane instead of the sum of both. What the two lanes share (the local
registry, the cluster, Azurite) is started here first, so no lane's session
stops it under the other, and is stopped at the end if started here. Tests
that stop or change what the lanes share (`alone`, `restarts_cluster`,
`restarts_docker`) run last, by themselves.

    python scripts/lanes.py [pytest options]    # what scripts/test.sh runs for the whole suite

A few heavy files of the rest run in the cluster's lane after its own tests
(`BESIDE_THE_CLUSTER`), so both lanes end at about the same time. Each lane's
session is its own pytest session with its own temporary folder, so the
end-of-session check (nothing left behind) judges only its own tests. The
cluster lane's output is kept in a file and printed when it ends, so the two
never interleave.
"""

from __future__ import annotations

import os
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
LAST = EXCLUSIVE if os.environ.get("MLDEPLOY_ALL_TESTS") == "1" else "alone"
LANES = {
    "cluster": f"k8s and not ({EXCLUSIVE})",
    "rest": f"not k8s and not ({EXCLUSIVE})",
}
# Files of the rest that run in the cluster's lane after its own tests, so the two lanes end
# together. Measured by CI on 2026-12-05: with none moved, 6.5 min (cluster) against 16.5 (rest);
# with these and test_operations_e2e.py moved, 15 min against 11.5, so that one went back.
BESIDE_THE_CLUSTER = (
    "tests/test_aci_e2e.py", "tests/test_acr_e2e.py", "tests/test_package_e2e.py", "tests/test_shared_state_e2e.py",
    "tests/test_edge_e2e.py", "tests/test_edge_iothub_e2e.py", "tests/test_aks_azure.py",
)
NO_TESTS = 5  # pytest's exit code when a selection is empty


def say(msg: str) -> None:
    print(f"[lanes] {msg}", file=sys.stderr, flush=True)


def shared_up() -> list[list[str]]:
    """Start the registry, the cluster and Azurite when not running; returns how to stop what was started."""
    stops: list[list[str]] = []
    registry, cluster, azurite = (str(ROOT / "scripts" / p) for p in ("k8s/registry.sh", "k8s/cluster.sh", "azurite.sh"))
    for name, script in (("registry", registry), ("cluster", cluster), ("azurite", azurite)):
        if subprocess.run([script, "status"], capture_output=True).returncode == 0:
            continue
        t0 = time.monotonic()
        subprocess.run([script, "up"], check=True)
        say(f"{name} started in {time.monotonic() - t0:.0f} s (stopped at the end)")
        stops.insert(0, [script, "down"])
    return stops


def pytest(markexpr: str, args: list[str], **kw: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pytest", "-m", markexpr, *args], cwd=ROOT, **kw)  # type: ignore[call-overload]


class ClusterLane(threading.Thread):
    """The cluster's tests, then the files moved beside them: two pytest sessions, one after the other, one log."""

    def __init__(self, args: list[str], log: Any):
        super().__init__(daemon=True)
        self.args, self.log, self.code, self.ended = args, log, 0, 0.0

    def run(self) -> None:
        moved = [f for f in BESIDE_THE_CLUSTER if (ROOT / f).exists()]
        codes = [pytest(LANES["cluster"], self.args, stdout=self.log, stderr=subprocess.STDOUT).wait()]
        if moved:
            codes.append(pytest(LANES["rest"], [*self.args, *moved], stdout=self.log, stderr=subprocess.STDOUT).wait())
        failed = [c for c in codes if c not in (0, NO_TESTS)]
        self.code = max(failed) if failed else (NO_TESTS if all(c == NO_TESTS for c in codes) else 0)
        self.ended = time.monotonic()


def main(args: list[str]) -> int:
    t0 = time.monotonic()
    stops = shared_up()
    codes: dict[str, int] = {}
    try:
        with tempfile.NamedTemporaryFile("w+", prefix="mldeploy-lane-cluster-", suffix=".log") as log:
            say(f"lane cluster ({LANES['cluster']}) and lane rest ({LANES['rest']}) side by side")
            cluster = ClusterLane(args, log)
            cluster.start()
            ignored = [f"--ignore={f}" for f in BESIDE_THE_CLUSTER]
            codes["rest"] = pytest(LANES["rest"], [*args, *ignored]).wait()
            say(f"lane rest ended ({codes['rest']}) after {time.monotonic() - t0:.0f} s; waiting for lane cluster")
            cluster.join()
            codes["cluster"] = cluster.code
            log.seek(0)
            sys.stdout.write(f"\n===== lane cluster ({LANES['cluster']}) =====\n")
            sys.stdout.write(log.read())
            sys.stdout.flush()
            say(f"lane cluster ended ({codes['cluster']}) after {cluster.ended - t0:.0f} s")
        codes["last"] = pytest(LAST, args).wait()
        say(f"lane last ({LAST}) ended ({codes['last']}) after {time.monotonic() - t0:.0f} s")
    finally:
        for stop in stops:
            subprocess.run(stop, check=False)
    if all(c == NO_TESTS for c in codes.values()):
        return NO_TESTS
    failed = {k: c for k, c in codes.items() if c not in (0, NO_TESTS)}
    if failed:
        say(f"failed lanes: {failed}")
    return max(failed.values(), default=0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
