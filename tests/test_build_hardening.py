"""Image builds run no one's code with the operator's secrets (issue 18, item 6).

- pip runs with a clean environment: an sdist's setup code never sees the passphrase,
  a storage key or an ARM token;
- pip options and URLs inside a user's dependency file fail at preview, naming the line;
- images take wheels only unless `only_binary=False` (which the preview warns about);
- the Dockerfile build, `extra_docker_file_steps`' RUN included, has no network.

The unit tests need no Docker; the last test (marked docker) builds a tiny image and
reads the network interfaces a RUN step sees (configuration, no traffic).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tarfile
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pulumi
import pytest

from mldeploy.components import inference_image
from mldeploy.components._common import ArgsError
from mldeploy.providers.images import build as images, wheelhouse
from mldeploy.providers.images.provider import ImageProvider

# The fixtures of the components' unit tests: a project folder, Pulumi mocks, no Docker.
from test_components_unit import RecordingMocks, make_image, mocks, project  # noqa: F401

SECRETS = {
    "PULUMI_CONFIG_PASSPHRASE": "pass-" + uuid.uuid4().hex,
    "AZURE_STORAGE_KEY": "key-" + uuid.uuid4().hex,
    "AZURE_CLIENT_SECRET": "client-" + uuid.uuid4().hex,
    "ARM_ACCESS_TOKEN": "arm-" + uuid.uuid4().hex,
    "PULUMI_ACCESS_TOKEN": "pat-" + uuid.uuid4().hex,
}


# ------------------------------------------------------------ pip's environment


def test_pip_environment_keeps_what_pip_needs_and_drops_every_secret() -> None:
    environ = {
        **SECRETS,
        "PATH": "/usr/bin", "HOME": "/home/op", "HTTPS_PROXY": "http://127.0.0.1:3128", "no_proxy": "127.0.0.1",
        "PIP_INDEX_URL": "http://127.0.0.1:3141/simple", "SSL_CERT_FILE": "/etc/ssl/ca.pem",
        "MLDEPLOY_CACHE": "/cache", "KUBECONFIG": "/admin.conf", "PIP_REQUIRE_VIRTUALENV": "1",
    }
    env = wheelhouse._env(environ)
    assert env == {
        "PATH": "/usr/bin", "HOME": "/home/op", "HTTPS_PROXY": "http://127.0.0.1:3128", "no_proxy": "127.0.0.1",
        "PIP_INDEX_URL": "http://127.0.0.1:3141/simple", "SSL_CERT_FILE": "/etc/ssl/ca.pem", "PIP_NO_INPUT": "1",
    }


BACKEND = """\
import base64, hashlib, json, os, zipfile

with open(MARKER, "w") as fh:  # what the package's build code sees: it runs on import
    json.dump(dict(os.environ), fh)

NAME, VERSION = "mldeploy_envprobe", "1.0"
DIST = f"{NAME}-{VERSION}.dist-info"


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    files = {
        f"{DIST}/METADATA": f"Metadata-Version: 2.1\\nName: {NAME}\\nVersion: {VERSION}\\n",
        f"{DIST}/WHEEL": "Wheel-Version: 1.0\\nGenerator: probe\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{DIST}/RECORD"] = "\\n".join(record + [f"{DIST}/RECORD,,"]) + "\\n"
    name = f"{NAME}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return name
"""


def _evil_sdist(folder: Path, marker: Path) -> None:
    """An sdist whose build code (an in-tree PEP 517 backend, no dependencies) writes the
    environment it runs with to `marker`."""
    name = "mldeploy_envprobe-1.0"
    src = folder.parent / "probe-src" / name
    src.mkdir(parents=True)
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "probe_backend"\nbackend-path = ["."]\n'
        '[project]\nname = "mldeploy_envprobe"\nversion = "1.0"\n')
    (src / "probe_backend.py").write_text(f"MARKER = {str(marker)!r}\n" + BACKEND)
    (src / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: mldeploy_envprobe\nVersion: 1.0\n")
    with tarfile.open(folder / f"{name}.tar.gz", "w:gz") as tar:
        tar.add(src, arcname=name)


@pytest.fixture
def local_house(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A wheelhouse of this test holding the probe sdist, pip kept off every index, the secrets set."""
    monkeypatch.setenv("MLDEPLOY_CACHE", str(tmp_path / "cache"))
    house = wheelhouse.wheelhouse_dir(f"{sys.version_info[0]}.{sys.version_info[1]}")
    house.mkdir(parents=True)
    marker = tmp_path / "setup-ran-with.json"
    _evil_sdist(house, marker)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # the sdist is found in the wheelhouse (--find-links); no index is asked
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    return house, marker


