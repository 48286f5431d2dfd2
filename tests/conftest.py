"""Shared fixtures: an isolated copy of the project, its own state, real engine stacks."""

from __future__ import annotations

import ast
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", ".pulumi-state", "__pycache__", ".pytest_cache", "models", "results")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the project with its own backend and state, so tests never touch the dev stack."""
    work = tmp_path / "project"
    shutil.copytree(ROOT, work, ignore=COPY_IGNORE)
    (work / "stacks").mkdir(exist_ok=True)
    for f in (work / "stacks").glob("Pulumi.*.yaml"):
        if f.name != "Pulumi.dev.yaml":
            f.unlink()
    state = work / ".pulumi-state"
    (state / "backend").mkdir(parents=True)
    monkeypatch.setenv("PULUMI_BACKEND_URL", f"file://{state / 'backend'}")
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", os.environ.get("PULUMI_CONFIG_PASSPHRASE") or "mldeploy-test")
    monkeypatch.setenv("MLDEPLOY_PROJECT_DIR", str(work))
    monkeypatch.setenv("MLDEPLOY_STATE_DIR", str(state))
    monkeypatch.delenv("MLDEPLOY_REGISTRY_PATH", raising=False)
    return work


_TRAINED: dict[float, bytes] = {}
"""The model file sample/train.py wrote for each alpha in this session. Its training is deterministic
(seeded data, no downloads: the same bytes every time), so each alpha is trained once per session and
copied after that; each training was a new interpreter importing scikit-learn, about 1.2 s."""


def train_model(path: Path, alpha: float = 0.1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if alpha not in _TRAINED:
        subprocess.run([sys.executable, str(ROOT / "sample" / "train.py"), "--out", str(path), "--alpha", str(alpha)], check=True, capture_output=True)
        _TRAINED[alpha] = path.read_bytes()
    else:
        path.write_bytes(_TRAINED[alpha])
    return path


class EngineStack:
    """A real stack driven through the Automation API, removed at the end."""

    def __init__(self, work: Path, program: Callable[[], None], name: str | None = None):
        import stack as stack_cli

        self.name = name or f"t{uuid.uuid4().hex[:8]}"
        self.work = work
        self.stack = stack_cli.select_stack(self.name, program=program, root=work, new=name is None)
        self.log: list[str] = []

    def _run(self, op: str, **kw):
        lines: list[str] = []
        try:
            result = getattr(self.stack, op)(on_output=lines.append, color="never", **kw)
        finally:
            self.log.extend(lines)  # a failed operation's output too
        result.text = "\n".join(lines)  # type: ignore[attr-defined]
        return result

    def configure(self, values: dict[str, str], secrets: dict[str, str] | None = None) -> None:
        """mldeploy:<key> config values (and secret ones), in one `config set-all` run instead of one run a key."""
        from pulumi import automation as auto

        config = {f"mldeploy:{k}": auto.ConfigValue(str(v)) for k, v in values.items()}
        config.update({f"mldeploy:{k}": auto.ConfigValue(str(v), secret=True) for k, v in (secrets or {}).items()})
        self.stack.set_all_config(config)

    def preview(self, **kw):
        return self._run("preview", **kw)

    def up(self, **kw):
        return self._run("up", **kw)

    def refresh(self, **kw):
        return self._run("refresh", **kw)

    def destroy(self, **kw):
        return self._run("destroy", **kw)

    def remove(self) -> None:
        """Destroy what is left, then remove the stack. Most tests end with their own `destroy` (or never
        deployed): `stack rm`, which refuses a stack that still has resources, then does it in one step,
        without a destroy that has nothing to do (an engine run of about a second)."""
        from pulumi import automation as auto

        try:
            self.stack.workspace.remove_stack(self.name)
            return
        except auto.CommandError:  # resources are left (or rm failed): destroy them first, as before
            pass
        try:
            self.stack.destroy(color="never")
        finally:
            self.stack.workspace.remove_stack(self.name)


@pytest.fixture
def engine_stack(workdir: Path) -> Iterator[Callable[..., EngineStack]]:
    made: list[EngineStack] = []

    def make(program: Callable[[], None], name: str | None = None) -> EngineStack:
        st = EngineStack(workdir, program, name)
        made.append(st)
        return st

    yield make
    for st in made:
        st.remove()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """The local fake ARM (tests/fake_arm.py), its address and CA in the environment.

    Asked for before a stack, so it still serves when the stack is destroyed at teardown.
    """
    from fake_arm import FakeArm

    arm = FakeArm(tmp_path / "arm")
    for k, v in arm.env().items():
        monkeypatch.setenv(k, v)
    yield arm
    arm.close()


@pytest.fixture(scope="session")
def local_registry() -> Iterator[str]:
    """The local image registry that stands in for ACR (scripts/k8s/registry.sh); yields its address.

    Started when not answering, stopped at the end of the session only if
    started here. A registry that cannot start fails the test, never skips it.
    """
    from mldeploy.providers.targets.kubernetes import local_cluster as cluster

    registry_sh = ROOT / "scripts" / "k8s" / "registry.sh"
    started = subprocess.run([str(registry_sh), "status"], capture_output=True).returncode != 0
    if started:
        subprocess.run([str(registry_sh), "up"], check=True)
    yield cluster.registry_address()
    if started:
        subprocess.run([str(registry_sh), "down"], check=False)


@pytest.fixture(scope="session")
def k8s_cluster(local_registry: str) -> Iterator[str]:
    """The local Kubernetes cluster (scripts/k8s), with the registry; yields the admin kubeconfig path.

    Started when not running (the first start on a machine also builds the
    binaries), stopped at the end of the session only if started here. A
    cluster that cannot start fails the test, never skips it.
    """
    from mldeploy.providers.targets.kubernetes import local_cluster as cluster

    started_cluster = not cluster.is_up()
    path = cluster.ensure_up()
    yield path
    if started_cluster:
        subprocess.run([str(ROOT / "scripts" / "k8s" / "cluster.sh"), "down"], check=False)


AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's documented development key: protects nothing (Azurite listens on 127.0.0.1 only).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@pytest.fixture(scope="session")
def azurite() -> Iterator[dict[str, str]]:
    """Azurite's Blob service on 127.0.0.1 (scripts/azurite.sh); yields its endpoint and credentials.

    Started when not answering (the first start on a machine installs npm azurite),
    stopped at the end of the session only if started here. One that cannot start
    fails the test, never skips it.
    """
    script = ROOT / "scripts" / "azurite.sh"
    port = os.environ.get("MLDEPLOY_AZURITE_PORT", "10000")
    started = subprocess.run([str(script), "status"], capture_output=True).returncode != 0
    if started:
        subprocess.run([str(script), "up"], check=True)
    yield {
        "AZURE_STORAGE_ACCOUNT": AZURITE_ACCOUNT,
        "AZURE_STORAGE_KEY": AZURITE_KEY,
        "domain": f"127.0.0.1:{port}",
        "service_url": f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}",
    }
    if started:
        subprocess.run([str(script), "down"], check=False)


