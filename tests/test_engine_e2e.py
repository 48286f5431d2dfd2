"""The real engine applies a stack with one dynamic resource of ours, end to end."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_engine_lifecycle_of_a_registered_model(workdir: Path, engine_stack) -> None:
    import pulumi

    from mldeploy.components import RegisteredModel

    model_file = workdir / "model" / "weights.bin"
    model_file.parent.mkdir()
    model_file.write_bytes(b"first weights")

    def program() -> None:
        model = RegisteredModel("m", model_name="probe_model", model_path="model/weights.bin", tags={"t": "1"})
        pulumi.export("version", model.version)

    st = engine_stack(program)
    registry = workdir / ".pulumi-state" / "registry" / "probe_model"

    pre = st.preview()
    assert pre.change_summary.get("create") == 3  # stack, component, dynamic resource
    assert "pulumi-python:dynamic/mldeploy:ModelVersion" in pre.text
    assert not registry.exists(), "preview must not change the world"

    up = st.up()
    assert up.summary.result == "succeeded"
    assert up.summary.resource_changes.get("create") == 3
    assert up.outputs["version"].value == 1
    assert (registry / "1" / "weights.bin").read_bytes() == b"first weights"

    model_file.write_bytes(b"second weights")
    pre = st.preview(diff=True)
    assert pre.change_summary.get("update") == 1
    assert "version" in pre.text and "1 => 2" in pre.text

    up = st.up()
    assert up.summary.resource_changes.get("update") == 1
    assert up.outputs["version"].value == 2
    assert (registry / "2" / "weights.bin").read_bytes() == b"second weights"
    # Versions are immutable copies: version 1 is still what it was.
    assert (registry / "1" / "weights.bin").read_bytes() == b"first weights"

    # Unchanged content: nothing to do.
    assert st.up().summary.resource_changes.get("same") == 3

    # Drift: the version is deleted by hand; refresh sees it and up restores it.
    shutil.rmtree(registry / "2")
    ref = st.refresh()
    assert ref.summary.result == "succeeded"
    pre = st.preview()
    assert pre.change_summary.get("update") == 1
    st.up()
    restored = sorted(p.name for p in registry.iterdir() if p.is_dir())
    assert any((registry / v / "weights.bin").read_bytes() == b"second weights" for v in restored)

    down = st.destroy()
    assert down.summary.resource_changes.get("delete") == 3
    assert not registry.exists(), "destroy must leave no registry entry of the stack"
    assert st.stack.export_stack().deployment.get("resources") in (None, [])


def test_plain_cli_runs_a_project_through_the_language_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pulumi preview/up/destroy` straight from the CLI, with the project's language host."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    project = tmp_path / "cliproject"
    (project / "weights").mkdir(parents=True)
    (project / "weights" / "w.bin").write_bytes(b"v1")
    (project / "Pulumi.yaml").write_text("name: clitest\nruntime: python\n")
    (project / "__main__.py").write_text(
        "import pulumi\n"
        "from mldeploy.components import RegisteredModel\n"
        "m = RegisteredModel('m', model_name='cli_model', model_path='weights')\n"
        "pulumi.export('version', m.version)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLDEPLOY_PROJECT_DIR")}
    env.update({
        "PULUMI_BACKEND_URL": f"file://{tmp_path / 'backend'}",
        "PULUMI_CONFIG_PASSPHRASE": "mldeploy-test",  # a stack of its own: a passphrase of its own
        "PYTHONPATH": str(root),
        "MLDEPLOY_STATE_DIR": str(project / ".pulumi-state"),
    })
    (tmp_path / "backend").mkdir()

    def pulumi(*args: str) -> str:
        run = subprocess.run(["pulumi", *args, "--non-interactive"], cwd=project, env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        return run.stdout

    pulumi("stack", "init", "cli")
    assert "+ 3 to create" in pulumi("preview")
    pulumi("up", "--yes")
    assert pulumi("stack", "output", "version").strip() == "1"
    registry = project / ".pulumi-state" / "registry" / "cli_model"
    assert (registry / "1" / "weights" / "w.bin").read_bytes() == b"v1"
    (project / "weights" / "w.bin").write_bytes(b"v2")
    assert "1 => 2" in pulumi("preview", "--diff")
    pulumi("up", "--yes")
    assert pulumi("stack", "output", "version").strip() == "2"
    pulumi("destroy", "--yes")
    assert not registry.exists()
    pulumi("stack", "rm", "cli", "--yes")
