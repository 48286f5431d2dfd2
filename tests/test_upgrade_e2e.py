"""A stack deployed by the previous release keeps working after `git pull` (issues 17, 18, 19).

The previous release (367aa84) deploys the sample from its own checkout; then the
same folder gets this release's code, as a pull would leave it (the state, the
model registry and the stack's config file stay), and this release previews no
change, `up` changes nothing (the backend and the module keep their containers),
the service still scores on 127.0.0.1, and `destroy` removes everything.

Run for the `dev` program on the local target, for the same program on the
local IoT Edge device (one module per device: the new per-device deployment takes
the old per-module one over by its alias), and for the `prod` program on the local
Kubernetes cluster. There the first preview shows one deliberate roll, issue 18's
hardened pods and front-end configuration and issue 20's sample gate on every
pod, and says so; after it, no change.

The edge and Kubernetes stacks push images, and the previous release pushed to
the local registry's 127.0.0.1:5000, which this release serves read-only. So
those two deploy against the previous release's own registry (its
scripts/k8s/registry.sh), and the pull brings this release's, whose `up`
restarts it read-only: the migration a user makes. They make one test (marked
`alone`: it swaps the registry every other test pulls from): both stacks are
deployed by the previous release side by side under one swap, then both are
pulled, the registry is migrated once, and each is checked in turn.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest
import requests

from conftest import COPY_IGNORE, ROOT, EngineStack, train_model
from test_deploy_e2e import SEED_REQUEST, stack_leftovers
from test_portability_e2e import MODEL, checkout_of

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

PREVIOUS_RELEASE = "367aa84d43074b008dab6eb4b5a789c251693143"
KEEP = {".pulumi-state", "stacks", "sample"}


def containers_of(stack_name: str) -> dict[str, str]:
    flt = {"label": [f"mldeploy.stack={stack_name}"]}
    return {c.name: c.attrs["State"]["StartedAt"] for c in docker.from_env().containers.list(all=True, filters=flt)}


def pods_of(stack_name: str) -> dict[str, str]:
    """The stack's pods on the local cluster (every namespace), with when each started."""
    from test_kubernetes_e2e import kubectl

    from mldeploy.providers.targets.kubernetes import local_cluster

    items = kubectl(local_cluster.kubeconfig_path(), "get", "pods", "-A", "-l", f"mldeploy.azureml.net/stack={stack_name}")["items"]
    return {p["metadata"]["name"]: p["status"].get("startTime", "") for p in items}


def settled_pods(stack_name: str, timeout: float = 90) -> dict[str, str]:
    """The stack's pods once the roll's old ones have finished terminating (their preStop drain takes
    seconds after `up` returns), so a later comparison sees only what the Deployment keeps."""
    from test_kubernetes_e2e import kubectl

    from mldeploy.providers.targets.kubernetes import local_cluster

    deadline = time.monotonic() + timeout
    while True:
        items = kubectl(local_cluster.kubeconfig_path(), "get", "pods", "-A", "-l", f"mldeploy.azureml.net/stack={stack_name}")["items"]
        if not any(p["metadata"].get("deletionTimestamp") for p in items) or time.monotonic() > deadline:
            return {p["metadata"]["name"]: p["status"].get("startTime", "") for p in items}
        time.sleep(1)


def registry_dir() -> Path:
    return Path(os.environ.get("MLDEPLOY_CACHE") or Path.home() / ".cache" / "mldeploy") / "registry"


