"""The pull-request example is built for untrusted code (issue 18, item 2).

The workflow is parsed as YAML and its properties are checked, not its wording:
which jobs run the pull request's code, what each of them holds (token permissions,
secrets, runner, checkout credentials), and what reaches the pull request (only the
rendered Markdown). `tests/test_pr_preview_e2e.py` runs the preview step itself
with the read-only credential against Azurite.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pull-request-preview"
WORKFLOW = EXAMPLE / "preview.yml"
PREVIEW_SECRETS = {"PULUMI_CONFIG_PASSPHRASE", "PREVIEW_STATE_SAS_TOKEN"}
"""The only secrets the job that runs the pull request's code may see."""


def load(path: Path = WORKFLOW) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    if True in doc:  # YAML 1.1 reads the key `on` as a boolean
        doc["on"] = doc.pop(True)
    return doc


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return job.get("steps") or []


def uses(step: dict[str, Any], action: str) -> bool:
    return str(step.get("uses", "")).split("@")[0] == action


def runs_pr_code(job: dict[str, Any]) -> bool:
    """A job that checks the repository out runs what the pull request changed."""
    return any(uses(s, "actions/checkout") for s in steps(job))


def secrets_named(value: Any) -> set[str]:
    return set(re.findall(r"secrets\.([A-Za-z0-9_]+)", yaml.safe_dump(value)))


def writes(permissions: Any) -> list[str]:
    if permissions in ("write-all",):
        return ["write-all"]
    if not isinstance(permissions, dict):
        return [] if permissions in (None, "read-all", {}) else [str(permissions)]
    return [k for k, v in permissions.items() if v == "write"]


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    return load()


