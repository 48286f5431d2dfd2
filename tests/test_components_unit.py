"""Unit tests of the components under Pulumi mocks: no engine, no Docker needed.

The mocks echo each resource's inputs and add plausible outputs for the three
dynamic resources, so the tests check the wiring between components (what
each one sends to its resource, what it exposes) and the argument validation
that runs at preview, before anything changes.
"""

from __future__ import annotations

import gc
import re
import threading
from pathlib import Path
from typing import Any, Iterator

import pulumi
import pytest
from pulumi.runtime.mocks import MockMonitor

import mldeploy.components as components
from mldeploy.components import ContainerInstanceService, InferenceImage, RegisteredModel
from mldeploy.components import container_instance_service, inference_image, registered_model
from mldeploy.providers.images import provider as image_provider
from engine_check import BASE_IMAGE_ID, image_checked, model_checked
from mldeploy.components._common import ArgsError
from mldeploy.components._common import StackConfig
from fake_target import ComposedTarget, FakeTarget
from mldeploy.providers import targets
from mldeploy.providers.model_registry.registry import ModelRegistry, content_hash
from mldeploy.providers.targets.local import PORT_RANGE, _claimed_ports, default_port

PROJECT = "proj"
STACK = "dev"

SCORE_PY = """\
import json

def init():
    global model
    model = object()

def run(raw_data):
    return json.loads(raw_data)
"""

CONDA_YML = """\
name: project_environment
dependencies:
  - python=3.11
  - pip:
    - scikit-learn
"""


# What the mocked providers return where the real ones would say something of their
# own: values no component can make up, so a test that finds them in a component's
# outputs shows the wiring, not the mocks.
PROVIDER_IMAGE_ID = "sha256:" + "1d" * 32
PROVIDER_STATE = "provider-state"


class RecordingMocks(pulumi.runtime.Mocks):
    """Echoes inputs; adds the outputs the real providers would return.

    `registered` maps a model name to the version the mocked registry hands out
    (default: the planned one), so tests can tell a planned version from a registered one.
    """

    def __init__(self) -> None:
        self.resources: dict[str, dict[str, Any]] = {}
        self.types: dict[str, str] = {}
        self.monitor: RecordingMonitor | None = None
        self.registered: dict[str, int] = {}
        self.base_ids: dict[str, str] = {}
        """Resource name -> the base image id the image provider's check gets from Docker."""
        self._lock = threading.Lock()

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        inputs = {k: v for k, v in args.inputs.items() if k != "__provider"}
        outs = dict(inputs)
        rid = f"{args.name}-id"
        if args.typ.endswith("mldeploy:ModelVersion"):
            inputs = model_checked(inputs)
            outs = dict(inputs)
            version = self.registered.get(inputs["model_name"], int(inputs["version"]))
            outs.update(
                version=version,
                content_hash=f"registered:{inputs['content_hash']}",
                model_dir=f"/provider/only/{inputs['model_name']}/{version}",
                model_id=f"{inputs['model_name']}:{version}",
                present=True,
            )
            rid = outs["model_id"]
        elif args.typ.endswith("mldeploy:Image"):
            inputs = image_checked(inputs, self.base_ids.get(args.name, BASE_IMAGE_ID))
            outs = dict(inputs)
            name = f"{inputs['image_repo']}:{inputs['build_hash'].split(':')[-1][:12]}"
            outs.update(image_name=name, image_id=PROVIDER_IMAGE_ID, present=True)
            rid = name
        elif args.typ.endswith("mldeploy:Service"):
            auth = bool(inputs.get("auth_enabled"))
            outs.update(
                **targets.target_for(inputs["target"]).uris(inputs),
                primary_key=f"pk-{inputs['service_name']}" if auth else "",
                secondary_key=f"sk-{inputs['service_name']}" if auth else "",
                state=PROVIDER_STATE,
                model_versions={m["name"]: int(m["version"]) + 100 for m in inputs["models"]},
            )
            if inputs["target"] == "local":
                outs.update(container_id="c0ffee", backend_socket="c0ffee00.sock")
            rid = f"{inputs['stack']}/{inputs['service_name']}"
        with self._lock:
            self.resources[args.name] = inputs
            self.types[args.name] = args.typ
        return rid, outs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], None]:
        return {}, None