@pytest.fixture
def blob_container(azurite: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A new, empty container of this test in Azurite (deleted afterwards), with AZURE_STORAGE_* set."""
    from azure.storage.blob import BlobServiceClient

    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", azurite["AZURE_STORAGE_ACCOUNT"])
    monkeypatch.setenv("AZURE_STORAGE_KEY", azurite["AZURE_STORAGE_KEY"])
    for var in ("AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_DOMAIN", "AZURE_STORAGE_PROTOCOL"):
        monkeypatch.delenv(var, raising=False)
    service = BlobServiceClient(azurite["service_url"], credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY})
    name = f"t{uuid.uuid4().hex[:12]}"
    service.create_container(name)
    yield name
    service.delete_container(name)


def azblob_url(azurite: dict[str, str], container: str, prefix: str = "") -> str:
    """The engine's backend URL syntax for a container in Azurite."""
    return f"azblob://{container}{'/' + prefix if prefix else ''}?domain={azurite['domain']}&protocol=http&localemu=true"


# ---------------------------------------------------------------- nothing left behind


def _session_stacks(base: Path) -> tuple[set[str], list[str]]:
    """(every stack name this session's backends have seen, the stacks still in them)."""
    names: set[str] = set()
    left: list[str] = []
    for meta in base.glob("**/.pulumi/meta.yaml"):
        dot = meta.parent
        for stack_file in dot.glob("stacks/*/*.json"):
            names.add(stack_file.stem)
            left.append(f"{stack_file.parent.name}/{stack_file.stem} in {dot.parent}")
        names.update(p.name for p in dot.glob("locks/*/*/*") if p.is_dir())
    return names, left


# What the tests start: engines, their plugins and language hosts, Python programs, and
# the shells that wrap them. Daemons with a lifecycle of their own (the local Kubernetes
# cluster and registry, `scripts/k8s`) are not judged here: they may outlive a session.
SESSION_COMMANDS = re.compile(r"^(pulumi|python|sh$|bash$)")


def _session_processes(base: Path) -> dict[int, str]:
    """Live processes started for this session's projects: their folder or environment names `base`."""
    found: dict[int, str] = {}
    needle = str(base).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat[stat.rindex(")") + 2 :].split()[0] in ("Z", "X"):
                continue
            if not SESSION_COMMANDS.match(stat[stat.index("(") + 1 : stat.rindex(")")]):
                continue
            cwd = os.readlink(entry / "cwd")
            environ = (entry / "environ").read_bytes()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError):
            continue
        if cwd.startswith(str(base)) or needle in environ:
            found[int(entry.name)] = f"pid {entry.name} in {cwd}: {cmd[:160]}"
    return found


def _docker():
    try:
        import docker

        dc = docker.from_env(timeout=60)
        dc.ping()
        return dc
    except Exception:  # noqa: BLE001 - no Docker: no test of this session could have made anything there
        return None