@pytest.fixture(scope="module")
def jobs(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return workflow["jobs"]


def code_jobs(jobs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {name: job for name, job in jobs.items() if runs_pr_code(job)}
    assert found, "no job checks the code out"
    return found


def test_triggered_by_pull_request_only_never_with_the_base_repositorys_trust(workflow: dict[str, Any]) -> None:
    assert set(workflow["on"]) == {"pull_request"}, workflow["on"]
    assert "permissions" in workflow and not writes(workflow["permissions"]), "the default token must ask for nothing"
    assert not secrets_named(workflow.get("env")), "no secret for the whole workflow"


def test_the_code_job_waits_for_a_protected_environment_and_skips_forks(jobs: dict[str, dict[str, Any]]) -> None:
    for name, job in code_jobs(jobs).items():
        env = job.get("environment")
        assert env and (env if isinstance(env, str) else env.get("name")), f"{name}: no protected environment"
        condition = re.sub(r"\s+", " ", str(job.get("if", "")))
        assert "github.event.pull_request.head.repo.full_name == github.repository" in condition, f"{name}: forks are not skipped"


def test_the_code_job_holds_no_write_token_and_only_the_read_only_secrets(jobs: dict[str, dict[str, Any]]) -> None:
    for name, job in code_jobs(jobs).items():
        assert "permissions" in job and not writes(job["permissions"]), f"{name}: {job.get('permissions')}"
        assert not secrets_named(job.get("env")), f"{name}: secrets for the whole job"
        named = secrets_named(job)
        assert named <= PREVIEW_SECRETS, f"{name} names {sorted(named - PREVIEW_SECRETS)}"
        keys = {k for s in steps(job) for k in (s.get("env") or {})} | set(job.get("env") or {})
        assert "AZURE_STORAGE_KEY" not in keys and "AZURE_STORAGE_CONNECTION_STRING" not in keys
        for step in steps(job):
            if secrets_named(step):
                assert "AZURE_STORAGE_SAS_TOKEN" in (step.get("env") or {}), f"{name}: a step with secrets but no SAS token"
            if "setup.sh" in str(step.get("run", "")):
                assert not secrets_named(step), f"{name}: the set-up step sees secrets"


def test_the_code_job_checks_out_without_credentials_on_an_ephemeral_runner(jobs: dict[str, dict[str, Any]]) -> None:
    for name, job in code_jobs(jobs).items():
        for step in steps(job):
            if uses(step, "actions/checkout"):
                assert (step.get("with") or {}).get("persist-credentials") is False, f"{name}: checkout keeps its token"
        labels = job["runs-on"] if isinstance(job["runs-on"], list) else [job["runs-on"]]
        assert any("ephemeral" in str(label) for label in labels), f"{name}: runs on {labels}"


def test_only_the_rendered_markdown_leaves_the_code_job(jobs: dict[str, dict[str, Any]]) -> None:
    for name, job in code_jobs(jobs).items():
        text = yaml.safe_dump(job)
        assert "scripts/stack.py preview" not in text and "--diff" not in text, f"{name}: raw engine output"
        uploads = [s for s in steps(job) if uses(s, "actions/upload-artifact")]
        assert uploads, f"{name}: the Markdown is not handed on"
        for step in uploads:
            paths = [p.strip() for p in str(step["with"]["path"]).splitlines() if p.strip()]
            assert paths and all(p.endswith(".md") for p in paths), paths
        assert not any("gh pr comment" in str(s.get("run", "")) for s in steps(job)), f"{name} posts itself"


def test_the_job_that_posts_never_sees_the_code_or_the_secrets(jobs: dict[str, dict[str, Any]]) -> None:
    posting = {name: job for name, job in jobs.items() if writes(job.get("permissions"))}
    assert posting, "nothing posts the comment"
    for name, job in posting.items():
        assert not runs_pr_code(job), f"{name}: a write token beside the pull request's code"
        assert writes(job["permissions"]) == ["pull-requests"], job["permissions"]
        assert not secrets_named(job), f"{name}: {secrets_named(job)}"
        assert "self-hosted" not in str(job["runs-on"]), f"{name}: on a self-hosted runner"
        assert set(code_jobs(jobs)) <= set([job["needs"]] if isinstance(job["needs"], str) else job["needs"])
        body = " ".join(str(s.get("run", "")) for s in steps(job))
        assert "gh pr comment" in body and re.search(r"previews/preview-\*\.md", body), body


def test_no_expression_is_pasted_into_a_script(jobs: dict[str, dict[str, Any]]) -> None:
    """Values reach scripts through env, so a branch name or title cannot become shell code."""
    for name, job in jobs.items():
        for step in steps(job):
            assert "${{" not in str(step.get("run", "")), f"{name}: {step.get('name')}"


def test_the_readme_says_what_each_secret_can_do() -> None:
    readme = (EXAMPLE / "README.md").read_text()
    for secret in secrets_named(load()["jobs"]):
        rows = [line for line in readme.splitlines() if line.startswith("|") and f"`{secret}`" in line]
        assert rows and "can" in rows[0], f"README has no row saying what {secret} can do"
    for words in ("persist-credentials", "ephemeral", "required reviewers", "read and list", "lock"):
        assert words in readme, words


def test_the_backend_check_accepts_a_read_and_list_sas(azurite: dict[str, str], blob_container: str) -> None:
    """scripts/stack.py checks the backend before the engine runs; a container SAS cannot read
    the container's properties, so the check must not ask for them (Azurite, as Azure, says 403)."""
    from conftest import AZURITE_ACCOUNT, azblob_url
    from test_pr_preview_e2e import read_list_sas

    from mldeploy.providers.core.state_backend import blob_backend_problem

    env = {"AZURE_STORAGE_ACCOUNT": AZURITE_ACCOUNT, "AZURE_STORAGE_SAS_TOKEN": read_list_sas(blob_container)}
    assert blob_backend_problem(azblob_url(azurite, blob_container), env) is None
    other = blob_backend_problem(azblob_url(azurite, "another-container"), env)  # the token is for one container only
    assert other and "refused the credentials in AZURE_STORAGE_*" in other
