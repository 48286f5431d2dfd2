"""Inference images end to end: build the sample, serve it, score it.

Needs a Docker engine and the local base image (scripts/base-image.sh); with
no engine these tests fail rather than skip, since images are the product.
Everything published binds 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import docker.errors
import joblib
import numpy as np
import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mldeploy.providers.images import env_cache, build as images, wheelhouse  # noqa: E402
from mldeploy.providers.image_registry import oci_registry  # noqa: E402

pytestmark = pytest.mark.docker

SAMPLE = ROOT / "sample"
REQUEST = {"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]]}
TEST_LABELS = {"mldeploy.test": "test_images"}


@pytest.fixture(scope="module")
def dc() -> docker.DockerClient:
    c = docker.from_env(timeout=300)
    c.ping()  # no engine: an error, not a skip
    return c


@pytest.fixture(scope="module")
def base_image(dc: docker.DockerClient) -> str:
    out = subprocess.run(["bash", str(ROOT / "scripts" / "base-image.sh")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("model")
    subprocess.run([sys.executable, str(SAMPLE / "train.py"), "--out", str(d / "sklearn_regression_model.pkl")],
                   check=True, capture_output=True)
    return d


@pytest.fixture(scope="module")
def sample_image(dc: docker.DockerClient, base_image: str):
    tag = f"mldeploy-test/sample:{uuid.uuid4().hex[:8]}"
    lines: list[str] = []
    t0 = time.monotonic()
    image_id = images.build_inference_image(
        tag, base_image, str(SAMPLE / "src"), "score.py", str(SAMPLE / "env" / "myenv.yml"),
        TEST_LABELS, on_log=lines.append)
    print(f"built {tag} in {time.monotonic() - t0:.1f}s")
    yield tag, image_id
    _remove_containers(dc, tag)
    assert images.remove_image(tag)


def _remove_containers(dc: docker.DockerClient, image: str) -> None:
    for c in dc.containers.list(all=True, filters={"ancestor": image}):
        c.remove(force=True)


def _wait_ready(container, url: str, timeout: float = 120.0) -> None:
    """`/` answers only once init() has run; a broken init makes the container exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.reload()
        if container.status == "exited":
            pytest.fail(f"container exited during startup:\n{container.logs().decode()[-4000:]}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    pytest.fail(f"not ready after {timeout}s:\n{container.logs().decode()[-4000:]}")


@pytest.fixture(scope="module")
def service(dc: docker.DockerClient, sample_image, model_dir: Path):
    tag, _ = sample_image
    container = dc.containers.run(
        tag, detach=True, labels=TEST_LABELS,
        ports={"5001/tcp": ("127.0.0.1", None)},
        volumes={str(model_dir): {"bind": "/var/azureml-models/sample/1", "mode": "ro"}},
        environment={"AZUREML_MODEL_DIR": "/var/azureml-models/sample/1"},
    )
    try:
        container.reload()
        port = container.attrs["NetworkSettings"]["Ports"]["5001/tcp"][0]["HostPort"]
        url = f"http://127.0.0.1:{port}"
        _wait_ready(container, url + "/")
        yield url
    finally:
        container.remove(force=True)


def test_image_has_runtime_layout(dc: docker.DockerClient, sample_image) -> None:
    tag, image_id = sample_image
    img = dc.images.get(tag)
    assert img.id == image_id
    cfg = img.attrs["Config"]
    assert cfg["Labels"]["mldeploy.test"] == "test_images"
    assert "5001/tcp" in cfg["ExposedPorts"]
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["AZUREML_ENTRY_SCRIPT"] == "score.py"
    assert env["AZUREML_SOURCE_DIRECTORY"] == "/var/azureml-app"
    assert env["PATH"].startswith("/opt/azureml-env/bin:")
    assert "AZUREML_MODEL_DIR" not in env  # set by whoever runs it
    # azmlinfsrv, started through our launcher (schema-rejected input is a 400).
    assert cfg["Cmd"][:5] == ["python", "-m", "mldeploy_serving", "--entry_script", "/var/azureml-app/score.py"]
    assert env["PYTHONPATH"] == "/opt/mldeploy"
    # The venv keeps its pip; what serving imports is compiled, the packages' own test suites are not.
    site = "/opt/azureml-env/lib/python3.11/site-packages"
    out = dc.containers.run(tag, ["sh", "-c", f"pip --version; ls {site}/sklearn/__pycache__ | grep -c pyc; "
                                 f"find {site}/sklearn/tests {site}/scipy -path '*/tests/*' -name '*.pyc' | wc -l"],
                            remove=True, network_mode="none", labels=TEST_LABELS).decode().split()
    assert out[0] == "pip" and "/opt/azureml-env/" in " ".join(out), out
    assert int(out[-2]) > 5 and int(out[-1]) == 0, out


def test_score_matches_local_model(service: str, model_dir: Path) -> None:
    r = requests.post(service + "/score", json=REQUEST, timeout=30)
    assert r.status_code == 200, r.text
    model = joblib.load(model_dir / "sklearn_regression_model.pkl")
    expected = model.predict(np.array(REQUEST["data"]))
    assert np.allclose(r.json(), expected)


def test_swagger_describes_data_input(service: str) -> None:
    r = requests.get(service + "/swagger.json", timeout=10)
    assert r.status_code == 200
    spec = r.json()
    assert spec["swagger"] == "2.0"
    text = json.dumps(spec)
    assert "ServiceInput" in spec["definitions"]
    assert "data" in spec["definitions"]["ServiceInput"]["properties"], text[:2000]


def test_malformed_json_is_a_client_error(service: str) -> None:
    r = requests.post(service + "/score", data=b'{"data": [[1,', headers={"Content-Type": "application/json"},
                      timeout=10)
    assert r.status_code == 400
    assert "could not be decoded as JSON" in r.json()["message"]


def test_source_change_reuses_the_environment_image(tmp_path: Path, base_image: str, sample_image) -> None:
    """The same wheel set on this machine: no environment is installed again, only the source layers are new."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "score.py").write_text((SAMPLE / "src" / "score.py").read_text() + "\n# edited\n")
    tag = f"mldeploy-test/sample:{uuid.uuid4().hex[:8]}"
    lines: list[str] = []
    since = time.time()
    try:
        t0 = time.monotonic()
        images.build_inference_image(tag, base_image, str(src), "score.py", str(SAMPLE / "env" / "myenv.yml"),
                                     TEST_LABELS, on_log=lines.append)
        elapsed = time.monotonic() - t0
        assert _env_image_of(tag) == _env_image_of(sample_image[0])
    finally:
        images.remove_image(tag)
    log = "\n".join(lines)
    assert "environment: cached" in log, log
    assert "Installing collected packages" not in log
    mine = [b for b in env_cache.read_builds(since=since) if b["name"] == tag or b["kind"] == "env"]
    assert [b["kind"] for b in mine if b["name"] == tag] == ["image"]
    print(f"rebuild after a source change: {elapsed:.1f}s")


def _env_image_of(tag: str) -> str:
    """The cached environment image an inference image was built FROM (walking its parents)."""
    api = images.client()
    ref = api.inspect_image(tag)["Id"]
    while ref:
        info = api.inspect_image(ref)
        if any(t.startswith(env_cache.REPOSITORY + ":") for t in info.get("RepoTags") or []):
            return info["Id"]
        ref = info.get("Parent") or ""
    raise AssertionError(f"{tag} is not built on an environment image")


def test_no_layer_holds_deleted_files(dc: docker.DockerClient, sample_image, base_image: str) -> None:
    """Base + one environment layer + small source layers: at most 1.05x the base plus the installed environment."""
    tag, _ = sample_image
    api = images.client()
    base_size = api.inspect_image(base_image)["Size"]
    size = api.inspect_image(tag)["Size"]
    env_bytes = int(dc.containers.run(tag, ["du", "-sb", "/opt/azureml-env"], remove=True, network_mode="none",
                                      labels=TEST_LABELS).split()[0])
    history = api.history(tag)
    created_by = "\n".join(h.get("CreatedBy") or "" for h in history)
    assert "/tmp/wheels" not in created_by and "COPY dir" in created_by
    layers = [h for h in history if h["Size"] > 0]
    big = [h for h in layers if h["Size"] > 10_000_000]
    assert len(big) == 2, [(h["Size"], (h.get("CreatedBy") or "")[:60]) for h in layers]  # the base, the environment
    env_layer = next(h for h in big if "venv" in (h.get("CreatedBy") or ""))
    assert env_layer["Size"] <= 1.05 * env_bytes, (env_layer["Size"], env_bytes)
    assert size <= 1.05 * (base_size + env_bytes), (size, base_size, env_bytes)
    print(f"image {size / 1e6:.0f} MB = base {base_size / 1e6:.0f} MB + environment {env_bytes / 1e6:.0f} MB "
          f"(x{size / (base_size + env_bytes):.3f})")


@pytest.fixture
def own_cache(tmp_path: Path) -> Any:
    """A cache of this test's own (its own repository and index), emptied at the end."""
    cache = env_cache.EnvCache(images.client(), root=tmp_path / "env-images",
                               repository=f"mldeploy-test-cache/env-{uuid.uuid4().hex[:8]}")
    yield cache
    plan = cache.prune(0)
    assert not plan.kept_in_use, "the test left an image on its environment image"


def test_environment_built_once_then_reused_and_pruned(dc: docker.DockerClient, base_image: str, own_cache) -> None:
    """Cold: installed in a container with the wheels mounted read-only, committed as one layer. Warm: nothing runs."""
    wheels = wheelhouse.ensure_wheels(["joblib"])  # joblib and what it needs: a small set of this test's own
    api = images.client()
    lines: list[str] = []
    tag, built = images.ensure_env_image(api, base_image, wheels, "3.11", lines.append, own_cache)
    assert built
    again, built_again = images.ensure_env_image(api, base_image, wheels, "3.11", lines.append, own_cache)
    assert (again, built_again) == (tag, False)
    assert [b["kind"] for b in env_cache.read_builds(own_cache.root)] == ["env"]
    out = dc.containers.run(tag, ["sh", "-c", "python -c 'import joblib, sys; print(sys.prefix)'; "
                                  f"ls -A {images.WHEELS_MOUNT} | wc -l"],
                            remove=True, network_mode="none", labels=TEST_LABELS).decode().split()
    assert out == ["/opt/azureml-env", "0"], out  # the venv is on PATH; the wheelhouse left an empty mount point only
    (entry,) = own_cache.entries()
    assert entry.tag == tag and 0 < entry.size < 50_000_000
    assert len([h for h in api.history(tag) if h["Size"] > 0]) == len([h for h in api.history(base_image) if h["Size"] > 0]) + 1
    plan = own_cache.prune(0)
    assert [e.tag for e in plan.evict] == [tag]
    assert images.image_info(tag) is None
    assert images.image_info(base_image) is not None


def test_extra_docker_file_steps_run_after_the_environment(dc: docker.DockerClient, base_image: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(SAMPLE / "src", src)
    (src / "data.txt").write_text("from the source directory\n")
    steps = "RUN python -c 'import sklearn; print(sklearn.__version__)' > /opt/sklearn-version\nCOPY data.txt /opt/data.txt\n"
    tag = f"mldeploy-test/extra:{uuid.uuid4().hex[:8]}"
    try:
        images.build_inference_image(tag, base_image, str(src), "score.py", str(SAMPLE / "env" / "myenv.yml"),
                                     TEST_LABELS, extra_steps=steps)
        out = dc.containers.run(tag, ["sh", "-c", "cat /opt/sklearn-version /opt/data.txt"], remove=True,
                                network_mode="none", labels=TEST_LABELS).decode()
    finally:
        _remove_containers(dc, tag)
        images.remove_image(tag)
    assert out.splitlines() == ["1.9.1", "from the source directory"], out


def test_private_base_image_is_pulled_with_the_registry_credentials(dc: docker.DockerClient, base_image: str,
                                                                    local_registry: str) -> None:
    ref = f"{local_registry}/mldeploy-test/privbase:{uuid.uuid4().hex[:8]}"
    api = images.client()
    try:
        # The local registry takes pushes only with the project's credentials (oci_registry routes them).
        oci_registry.push(base_image, ref.rsplit(":", 1)[0], ref.rsplit(":", 1)[1])
        api.remove_image(ref)  # only the tag: the base keeps its other names
        assert images.image_info(ref) is None
        registry = {"address": local_registry, "username": "mldeploy", "password": "not-checked-by-this-registry"}
        assert images.pull_base_image(ref, registry) == api.inspect_image(base_image)["Id"]
        with pytest.raises(images.ImageBuildError, match="pulling base image"):
            images.pull_base_image(f"{local_registry}/mldeploy-test/absent:{uuid.uuid4().hex[:8]}", registry)
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            api.remove_image(ref)
        oci_registry.delete_repository(ref.rsplit(":", 1)[0])  # the test's own repository in the registry


def test_parse_conda_dependency_file(tmp_path: Path) -> None:
    assert images.parse_dependency_file(SAMPLE / "env" / "myenv.yml") == [
        "scikit-learn==1.9.1", "joblib", "numpy", "inference-schema[numpy-support]"]
    f = tmp_path / "env.yml"
    f.write_text("name: x\ndependencies:\n  - python=3.11\n  - pip\n  - numpy\n  - scikit-learn=1.9\n"
                 "  - conda-forge::pandas=3.1=py311_0\n  - pip:\n    - joblib\n")
    assert images.parse_dependency_file(f) == ["numpy", "scikit-learn==1.9", "pandas==3.1", "joblib"]


def test_parse_rejects_invalid_yaml(tmp_path: Path) -> None:
    f = tmp_path / "broken.yml"
    f.write_text("name: x\ndependencies:\n  - pip:\n    - numpy\n   - [unclosed\n")
    with pytest.raises(ValueError, match="broken.yml"):
        images.parse_dependency_file(f)


def test_parse_requirements_txt(tmp_path: Path) -> None:
    (tmp_path / "base.txt").write_text("numpy\n")
    f = tmp_path / "requirements.txt"
    f.write_text("# comment\n-r base.txt\njoblib>=1  # inline\n\n")
    assert images.parse_dependency_file(f) == ["numpy", "joblib>=1"]


def test_unresolvable_dependency_names_the_requirement(tmp_path: Path, base_image: str) -> None:
    bad = "joblib==0.0.999"
    req = tmp_path / "requirements.txt"
    req.write_text(bad + "\n")
    with pytest.raises(images.ImageBuildError) as info:
        images.build_inference_image(f"mldeploy-test/bad:{uuid.uuid4().hex[:8]}", base_image,
                                     str(SAMPLE / "src"), "score.py", str(req), TEST_LABELS)
    assert bad in str(info.value)
    assert isinstance(info.value.__cause__, wheelhouse.WheelhouseError)
    assert info.value.__cause__.requirement == bad


def _tiny_image(dc: docker.DockerClient, tmp_path: Path, name: str) -> str:
    """A one-file image without python3, imported locally (nothing can be pulled)."""
    (tmp_path / "rootfs" / "etc").mkdir(parents=True, exist_ok=True)
    (tmp_path / "rootfs" / "etc" / "hostname").write_text("x\n")
    tar = tmp_path / "rootfs.tar"
    subprocess.run(["tar", "-C", str(tmp_path / "rootfs"), "-cf", str(tar), "."], check=True)
    tag = f"mldeploy-test/{name}:{uuid.uuid4().hex[:8]}"
    repo, version = tag.split(":")
    dc.api.import_image_from_file(str(tar), repository=repo, tag=version, changes=["LABEL mldeploy.python=3.11"])
    return tag


def test_failed_build_leaves_no_dangling_images(dc: docker.DockerClient, tmp_path: Path) -> None:
    """A base without python3 fails at the venv step: the error carries the log, nothing is left behind."""
    broken_base = _tiny_image(dc, tmp_path, "nopython")
    base_id = dc.images.get(broken_base).id
    tag = f"mldeploy-test/broken:{uuid.uuid4().hex[:8]}"
    try:
        with pytest.raises(images.ImageBuildError) as info:
            images.build_inference_image(tag, broken_base, str(SAMPLE / "src"), "score.py",
                                         str(SAMPLE / "env" / "myenv.yml"), TEST_LABELS)
        assert "python3 -m venv" in str(info.value)  # the log tail names the failing step
        # Other builds may run on this engine at the same time: look only at this build's chain.
        children = [i["Id"] for i in dc.api.images(all=True) if i.get("ParentId") == base_id]
        assert children == [], "the failed build left intermediate images"
        assert not dc.containers.list(all=True, filters={"ancestor": base_id})
        assert images.image_info(tag) is None
        assert images.image_info(broken_base) is not None  # the base is not the build's to remove
    finally:
        assert images.remove_image(broken_base)


def test_remove_image_is_idempotent_and_spares_images_in_use(dc: docker.DockerClient, tmp_path: Path) -> None:
    tag = _tiny_image(dc, tmp_path, "rm")
    c = dc.containers.create(tag, command=["true"], labels=TEST_LABELS)
    try:
        assert images.remove_image(tag) is False  # a container still uses it: left alone
        assert images.image_info(tag) is not None
    finally:
        c.remove(force=True)
    assert images.remove_image(tag) is True
    assert images.image_info(tag) is None
    assert images.remove_image(tag) is True  # already gone