def stop_pull_listener() -> None:
    """Stop this release's 127.0.0.1:5000 process (its pid file, checked against its command line)."""
    pidf = registry_dir() / "registry.pid"
    try:
        pid = int(pidf.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        return
    if "docker-registry" not in cmdline or "config.yml" not in cmdline:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def registry_up(project: Path) -> str:
    """`scripts/k8s/registry.sh up` of the release checked out in `project`; returns its log."""
    env = {**os.environ, "MLDEPLOY_CACHE": str(registry_dir().parent)}
    run = subprocess.run([str(project / "scripts" / "k8s" / "registry.sh"), "up"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stderr


def pull_listener_takes_uploads() -> bool:
    return requests.post("http://127.0.0.1:5000/v2/mldeploy-test/upgrade-probe/blobs/uploads/", timeout=10).status_code == 202


def pull_this_release(project: Path) -> None:
    """This release's files over the previous release's, as `git pull` leaves a checkout."""
    for item in project.iterdir():
        if item.name not in KEEP:
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    for item in ROOT.iterdir():
        if item.name in KEEP or COPY_IGNORE(str(ROOT), [item.name]):
            continue
        dest = project / item.name
        shutil.copytree(item, dest, ignore=COPY_IGNORE) if item.is_dir() else shutil.copy2(item, dest)


@dataclass
class OldStack:
    """A stack the previous release deployed from its own checkout (`project`)."""

    target: str
    project: Path
    name: str
    env: dict[str, str]
    outputs: dict = field(default_factory=dict)
    before: dict[str, str] = field(default_factory=dict)
    st: EngineStack | None = None

    @property
    def running(self) -> dict[str, str]:
        return (pods_of if self.target == "kubernetes" else containers_of)(self.name)


def old_stack(target: str, tmp_path: Path) -> OldStack:
    """The previous release's checkout, with a trained model and a stack file for `target`."""
    project = checkout_of(PREVIOUS_RELEASE, tmp_path / target / "team" / "mldeploy")
    train_model(project / MODEL)
    name = f"t{uuid.uuid4().hex[:8]}"
    (project / "stacks" / f"Pulumi.{name}.yaml").write_text(
        (project / "stacks" / {"iotedge": "Pulumi.edge.yaml", "kubernetes": "Pulumi.prod.yaml"}[target]).read_text()
        if target != "local" else "config: {}\n")
    backend = project / ".pulumi-state" / "backend"
    backend.mkdir(parents=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLDEPLOY_")},
        "MLDEPLOY_PROJECT_DIR": str(project),
        "MLDEPLOY_STATE_DIR": str(project / ".pulumi-state"),
        "PULUMI_BACKEND_URL": f"file://{backend}",
        "PULUMI_CONFIG_PASSPHRASE": os.environ.get("PULUMI_CONFIG_PASSPHRASE") or "mldeploy-test",
    }
    return OldStack(target, project, name, env)


def previous_release_up(old: OldStack) -> subprocess.Popen:
    """`scripts/stack.py up` of the previous release, in its own process (so two targets' run side by side)."""
    return subprocess.Popen([sys.executable, str(old.project / "scripts" / "stack.py"), "up", old.name], cwd=old.project,
                            env=old.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def previous_release_ran(old: OldStack, up: subprocess.Popen) -> None:
    log, _ = up.communicate(timeout=900)
    assert up.returncode == 0, f"{old.target}: " + log[-6000:]
    old.outputs = json.loads(subprocess.run([sys.executable, str(old.project / "scripts" / "stack.py"), "outputs", old.name,
                                             "--show-secrets"], cwd=old.project, env=old.env, capture_output=True, text=True,
                                            timeout=300, check=True).stdout)
    old.before = old.running
    assert old.before, f"{old.target}: the previous release runs the service"
    print(f"[upgrade] {old.target}: {sorted(old.before)}", file=sys.__stderr__)


def use_env(old: OldStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """This test process works on `old`'s project and state (each stack has its own backend)."""
    for k in ("MLDEPLOY_PROJECT_DIR", "MLDEPLOY_STATE_DIR", "PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE"):
        monkeypatch.setenv(k, old.env[k])
    monkeypatch.delenv("MLDEPLOY_REGISTRY_PATH", raising=False)


def this_release_applies_no_change(old: OldStack, monkeypatch: pytest.MonkeyPatch, destroy: bool = True) -> None:
    """After the pull (`pull_this_release`): this release previews no change (Kubernetes: one deliberate roll
    first), `up` changes nothing, the service scores on 127.0.0.1, and `destroy` removes everything (unless
    `destroy` is False: `destroy_aside` does it)."""
    import stack as stack_cli

    target, name = old.target, old.name
    use_env(old, monkeypatch)
    old.st = st = EngineStack(old.project, stack_cli.project_program(old.project), name)
    before = old.before
    pre = st.preview(diff=True)
    if target == "kubernetes":
        # Issue 18 hardened the pods (restricted Pod Security: nobody, no capabilities, a read-only root) and
        # the front end's configuration, and issue 20 gates every new pod on the entry script's sample (its
        # ConfigMap is new): a stack of the previous release rolls its pods once, and says why.
        assert pre.change_summary == {"same": pre.change_summary["same"], "create": 1, "update": 2, "replace": 1}, pre.text[-4000:]
        assert "runAsNonRoot" in pre.text and "readOnlyRootFilesystem" in pre.text, pre.text[-4000:]
        assert "startupProbe" in pre.text and "probe.py" in pre.text, pre.text[-4000:]
        assert st.up().summary.result == "succeeded"
        before = settled_pods(name)
        pre = st.preview(diff=True)
    assert set(pre.change_summary) == {"same"}, (target, pre.change_summary, pre.text[-4000:])
    up2 = st.up()
    assert set(up2.summary.resource_changes or {}) == {"same"}, (target, up2.summary.resource_changes, up2.text[-4000:])
    assert old.running == before, f"{target}: no container or pod was replaced or restarted"
    uri = old.outputs["scoring_uri"]
    assert uri.startswith("http://127.0.0.1:")
    headers = {"Authorization": f"Bearer {old.outputs['primary_key']}"} if old.outputs.get("primary_key") else {}
    r = requests.post(uri, json=SEED_REQUEST, headers=headers, timeout=30)
    assert r.status_code == 200, (target, r.text)
    if destroy:
        st.destroy()
        destroyed(old)


def destroyed(old: OldStack) -> None:
    assert stack_leftovers(old.name)["containers"] == []
    assert old.running == {}, f"{old.target}: destroy removed every pod"


def destroy_aside(old: OldStack) -> subprocess.Popen:
    """This release's `scripts/stack.py destroy` of `old` in a process of its own: the cluster's pods drain
    (about 15 s) while the other stack is checked."""
    return subprocess.Popen([sys.executable, str(old.project / "scripts" / "stack.py"), "destroy", old.name], cwd=old.project,
                            env=old.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def clean_up(old: OldStack, monkeypatch: pytest.MonkeyPatch) -> None:
    if old.st is not None:
        use_env(old, monkeypatch)
        old.st.remove()
    else:  # the previous release's own destroy, so nothing is left running
        subprocess.run([sys.executable, str(old.project / "scripts" / "stack.py"), "destroy", old.name], cwd=old.project,
                       env=old.env, capture_output=True, text=True, timeout=900)


def test_a_stack_of_the_previous_release_previews_and_applies_no_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The `dev` program on the local target: no registry involved, so beside the other tests."""
    old = old_stack("local", tmp_path)
    try:
        previous_release_ran(old, previous_release_up(old))
        pull_this_release(old.project)
        this_release_applies_no_change(old, monkeypatch)
    finally:
        clean_up(old, monkeypatch)


@pytest.mark.alone
@pytest.mark.k8s
def test_stacks_of_the_previous_release_on_the_edge_device_and_the_cluster_take_the_registry_migration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local_registry: str, k8s_cluster: str
) -> None:
    """The edge device's and the cluster's stacks, both deployed by the previous release against its own
    registry (one swap for both: they are deployed side by side), then both pulled; this release's
    registry.sh restarts 5000 read-only once, and each stack previews and applies no change."""
    olds = [old_stack(target, tmp_path) for target in ("iotedge", "kubernetes")]
    try:
        # The previous release's registry, which took its anonymous pushes on 5000.
        stop_pull_listener()
        registry_up(olds[0].project)
        assert pull_listener_takes_uploads()
        ups = [previous_release_up(old) for old in olds]
        for old, up in zip(olds, ups):
            previous_release_ran(old, up)

        for old in olds:
            pull_this_release(old.project)
        # This release's registry.sh restarts 5000 read-only, as the pull's setup does.
        assert "changed: restarting it" in registry_up(olds[0].project)
        assert not pull_listener_takes_uploads()
        edge, cluster = olds
        this_release_applies_no_change(cluster, monkeypatch, destroy=False)
        aside = destroy_aside(cluster)
        this_release_applies_no_change(edge, monkeypatch)
        log, _ = aside.communicate(timeout=600)
        assert aside.returncode == 0, log[-4000:]
        destroyed(cluster)
    finally:
        for old in olds:
            clean_up(old, monkeypatch)
        registry_up(ROOT)  # read-only again whatever happened
