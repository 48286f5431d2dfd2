"""What every component shares: project settings, path rules, error reporting."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pulumi
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from mldeploy.providers.core.paths import local, portable, project_dir
from mldeploy.providers.core.settings import Settings as CoreSettings
from mldeploy.providers.targets.azure.arm import DEFAULT_ENDPOINT

PACKAGE = "mldeploy"
DEFAULT_BASE_IMAGE = "mldeploy/base:bookworm-py3.11"

M = TypeVar("M", bound=BaseModel)


class ArgsError(pulumi.RunError):
    """Bad component arguments; raised at preview, before anything changes."""


def project_root() -> Path:
    """Relative paths in args are relative to the Pulumi project (where Pulumi.yaml is)."""
    return project_dir()


def resolve(path: str, root: Path | None = None) -> Path:
    """Where a path given in args is on this machine (relative ones are under the project)."""
    return local(path, root)


class StackConfig(BaseModel):
    """The `mldeploy:` keys of a stack file, checked before anything is declared."""

    model_config = ConfigDict(extra="ignore")

    target: str = "local"
    baseImage: str = Field(default=DEFAULT_BASE_IMAGE, min_length=1)
    gatewayImage: str = Field(default=DEFAULT_BASE_IMAGE, min_length=1)
    stateDir: str = Field(default=".pulumi-state", min_length=1)
    registryPath: str = ""
    # The shared registry: `azblob://<container>[/<prefix>]?...` (providers/core/blob_store.py).
    registry: str = ""
    imageRegistry: str = Field(default="127.0.0.1:5000", pattern=r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[a-z0-9._/-]+)?$")
    # The ACI target's place in Azure (checked by the target, naming its field).
    azureSubscriptionId: str = ""
    azureResourceGroup: str = ""
    azureLocation: str = ""
    armEndpoint: str = DEFAULT_ENDPOINT
    azureMlWorkspace: str = ""  # the azureml target's workspace (checked by the target)
    # A registry that wants credentials: an ACR (listCredentials through ARM), or a username
    # with the secret mldeploy:imageRegistryPassword (read with get_secret, never here).
    acrName: str = Field(default="", pattern=r"^([a-zA-Z0-9]{5,50})?$")
    imageRegistryUsername: str = ""
    previewSmokeTest: bool = False

    @field_validator("target")
    @classmethod
    def _known_target(cls, value: str) -> str:
        from mldeploy.providers.targets import TARGETS

        if value not in TARGETS:
            raise ValueError(f"unknown target {value!r}; known: {', '.join(TARGETS)}")
        return value

    @field_validator("registry")
    @classmethod
    def _registry_url(cls, value: str) -> str:
        if not value:
            return value
        from mldeploy.providers.core.blob_store import BlobLocationError, parse_blob_url

        if not value.startswith("azblob://"):
            raise ValueError(f"{value!r}: an azblob://<container>[/<prefix>]?... URL (a folder goes in mldeploy:registryPath)")
        try:
            parse_blob_url(value)
        except BlobLocationError as exc:
            raise ValueError(str(exc)) from None
        return value


# Settings that an operator's environment fills in when the stack leaves them unset.
# One rule: the stack's own config wins; Pulumi.yaml declares these keys with an
# empty default, so empty means "unset", then the variable, then the built-in default.
ENV_FALLBACKS = {
    "stateDir": "MLDEPLOY_STATE_DIR",
    "registryPath": "MLDEPLOY_REGISTRY_PATH",
    "registry": "MLDEPLOY_REGISTRY",
    "baseImage": "MLDEPLOY_BASE_IMAGE",
    "gatewayImage": "MLDEPLOY_GATEWAY_IMAGE",
}
REGISTRY_KEYS = ("registry", "registryPath")
"""Two keys of one setting, the registry's place: the shared one (a URL) or a folder."""