def test_an_sdist_built_on_request_never_sees_the_operators_secrets(local_house: tuple[Path, Path]) -> None:
    import json

    house, marker = local_house
    wheels = wheelhouse.ensure_wheels(["mldeploy_envprobe==1.0"], python_version=f"{sys.version_info[0]}.{sys.version_info[1]}",
                                      only_binary=False)
    assert [w.name for w in wheels] == ["mldeploy_envprobe-1.0-py3-none-any.whl"]
    seen = json.loads(marker.read_text())  # the setup code did run: it is what only_binary=False allows
    leaked = {k for k, v in SECRETS.items() if k in seen or any(v in str(x) for x in seen.values())}
    assert not leaked, f"setup.py saw {sorted(leaked)}"
    assert not [k for k in seen if k.startswith(("PULUMI_", "AZURE_", "ARM_", "MLDEPLOY_"))], sorted(seen)


def test_by_default_an_sdist_is_refused_and_its_setup_code_never_runs(local_house: tuple[Path, Path]) -> None:
    house, marker = local_house
    with pytest.raises(wheelhouse.WheelhouseError) as err:
        wheelhouse.ensure_wheels(["mldeploy_envprobe==1.0"], python_version=f"{sys.version_info[0]}.{sys.version_info[1]}")
    assert not marker.exists(), "setup.py ran"
    assert "only_binary=False" in str(err.value) and "mldeploy_envprobe" in str(err.value)
    assert not list(house.glob("*.whl"))


def test_fetch_asks_pip_for_wheels_only_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[list[str]] = []

    class FakePopen:
        def __init__(self, cmd: list[str], **kw: Any):
            calls.append(cmd)
            self.stdout = iter(())

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(wheelhouse.subprocess, "Popen", FakePopen)
    py = f"{sys.version_info[0]}.{sys.version_info[1]}"
    wheelhouse._fetch(tmp_path / "r.txt", tmp_path, py, ["x"], lambda _l: None)
    wheelhouse._fetch(tmp_path / "r.txt", tmp_path, py, ["x"], lambda _l: None, only_binary=False)
    assert "--only-binary=:all:" in calls[0]
    assert "--only-binary=:all:" not in calls[1]


# ------------------------------------------------------------ dependency files


@pytest.mark.parametrize("line", [
    "--extra-index-url http://127.0.0.1:9/simple",
    "-i http://127.0.0.1:9/simple",
    "--index-url=http://127.0.0.1:9/simple",
    "-f ./wheels",
    "--find-links ./wheels",
    "--trusted-host 127.0.0.1",
    "-e git+https://127.0.0.1/x.git#egg=x",
    "-e .",
    "-c constraints.txt",
    "scikit-learn==1.7.2 --config-settings=x=y",
    "scikit-learn==1.7.2 --hash=sha256:00",
    "lookalike @ https://127.0.0.1/lookalike-1.0-py3-none-any.whl",
    "git+https://127.0.0.1/x.git",
])
def test_a_pip_option_or_url_in_requirements_fails_naming_file_and_line(tmp_path: Path, line: str) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text(f"# ours\nnumpy==2.3.4\n{line}\n")
    with pytest.raises(ValueError) as err:
        images.parse_dependency_file(req)
    assert f"{req}, line 3" in str(err.value) and repr(line) in str(err.value)


def test_an_option_in_a_nested_file_names_that_file(tmp_path: Path) -> None:
    (tmp_path / "base.txt").write_text("joblib\n\n--extra-index-url http://127.0.0.1:9/simple\n")
    req = tmp_path / "requirements.txt"
    req.write_text("-r base.txt\nnumpy\n")
    with pytest.raises(ValueError, match=rf"{tmp_path / 'base.txt'}, line 3"):
        images.parse_dependency_file(req)


def test_an_option_in_a_conda_pip_section_fails_naming_the_line(tmp_path: Path) -> None:
    env = tmp_path / "myenv.yml"
    env.write_text("name: x\ndependencies:\n  - python=3.11\n  - pip:\n    - scikit-learn\n    - --extra-index-url http://127.0.0.1:9/simple\n")
    with pytest.raises(ValueError, match=rf"{env}, line 6: '--extra-index-url"):
        images.parse_dependency_file(env)


