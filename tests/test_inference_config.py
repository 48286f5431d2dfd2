"""The rest of the seed's inference config (issue 12, part 5), without Docker.

`InferenceImage.from_config` and `read_deployment_config` read the seed's own files
(tests/fixtures/seed, unchanged); extra Docker steps, the base image's registry, GPU
fields and the conda `python` pin are checked at preview, naming the field or file,
before any resource exists.
"""

from __future__ import annotations

import inspect
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

import pulumi
import pytest
from pulumi.runtime.mocks import MockMonitor

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine_check import image_checked
from mldeploy.components import ContainerInstanceService, InferenceImage  # noqa: E402
from mldeploy.components._common import ArgsError  # noqa: E402
from mldeploy.components.azureml_config import (  # noqa: E402
    loads_lenient,
    read_deployment_config,
    read_inference_config,
)
from mldeploy.providers.images import build as images  # noqa: E402
from mldeploy.providers.targets import kubernetes  # noqa: E402

SEED = ROOT / "tests" / "fixtures" / "seed"
SCORE_PY = "def init():\n    pass\n\n\ndef run(data):\n    return data\n"
ENV_311 = "name: project_environment\ndependencies:\n  - python=3.11\n  - pip:\n    - joblib\n"
SIG_KEY, SECRET_SIG = "4dabf18193072939515e22adb298388d", "1b47061264138c4ac30d75fd1eb44270"


class Mocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: dict[str, dict[str, Any]] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        inputs = dict(args.inputs)
        if args.typ.endswith("mldeploy:Image"):
            inputs = image_checked(inputs)
        self.resources[args.name] = inputs
        outs = dict(inputs)
        if args.typ.endswith("mldeploy:Image"):
            outs.update(image_name="x:1", image_id="sha256:1")
        return f"{args.name}-id", outs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], None]:
        return {}, None


class Monitor(MockMonitor):
    """Keeps each registration as the engine gets it (secrets still marked)."""

    def __init__(self, mocks: Mocks):
        super().__init__(mocks)
        self.requests: dict[str, Any] = {}

    def RegisterResource(self, request: Any) -> Any:
        self.requests[request.name] = request
        return super().RegisterResource(request)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    proj = tmp_path / "project"
    (proj / "src").mkdir(parents=True)
    (proj / "src" / "score.py").write_text(SCORE_PY)
    (proj / "env.yml").write_text(ENV_311)
    monkeypatch.setenv("MLDEPLOY_PROJECT_DIR", str(proj))
    monkeypatch.setenv("MLDEPLOY_STATE_DIR", str(tmp_path / "state"))
    for var in ("MLDEPLOY_REGISTRY_PATH", "MLDEPLOY_BASE_IMAGE", "MLDEPLOY_GATEWAY_IMAGE", "PULUMI_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/mldeploy-no-docker.sock")  # the program never asks it
    pulumi.runtime.set_all_config({})
    return proj


@pytest.fixture
def mocks(project: Path) -> Iterator[tuple[Mocks, Monitor]]:
    m = Mocks()
    monitor = Monitor(m)
    pulumi.runtime.set_mocks(m, project="proj", stack="dev", preview=True, monitor=monitor)
    yield m, monitor


def seed_project(project: Path, conda: str | None = None) -> Path:
    """The seed's inferenceconfig.json, unchanged, with its paths made real under the project.

    Its sourceDirectory is `C:/abc`: on Linux a relative path, so the folder `C:/abc`
    beside the file is where its entry script and conda file are.
    """
    cfg = project / "deploy"
    src = cfg / "C:" / "abc"
    (src / "x" / "y").mkdir(parents=True)
    (src / "env").mkdir()
    (src / "x" / "y" / "score.py").write_text(SCORE_PY)
    if conda is None:
        shutil.copy(SEED / "myenv.yml", src / "env" / "myenv.yml")
    else:
        (src / "env" / "myenv.yml").write_text(conda)
    shutil.copy(SEED / "inferenceconfig.json", cfg / "inferenceconfig.json")
    return cfg / "inferenceconfig.json"


# --- inferenceconfig.json -----------------------------------------------------------

def test_the_seeds_inference_config_reads_unchanged() -> None:
    text = (SEED / "inferenceconfig.json").read_text()
    assert text.rstrip().endswith(',\n}') or ",\n}" in text, "the fixture is the seed's file, trailing comma and all"
    config = read_inference_config("scoring", SEED / "inferenceconfig.json")
    assert config.kwargs["entry_script"] == "x/y/score.py"
    assert config.kwargs["source_directory"] == "C:/abc"
    assert config.kwargs["conda_file"] == "C:/abc/env/myenv.yml"  # relative to sourceDirectory, as Azure ML's
    assert config.kwargs["runtime"] == "python"
    assert config.folder == SEED.resolve()