def make_project(proj: Path) -> Path:
    """A project folder with a model, a source dir with an entry script, and a conda file."""
    (proj / "models" / "bert" / "tokenizer").mkdir(parents=True)
    (proj / "models" / "ridge.pkl").write_bytes(b"ridge-weights")
    (proj / "models" / "bert" / "weights.bin").write_bytes(b"\x00\x01")
    (proj / "models" / "bert" / "tokenizer" / "vocab.txt").write_text("a\n")
    (proj / "src").mkdir()
    (proj / "src" / "score.py").write_text(SCORE_PY)
    (proj / "env").mkdir()
    (proj / "env" / "myenv.yml").write_text(CONDA_YML)
    return proj


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder (`make_project`), its state folder beside it."""
    proj = make_project(tmp_path / "project")
    monkeypatch.setenv("MLDEPLOY_PROJECT_DIR", str(proj))
    monkeypatch.setenv("MLDEPLOY_STATE_DIR", str(tmp_path / "state"))
    for var in ("MLDEPLOY_REGISTRY_PATH", "MLDEPLOY_BASE_IMAGE", "MLDEPLOY_GATEWAY_IMAGE", "PULUMI_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    pulumi.runtime.set_all_config({})  # no stack config unless a test sets some
    return proj


class RecordingMonitor(MockMonitor):
    """Also keeps the options each resource was registered with (the engine applies them, mocks do not)."""

    def __init__(self, mocks: RecordingMocks):
        super().__init__(mocks)
        self.requests: dict[str, Any] = {}

    def RegisterResource(self, request: Any) -> Any:
        self.requests[request.name] = request
        return super().RegisterResource(request)


@pytest.fixture(autouse=True)
def no_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The program never asks Docker (issue 19, item 4): with DOCKER_HOST on a socket that does
    not exist, every component here is still declared."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/mldeploy-no-docker.sock")


def _set_mocks(preview: bool) -> RecordingMocks:
    mocks = RecordingMocks()
    mocks.monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=STACK, preview=preview, monitor=mocks.monitor)
    return mocks


@pytest.fixture
def mocks(project: Path) -> Iterator[RecordingMocks]:
    yield _set_mocks(preview=False)


@pytest.fixture
def preview_mocks(project: Path) -> Iterator[RecordingMocks]:
    yield _set_mocks(preview=True)


def state_dir(project: Path) -> Path:
    return project.parent / "state"


def make_model(name: str = "ridge", model_name: str = "ridge", path: str = "models/ridge.pkl", **kw: Any) -> RegisteredModel:
    return RegisteredModel(name, model_name=model_name, model_path=path, **kw)


def make_image(name: str = "scoring", **kw: Any) -> InferenceImage:
    kw.setdefault("entry_script", "score.py")
    kw.setdefault("source_directory", "src")
    kw.setdefault("conda_file", "env/myenv.yml")
    return InferenceImage(name, **kw)


def make_service(name: str = "aciservice", models: list[Any] | None = None, image: Any = None, **kw: Any) -> ContainerInstanceService:
    return ContainerInstanceService(name, models=models if models is not None else [make_model()], image=image or make_image(), **kw)


# ---------------------------------------------------------------- public surface


def test_public_surface() -> None:
    assert sorted(components.__all__) == [
        "AksCluster",
        "AksClusterArgs",
        "AksService",
        "AksServiceArgs",
        "Canary",
        "ContainerInstanceService",
        "ContainerInstanceServiceArgs",
        "EdgeDevice",
        "EdgeModule",
        "EdgeModuleArgs",
        "InferenceImage",
        "InferenceImageArgs",
        "OnlineEndpointService",
        "OnlineEndpointServiceArgs",
        "RegisteredModel",
        "RegisteredModelArgs",
        "TrafficSplit",
    ]
    for name in components.__all__:
        assert getattr(components, name) is not None


def test_args_error_is_a_run_error() -> None:
    # RunError: the engine prints the message without a Python traceback
    assert issubclass(ArgsError, pulumi.RunError)


# ---------------------------------------------------------------- RegisteredModel


@pulumi.runtime.test
def test_registered_model_first_version(mocks: RecordingMocks, project: Path) -> Any:
    model = make_model(tags={"area": "demo"}, description="Ridge")

    def check(name: str) -> None:
        assert name == "ridge"
        props = mocks.resources["ridge-version"]
        assert mocks.types["ridge-version"].endswith("mldeploy:ModelVersion")
        assert props["model_name"] == "ridge"
        assert props["model_path"] == "models/ridge.pkl"  # relative to the project: no checkout's path
        assert props["content_hash"] == content_hash(project / "models" / "ridge.pkl")
        assert props["owner"] == f"{PROJECT}/{STACK}/ridge"
        assert props["registry_root"] == str(state_dir(project) / "registry")  # outside the project: absolute
        assert props["tags"] == {"area": "demo"}
        assert props["description"] == "Ridge"
        assert props["version"] == 1

    return pulumi.Output.all(model.model_name, model.version).apply(lambda args: check(args[0]))


@pulumi.runtime.test
def test_registered_model_exposes_what_the_registry_registered(mocks: RecordingMocks, project: Path) -> Any:
    """The component's version and hash are the provider's answer, not the plan; so is what services get."""
    mocks.registered["ridge"] = 7  # e.g. another runner registered versions meanwhile
    model = make_model()
    entry = model.service_entry()

    def check(args: list[Any]) -> None:
        version, digest, service_entry = args
        assert version == 7
        assert digest == "registered:" + content_hash(project / "models" / "ridge.pkl")
        # The folder follows the registered version, under the registry input (not a provider-side path).
        assert service_entry == {"name": "ridge", "version": 7, "model_dir": f"{state_dir(project)}/registry/ridge/7"}

    return pulumi.Output.all(model.version, model.content_hash, entry).apply(check)


@pulumi.runtime.test
def test_registered_model_plans_next_version(mocks: RecordingMocks, project: Path) -> Any:
    registry = ModelRegistry(state_dir(project) / "registry")
    registry.register("ridge", project / "models" / "ridge.pkl", f"{PROJECT}/{STACK}/ridge")
    (project / "models" / "ridge.pkl").write_bytes(b"retrained")
    model = make_model()

    def check(version: int) -> None:
        assert version == 2
        assert mocks.resources["ridge-version"]["version"] == 2, "planned by the provider's check"
        # planning wrote nothing
        assert [v.version for v in registry.versions("ridge")] == [1]
        assert mocks.resources["ridge-version"]["content_hash"] == content_hash(project / "models" / "ridge.pkl")

    return model.version.apply(check)


@pulumi.runtime.test
def test_registered_model_folder(mocks: RecordingMocks, project: Path) -> Any:
    model = make_model("bert", model_name="bert", path=str(project / "models" / "bert"))

    def check(_: Any) -> None:
        props = mocks.resources["bert-version"]
        assert props["version"] == 1
        assert props["content_hash"] == content_hash(project / "models" / "bert")
        assert props["model_path"] == "models/bert"  # given absolute, inside the project: stored relative

    return model.version.apply(check)


@pulumi.runtime.test
def test_registry_path_from_env(mocks: RecordingMocks, project: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("MLDEPLOY_REGISTRY_PATH", "shared-registry")
    model = make_model()

    def check(_: Any) -> None:
        assert mocks.resources["ridge-version"]["registry_root"] == "shared-registry"  # in the project: relative

    return model.version.apply(check)


SETTING_ENV = {
    "mldeploy:stateDir": ("MLDEPLOY_STATE_DIR", "env-state"),
    "mldeploy:registryPath": ("MLDEPLOY_REGISTRY_PATH", "env-registry"),
    "mldeploy:baseImage": ("MLDEPLOY_BASE_IMAGE", "env/base:1"),
    "mldeploy:gatewayImage": ("MLDEPLOY_GATEWAY_IMAGE", "env/gateway:1"),
}


def _settings_inputs(mocks: RecordingMocks) -> dict[str, Any]:
    return {
        "mldeploy:stateDir": mocks.resources["aciservice-service"]["state_dir"],
        "mldeploy:registryPath": mocks.resources["ridge-version"]["registry_root"],
        "mldeploy:baseImage": mocks.resources["scoring-image"]["base_image"],
        "mldeploy:gatewayImage": mocks.resources["aciservice-service"]["gateway_image"],
    }


@pulumi.runtime.test
def test_stack_config_wins_over_the_environment(
    mocks: RecordingMocks, project: Path, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """One rule for settings: what the stack sets wins; a variable only fills in what it leaves unset."""
    for var, value in SETTING_ENV.values():
        monkeypatch.setenv(var, value)
    pulumi.runtime.set_all_config(
        {
            "mldeploy:stateDir": "stack-state",
            "mldeploy:registryPath": "stack-registry",
            "mldeploy:baseImage": "stack/base:1",
            "mldeploy:gatewayImage": "stack/gateway:1",
        }
    )
    service = make_service()

    def check(_: Any) -> None:
        assert _settings_inputs(mocks) == {
            "mldeploy:stateDir": "stack-state",
            "mldeploy:registryPath": "stack-registry",
            "mldeploy:baseImage": "stack/base:1",
            "mldeploy:gatewayImage": "stack/gateway:1",
        }

    return service.scoring_uri.apply(check)


@pytest.mark.parametrize("unset", [None, ""], ids=["absent", "empty-default"])
@pulumi.runtime.test
def test_environment_fills_in_settings_the_stack_leaves_unset(
    mocks: RecordingMocks, project: Path, monkeypatch: pytest.MonkeyPatch, unset: str | None
) -> Any:
    """Unset is absent or empty: Pulumi.yaml's default for these keys is the empty string."""
    for var, value in SETTING_ENV.values():
        monkeypatch.setenv(var, value)
    pulumi.runtime.set_all_config({} if unset is None else {key: unset for key in SETTING_ENV})
    service = make_service()

    def check(_: Any) -> None:
        assert _settings_inputs(mocks) == {
            "mldeploy:stateDir": "env-state",
            "mldeploy:registryPath": "env-registry",
            "mldeploy:baseImage": "env/base:1",
            "mldeploy:gatewayImage": "env/gateway:1",
        }

    return service.scoring_uri.apply(check)


