"""Warm deploys through the real engine: `destroy` leaves the environment image, the next `up` installs nothing.

Builds are counted from the machine's build record (`<MLDEPLOY_CACHE>/env-images/builds.jsonl`,
written by the provider processes), filtered to this test's stacks and environment image,
so other deploys on the machine do not disturb the count. No time is asserted: the bench
(`bench/image_cache.py`) measures.
"""

from __future__ import annotations

import time
from pathlib import Path

import docker
import pytest
import requests

from conftest import train_model
from mldeploy.providers.image_registry import oci_registry
from mldeploy.providers.images import env_cache

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

REQUEST = {"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]}


def env_image_of(api: docker.APIClient, image: str) -> str:
    """The cached environment image an inference image was built FROM."""
    ref = api.inspect_image(image)["Id"]
    while ref:
        info = api.inspect_image(ref)
        if any(t.startswith(env_cache.REPOSITORY + ":") for t in info.get("RepoTags") or []):
            return next(t for t in info["RepoTags"] if t.startswith(env_cache.REPOSITORY + ":"))
        ref = info.get("Parent") or ""
    raise AssertionError(f"{image} is not built on a cached environment image")


def builds_since(since: float, repo: str, env_tag: str) -> dict[str, int]:
    recs = env_cache.read_builds(since=since)
    return {"image": sum(1 for r in recs if r["kind"] == "image" and r["name"].startswith(repo + ":")),
            "env": sum(1 for r in recs if r["kind"] == "env" and r["name"] == env_tag)}


def score(out: dict) -> float:
    r = requests.post(out["scoring_uri"], json=REQUEST, headers={"Authorization": f"Bearer {out['primary_key']}"},
                      timeout=30)
    assert r.status_code == 200, r.text
    return r.json()[0]


def test_destroy_keeps_the_environment_and_warm_ups_install_nothing(workdir: Path, engine_stack) -> None:
    import stack as stack_cli

    train_model(workdir / "sample" / "models" / "sklearn_regression_model.pkl")
    api = docker.APIClient(version="auto", timeout=120)
    first = engine_stack(stack_cli.project_program(workdir))
    up = first.up()
    out = {k: v.value for k, v in up.outputs.items()}
    answer = score(out)
    image = first.stack.export_stack().deployment["resources"]
    (img,) = [r for r in image if r["type"].endswith("mldeploy:Image")]
    name = img["outputs"]["image_name"]
    env_tag = env_image_of(api, name)
    env_id = api.inspect_image(env_tag)["Id"]

    first.destroy()
    assert docker.from_env().images.list(name=name.split(":")[0]) == [], "destroy left the stack's image"
    assert api.inspect_image(env_tag)["Id"] == env_id, "destroy removed the cached environment"

    since = time.time()
    up = first.up()
    out = {k: v.value for k, v in up.outputs.items()}
    assert score(out) == pytest.approx(answer)
    name2 = next(r for r in first.stack.export_stack().deployment["resources"]
                 if r["type"].endswith("mldeploy:Image"))["outputs"]["image_name"]
    assert env_image_of(api, name2) == env_tag
    counts = builds_since(since, name.split(":")[0], env_tag)
    assert counts == {"image": 1, "env": 0}, counts

    # A second stack with the same inputs: its own image, the same environment, no install.
    since = time.time()
    second = engine_stack(stack_cli.project_program(workdir))
    up = second.up()
    out2 = {k: v.value for k, v in up.outputs.items()}
    assert score(out2) == pytest.approx(answer)
    name3 = next(r for r in second.stack.export_stack().deployment["resources"]
                 if r["type"].endswith("mldeploy:Image"))["outputs"]["image_name"]
    assert name3.split(":")[0] != name.split(":")[0]
    assert env_image_of(api, name3) == env_tag
    assert builds_since(since, name3.split(":")[0], env_tag) == {"image": 1, "env": 0}
    second.destroy()
    first.destroy()
    assert api.inspect_image(env_tag)["Id"] == env_id


def test_private_base_registry_credentials_stay_secret_in_the_state(workdir: Path, engine_stack,
                                                                    local_registry: str) -> None:
    """A base image only in a registry: the provider pulls it with the credentials; the state holds them encrypted."""
    import uuid

    import pulumi

    from mldeploy.components import InferenceImage

    api = docker.APIClient(version="auto", timeout=120)
    repo, tag = f"{local_registry}/mldeploy-test/privbase", uuid.uuid4().hex[:8]
    ref = f"{repo}:{tag}"
    password = f"s3cret-{uuid.uuid4().hex}"
    try:
        oci_registry.push("mldeploy/base:bookworm-py3.11", repo, tag)  # through the write listener, as the providers push
        api.remove_image(ref)  # only in the registry now

        def program() -> None:
            image = InferenceImage("scoring", entry_script="score.py", source_directory="sample/src",
                                   conda_file="sample/env/myenv.yml", base_image=ref,
                                   base_image_registry={"address": local_registry, "username": "ci",
                                                        "password": password})
            pulumi.export("image_name", image.image_name)

        st = engine_stack(program)
        up = st.up()
        assert up.summary.result == "succeeded"
        assert api.inspect_image(ref)["Id"] == api.inspect_image("mldeploy/base:bookworm-py3.11")["Id"]
        state_files = list((workdir / ".pulumi-state" / "backend").rglob("*.json"))
        assert state_files
        for f in state_files:
            assert password not in f.read_text(), f"the registry password is in plain text in {f}"
        assert password not in "\n".join(st.log)
        (img,) = [r for r in st.stack.export_stack().deployment["resources"] if r["type"].endswith("mldeploy:Image")]
        assert img["outputs"]["base_image_id"].startswith("sha256:")
        st.destroy()
    finally:
        try:
            api.remove_image(ref)
        except docker.errors.ImageNotFound:
            pass

        oci_registry.delete_repository(ref.rsplit(":", 1)[0])  # the test's own repository in the registry