@dataclass(frozen=True)
class Settings(CoreSettings):
    """Per-stack settings (`mldeploy.providers.core.settings.Settings`), as the program reads them."""

    @staticmethod
    def load() -> "Settings":
        cfg = pulumi.Config(PACKAGE)
        root = project_root()
        stack = pulumi.get_stack()
        raw: dict[str, str] = {}
        # registry and registryPath are one setting (where the registry is): the stack setting either
        # leaves both variables out.
        stack_sets_registry = any(cfg.get(k) for k in REGISTRY_KEYS)
        for key in StackConfig.model_fields:
            value = cfg.get(key)
            if key in ENV_FALLBACKS and not value and not (key in REGISTRY_KEYS and stack_sets_registry):
                value = os.environ.get(ENV_FALLBACKS[key]) or None
            if value is not None:
                raw[key] = value
        try:
            conf = StackConfig.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{PACKAGE}:{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            )
            raise ArgsError(f"stack config stacks/Pulumi.{stack}.yaml: {problems}") from None
        state_dir = resolve(conf.stateDir, root)
        registry = resolve(conf.registryPath, root) if conf.registryPath else state_dir / "registry"
        where = f"stack config stacks/Pulumi.{stack}.yaml"
        if conf.registry and conf.registryPath:
            raise ArgsError(
                f"{where}: {PACKAGE}:registry and {PACKAGE}:registryPath are both set (by the stack, or else by "
                f"MLDEPLOY_REGISTRY and MLDEPLOY_REGISTRY_PATH); keep one: the shared registry, or a folder"
            )
        for key, path in (("stateDir", state_dir), ("registryPath", registry)):
            if path.exists() and not path.is_dir() and not (key == "registryPath" and conf.registry):
                raise ArgsError(f"{where}: {PACKAGE}:{key}: {path} is a file, not a folder")
        return Settings(
            project=pulumi.get_project(),
            stack=stack,
            state_dir=portable(state_dir, root),
            registry_root=conf.registry or portable(registry, root),
            base_image=conf.baseImage,
            gateway_image=conf.gatewayImage,
            target=conf.target,
            image_registry=conf.imageRegistry,
            azure_subscription_id=conf.azureSubscriptionId,
            azure_resource_group=conf.azureResourceGroup,
            azure_location=conf.azureLocation,
            arm_endpoint=conf.armEndpoint,
            azure_ml_workspace=conf.azureMlWorkspace,
            acr_name=conf.acrName,
            image_registry_username=conf.imageRegistryUsername,
            preview_smoke_test=conf.previewSmokeTest,
        )


def _problems(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(args)"
        msg = err["msg"].removeprefix("Value error, ")
        problems.append(f"{field}: {msg}")
    return problems


def _late_model(model: type[M], late: frozenset[str]) -> type[M]:
    """`model` with the fields in `late` taken as they are (they are Outputs, checked once known)."""
    return create_model(  # type: ignore[call-overload,no-any-return]
        f"{model.__name__}Late", __base__=model, **{k: (Any, None) for k in late}
    )


def validate(model: type[M], kind: str, name: str, data: dict[str, Any], **context: Any) -> M:
    """Validate args with pydantic; fail with the resource and the field named.

    Plain values are checked now. A `pulumi.Output` is checked by the same model once it is
    known (preview, when the engine knows it; else up), with the same message; the args then
    hold the checked Output, so a resource that takes it fails on a bad value before it is made.
    """
    ctx = {"root": project_root(), **context}
    late = frozenset(k for k, v in data.items() if isinstance(v, pulumi.Output) and k in model.model_fields)
    target = _late_model(model, late) if late else model
    try:
        args = target.model_validate({k: v for k, v in data.items() if k not in late}, context=ctx)
    except ValidationError as exc:
        raise ArgsError(f"{kind} '{name}': invalid arguments: " + "; ".join(_problems(exc))) from None
    for key in late:
        object.__setattr__(args, key, data[key].apply(_checker(model, kind, name, key, ctx)))
    return args  # type: ignore[return-value]


def _checker(model: type[BaseModel], kind: str, name: str, key: str, ctx: dict[str, Any]) -> Any:
    def check(value: Any) -> Any:
        try:
            return model.__pydantic_validator__.validate_assignment(model.model_construct(), key, value, context=ctx).__dict__[key]
        except ValidationError as exc:
            raise ArgsError(f"{kind} '{name}': invalid arguments: " + "; ".join(_problems(exc))) from None

    return check


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()
"""An argument not given in an `args=` object: the component's own default applies."""


def args_class(component: type, doc: str) -> type:
    """`<Component>Args`: the component's arguments as one object, as pulumi-eks and pulumi-awsx take them.

    Built from the component's own signature, so the object and the keywords can never
    disagree. Each field takes a `pulumi.Input`; fields left out keep the component's defaults.
    """
    fields: list[Any] = []
    for p in inspect.signature(component.__init__).parameters.values():
        if p.name in ("self", "resource_name", "opts", "args") or p.name.startswith("_") or p.kind not in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
        ):
            continue
        required = p.default is inspect.Parameter.empty
        fields.append((p.name, p.annotation, dataclasses.field() if required else dataclasses.field(default=UNSET)))
    cls = dataclasses.make_dataclass(f"{component.__name__}Args", fields, kw_only=True)
    cls.__doc__ = doc
    cls.__module__ = component.__module__
    return cls