def test_project_defaults_leave_env_fillable_settings_unset() -> None:
    """The engine hands the program Pulumi.yaml's defaults as config: for these keys they must read as unset."""
    import yaml

    from mldeploy.components._common import ENV_FALLBACKS

    declared = yaml.safe_load((Path(__file__).resolve().parents[1] / "Pulumi.yaml").read_text())["config"]
    assert {f"mldeploy:{k}" for k in ENV_FALLBACKS} == set(SETTING_ENV) | {"mldeploy:registry"}
    for key in {f"mldeploy:{k}" for k in ENV_FALLBACKS}:
        assert declared[key]["default"] == "", key


def test_two_checkouts_send_the_same_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a checkout lives is no part of any resource's inputs: two of them declare the same stack."""
    import json

    for var in ("MLDEPLOY_REGISTRY_PATH", "MLDEPLOY_BASE_IMAGE", "MLDEPLOY_GATEWAY_IMAGE", "PULUMI_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    declared = []
    for where in ("ana/mldeploy", "ci-runner/work/42/mldeploy"):
        proj = make_project(tmp_path / where)
        monkeypatch.setenv("MLDEPLOY_PROJECT_DIR", str(proj))
        monkeypatch.setenv("MLDEPLOY_STATE_DIR", str(proj / ".pulumi-state"))  # as scripts/env.sh sets it
        pulumi.runtime.set_all_config({})
        mocks = _set_mocks(preview=False)

        @pulumi.runtime.test
        def program() -> Any:
            model = make_model()
            folder = make_model("bert", model_name="bert", path=str(proj / "models" / "bert"))
            return make_service(models=[model, folder]).scoring_uri

        program()
        declared.append(mocks.resources)
    assert declared[0] == declared[1]
    assert str(tmp_path) not in json.dumps(declared[0])
    assert declared[0]["ridge-version"]["registry_root"] == ".pulumi-state/registry"
    assert declared[0]["aciservice-service"]["state_dir"] == ".pulumi-state"
    assert declared[0]["aciservice-service"]["models"] == [
        {"name": "ridge", "version": 1, "model_dir": ".pulumi-state/registry/ridge/1"},
        {"name": "bert", "version": 1, "model_dir": ".pulumi-state/registry/bert/1"},
    ]


@pulumi.runtime.test
def test_settings_from_stack_config(mocks: RecordingMocks, project: Path) -> Any:
    pulumi.runtime.set_all_config(
        {"mldeploy:registryPath": "reg", "mldeploy:baseImage": "python:3.11-slim", "mldeploy:gatewayImage": "nginx:1"}
    )
    model, image = make_model(), make_image()
    service = make_service(models=[model], image=image)

    def check(_: Any) -> None:
        assert mocks.resources["ridge-version"]["registry_root"] == "reg"
        assert mocks.resources["scoring-image"]["base_image"] == "python:3.11-slim"
        assert mocks.resources["aciservice-service"]["gateway_image"] == "nginx:1"

    return service.scoring_uri.apply(check)


# ---------------------------------------------------------------- InferenceImage


@pulumi.runtime.test
def test_inference_image_wiring(mocks: RecordingMocks, project: Path) -> Any:
    image = make_image()

    def check(args: list[Any]) -> None:
        name, image_id = args
        props = mocks.resources["scoring-image"]
        assert mocks.types["scoring-image"].endswith("mldeploy:Image")
        assert props["image_repo"] == f"mldeploy-{PROJECT}-{STACK}/scoring"
        assert re.fullmatch(rf"mldeploy-{PROJECT}-{STACK}/scoring:[0-9a-f]{{12}}", name)
        assert name.endswith(props["build_hash"].split(":")[-1][:12])
        assert image_id == PROVIDER_IMAGE_ID  # the built image's id, as the provider said it
        parts = inference_image.build_parts(
            inference_image.InferenceImageSpec(
                entry_script="score.py",
                source_directory=str(project / "src"),
                conda_file=str(project / "env" / "myenv.yml"),
            ),
            "mldeploy/base:bookworm-py3.11",
        )
        assert props["build_hash"] == image_provider.build_hash(parts, BASE_IMAGE_ID)
        assert "build_parts" not in props, "the state keeps the hash only, as earlier releases did"
        # Relative to the project: the image's inputs name no checkout's path.
        assert props["source_directory"] == "src"
        assert props["entry_script"] == "score.py"
        assert props["dependency_file"] == "env/myenv.yml"
        assert props["base_image"] == "mldeploy/base:bookworm-py3.11"
        assert props["labels"] == {
            "mldeploy.managed": "true",
            "mldeploy.project": PROJECT,
            "mldeploy.stack": STACK,
            "mldeploy.resource": "scoring",
        }

    return pulumi.Output.all(image.image_name, image.image_id).apply(check)


@pulumi.runtime.test
def test_inference_image_build_hash_follows_source(mocks: RecordingMocks, project: Path) -> Any:
    first = make_image("first")
    (project / "src" / "helper.py").write_text("X = 1\n")
    second = make_image("second")
    no_conda = make_image("third", conda_file=None)

    def check(_: Any) -> None:
        hashes = [mocks.resources[f"{n}-image"]["build_hash"] for n in ("first", "second", "third")]
        assert len(set(hashes)) == 3
        assert mocks.resources["third-image"]["dependency_file"] == ""

    return pulumi.Output.all(first.image_name, second.image_name, no_conda.image_name).apply(check)


@pulumi.runtime.test
def test_inference_image_build_hash_follows_base_image(mocks: RecordingMocks, monkeypatch: pytest.MonkeyPatch) -> Any:
    first = make_image("first")
    mocks.base_ids["second-image"] = "sha256:" + "0" * 64  # the base rebuilt: Docker says a new id
    second = make_image("second")
    other_base = make_image("third", base_image="python:3.11-slim")

    def check(_: Any) -> None:
        hashes = [mocks.resources[f"{n}-image"]["build_hash"] for n in ("first", "second", "third")]
        assert len(set(hashes)) == 3
        assert mocks.resources["third-image"]["base_image"] == "python:3.11-slim"

    return pulumi.Output.all(first.image_name, second.image_name, other_base.image_name).apply(check)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_image_id_without_docker_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No guess when Docker does not answer: an empty id would change build_hash and rebuild for nothing."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-docker.sock'}")
    for var in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(image_provider.BaseImageError) as exc:
        image_provider.base_image_id("mldeploy/base:bookworm-py3.11")
    message = str(exc.value)
    assert "Docker" in message and "scripts/docker.sh" in message
    gc.collect()  # docker-py's leaked socket is reported here, not in a later test


