"""scripts/stack.py and scripts/deploy.sh as an operator meets them: passphrases per
stack, JSON-only outputs, and provider processes left by an interrupted run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import stack as stack_cli

ROOT = Path(__file__).resolve().parents[1]
NO_PASSPHRASE = {k: v for k, v in os.environ.items() if k not in stack_cli.PASSPHRASE_VARS}


# ---------------------------------------------------------------- a passphrase per stack


class TestPassphrasePerStack:
    def test_dev_gets_the_documented_passphrase(self) -> None:
        assert stack_cli.passphrase_env("dev", ROOT, NO_PASSPHRASE) == {"PULUMI_CONFIG_PASSPHRASE": "mldeploy-dev-passphrase"}

    @pytest.mark.parametrize("stack_name", ["prod", "staging", "t1234abcd"])
    def test_any_other_stack_stops_saying_what_to_set(self, stack_name: str) -> None:
        with pytest.raises(stack_cli.PassphraseMissing) as exc:
            stack_cli.passphrase_env(stack_name, ROOT, NO_PASSPHRASE)
        message = str(exc.value)
        assert f"'{stack_name}'" in message
        assert "set PULUMI_CONFIG_PASSPHRASE" in message and "PULUMI_CONFIG_PASSPHRASE_FILE" in message
        assert "mldeploy-dev-passphrase" not in message

    @pytest.mark.parametrize(
        "chosen", [{"PULUMI_CONFIG_PASSPHRASE": "s3cret"}, {"PULUMI_CONFIG_PASSPHRASE_FILE": "/run/secrets/pp"}]
    )
    @pytest.mark.parametrize("stack_name", ["dev", "prod"])
    def test_a_chosen_passphrase_is_used_as_it_is(self, chosen: dict[str, str], stack_name: str) -> None:
        assert stack_cli.passphrase_env(stack_name, ROOT, {**NO_PASSPHRASE, **chosen}) == {}

    def test_stacks_whose_secrets_live_elsewhere_need_none(self, tmp_path: Path) -> None:
        (tmp_path / "Pulumi.yaml").write_text("name: p\nruntime: python\nstackConfigDir: stacks\n")
        (tmp_path / "stacks").mkdir()
        (tmp_path / "stacks" / "Pulumi.prod.yaml").write_text("secretsprovider: azurekeyvault://vault/keys/k\n")
        (tmp_path / "stacks" / "Pulumi.qa.yaml").write_text("secretsprovider: passphrase\n")
        assert stack_cli.passphrase_env("prod", tmp_path, NO_PASSPHRASE) == {}
        with pytest.raises(stack_cli.PassphraseMissing):
            stack_cli.passphrase_env("qa", tmp_path, NO_PASSPHRASE)

    def test_the_process_environment_carries_no_passphrase(self) -> None:
        """scripts/env.sh sets none: a stack is never created with one that nobody chose."""
        env = {k: v for k, v in os.environ.items() if k not in stack_cli.PASSPHRASE_VARS}
        out = subprocess.run(
            ["bash", "-c", 'source scripts/env.sh && echo "${PULUMI_CONFIG_PASSPHRASE-unset}"'],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True,
        )
        assert out.stdout.strip() == "unset"


def _backend_stacks(workdir: Path) -> list[str]:
    return sorted(p.stem for p in (workdir / ".pulumi-state" / "backend").glob(".pulumi/stacks/*/*.json"))


def test_stack_py_stops_a_new_stack_without_a_passphrase(workdir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in stack_cli.PASSPHRASE_VARS}
    name = f"t{uuid.uuid4().hex[:8]}"
    run = subprocess.run([sys.executable, "scripts/stack.py", "up", name], cwd=workdir, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert f"error: stack '{name}' needs a secrets passphrase of its own: set PULUMI_CONFIG_PASSPHRASE" in run.stderr
    assert "Traceback" not in run.stderr
    assert _backend_stacks(workdir) == [], "no stack may be created"


def test_deploy_sh_prod_says_what_to_set_before_setting_anything_up(workdir: Path) -> None:
    shutil.copy2(ROOT / "stacks" / "Pulumi.prod.yaml", workdir / "stacks" / "Pulumi.prod.yaml")
    # Were the check to let it through, the copy's set-up would only leave this mark.
    marker = workdir / "setup-ran"
    (workdir / "scripts" / "setup.sh").write_text(f"#!/usr/bin/env bash\ntouch {marker}\nexit 3\n")
    env = {k: v for k, v in os.environ.items() if k not in stack_cli.PASSPHRASE_VARS}
    run = subprocess.run(["bash", str(workdir / "scripts" / "deploy.sh"), "prod"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "stack 'prod' needs a secrets passphrase of its own: set PULUMI_CONFIG_PASSPHRASE" in run.stderr
    assert "PULUMI_CONFIG_PASSPHRASE_FILE" in run.stderr
    assert not marker.exists()
    assert _backend_stacks(workdir) == []


# ---------------------------------------------------------------- outputs: JSON on stdout


@pytest.mark.e2e
def test_outputs_prints_only_json_on_stdout(workdir: Path) -> None:
    name = f"t{uuid.uuid4().hex[:8]}"
    try:
        run = subprocess.run([sys.executable, "scripts/stack.py", "outputs", name], cwd=workdir,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        assert json.loads(run.stdout) == {}  # `| jq` works
        assert "pulumi engine v" in run.stderr
    finally:
        subprocess.run([sys.executable, "scripts/stack.py", "rm", name], cwd=workdir,
                       capture_output=True, text=True, timeout=300)
    assert _backend_stacks(workdir) == []


# ---------------------------------------------------------------- provider processes of a stopped engine


def _spawn(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_providers_of_a_gone_engine_are_stopped_and_a_live_engines_kept(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (tmp_path / "bin").mkdir()
    # The engine is a process named `pulumi`; this one starts a provider-like child and waits.
    engine_bin = tmp_path / "bin" / "pulumi"
    engine_bin.symlink_to(sys.executable)
    provider = [sys.executable, "-c", "import time; time.sleep(120)", "-m", "pulumi.dynamic", "127.0.0.1:1"]
    child_of_engine = tmp_path / "child.pid"
    (tmp_path / "provider.json").write_text(json.dumps(provider))  # not in the engine's own command line
    engine_code = (
        "import json, subprocess, time; "
        f"p = subprocess.Popen(json.load(open({str(tmp_path / 'provider.json')!r})), cwd={str(project)!r}); "
        f"open({str(child_of_engine)!r}, 'w').write(str(p.pid)); time.sleep(120)"
    )
    engine = _spawn([str(engine_bin), "-c", engine_code], project)
    orphan = _spawn(provider, project)  # its parent (this test) is no engine: as if the engine were gone
    # A resource plugin of a gone engine (pulumi-kubernetes), which would wait for its health check.
    plugin = _spawn([sys.executable, "-c", "import time; time.sleep(120)", "/plugins/pulumi-resource-kubernetes", "127.0.0.1:1"],
                    project)
    elsewhere = _spawn(provider, tmp_path)  # another project's
    kept_pid = None
    try:
        assert _wait_for(lambda: child_of_engine.exists() and child_of_engine.read_text())
        kept_pid = int(child_of_engine.read_text())
        assert _wait_for(lambda: {orphan.pid, plugin.pid} <= set(stack_cli.orphaned_providers(project)))
        assert kept_pid not in stack_cli.orphaned_providers(project)
        assert elsewhere.pid not in stack_cli.orphaned_providers(project)

        assert sorted(stack_cli.end_orphaned_providers(project)) == sorted([orphan.pid, plugin.pid])
        assert orphan.wait(timeout=10) is not None and plugin.wait(timeout=10) is not None
        assert engine.poll() is None and elsewhere.poll() is None
        assert not stack_cli._gone(kept_pid)
    finally:
        for proc in (engine, orphan, plugin, elsewhere):
            proc.kill()
            proc.wait(timeout=10)
        if kept_pid is not None and not stack_cli._gone(kept_pid):
            os.kill(kept_pid, 9)