def _network_ids() -> set[str]:
    dc = _docker()
    if dc is None:
        return set()
    try:
        return {n.id for n in dc.networks.list()}
    finally:
        dc.close()


def _session_docker_objects(base: Path, stacks: set[str], networks_before: set[str]) -> tuple[list, list]:
    """(containers, networks) of this session: containers that mount its folders (every
    service and gateway container does), networks made since it began for its stacks."""
    dc = _docker()
    if dc is None:
        return [], []
    try:
        containers = [
            c
            for c in dc.containers.list(all=True)
            if any(str(m.get("Source", "")).startswith(str(base)) for m in c.attrs.get("Mounts") or [])
        ]
        networks = [
            n
            for n in dc.networks.list()
            if n.id not in networks_before and (n.attrs.get("Labels") or {}).get("mldeploy.stack") in stacks
        ]
        return containers, networks
    finally:
        dc.close()


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """At the end of the session: no process, container, network or temporary stack of its tests is left.

    Only what this session made counts (its temporary folders, its stacks), so other
    people's runs on the same machine are never judged, or touched. What is found is
    reported, then removed.
    """
    base = tmp_path_factory.getbasetemp().resolve()
    networks_before = _network_ids()
    yield
    deadline = time.monotonic() + 15  # engines that just ended may still be stopping their plugins
    while (procs := _session_processes(base)) and time.monotonic() < deadline:
        time.sleep(0.5)
    stacks, left_stacks = _session_stacks(base)
    containers, networks = _session_docker_objects(base, stacks, networks_before)
    problems = [f"process {p}" for p in procs.values()]
    problems += [f"container {c.name} (stack {(c.labels or {}).get('mldeploy.stack')})" for c in containers]
    problems += [f"network {n.name}" for n in networks]
    problems += [f"stack {s}" for s in left_stacks]
    for pid in procs:  # started by this session: stop them, so the machine stays clean
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for c in containers:
        with contextlib.suppress(Exception):
            c.remove(force=True)
    for n in networks:
        with contextlib.suppress(Exception):
            n.remove()
    if problems:
        pytest.fail("the test session left these behind (now removed):\n  " + "\n  ".join(problems), pytrace=False)


NEEDS_MACHINE = ("e2e", "docker", "k8s", "restarts_cluster", "restarts_docker")
RESTARTS = ("restarts_cluster", "restarts_docker")


def _asked_by_name(config: pytest.Config, item: pytest.Item) -> bool:
    return any("::" in str(a) and item.nodeid.startswith(str(a).split("[")[0].split("tests/")[-1]) or
               str(a).endswith(item.nodeid) for a in config.args)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Markers that mean what they say, then the order.

    - `unit` goes to every test that needs neither Docker, nor the engine, nor the cluster;
      `e2e` to every test that needs the cluster.
    - Tests that stop dockerd or the cluster run only under `.ci/run` (MLDEPLOY_ALL_TESTS=1),
      with `-m` naming their marker, or when named by their node id: a developer's
      `-m "not e2e"` or a plain run never stops anything.
    - Tests that restart the local cluster run last, so no other test meets a cluster
      that is coming back up (pods' readiness is being re-established then)."""
    for item in items:
        if not any(item.get_closest_marker(m) for m in NEEDS_MACHINE):
            item.add_marker(pytest.mark.unit)
        elif item.get_closest_marker("k8s") and not item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.e2e)  # the cluster is end to end: `-m "not e2e"` never needs it
    everything = os.environ.get("MLDEPLOY_ALL_TESTS") == "1"
    markexpr = config.getoption("markexpr", "") or ""
    if not everything and not any(m in markexpr for m in RESTARTS):
        kept, dropped = [], []
        for item in items:
            restarts = any(item.get_closest_marker(m) for m in RESTARTS)
            (dropped if restarts and not _asked_by_name(config, item) else kept).append(item)
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = kept
    items.sort(key=lambda item: item.get_closest_marker("restarts_cluster") is not None)
    # Restarting dockerd stops every container, the cluster's too: after everything else.
    items.sort(key=lambda item: item.get_closest_marker("restarts_docker") is not None)


def parse_python(text: str, filename: str = "<unknown>") -> ast.Module:
    """`ast.parse`, falling back to a fresh interpreter (the tree comes back pickled) when CPython
    3.11.7 raises `SystemError: AST constructor recursion depth mismatch`: in full runs an earlier
    test leaves the interpreter's recursion accounting skewed, and the same file parses cleanly in a
    new process."""
    import pickle
    import subprocess
    import sys

    try:
        return ast.parse(text, filename=filename)
    except SystemError:
        code = "import ast, pickle, sys; sys.stdout.buffer.write(pickle.dumps(ast.parse(sys.stdin.read(), sys.argv[1])))"
        out = subprocess.run([sys.executable, "-c", code, filename], input=text.encode(), capture_output=True, check=True)
        return pickle.loads(out.stdout)