@pulumi.runtime.test
def test_base_image_id_unknown_fails_in_the_provider_not_the_program(preview_mocks: RecordingMocks) -> Any:
    """A slow or absent Docker: the program still declares the image; the provider's check names the field."""
    image = make_image("img9")

    def slow_docker(ref: str) -> str:
        raise image_provider.BaseImageError(f"Docker did not say the id of base image {ref!r} (ReadTimeout: timed out)")

    def check(_: Any) -> None:
        inputs = {**preview_mocks.resources["img9-image"], "build_parts": ["mldeploy/base:bookworm-py3.11", "score.py"]}
        inputs.pop("build_hash", None)
        _, failures = image_provider.complete(inputs, image_id=slow_docker)
        assert [f.property for f in failures] == ["base_image"]
        assert "ReadTimeout" in failures[0].reason and "mldeploy/base:bookworm-py3.11" in failures[0].reason

    return image.image_name.apply(check)


# ---------------------------------------------------------------- ContainerInstanceService


@pulumi.runtime.test
def test_service_wiring(mocks: RecordingMocks, project: Path) -> Any:
    expected_port = default_port(PROJECT, STACK, "aciservice")  # before it is claimed
    model = make_model(tags={"area": "demo"})
    image = make_image()
    service = ContainerInstanceService("aciservice", models=[model], image=image, cpu_cores=0.5, memory_gb=2, auth_enabled=True)
    assert PORT_RANGE[0] <= expected_port <= PORT_RANGE[1]

    def check(args: list[Any]) -> None:
        scoring_uri, swagger_uri, primary, secondary, state, versions, image_name, image_id = args
        m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/api/v1/service/aciservice/score", scoring_uri)
        assert m, scoring_uri
        assert int(m.group(1)) == expected_port
        assert swagger_uri == scoring_uri.removesuffix("/score") + "/swagger.json"
        # The provider's own outputs, each under its own name (none swapped, none made up).
        assert (primary, secondary) == ("pk-aciservice", "sk-aciservice")
        assert state == PROVIDER_STATE
        assert versions == {"ridge": 101}

        props = mocks.resources["aciservice-service"]
        assert mocks.types["aciservice-service"].endswith("mldeploy:Service")
        assert props["service_name"] == "aciservice"
        assert props["target"] == "local"
        assert (props["project"], props["stack"]) == (PROJECT, STACK)
        assert props["state_dir"] == str(state_dir(project))  # outside the project: absolute
        assert props["port"] == expected_port
        assert props["cpu_cores"] == 0.5
        assert props["memory_gb"] == 2
        assert props["auth_enabled"] is True
        # the image's outputs flow into the service
        assert props["image_name"] == image_name
        assert props["image_id"] == image_id
        # the model's registered version and folder flow into the service
        assert props["models"] == [
            {"name": "ridge", "version": 1, "model_dir": str(state_dir(project) / "registry" / "ridge" / "1")}
        ]
        assert props["environment_variables"] == {}
        assert (props["primary_key_version"], props["secondary_key_version"]) == (1, 1)

    return pulumi.Output.all(
        service.scoring_uri,
        service.swagger_uri,
        service.primary_key,
        service.secondary_key,
        service.state,
        service.model_versions,
        image.image_name,
        image.image_id,
    ).apply(check)


