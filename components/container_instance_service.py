"""ContainerInstanceService: a scoring web service on the stack's compute target."""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import Resource
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mldeploy.components._common import PACKAGE, ArgsError, Settings, args_class, sample_request_input, slug, takes_args, validate
from mldeploy.components.inference_image import InferenceImage
from mldeploy.components.registered_model import RegisteredModel
from mldeploy.components.registry_credentials import RegistryCredentials, registry_credentials_for
from mldeploy.components.registry_image import RegistryImage
from mldeploy.providers.rollouts.spec import Canary, TrafficSplit, check_rollout
from mldeploy.providers.targets.service import ServiceProvider
from mldeploy.providers.targets import MAX_REQUEST_BYTES, TARGETS, ArgsInvalid, target_for

OUTPUTS = ("scoring_uri", "swagger_uri", "primary_key", "secondary_key", "state", "model_versions")


class ContainerInstanceServiceSpec(BaseModel):
    """Arguments of `ContainerInstanceService`, as Azure ML's deployment configuration takes them.

    Arguments of one target only (the local target's `port`) are its own:
    `Args` of `mldeploy.providers.targets.<target>`.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    service_name: str = Field(pattern=r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$")
    """3 to 32 characters: lowercase letters, digits and dashes; it is part of the scoring URI."""
    models: list[Any] = Field(min_length=1)
    image: Any
    cpu_cores: float = Field(default=1, gt=0)
    memory_gb: float = Field(default=1, gt=0)
    auth_enabled: bool = False
    target: str = "local"
    environment_variables: dict[str, Any] = Field(default_factory=dict)
    """Strings, or Pulumi outputs of strings; on ACI a secret one travels as a `secureValue`."""
    primary_key_version: int = Field(default=1, ge=1)
    """Bump to rotate the primary key alone (clients keep using the secondary meanwhile)."""
    secondary_key_version: int = Field(default=1, ge=1)
    max_request_bytes: int = Field(default=1_048_576, gt=0, le=MAX_REQUEST_BYTES)
    """At most 16 MiB: the front end holds a body in memory, never on disk."""
    startup_timeout_seconds: float = Field(default=180, gt=0)

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        if value not in TARGETS:
            raise ValueError(f"unknown target {value!r}; known: {', '.join(TARGETS)}")
        return value

    @field_validator("environment_variables")
    @classmethod
    def _environment(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name, v in value.items():
            if not isinstance(v, (str, pulumi.Output)):
                raise ValueError(f"environment_variables[{name!r}] must be a string or a Pulumi output, got {type(v).__name__}")
        return value

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[Any]) -> list[Any]:
        for m in value:
            if not isinstance(m, RegisteredModel):
                raise ValueError(f"models must be RegisteredModel resources, got {type(m).__name__}")
        names = [m.args.model_name for m in value]
        if len(set(names)) != len(names):
            raise ValueError(f"models must have distinct model names, got {names}")
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: Any) -> Any:
        if not isinstance(value, InferenceImage):
            raise ValueError(f"image must be an InferenceImage, got {type(value).__name__}")
        return value


def _rollout(rollout: Any, traffic: Any, mirror_percent: Any, target: str) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The canary, and a held split or mirror, as the provider gets them; a bad one names its field."""
    if rollout is not None and not isinstance(rollout, (Canary, dict)):
        raise ValueError(f"rollout: must be a Canary (from mldeploy.components import Canary), got {type(rollout).__name__}")
    if traffic is not None and not isinstance(traffic, (TrafficSplit, dict)):
        raise ValueError(f"traffic: must be a TrafficSplit or a dict like {{'current': 90, 'candidate': 10}}, got {type(traffic).__name__}")
    given = {
        "rollout": rollout.model_dump() if isinstance(rollout, Canary) else rollout,
        "traffic": traffic.model_dump() if isinstance(traffic, TrafficSplit) else traffic,
        "mirror_percent": mirror_percent,
    }
    problems = check_rollout(target, given)
    if problems:
        raise ValueError("; ".join(f"{field}: {reason}" for field, reason in problems))
    canary = Canary.model_validate(given["rollout"]).model_dump() if rollout is not None else None
    held = {k: v for k, v in (("traffic", given["traffic"]), ("mirror_percent", mirror_percent)) if v is not None}
    if "traffic" in held:
        held["traffic"] = TrafficSplit.model_validate(held["traffic"]).model_dump()
    return canary, held


