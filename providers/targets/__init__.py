"""Compute targets: what each one takes, checks, and does with a change.

A target is one module here that exports `TARGET`, an instance of a `Target`
subclass, and one line in `TARGETS`. The Service provider (`mldeploy.providers.targets.service`)
keeps what every target shares and hands everything else to the target named
in its inputs. How to add one: README.md beside this file.
"""

from __future__ import annotations

import importlib
from typing import Annotated, Any, ClassVar, Mapping, TypeVar

from pulumi.dynamic import CheckFailure
from pulumi.runtime import rpc
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from mldeploy.providers.front.gateway_config import MAX_BODY_LIMIT as MAX_REQUEST_BYTES  # what every front end holds
from mldeploy.providers.core.naming import service_path
from mldeploy.providers.core.settings import Settings

# Name -> the module that exports its TARGET. Modules load on first use, so
# validating stack config does not import a target's clients.
TARGETS: dict[str, str | Target] = {
    "local": "mldeploy.providers.targets.local",
    "kubernetes": "mldeploy.providers.targets.kubernetes",
    "iotedge": "mldeploy.providers.targets.iotedge",
    "aci": "mldeploy.providers.targets.aci",
    "azureml": "mldeploy.providers.targets.azureml",
}


M = TypeVar("M", bound=BaseModel)


class UnknownTarget(ValueError):
    """A target name that is not in `TARGETS`."""


class ArgsInvalid(ValueError):
    """Bad target arguments at program time; the component reports them as its own."""

    def __init__(self, failures: list[CheckFailure]):
        self.failures = failures
        super().__init__("; ".join(f"{f.property}: {f.reason}" for f in failures))


def _json_number(value: Any) -> Any:
    # Providers get every number as a float; a string or a bool is a mistake upstream.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number, got {value!r}")
    return value


Number = Annotated[float, BeforeValidator(_json_number)]
"""A number as providers receive it (no strings, no bools)."""
WholeNumber = Annotated[int, BeforeValidator(_json_number)]
"""An integer as providers receive it: 8080.0 is 8080, 8080.5 is an error."""


def failures_from(exc: ValidationError) -> list[CheckFailure]:
    """pydantic's errors as Pulumi check failures, one per field."""
    failures = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(args)"
        reason = err["msg"].removeprefix("Value error, ")
        if err["type"] != "missing" and "got " not in reason:
            reason += f", got {err['input']!r}"
        failures.append(CheckFailure(field, reason))
    return failures


def check_model(model: type[M], news: Mapping[str, Any]) -> tuple[M | None, list[CheckFailure]]:
    """Validate the inputs `model` names; inputs still unknown at preview are not judged.

    The model comes back only when every one of its inputs is known and valid.
    """
    unknown = {k for k in model.model_fields if news.get(k) == rpc.UNKNOWN}
    data = {k: news[k] for k in model.model_fields if k in news and k not in unknown}
    try:
        args = model.model_validate(data)
    except ValidationError as exc:
        return None, [f for f in failures_from(exc) if f.property.split(".")[0] not in unknown]
    return (None if unknown else args), []


def validate_args(model: type[M], data: Mapping[str, Any]) -> M:
    """`model` built from `data`, or `ArgsInvalid` naming each bad field."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise ArgsInvalid(failures_from(exc)) from None


SERVER_SETTINGS: dict[str, str] = {
    "AZUREML_MODEL_DIR": "the folder the service mounts its models in",
    "AZUREML_ENTRY_SCRIPT": "the image's entry script",
    "WORKER_COUNT": "the worker count (the `worker_count` argument sets it)",
    "SERVER_PORT": "the port the scoring server listens on",
    "HEALTH_PORT": "the scoring server's health port",
    "SEPERATE_HEALTH_ENDPOINT": "a second listening port for health",
    "MLDEPLOY_BIND_HOST": "the address the scoring server binds",
    "MLDEPLOY_BIND_SOCKET": "the socket the scoring server binds",
    "SERVICE_NAME": "the service name in the Swagger document",
    "SERVICE_PATH_PREFIX": "the scoring paths in the Swagger document",
}
"""Environment variables the scoring server's own settings come from: a service sets
them, so `environment_variables` may not (it would break or silently lose them)."""


def check_environment(env: Any, reserved: Mapping[str, str] = SERVER_SETTINGS) -> list[CheckFailure]:
    """One failure per `environment_variables` entry that would override a server setting."""
    if not isinstance(env, Mapping):
        return []
    return [
        CheckFailure(
            "environment_variables",
            f"{name} is set by the service itself ({reserved[name]}) and cannot be overridden; remove it",
        )
        for name in sorted(env)
        if name in reserved
    ]


def service_uris(origin: str, service_name: str) -> dict[str, str]:
    """Every target serves Azure ML's paths; only the origin (scheme, host, port) is its own."""
    base = f"{origin}{service_path(service_name)}"
    return {"scoring_uri": f"{base}/score", "swagger_uri": f"{base}/swagger.json"}


class NoArgs(BaseModel):
    """A target that takes nothing beyond the shared inputs."""

    model_config = ConfigDict(extra="forbid")