@pulumi.runtime.test
def test_service_keys_requested_secret(mocks: RecordingMocks) -> Any:
    service = make_service(auth_enabled=True)

    def check(_: Any) -> None:
        assert mocks.monitor is not None
        request = mocks.monitor.requests["aciservice-service"]
        assert sorted(request.additionalSecretOutputs) == ["primary_key", "secondary_key"]

    return service.primary_key.apply(check)


@pulumi.runtime.test
def test_resource_graph(mocks: RecordingMocks) -> Any:
    """Each dynamic resource is a child of its component; the service waits for the model and image."""
    model, image = make_model(), make_image()
    service = make_service(models=[model], image=image)

    def check(_: Any) -> None:
        assert mocks.monitor is not None
        req = mocks.monitor.requests
        assert req["ridge"].type == "mldeploy:index:RegisteredModel"
        assert req["scoring"].type == "mldeploy:index:InferenceImage"
        assert req["aciservice"].type == "mldeploy:index:ContainerInstanceService"
        for child, parent in (("ridge-version", "ridge"), ("scoring-image", "scoring"), ("aciservice-service", "aciservice")):
            assert req[child].parent.endswith("::" + parent), (child, req[child].parent)
            assert req[child].custom is True
        deps = list(req["aciservice-service"].dependencies)
        assert any(d.endswith("::ridge-version") for d in deps), deps
        assert any(d.endswith("::scoring-image") for d in deps), deps

    return service.scoring_uri.apply(check)


@pulumi.runtime.test
def test_service_without_auth_has_no_keys(mocks: RecordingMocks) -> Any:
    from mldeploy.providers.targets.local import TARGET as LOCAL

    service = make_service(auth_enabled=False)

    def check(_: Any) -> None:
        props = mocks.resources["aciservice-service"]
        assert props["auth_enabled"] is False
        # What the local backend makes of it (the real code, not the mocks): no key at all.
        keys = LOCAL._keys({"primary_key": "old-pk", "secondary_key": "old-sk"}, props)
        assert keys == (None, None)
        outs = LOCAL._outs({**props, "port": 23456}, "c0ffee", 40000, keys)
        assert (outs["primary_key"], outs["secondary_key"]) == ("", "")

    return service.scoring_uri.apply(check)


@pulumi.runtime.test
def test_service_two_models_explicit_port_and_name(mocks: RecordingMocks, project: Path) -> Any:
    ridge = make_model()
    bert = make_model("bert", model_name="bert", path="models/bert")
    service = make_service(
        "multi",
        models=[ridge, bert],
        port=24680,
        service_name="multi-svc",
        environment_variables={"LOG_LEVEL": "debug"},
        primary_key_version=3,
    )

    def check(args: list[Any]) -> None:
        uri, versions = args
        assert uri == "http://127.0.0.1:24680/api/v1/service/multi-svc/score"
        assert versions == {"ridge": 101, "bert": 101}  # the provider's answer, per model
        props = mocks.resources["multi-service"]
        assert [(m["name"], m["version"]) for m in props["models"]] == [("ridge", 1), ("bert", 1)]
        assert props["environment_variables"] == {"LOG_LEVEL": "debug"}
        assert props["primary_key_version"] == 3

    return pulumi.Output.all(service.scoring_uri, service.model_versions).apply(check)


@pulumi.runtime.test
def test_services_get_distinct_default_ports(mocks: RecordingMocks) -> Any:
    image = make_image()
    model = make_model()
    a = make_service("svc-a", models=[model], image=image)
    b = make_service("svc-b", models=[model], image=image)

    def check(args: list[Any]) -> None:
        ua, ub = args
        assert ua != ub
        assert mocks.resources["svc-a-service"]["port"] != mocks.resources["svc-b-service"]["port"]

    return pulumi.Output.all(a.scoring_uri, b.scoring_uri).apply(check)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeTarget:
    """Registers a target without ports, and one deployed by another component."""
    target = FakeTarget()
    monkeypatch.setitem(targets.TARGETS, "fake", target)
    monkeypatch.setitem(targets.TARGETS, "composed", ComposedTarget())
    return target


@pulumi.runtime.test
def test_service_on_a_target_without_ports(mocks: RecordingMocks, fake: FakeTarget) -> Any:
    """Only the local target picks and claims ports; its inputs stay out of other targets' services."""
    model, image = make_model(), make_image()
    claims_before = dict(_claimed_ports())
    a = make_service("svc-a", models=[model], image=image, target="fake")
    b = make_service("svc-b", models=[model], image=image, target="fake")
    assert _claimed_ports() == claims_before
    local_port = default_port(PROJECT, STACK, "svc-c")
    c = make_service("svc-c", models=[model], image=image)  # the local target claims one
    assert _claimed_ports() == {**claims_before, local_port: "svc-c"}

    def check(args: list[Any]) -> None:
        ua, ub, _ = args
        assert ua == "https://default.fake.example/api/v1/service/svc-a/score"
        assert ub == "https://default.fake.example/api/v1/service/svc-b/score"
        for name in ("svc-a-service", "svc-b-service"):
            props = mocks.resources[name]
            assert props["target"] == "fake"
            assert props["namespace"] == "default"
            assert not {"port", "gateway_image", "state_dir"} & {k for k, v in props.items() if v is not None}
        assert mocks.resources["svc-c-service"]["port"] == local_port

    # svc-c's output too: the check must run after all three are registered.
    return pulumi.Output.all(a.scoring_uri, b.scoring_uri, c.scoring_uri).apply(check)


@pulumi.runtime.test
def test_port_belongs_to_the_local_target(mocks: RecordingMocks, fake: FakeTarget) -> None:
    message = _raises(lambda: make_service("svc-p", target="fake", port=25000), "ContainerInstanceService 'svc-p'", "port")
    assert "extra inputs are not permitted" in message.lower()


@pulumi.runtime.test
def test_target_deployed_by_another_component(mocks: RecordingMocks, fake: FakeTarget) -> None:
    _raises(lambda: make_service("svc-k", target="composed"), "ContainerInstanceService 'svc-k'", "target", "ComposedService")