async def _secret_names(env: dict[str, Any]) -> list[str]:
    """The names of `environment_variables` whose values are Pulumi secrets (known once they resolve)."""
    return sorted([name for name, v in env.items() if isinstance(v, pulumi.Output) and await v.is_secret()])


class Service(Resource, module=PACKAGE, name="Service"):
    """A running scoring service (dynamic resource)."""

    scoring_uri: pulumi.Output[str]
    swagger_uri: pulumi.Output[str]
    primary_key: pulumi.Output[str]
    secondary_key: pulumi.Output[str]
    state: pulumi.Output[str]
    model_versions: pulumi.Output[dict[str, int]]

    def __init__(
        self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None, target_outputs: tuple[str, ...] = ()
    ):
        outs = (*OUTPUTS, *target_outputs)
        super().__init__(ServiceProvider(), name, {**props, **{k: None for k in outs}}, opts)


class ContainerInstanceService(pulumi.ComponentResource):
    """Deploys models with an image; a new model version rolls it with no downtime."""

    scoring_uri: pulumi.Output[str]
    swagger_uri: pulumi.Output[str]
    primary_key: pulumi.Output[str]
    secondary_key: pulumi.Output[str]
    state: pulumi.Output[str]
    model_versions: pulumi.Output[dict[str, int]]

    @takes_args
    def __init__(
        self,
        resource_name: str,
        models: list[RegisteredModel],
        image: InferenceImage,
        cpu_cores: float = 1,
        memory_gb: float = 1,
        auth_enabled: bool = False,
        port: int | None = None,
        service_name: str | None = None,
        target: str | None = None,
        environment_variables: dict[str, str] | None = None,
        primary_key_version: int = 1,
        secondary_key_version: int = 1,
        max_request_bytes: int = 1_048_576,
        startup_timeout_seconds: float = 180,
        opts: pulumi.ResourceOptions | None = None,
        worker_count: int | None = None,
        sample_request: Any = None,
        sample_response: Any = None,
        ssl_enabled: bool = False,
        ssl_cert_pem_file: str | None = None,
        ssl_key_pem_file: str | None = None,
        ssl_cname: str | None = None,
        rollout: Canary | None = None,
        traffic: TrafficSplit | dict[str, int] | None = None,
        mirror_percent: int | None = None,
        warm_standby: bool | None = None,
    ):
        """`port` and `worker_count` are the local target's (`mldeploy.providers.targets.local.LocalArgs`;
        by default one scoring worker per whole core of `cpu_cores`); other targets refuse them.

        `sample_request` (a dict, or a JSON file) is the request a new backend must answer
        with a 200 before it gets traffic, and `sample_response` the answer to expect; the
        entry script's own `input_sample` is used when it is not given. A raw
        `run(raw_data)` script declares no sample: without `sample_request` it rolls on
        health alone.

        `ssl_enabled`, `ssl_cert_pem_file`, `ssl_key_pem_file` and `ssl_cname` are ACI's, as in
        `AciWebservice.deploy_configuration`: the front end serves HTTPS on 443 with that
        certificate, and the two files' contents are kept as Pulumi secrets.

        `rollout` (`Canary`, local target): a new version takes each step's share of live
        requests, and is promoted or rolled back on its own error rate and p99 as the gateway
        recorded them (docs/rollouts.md). Without it a roll moves all traffic at once, after
        the sample gate. `traffic` (`{"current": 90, "candidate": 10}`) and `mirror_percent`
        (a copy of that share of requests, answers discarded) hold a new version beside the
        current one until the program drops them; then it takes all traffic.

        `warm_standby` (local target): the next backend waits beside the live one with its
        libraries imported, so a model-only update hands it the new version instead of starting
        a container (a second idle server's memory; one-model services)."""
        settings = Settings.load()
        try:
            sample = sample_request_input(sample_request, sample_response)
            canary, held = _rollout(rollout, traffic, mirror_percent, target or settings.target)
        except ValueError as exc:
            raise ArgsError(f"ContainerInstanceService '{resource_name}': invalid arguments: {exc}") from None
        args = validate(
            ContainerInstanceServiceSpec,
            "ContainerInstanceService",
            resource_name,
            {
                "service_name": service_name or resource_name,
                "models": list(models or []),
                "image": image,
                "cpu_cores": cpu_cores,
                "memory_gb": memory_gb,
                "auth_enabled": auth_enabled,
                "target": target or settings.target,
                "environment_variables": environment_variables or {},
                "primary_key_version": primary_key_version,
                "secondary_key_version": secondary_key_version,
                "max_request_bytes": max_request_bytes,
                "startup_timeout_seconds": startup_timeout_seconds,
            },
        )
        own_inputs, target_outputs = self._target_inputs(
            resource_name, args, settings,
            {"port": port, "worker_count": worker_count, "warm_standby": warm_standby or None, "ssl_enabled": ssl_enabled or None, "ssl_cert_pem_file": ssl_cert_pem_file,
             "ssl_key_pem_file": ssl_key_pem_file, "ssl_cname": ssl_cname},
        )
        for k in ("ssl_certificate", "ssl_key"):
            if k in own_inputs:  # read from the PEM files: secrets from here on
                own_inputs[k] = pulumi.Output.secret(own_inputs[k])
        if args.target == "aci" and any(isinstance(v, pulumi.Output) for v in args.environment_variables.values()):
            own_inputs["secure_environment_variables"] = pulumi.Output.from_input(_secret_names(args.environment_variables))
        super().__init__(f"{PACKAGE}:index:ContainerInstanceService", resource_name, None, opts)
        entries = [m.service_entry() for m in args.models]
        pulled: list[pulumi.Resource] = []
        pulls = target_for(args.target).pulls_images
        if pulls:
            creds = registry_credentials_for(settings, f"{resource_name}-registry-credentials", self)
            images = self._create_registry_images(resource_name, args, settings, image, entries, creds, front=pulls == "with_front")
            own_inputs = {**own_inputs, "image_ref": images[0].image_ref}
            if pulls == "with_front":
                own_inputs["front_image_ref"] = images[1].image_ref
                if creds is not None:  # the target pulls with them (ACI: imageRegistryCredentials)
                    own_inputs.update(registry_server=creds.server, registry_username=creds.username,
                                      registry_password=pulumi.Output.secret(creds.password))
            pulled = list(images)
        self._service = Service(
            f"{resource_name}-service",
            {
                **own_inputs,  # the shared inputs below are not the target's to change
                "service_name": args.service_name,
                "target": args.target,
                "project": settings.project,
                "stack": settings.stack,
                "image_name": image.image_name,
                "image_id": image.image_id,
                "models": entries,
                "cpu_cores": args.cpu_cores,
                "memory_gb": args.memory_gb,
                "auth_enabled": args.auth_enabled,
                "environment_variables": args.environment_variables,
                "primary_key_version": args.primary_key_version,
                "secondary_key_version": args.secondary_key_version,
                "max_request_bytes": args.max_request_bytes,
                "startup_timeout_seconds": args.startup_timeout_seconds,
                # Read by the preview's words only (does run() declare a sample?); no rule compares it.
                "entry_script": image.entry_script_path,
                # Only when given, so a service without one keeps the inputs it had.
                **({"sample_request": sample} if sample is not None else {}),
                **({"rollout": canary} if canary is not None else {}),
                **held,
            },
            pulumi.ResourceOptions(
                parent=self,
                depends_on=[m._version for m in args.models] + [image._image] + pulled,
                additional_secret_outputs=["primary_key", "secondary_key"],  # registry_password is a secret input already
            ),
            target_outputs=target_outputs,
        )
        for key in OUTPUTS:
            setattr(self, key, getattr(self._service, key))
        if args.target == "aci":
            from mldeploy.providers.targets import aci

            warning = aci.plain_http_warning({**own_inputs, "auth_enabled": args.auth_enabled}, resource_name)
            if warning:
                pulumi.log.warn(warning, resource=self)
        self.register_outputs({k: getattr(self, k) for k in OUTPUTS})

    def _create_registry_images(
        self, resource_name: str, args: ContainerInstanceServiceSpec, settings: Settings, image: InferenceImage, entries: list[Any],
        creds: RegistryCredentials | None = None, front: bool = True,
    ) -> tuple[RegistryImage, ...]:
        """For targets that pull: the inference image plus a model layer, and the front end's nginx
        image; without `front`, the inference image alone (the target mounts the model itself)."""
        registry = f"{settings.image_registry}/mldeploy-{slug(settings.project)}-{slug(settings.stack)}"
        labels = {"mldeploy.managed": "true", "mldeploy.project": settings.project, "mldeploy.stack": settings.stack}
        # Pushes to a registry that wants credentials get them as a secret input.
        auth = {} if creds is None else {"registry_auth": pulumi.Output.secret(
            pulumi.Output.all(creds.server, creds.username, creds.password).apply(
                lambda a: {"server": a[0], "username": a[1], "password": a[2]}))}
        model_image = RegistryImage(
            f"{resource_name}-image",
            {
                "source_image": image.image_name,
                "source_image_id": image.image_id,
                "repository": f"{registry}/{args.service_name}",
                "models": entries if front else [],
                "labels": labels,
                **auth,
            },
            pulumi.ResourceOptions(parent=self, depends_on=[m._version for m in args.models] + [image._image]),
        )
        if not front:
            return (model_image,)
        front_image = RegistryImage(
            f"{resource_name}-front-image",
            {
                "source_image": settings.gateway_image,
                "source_image_id": "",
                "repository": f"{registry}/{args.service_name}-front",
                "models": [],
                "labels": {},
                **auth,
            },
            pulumi.ResourceOptions(parent=self),
        )
        return model_image, front_image

    @staticmethod
    def _target_inputs(
        resource_name: str, args: ContainerInstanceServiceSpec, settings: Settings, given: dict[str, Any]
    ) -> tuple[dict[str, Any], tuple[str, ...]]:
        """The target picks (and claims) its own inputs; its errors read as this component's."""
        target = target_for(args.target)
        problem = f"ContainerInstanceService '{resource_name}': invalid arguments: "
        if target.deployed_by:
            raise ArgsError(f"{problem}target: {args.target!r} services are deployed with {target.deployed_by}")
        try:
            own = target.service_inputs(
                {k: v for k, v in given.items() if v is not None},
                service_name=args.service_name,
                resource_name=resource_name,
                settings=settings,
            )
        except ArgsInvalid as exc:
            raise ArgsError(problem + str(exc)) from None
        # Before any resource is registered: a bad value creates nothing, even with `up --skip-preview`.
        shared = target.check_shared(
            {"cpu_cores": args.cpu_cores, "environment_variables": args.environment_variables}
        )
        if shared:
            raise ArgsError(problem + "; ".join(f"{f.property}: {f.reason}" for f in shared))
        return own, target.OUTPUTS


ContainerInstanceServiceArgs = args_class(ContainerInstanceService, "The arguments of `ContainerInstanceService` as one object: Azure ML's deployment configuration.")