class Target:
    """What one compute target knows. Subclass it in `providers/targets/<name>.py`.

    The rule tuples name Service inputs; the shared ones (`mldeploy.providers.targets.service`)
    are added to them. An input in none of them changes nothing when it changes.
    """

    name: ClassVar[str]
    Args: ClassVar[type[BaseModel]] = NoArgs
    """The target's own inputs; `check` validates them and names the bad field."""
    REPLACE_ON: ClassVar[tuple[str, ...]] = ()
    """A change makes a new service (deleted first: same name, same URI)."""
    ROLL_ON: ClassVar[tuple[str, ...]] = ()
    """A change needs new backends (a rolling update)."""
    ROUTE_ON: ClassVar[tuple[str, ...]] = ()
    """A change only touches the route or front end, in place."""
    INERT: ClassVar[tuple[str, ...]] = ()
    """Inputs a change of which does nothing on its own (read when something else rolls, or words
    only). Every input the target sends is in exactly one of the four tuples: a test says so."""
    OUTPUTS: ClassVar[tuple[str, ...]] = ()
    """Outputs beyond the shared ones that the state keeps (what `read` and `delete` need)."""
    PATHS: ClassVar[tuple[str, ...]] = ()
    """Inputs that hold a path, relative to the project (`mldeploy.providers.core.paths`): diffs compare
    them as places, so where a checkout lives changes nothing; backends find them with
    `mldeploy.providers.core.paths.local`."""
    pulls_images: ClassVar[str | None] = None
    """How the target's platform gets the images. None: from this machine's Docker.
    "with_front" (ACI): the component pushes the scoring image with its model layer and the front
    end's image to the stack's registry, and passes `image_ref`, `front_image_ref` and the
    registry's credentials, which the platform pulls with. "image_only" (Azure ML): the scoring
    image alone, without a model layer (the platform mounts the model asset) and without
    credentials (the platform pulls from its own registry with its own identity); `image_ref` only."""
    sample_gate: ClassVar[bool] = False
    """True: a new backend must answer a sample before it gets traffic (`mldeploy.providers.gate.sample_check`)."""
    mirrors_itself: ClassVar[bool] = False
    """True: `mirror_percent` is the target's own argument, checked by its `Args` (Azure ML's
    `mirrorTraffic`), not refused as a split the target cannot make."""
    deployed_by: ClassVar[str | None] = None
    """None: the Service resource runs it. Otherwise the component that composes the
    target's own Pulumi resources (Kubernetes: `AksService`), named in errors."""

    def check(self, news: Mapping[str, Any]) -> list[CheckFailure]:
        """The target's inputs, as the provider got them; never raises."""
        args, failures = check_model(self.Args, news)
        return failures if args is None else failures + self.check_args(args)

    def check_args(self, args: Any) -> list[CheckFailure]:
        """Rules across fields that the model alone does not say."""
        return []

    def check_shared(self, inputs: Mapping[str, Any]) -> list[CheckFailure]:
        """The target's rules on shared inputs (`cpu_cores`, `environment_variables`):
        run by the component at program time (so a bad value creates nothing, even
        with `up --skip-preview`) and by the target's `check`. Never raises."""
        return []

    def needs_roll(self, olds: Mapping[str, Any]) -> bool:
        """True when the running backend is of a kind this release no longer runs
        (the next `up` rolls it, and its preview says so)."""
        return False

    def service_inputs(
        self, given: Mapping[str, Any], *, service_name: str, resource_name: str, settings: Settings
    ) -> dict[str, Any]:
        """The target's own Service inputs at program time, from the user's target
        arguments and the stack's settings. No I/O; raises `ArgsInvalid`."""
        return validate_args(self.Args, given).model_dump()

    def roll_plan(self, olds: Mapping[str, Any], news: Mapping[str, Any], rolls: bool) -> tuple[str | None, dict[str, Any]]:
        """At check: the roll the next `up` makes, in the target's own words, for the preview's
        `rollout_plan` (None: the shared words, if any), and inputs to carry for the next preview's
        words (check sees old inputs, not outputs). No I/O."""
        return None, {}

    def change_words(self, old: Mapping[str, Any], new: Mapping[str, Any], replaced: bool) -> list[str]:
        """What a change costs on this target, in the review's words, beyond the shared ones (its preview words)."""
        return []

    def uris(self, props: Mapping[str, Any]) -> dict[str, str]:
        raise NotImplementedError(f"target {self.name!r} does not say its URIs")

    def _not_here(self) -> NotImplementedError:
        return NotImplementedError(f"target {self.name!r} is deployed by {self.deployed_by}, not by the Service resource")

    # The backend: the only I/O. Each returns the outputs to store (inputs included).
    def create(self, props: dict[str, Any]) -> dict[str, Any]:
        raise self._not_here()

    def update(self, olds: dict[str, Any], news: dict[str, Any], roll: bool) -> dict[str, Any]:
        raise self._not_here()

    def read(self, props: dict[str, Any]) -> dict[str, Any]:
        raise self._not_here()

    def delete(self, props: dict[str, Any]) -> None:
        raise self._not_here()


def target_for(name: Any) -> Target:
    """The registered target; `UnknownTarget` names the known ones."""
    entry = TARGETS.get(name) if isinstance(name, str) else None
    if entry is None:
        raise UnknownTarget(f"unknown target {name!r}; known: {', '.join(TARGETS)}")
    target = entry if isinstance(entry, Target) else importlib.import_module(entry).TARGET
    if not isinstance(target, Target) or target.name != name:
        raise TypeError(f"{entry}.TARGET must be a Target named {name!r}")
    return target