@pulumi.runtime.test
def test_stack_target_from_the_registry(mocks: RecordingMocks, fake: FakeTarget) -> Any:
    pulumi.runtime.set_all_config({"mldeploy:target": "fake"})
    service = make_service("svc-s")

    def check(uri: str) -> None:
        assert uri == "https://default.fake.example/api/v1/service/svc-s/score"
        assert mocks.resources["svc-s-service"]["target"] == "fake"

    return service.scoring_uri.apply(check)


def test_stack_config_knows_registered_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    assert StackConfig.model_validate({"target": "local"}).target == "local"
    with pytest.raises(ValueError, match="unknown target 'fake'; known: local"):
        StackConfig.model_validate({"target": "fake"})
    monkeypatch.setitem(targets.TARGETS, "fake", FakeTarget())
    assert StackConfig.model_validate({"target": "fake"}).target == "fake"


@pulumi.runtime.test
def test_service_preview_uses_planned_version(preview_mocks: RecordingMocks, project: Path) -> Any:
    registry = ModelRegistry(state_dir(project) / "registry")
    registry.register("ridge", project / "models" / "ridge.pkl", f"{PROJECT}/{STACK}/ridge")
    (project / "models" / "ridge.pkl").write_bytes(b"retrained")
    model = make_model()
    service = make_service(models=[model])

    def check(_: Any) -> None:
        # preview shows the service's diff naming the new version
        assert preview_mocks.resources["aciservice-service"]["models"] == [
            {"name": "ridge", "version": 2, "model_dir": str(state_dir(project) / "registry" / "ridge" / "2")}
        ]

    return service.scoring_uri.apply(check)


# ---------------------------------------------------------------- validation


