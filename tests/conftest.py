"""Shared fixtures: an isolated copy of the project, its own state, real engine stacks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


def train_model(path: Path, alpha: float = 0.1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(ROOT / "sample" / "train.py"), "--out", str(path), "--alpha", str(alpha)], check=True, capture_output=True)
    return path


class EngineStack:
    """A real stack driven through the Automation API, removed at the end."""

    def __init__(self, work: Path, program: Callable[[], None], name: str | None = None):
        import stack as stack_cli

        self.name = name or f"t{uuid.uuid4().hex[:8]}"
        self.work = work
        self.stack = stack_cli.select_stack(self.name, program=program, root=work)
        self.log: list[str] = []

    def _run(self, op: str, **kw):
        lines: list[str] = []
        result = getattr(self.stack, op)(on_output=lines.append, color="never", **kw)
        self.log.extend(lines)
        result.text = "\n".join(lines)  # type: ignore[attr-defined]
        return result

    def preview(self, **kw):
        return self._run("preview", **kw)

    def up(self, **kw):
        return self._run("up", **kw)

    def refresh(self, **kw):
        return self._run("refresh", **kw)

    def destroy(self, **kw):
        return self._run("destroy", **kw)

    def remove(self) -> None:
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


@pytest.fixture(scope="session")
def k8s_cluster() -> Iterator[str]:
    """The local Kubernetes cluster and image registry (scripts/k8s); yields the admin kubeconfig path.

    Started when not running (the first start on a machine also builds the
    binaries), stopped at the end of the session only if started here. A
    cluster that cannot start fails the test, never skips it.
    """
    from providers.clients import cluster

    registry_sh = ROOT / "scripts" / "k8s" / "registry.sh"
    started_cluster = not cluster.is_up()
    started_registry = subprocess.run([str(registry_sh), "status"], capture_output=True).returncode != 0
    path = cluster.ensure_up()  # brings the registry up too
    yield path
    if started_cluster:
        subprocess.run([str(ROOT / "scripts" / "k8s" / "cluster.sh"), "down"], check=False)
    if started_registry:
        subprocess.run([str(registry_sh), "down"], check=False)
