"""The registry's records survive a crash and say so when they do not; a claim from the future ends (issue 18, low)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mldeploy.providers.model_registry import blob_registry as br
from mldeploy.providers.model_registry.blob_registry import Entry
from mldeploy.providers.model_registry.registry import ModelRegistry, RegistryError, write_atomically


def test_a_record_is_written_whole_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "m" / "1.json"
    target.parent.mkdir()
    write_atomically(target, '{"a": 1}')
    write_atomically(target, '{"a": 2}')
    assert target.read_text() == '{"a": 2}'
    assert [p.name for p in target.parent.iterdir()] == ["1.json"]


@pytest.mark.parametrize("content", ["", '{"name": "m", "vers', "[]"])
def test_an_empty_or_broken_record_is_an_error_naming_the_file(tmp_path: Path, content: str) -> None:
    model = tmp_path / "ridge.pkl"
    model.write_bytes(b"weights")
    registry = ModelRegistry(tmp_path / "registry")
    mv = registry.register("ridge", model, "proj/dev")
    record = tmp_path / "registry" / "ridge" / f"{mv.version}.json"
    record.write_text(content)  # a crash mid-write on the release before, or a full disk
    with pytest.raises(RegistryError, match=f"its record {record} is empty or broken"):
        registry.versions("ridge")


def test_a_claim_dated_in_the_future_is_not_waited_for() -> None:
    future = Entry(version=3, content_hash="sha256:a", state=br.UPLOADING, owners=("x",), created=10_000.0, etag="e1")
    assert br.pending_claim([future], "sha256:a", now=100.0) is None, "it would be waited for forever"
    skewed = Entry(version=3, content_hash="sha256:a", state=br.UPLOADING, owners=("x",), created=160.0, etag="e2")
    assert br.pending_claim([skewed], "sha256:a", now=100.0) == skewed, "a minute of clock skew is still live"


@pytest.mark.docker
def test_setup_makes_the_state_folder_private(tmp_path: Path) -> None:
    """The state holds the stack's checkpoints, the gateway's keys and the models: 0700, even when it existed."""
    import os
    import stat
    import subprocess

    state = tmp_path / "state"
    (state / "backend").mkdir(parents=True)
    os.chmod(state, 0o755)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "MLDEPLOY_STATE_DIR": str(state)}
    out = subprocess.run(["bash", str(root / "scripts" / "setup.sh")], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state / "backend").st_mode) == 0o700