def _raises(fn: Any, *fragments: str) -> str:
    with pytest.raises(ArgsError) as exc:
        fn()
    message = str(exc.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


@pulumi.runtime.test
def test_model_path_missing(mocks: RecordingMocks, project: Path) -> None:
    _raises(
        lambda: make_model("m1", path="models/nope.pkl"),
        "RegisteredModel 'm1'",
        "model_path",
        str(project / "models" / "nope.pkl"),
    )


@pulumi.runtime.test
def test_model_folder_empty(mocks: RecordingMocks, project: Path) -> None:
    (project / "models" / "empty" / "sub").mkdir(parents=True)
    _raises(lambda: make_model("m2", path="models/empty"), "RegisteredModel 'm2'", "model_path", "empty")


@pulumi.runtime.test
def test_model_name_invalid(mocks: RecordingMocks) -> None:
    _raises(lambda: make_model("m3", model_name="has space"), "RegisteredModel 'm3'", "model_name")


@pulumi.runtime.test
def test_entry_script_not_in_source_directory(mocks: RecordingMocks) -> None:
    _raises(
        lambda: make_image("img1", entry_script="missing.py"),
        "InferenceImage 'img1'",
        "entry_script",
        "missing.py",
    )


@pulumi.runtime.test
def test_entry_script_outside_source_directory(mocks: RecordingMocks, project: Path) -> None:
    (project / "outside.py").write_text(SCORE_PY)
    _raises(lambda: make_image("img2", entry_script="../outside.py"), "InferenceImage 'img2'", "entry_script")


@pytest.mark.parametrize(
    "body,missing",
    [
        ("def init():\n    pass\n", "run"),
        ("def run(data):\n    return data\n", "init"),
        ("run = lambda data: data\ninit = None\n", "init, run"),
    ],
    ids=["no-run", "no-init", "no-functions"],
)
@pulumi.runtime.test
def test_entry_script_without_init_or_run(mocks: RecordingMocks, project: Path, body: str, missing: str) -> None:
    (project / "src" / "bad.py").write_text(body)
    _raises(
        lambda: make_image("img3", entry_script="bad.py"),
        "InferenceImage 'img3'",
        "entry_script",
        f"missing: {missing}",
    )


@pulumi.runtime.test
def test_entry_script_syntax_error(mocks: RecordingMocks, project: Path) -> None:
    (project / "src" / "broken.py").write_text("def init(:\n")
    _raises(lambda: make_image("img4", entry_script="broken.py"), "InferenceImage 'img4'", "entry_script", "parse")


@pulumi.runtime.test
def test_source_directory_missing(mocks: RecordingMocks) -> None:
    _raises(lambda: make_image("img5", source_directory="nosuchdir"), "InferenceImage 'img5'", "source_directory")


@pulumi.runtime.test
def test_conda_file_not_yaml(mocks: RecordingMocks, project: Path) -> None:
    (project / "env" / "broken.yml").write_text("name: x\ndependencies: [python\n  - : :\n")
    _raises(
        lambda: make_image("img6", conda_file="env/broken.yml"),
        "InferenceImage 'img6'",
        "conda_file",
        "not valid YAML",
    )


@pulumi.runtime.test
def test_conda_file_not_an_environment(mocks: RecordingMocks, project: Path) -> None:
    (project / "env" / "list.yml").write_text("- just\n- a list\n")
    _raises(lambda: make_image("img7", conda_file="env/list.yml"), "InferenceImage 'img7'", "conda_file")


@pulumi.runtime.test
def test_conda_file_missing(mocks: RecordingMocks) -> None:
    _raises(lambda: make_image("img8", conda_file="env/nope.yml"), "InferenceImage 'img8'", "conda_file", "does not exist")


@pytest.mark.parametrize("field,value", [("cpu_cores", 0), ("memory_gb", -1)])
@pulumi.runtime.test
def test_service_resources_must_be_positive(mocks: RecordingMocks, field: str, value: float) -> None:
    _raises(lambda: make_service("svc1", **{field: value}), "ContainerInstanceService 'svc1'", field, "greater than 0")


@pulumi.runtime.test
def test_service_unknown_target(mocks: RecordingMocks) -> None:
    _raises(lambda: make_service("svc2", target="gpu-cluster"), "ContainerInstanceService 'svc2'", "target")


@pulumi.runtime.test
def test_service_unknown_target_from_config(mocks: RecordingMocks) -> None:
    pulumi.runtime.set_all_config({"mldeploy:target": "gpu-cluster"})
    # a bad stack setting fails whichever resource reads it first, naming the config key
    _raises(lambda: make_service("svc2"), "mldeploy:target", "gpu-cluster")


@pytest.mark.parametrize("bad", ["MyService", "ab", "svc_1", "-svc", "svc-", "x" * 33])
@pulumi.runtime.test
def test_service_name_invalid(mocks: RecordingMocks, bad: str) -> None:
    _raises(lambda: make_service("svc3", service_name=bad), "ContainerInstanceService 'svc3'", "service_name")


@pulumi.runtime.test
def test_resource_name_used_as_service_name_is_validated(mocks: RecordingMocks) -> None:
    _raises(lambda: make_service("AciService"), "ContainerInstanceService 'AciService'", "service_name")


@pytest.mark.parametrize("port", [80, 70000])
@pulumi.runtime.test
def test_service_port_out_of_range(mocks: RecordingMocks, port: int) -> None:
    _raises(lambda: make_service("svc4", port=port), "ContainerInstanceService 'svc4'", "port")


@pulumi.runtime.test
def test_service_duplicate_port(mocks: RecordingMocks) -> None:
    model, image = make_model(), make_image()
    make_service("first-svc", models=[model], image=image, port=25000)
    _raises(
        lambda: make_service("second-svc", models=[model], image=image, port=25000),
        "ContainerInstanceService 'second-svc'",
        "port",
        "25000",
        "first-svc",
    )


@pulumi.runtime.test
def test_service_explicit_port_equal_to_a_default_port(mocks: RecordingMocks) -> None:
    model, image = make_model(), make_image()
    taken = default_port(PROJECT, STACK, "svc-a")  # before it is claimed
    make_service("svc-a", models=[model], image=image)
    _raises(lambda: make_service("svc-b", models=[model], image=image, port=taken), "'svc-b'", "port", str(taken), "svc-a")


@pulumi.runtime.test
def test_service_needs_models(mocks: RecordingMocks) -> None:
    _raises(lambda: make_service("svc5", models=[]), "ContainerInstanceService 'svc5'", "models")


@pulumi.runtime.test
def test_service_models_must_be_registered_models(mocks: RecordingMocks) -> None:
    _raises(lambda: make_service("svc6", models=["ridge"]), "ContainerInstanceService 'svc6'", "models", "RegisteredModel")


@pulumi.runtime.test
def test_service_models_distinct_names(mocks: RecordingMocks) -> None:
    a = make_model("a", model_name="ridge")
    b = make_model("b", model_name="ridge")
    _raises(lambda: make_service("svc7", models=[a, b]), "ContainerInstanceService 'svc7'", "models", "distinct")


@pulumi.runtime.test
def test_service_image_must_be_inference_image(mocks: RecordingMocks) -> None:
    _raises(lambda: make_service("svc8", image="myrepo/img:1"), "ContainerInstanceService 'svc8'", "image", "InferenceImage")


@pytest.mark.parametrize(
    "args_model,kind,data",
    [
        (registered_model.RegisteredModelSpec, "RegisteredModel", {"model_name": "m", "model_path": "models/ridge.pkl"}),
        (inference_image.InferenceImageSpec, "InferenceImage", {"entry_script": "score.py", "source_directory": "src"}),
        (container_instance_service.ContainerInstanceServiceSpec, "ContainerInstanceService",
         {"service_name": "svc9", "models": [], "image": None}),
    ],
)
def test_unknown_argument_is_named(project: Path, args_model: Any, kind: str, data: dict[str, Any]) -> None:
    """Arguments Azure ML does not take (here, `gpu_count`) are refused by name, not dropped."""
    from mldeploy.components._common import validate

    message = _raises(lambda: validate(args_model, kind, "x", {**data, "gpu_count": 1}), f"{kind} 'x'", "gpu_count")
    assert "extra inputs are not permitted" in message.lower()


def test_several_problems_reported_together(project: Path) -> None:
    from mldeploy.components.inference_image import InferenceImageSpec
    from mldeploy.components._common import validate

    message = _raises(
        lambda: validate(
            InferenceImageSpec,
            "InferenceImage",
            "img",
            {"entry_script": "score.py", "source_directory": "nowhere", "conda_file": "env/none.yml"},
        ),
        "source_directory",
        "conda_file",
    )
    assert message.startswith("InferenceImage 'img': invalid arguments: ")


# ---------------------------------------------------------------- the local target's bad input (issue 11)


@pulumi.runtime.test
def test_service_cpu_cores_above_the_machine(mocks: RecordingMocks, monkeypatch: pytest.MonkeyPatch) -> None:
    from mldeploy.providers.targets import local as local_target

    monkeypatch.setattr(local_target, "machine_cores", lambda: 2)
    _raises(lambda: make_service("svc-cpu", cpu_cores=3), "ContainerInstanceService 'svc-cpu'", "cpu_cores", "2 CPU cores", "3")
    assert not [n for n in mocks.resources if n.startswith("svc-cpu")], "nothing of the service may be registered"
    make_service("svc-cpu-ok", cpu_cores=2)  # exactly the machine's cores is fine


@pytest.mark.parametrize("name", ["AZUREML_MODEL_DIR", "WORKER_COUNT", "MLDEPLOY_BIND_SOCKET", "SERVER_PORT"])
@pulumi.runtime.test
def test_service_environment_cannot_override_server_settings(mocks: RecordingMocks, name: str) -> None:
    _raises(
        lambda: make_service("svc-env", environment_variables={"OK_VAR": "1", name: "x"}),
        "ContainerInstanceService 'svc-env'",
        "environment_variables",
        name,
        "cannot be overridden",
    )
    assert not [n for n in mocks.resources if n.startswith("svc-env")]


@pytest.mark.parametrize("workers", [0, -1, 65])
@pulumi.runtime.test
def test_service_worker_count_out_of_range(mocks: RecordingMocks, workers: int) -> None:
    _raises(lambda: make_service("svc-w", worker_count=workers), "ContainerInstanceService 'svc-w'", "worker_count")


# ---------------------------------------------------------------- sample_request (issue 17)


@pulumi.runtime.test
def test_sample_request_from_a_dict_or_a_file_reaches_the_service(mocks: RecordingMocks, project: Path) -> None:
    (project / "sample.json").write_text('{"data": [[1, 2, 3]]}')
    (project / "answer.json").write_text("[6.0]")
    services = [make_service("from-file", sample_request="sample.json", sample_response="answer.json"),
                make_service("from-dict", sample_request={"data": [[1]]}),
                make_service("without")]

    def check(_: Any) -> None:
        # JSON text, so the integers reach the service as integers.
        assert mocks.resources["from-file-service"]["sample_request"] == {"body": '{"data": [[1, 2, 3]]}', "response": "[6.0]"}
        assert mocks.resources["from-dict-service"]["sample_request"] == {"body": '{"data": [[1]]}'}
        assert "sample_request" not in mocks.resources["without-service"], "no new input for services without one"
        assert mocks.resources["without-service"]["entry_script"] == "src/score.py"

    return pulumi.Output.all(*[s.scoring_uri for s in services]).apply(check)


@pulumi.runtime.test
def test_bad_sample_request_names_the_field(mocks: RecordingMocks, project: Path) -> None:
    (project / "broken.json").write_text("{not json")
    _raises(lambda: make_service("a1", sample_request="missing.json"), "ContainerInstanceService 'a1'", "sample_request: cannot read",
            str(project / "missing.json"))
    _raises(lambda: make_service("a2", sample_request="broken.json"), "sample_request:", "is not JSON")
    _raises(lambda: make_service("a3", sample_request=42), "sample_request: a dict, a list, or the path of a JSON file, got int")
    _raises(lambda: make_service("a4", sample_response=[1.0]), "sample_response: needs sample_request")
    _raises(lambda: make_service("a5", sample_request={"x": float("nan")}), "sample_request: not JSON-serialisable")
    _raises(lambda: make_service("a6", sample_request={"x": 1}, sample_response="gone.json"), "sample_response: cannot read")


# ---------------------------------------------------------------- the project's own program and its stack config


@pytest.fixture
def sample_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingMocks]:
    """The repository's sample (its entry script and environment, a stand-in model file) as the project,
    under mocks named like the project (`mldeploy`), so `pulumi.Config()` in __main__.py reads `mldeploy:*`."""
    import shutil

    from conftest import ROOT

    proj = tmp_path / "sample-project"
    shutil.copytree(ROOT / "sample" / "src", proj / "sample" / "src")
    shutil.copytree(ROOT / "sample" / "env", proj / "sample" / "env")
    (proj / "sample" / "models").mkdir()
    (proj / "sample" / "models" / "sklearn_regression_model.pkl").write_bytes(b"ridge-weights")
    monkeypatch.setenv("MLDEPLOY_PROJECT_DIR", str(proj))
    monkeypatch.setenv("MLDEPLOY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(proj)
    for var in ("MLDEPLOY_REGISTRY_PATH", "MLDEPLOY_BASE_IMAGE", "MLDEPLOY_GATEWAY_IMAGE", "PULUMI_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    mocks = RecordingMocks()
    mocks.monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project="mldeploy", stack=STACK, preview=True, monitor=mocks.monitor)
    pulumi.runtime.set_all_config({})
    yield mocks
    pulumi.runtime.set_all_config({})


def _run_project_program() -> dict[str, Any]:
    import runpy

    from conftest import ROOT

    return runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")


# Each bad setting in a stack's config file fails the project's program at preview, naming the file or the
# resource and field it reached. (Moved from tests/test_operations_e2e.py, which keeps one of them through
# `scripts/stack.py up` to prove the wiring: the CLI fails and nothing is created.)
@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("mldeploy:target", "gpu-cluster", [f"stacks/Pulumi.{STACK}.yaml", "mldeploy:target", "gpu-cluster"]),
        ("mldeploy:cpuCores", "0", ["ContainerInstanceService 'aciservice'", "cpu_cores", "greater than 0"]),
        ("mldeploy:memoryGb", "-1", ["ContainerInstanceService 'aciservice'", "memory_gb", "greater than 0"]),
        ("mldeploy:modelPath", "nope/model.pkl", ["RegisteredModel 'ridge'", "model_path", "does not exist"]),
    ],
)
@pulumi.runtime.test
def test_bad_stack_config_fails_the_project_program_naming_where(sample_project: RecordingMocks, key: str, value: str,
                                                                  expected: list[str]) -> None:
    pulumi.runtime.set_all_config({key: value})
    _raises(_run_project_program, *expected)
    assert not [n for n in sample_project.resources if n.startswith("aciservice")], "nothing of the service may be registered"