def takes_args(init: Any) -> Any:
    """Let a component's `__init__` take `args=<Component>Args(...)` as well as keywords (not both for one field)."""

    @functools.wraps(init)
    def wrapper(self: Any, resource_name: str, *positional: Any, args: Any = None, **keywords: Any) -> None:
        if args is not None:
            given = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if getattr(args, f.name) is not UNSET}
            both = sorted(set(given) & set(keywords))
            if both or positional:
                raise TypeError(f"{type(self).__name__} '{resource_name}': give {', '.join(both) or 'arguments'} "
                                "either in args= or as keywords, not both")
            keywords = {**given, **keywords}
        init(self, resource_name, *positional, **keywords)

    return wrapper


def is_output(value: Any) -> bool:
    """A value only the engine will know (an Output of another resource)."""
    return isinstance(value, pulumi.Output)


def slug(value: str) -> str:
    """Lowercase name safe for Docker repositories and container names."""
    return re.sub(r"[^a-z0-9_.-]+", "-", value.lower()).strip("-.") or "x"


def _json_file(value: Any, field: str) -> Any:
    path = resolve(str(value))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{field}: cannot read {path}: {exc.strerror or exc}") from None
    try:
        import json

        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{field}: {path} is not JSON: {exc}") from None


def sample_request_input(request: Any, response: Any = None) -> dict[str, Any] | None:
    """The service's `sample_request` (and expected answer) as the providers take it (JSON text), or None.

    `request` is the body to POST to /score: a dict or a list, or the path of a
    JSON file (as `az ml online-endpoint invoke --request-file` takes it).
    `response`, when given, is the answer to expect: any JSON value, or a
    `pathlib.Path` / a string ending in `.json` that names a file.
    """
    if request is None:
        if response is not None:
            raise ValueError("sample_response: needs sample_request (the request whose answer it is)")
        return None
    if isinstance(request, (str, os.PathLike)):
        body = _json_file(request, "sample_request")
    elif isinstance(request, (dict, list)):
        body = request
    else:
        raise ValueError(f"sample_request: a dict, a list, or the path of a JSON file, got {type(request).__name__}")
    import json

    try:
        json.dumps(body, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"sample_request: not JSON-serialisable: {exc}") from None
    # As JSON text: the engine turns every number into a float, and the request must go as written.
    out: dict[str, Any] = {"body": json.dumps(body)}
    if response is not None:
        if isinstance(response, os.PathLike) or (isinstance(response, str) and response.endswith(".json")):
            response = _json_file(response, "sample_response")
        try:
            out["response"] = json.dumps(response, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"sample_response: not JSON-serialisable: {exc}") from None
    return out