def test_lenient_json_keeps_commas_inside_strings() -> None:
    assert loads_lenient('{"a": "x, }", "b": [1, 2,],}') == {"a": "x, }", "b": [1, 2]}
    with pytest.raises(ValueError):
        loads_lenient('{"a": }')


def test_from_config_names_the_file_and_key_when_the_source_directory_is_missing(mocks: Any) -> None:
    m, _ = mocks
    with pytest.raises(ArgsError) as info:
        InferenceImage.from_config(SEED / "inferenceconfig.json", "scoring")
    msg = str(info.value)
    assert "inferenceconfig.json" in msg and "sourceDirectory" in msg, msg
    assert m.resources == {}, "something was declared"


def test_from_config_stops_on_the_seeds_python_pin_naming_both_versions(project: Path, mocks: Any) -> None:
    m, _ = mocks
    path = seed_project(project)
    with pytest.raises(ArgsError) as info:
        InferenceImage.from_config(path, "scoring")
    msg = str(info.value)
    assert "condaFile" in msg and "3.6.2" in msg and "Python 3.11" in msg and "mldeploy/base:bookworm-py3.11" in msg, msg
    assert m.resources == {}


@pytest.mark.parametrize("kw", [{}, {"conda_file": "env.yml"}])
@pulumi.runtime.test
def test_no_pin_and_a_pin_the_base_meets_are_fine(project: Path, mocks: Any, kw: dict[str, Any]) -> Any:
    image = InferenceImage("scoring", entry_script="score.py", source_directory="src", **kw)
    return image.image_name.apply(lambda name: None)


@pulumi.runtime.test
def test_from_config_declares_the_image(project: Path, mocks: Any) -> Any:
    m, _ = mocks
    path = seed_project(project, conda=ENV_311)
    image = InferenceImage.from_config(str(path))  # as the issue writes it: the file alone

    def check(_: Any) -> None:
        props = m.resources["inferenceconfig-image"]
        assert props["entry_script"] == "x/y/score.py"
        assert props["source_directory"] == "deploy/C:/abc"  # relative to the project
        assert props["dependency_file"] == "deploy/C:/abc/env/myenv.yml"
        assert "enable_gpu" not in props and "extra_docker_file_steps" not in props

    return image.image_name.apply(check)


@pytest.mark.parametrize("doc,where", [
    ('{"entryScript": "score.py", "sourceDirectory": "src", "entryscript": "x"}', "entryscript"),
    ('{"entryScript": "score.py", "sourceDirectory": "src", "enableGpu": "yes"}', "enableGpu"),
    ('{"entryScript": "score.py", "sourceDirectory": "src", "runtime": "spark-py"}', "runtime"),
    ('{"entryScript": "score.py", "sourceDirectory": "src", "cudaVersion": "9.1"}', "cudaVersion"),
    ('{"entryScript": "score.py", "sourceDirectory": "src", "baseImageRegistry": {"address": "r"}}', "baseImageRegistry"),
    ('{"sourceDirectory": "src"}', "entryScript"),
    ('{"entryScript": "score.py",', "not valid JSON"),
    ('["score.py"]', "JSON object"),
])
def test_bad_inference_config_names_the_key_and_file(project: Path, mocks: Any, doc: str, where: str) -> None:
    m, _ = mocks
    path = project / "inferenceconfig.json"
    path.write_text(doc)
    with pytest.raises(ArgsError) as info:
        InferenceImage.from_config(path, "scoring")
    assert where in str(info.value) and str(path) in str(info.value), str(info.value)
    assert m.resources == {}


# --- GPU, extra steps, the base image's registry -------------------------------------------

@pulumi.runtime.test
def test_gpu_is_recorded_with_the_seeds_default_cuda(project: Path, mocks: Any) -> Any:
    m, _ = mocks
    plain = InferenceImage("plain", entry_script="score.py", source_directory="src")
    gpu = InferenceImage("gpu", entry_script="score.py", source_directory="src", enable_gpu=True)

    def check(_: Any) -> None:
        props = m.resources["gpu-image"]
        assert props["enable_gpu"] is True and props["cuda_version"] == "9.1"
        assert props["build_hash"] != m.resources["plain-image"]["build_hash"]

    return pulumi.Output.all(plain.image_name, gpu.image_name).apply(check)