def test_plain_requirements_still_pass(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("numpy==2.3.4  # pinned\ninference-schema[numpy-support]==1.8\nscikit-learn>=1.3,<2 ; python_version >= '3.9'\n")
    assert images.parse_dependency_file(req) == [
        "numpy==2.3.4", "inference-schema[numpy-support]==1.8", "scikit-learn>=1.3,<2 ; python_version >= '3.9'"]
    assert images.parse_dependency_file(Path(__file__).resolve().parents[1] / "sample" / "env" / "myenv.yml")


def test_the_preview_refuses_an_index_option_in_conda_file(mocks: RecordingMocks, project: Path) -> None:  # noqa: F811
    (project / "env" / "bad.txt").write_text("scikit-learn\n--extra-index-url http://127.0.0.1:9/simple\n")
    with pytest.raises(ArgsError, match=r"conda_file: dependency file .*bad.txt, line 2: '--extra-index-url"):
        make_image(conda_file="env/bad.txt")


# ------------------------------------------------------------ only_binary


@pulumi.runtime.test
def test_only_binary_is_the_default_and_leaves_the_inputs_as_they_were(mocks: RecordingMocks, project: Path) -> Any:  # noqa: F811
    image = make_image()

    def check(_name: str) -> None:
        assert "only_binary" not in mocks.resources["scoring-image"]  # existing stacks: no new input, no rebuild

    return image.image_name.apply(check)


@pulumi.runtime.test
def test_only_binary_off_is_an_input_and_warns_in_the_preview(mocks: RecordingMocks, project: Path,  # noqa: F811
                                                              caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.WARNING)
    image = make_image(only_binary=False)

    def check(_name: str) -> None:
        warned = [r.getMessage() for r in caplog.records if "only_binary=False" in r.getMessage()]
        assert len(warned) == 1 and "'scoring'" in warned[0] and "setup code" in warned[0], caplog.records
        props = mocks.resources["scoring-image"]
        assert props["only_binary"] is False
        # Not part of what the image is: the same build hash as with wheels only.
        assert props["build_hash"] == mocks.resources["wheels-image"]["build_hash"]

    other = make_image("wheels")
    return pulumi.Output.all(image.image_name, other.image_name).apply(check)


def test_the_provider_passes_only_binary_to_the_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[bool] = []
    monkeypatch.setattr(images, "build_inference_image", lambda *a, **kw: seen.append(kw["only_binary"]) or "sha256:1")
    props = {"image_repo": "r/x", "base_image": "b", "source_directory": str(tmp_path), "entry_script": "s.py",
             "build_hash": "sha256:" + "0" * 64}
    ImageProvider()._build(props)
    ImageProvider()._build({**props, "only_binary": False})
    assert seen == [True, False]


# ------------------------------------------------------------ no network in the build


def test_the_dockerfile_build_has_no_network() -> None:
    kwargs: dict[str, Any] = {}

    class FakeApi:
        def build(self, **kw: Any):
            kwargs.update(kw)
            return iter([{"aux": {"ID": "sha256:1"}}])

        def inspect_image(self, tag: str) -> dict[str, Any]:
            return {"Id": "sha256:1"}

    images._build(FakeApi(), Path("/nonexistent"), "t:1", {}, lambda _l: None)
    assert kwargs["network_mode"] == "none"


@pytest.mark.docker
def test_a_run_step_sees_only_the_loopback_interface(tmp_path: Path) -> None:
    """The RUN step fails the build unless `lo` is its only network interface (read from /sys)."""
    import docker

    base = "mldeploy/base:bookworm-py3.11"
    src = tmp_path / "src"
    src.mkdir()
    (src / "score.py").write_text("def init():\n    pass\n\ndef run(raw):\n    return raw\n")
    steps = 'RUN test "$(ls /sys/class/net)" = "lo" || (ls /sys/class/net; exit 1)\n'
    tag = f"mldeploy-test/nonet:{uuid.uuid4().hex[:8]}"
    try:
        images.build_inference_image(tag, base, str(src), "score.py", None, {"mldeploy.test": "test_build_hardening"},
                                     extra_steps=steps)
        assert docker.from_env().images.get(tag).id
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)


# ------------------------------------------------------------ the project's own lock


def test_the_projects_lock_pins_every_file_by_hash_and_setup_requires_them() -> None:
    """Each requirement of requirements.lock is `name==version` with at least one SHA-256, and
    scripts/setup.sh installs pip and then the lock with --require-hashes (nothing unhashed)."""
    import re

    root = Path(__file__).resolve().parents[1]
    text = (root / "requirements.lock").read_text()
    entries = re.split(r"\n(?=[^\s#])", "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#")).strip())
    assert len(entries) > 50
    for entry in entries:
        head = entry.split("\\", 1)[0].strip()
        # No extras: tests/test_package_e2e.py installs the wheel with the lock as pip constraints.
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[^\s;]+", head), head
        assert re.findall(r"--hash=sha256:[0-9a-f]{64}", entry), f"{head} has no hash"
    assert re.search(r"^pip==", text, re.M), "pip itself is pinned by hash"
    installs = [l for l in (root / "scripts" / "setup.sh").read_text().splitlines() if re.search(r"\bpip\"? install\b", l)]
    assert installs and all("--require-hashes" in l for l in installs), installs
