"""The program only declares (issue 19, item 4): with Docker unreachable, `__main__.py` runs to
completion and the preview fails in the image provider's check, naming Docker and how to start it.

dockerd is not stopped (other tests and sessions use it): DOCKER_HOST points the program and the
engine's provider host at a socket that does not exist, which is what a stopped daemon looks like
to a client.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pulumi import automation as auto

from conftest import train_model

pytestmark = [pytest.mark.e2e]


def test_the_program_runs_without_docker_and_the_provider_says_what_is_missing(
    workdir: Path, engine_stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stack as stack_cli

    train_model(workdir / "sample" / "models" / "sklearn_regression_model.pkl")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{workdir}/no-docker.sock")
    for var in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"):
        monkeypatch.delenv(var, raising=False)
    finished: list[bool] = []
    project = stack_cli.project_program(workdir)

    def program() -> None:
        project()
        finished.append(True)

    st = engine_stack(program)
    with pytest.raises(auto.CommandError) as exc:
        st.preview()
    said = f"{exc.value}\n" + "\n".join(st.log)
    assert finished == [True], said[-3000:]
    assert "mldeploy:index:Image" in said or "scoring-image" in said, said[-3000:]
    assert "base_image" in said and "cannot reach Docker" in said and "scripts/docker.sh" in said, said[-3000:]
    assert "Traceback" not in said, "the program failed, not the provider"