@pulumi.runtime.test
def test_the_project_program_declares_the_sample_with_good_config(sample_project: RecordingMocks) -> Any:
    """The same program and config keys, set to good values: the service is declared with them (so the
    failures above come from the values, not from a program that cannot run here)."""
    pulumi.runtime.set_all_config({"mldeploy:cpuCores": "1", "mldeploy:memoryGb": "0.5"})
    declared = _run_project_program()

    def check(_: Any) -> None:
        service = sample_project.resources["aciservice-service"]
        assert (service["target"], service["cpu_cores"], service["memory_gb"]) == ("local", 1.0, 0.5), service

    return declared["service"].scoring_uri.apply(check)


@pulumi.runtime.test
def test_bad_aci_settings_from_stack_config_fail_naming_the_field(mocks: RecordingMocks) -> None:
    """A stack's `mldeploy:azureSubscriptionId` that is not a GUID reaches the ACI target's check and fails the
    service at preview, naming the field. (Moved from tests/test_aci_e2e.py; that file's deploy proves the
    same settings reach ARM.)"""
    pulumi.runtime.set_all_config({"mldeploy:azureSubscriptionId": "not-a-guid", "mldeploy:azureResourceGroup": "rg",
                                   "mldeploy:azureLocation": "westeurope"})
    _raises(lambda: make_service("aci-bad", target="aci"), "ContainerInstanceService 'aci-bad'", "subscription_id")
    assert not [n for n in mocks.resources if n.startswith("aci-bad")], "nothing of the service may be registered"