@pytest.mark.parametrize("kw,words", [
    ({"cuda_version": "9.0"}, "cuda_version is set but enable_gpu is not"),
    ({"enable_gpu": True, "cuda_version": "11.0"}, "cuda_version: '11.0' is not supported; supported: 9.0, 9.1, 10.0"),
    ({"runtime": "spark-py"}, "runtime"),
    ({"extra_docker_file_steps": "nope.dockerfile"}, "extra_docker_file_steps: file does not exist"),
])
def test_bad_image_fields_fail_at_preview(project: Path, mocks: Any, kw: dict[str, Any], words: str) -> None:
    m, _ = mocks
    with pytest.raises(ArgsError) as info:
        InferenceImage("scoring", entry_script="score.py", source_directory="src", **kw)
    assert words in str(info.value) and "InferenceImage 'scoring'" in str(info.value), str(info.value)
    assert m.resources == {}


def test_extra_steps_that_cannot_work_fail_at_preview_naming_the_line(project: Path, mocks: Any) -> None:
    m, _ = mocks
    (project / "steps.dockerfile").write_text("RUN echo ok\n\nFROM debian\n")
    with pytest.raises(ArgsError) as info:
        InferenceImage("scoring", entry_script="score.py", source_directory="src",
                       extra_docker_file_steps="steps.dockerfile")
    msg = str(info.value)
    assert "extra_docker_file_steps" in msg and "line 3: FROM is not allowed" in msg, msg
    assert m.resources == {}


@pulumi.runtime.test
def test_extra_steps_are_part_of_the_build(project: Path, mocks: Any) -> Any:
    m, _ = mocks
    (project / "steps.dockerfile").write_text("RUN echo one > /opt/extra.txt\n")
    a = InferenceImage("a", entry_script="score.py", source_directory="src", extra_docker_file_steps="steps.dockerfile")
    b = InferenceImage("b", entry_script="score.py", source_directory="src")

    def check(_: Any) -> None:
        assert m.resources["a-image"]["extra_docker_file_steps"] == "steps.dockerfile"
        assert m.resources["a-image"]["build_hash"] != m.resources["b-image"]["build_hash"]

    return pulumi.Output.all(a.image_name, b.image_name).apply(check)


@pulumi.runtime.test
def test_registry_credentials_reach_the_engine_as_a_secret(project: Path, mocks: Any) -> Any:
    m, monitor = mocks
    image = InferenceImage(
        "scoring", entry_script="score.py", source_directory="src", base_image="127.0.0.1:5000/team/base:py3.11",
        base_image_registry={"address": "127.0.0.1:5000", "username": "ci", "password": "hunter2"},  # a plain str
    )

    def check(_: Any) -> None:
        request = monitor.requests["scoring-image"]
        value = request.object.fields["base_image_registry"].struct_value.fields
        assert value[SIG_KEY].string_value == SECRET_SIG, "the credentials are not marked secret"
        assert "hunter2" not in str(request.object.fields["build_hash"])
        assert "base_image_registry" in list(request.additionalSecretOutputs)

    return image.image_name.apply(check)


@pytest.mark.parametrize("registry,words", [
    ({"address": "127.0.0.1:5000", "username": "ci"}, "base_image_registry.password"),
    ({"address": "127.0.0.1:5000", "username": "ci", "password": "x", "email": "e"}, "base_image_registry.email"),
    ({"address": "elsewhere.example:5000", "username": "ci", "password": "x"}, "is not in registry"),
])
def test_bad_registry_fails_at_preview(project: Path, mocks: Any, registry: dict[str, Any], words: str) -> None:
    m, _ = mocks
    with pytest.raises(ArgsError) as info:
        InferenceImage("scoring", entry_script="score.py", source_directory="src",
                       base_image="127.0.0.1:5000/team/base:py3.11", base_image_registry=registry)
    assert words in str(info.value), str(info.value)
    assert m.resources == {}


# --- the python pin (pure) ---------------------------------------------------------------

@pytest.mark.parametrize("spec,ok", [
    ("3.6.2", False), ("=3.11", True), ("3.11", True), ("3.11.*", True), (">=3.8,<3.12", True),
    (">=3.12", False), ("==3.11.4", True), ("3.6|3.11", True), ("=3.11.4=h12_0", True), ("<3.11", False),
])
def test_pin_allows(spec: str, ok: bool) -> None:
    assert images.pin_allows(spec, "3.11") is ok


@pytest.mark.parametrize("info,ref,version", [
    ({"Config": {"Labels": {"mldeploy.python": "3.12"}, "Env": ["PYTHON_VERSION=3.11.7"]}}, "x/y:py3.10", "3.12"),
    ({"Config": {"Env": ["PATH=/bin", "PYTHON_VERSION=3.11.7"]}}, "python:3.11-slim", "3.11"),
    ({"Config": {}}, "team/base:bookworm-py3.10", "3.10"),
    ({"Config": {"Env": None, "Labels": None}}, "team/base:latest", None),
])
def test_python_of_image(info: dict[str, Any], ref: str, version: str | None) -> None:
    assert images.python_of_image(info, ref) == version


def test_python_pin_from_the_seeds_conda_file(tmp_path: Path) -> None:
    assert images.python_pin(SEED / "myenv.yml") == "3.6.2"
    (tmp_path / "r.txt").write_text("numpy\n")
    assert images.python_pin(tmp_path / "r.txt") is None
    (tmp_path / "e.yml").write_text("dependencies:\n  - python-dateutil\n  - pip\n")
    assert images.python_pin(tmp_path / "e.yml") is None  # python-dateutil is not python


# --- extra Dockerfile steps (pure) -----------------------------------------------------------

def test_extra_steps_render() -> None:
    text = "# apt is not reachable here, files are\nRUN echo a \\\n  && echo b\nCOPY --chown=1:1 data/x.txt ./y /opt/\nENV A=1\n"
    assert images.render_extra_steps(text).splitlines() == [
        "RUN echo a && echo b",
        'COPY --chown=1:1 ["app/data/x.txt", "app/y", "/opt/"]',
        "ENV A=1",
    ]


@pytest.mark.parametrize("text,words", [
    ("CMD [\"python\"]", "line 1: CMD is not allowed"),
    ("RUN true\nENTRYPOINT x", "line 2: ENTRYPOINT"),
    ("ADD https://example.org/x /x", "cannot reach the network"),
    ("COPY ../secret /x", "inside source_directory"),
    ("COPY /etc/passwd /x", "inside source_directory"),
    ("COPY --from=base /x /y", "--from is not supported"),
    ("COPY onlyone", "a destination"),
    ("FETCH x", "not a Dockerfile instruction"),
    ("RUN", "needs arguments"),
])
def test_extra_steps_refused(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("[", r"\[")):
        images.render_extra_steps(text)


def test_dockerfile_puts_extra_steps_after_the_environment_and_before_the_source() -> None:
    df = images.render_dockerfile("mldeploy-cache/env:abc", "score.py", "RUN echo hi")
    lines = [ln for ln in df.splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "FROM mldeploy-cache/env:abc"
    assert lines[1] == "RUN echo hi"
    assert lines.index("RUN echo hi") < next(i for i, ln in enumerate(lines) if ln.startswith("COPY app/"))
    assert "COPY wheels" not in df and "/tmp/wheels" not in df, "no wheel is copied into the inference image"


# --- deploymentconfig.json ---------------------------------------------------------------

def test_the_seeds_deployment_configs_read() -> None:
    local = read_deployment_config(SEED / "deploymentconfig-local.json")
    assert (local.component, local.kwargs) == ("ContainerInstanceService", {"port": 8890, "target": "local"})
    aci = read_deployment_config(SEED / "deploymentconfig-aci.json")
    assert (aci.component, aci.kwargs) == ("ContainerInstanceService", {"cpu_cores": 1, "memory_gb": 1, "target": "aci"})
    aks = read_deployment_config(SEED / "deploymentconfig-aks.json")
    assert (aks.component, aks.kwargs) == ("AksService", {"cpu_cores": 1, "memory_gb": 1})


def test_deployment_kwargs_are_the_components_own() -> None:
    """Every keyword the reader can produce is one the component takes."""
    from mldeploy.components.azureml_config import DEPLOYMENT_KEYS

    service_params = set(inspect.signature(ContainerInstanceService.__init__).parameters)
    for compute in ("local", "aci"):
        assert {kw for _, kw in DEPLOYMENT_KEYS[compute]} <= service_params
    aks_fields = set(kubernetes.KubernetesServiceArgs.model_fields)
    assert {kw for _, kw in DEPLOYMENT_KEYS["aks"]} <= aks_fields
    kubernetes.KubernetesServiceArgs.model_validate(
        {"service_name": "aksservice", **read_deployment_config(SEED / "deploymentconfig-aks.json").kwargs})


@pytest.mark.parametrize("doc,words", [
    ('{"computeType": "aci", "containerResourceRequirements": {"cpu": "one"}}', "containerResourceRequirements.cpu"),
    ('{"computeType": "aci", "numReplicas": 2}', "numReplicas: not a setting of computeType 'aci'"),
    ('{"computeType": "aci", "colour": "blue"}', "colour: not a key of this file"),
    ('{"computeType": "batch"}', "computeType"),
    ('{"computeType": "aks", "sslEnabled": true}', "sslEnabled"),
    ('{"port": 8890}', "computeType"),
    ("computeType: aci", "not valid JSON"),
])
def test_bad_deployment_config_names_the_key_and_file(tmp_path: Path, doc: str, words: str) -> None:
    path = tmp_path / "deploymentconfig.json"
    path.write_text(doc)
    with pytest.raises(ArgsError) as info:
        read_deployment_config(path)
    assert words in str(info.value) and str(path) in str(info.value), str(info.value)
