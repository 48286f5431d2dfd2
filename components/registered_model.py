"""RegisteredModel: a file or folder registered as a versioned model."""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import Resource
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from mldeploy.components._common import PACKAGE, Settings, args_class, is_output, resolve, takes_args, validate
from mldeploy.providers.model_registry.registry import content_hash, is_remote, materialize
from mldeploy.providers.model_registry.provider import ModelVersionProvider, model_folder
from mldeploy.providers.core.paths import local, portable


class RegisteredModelSpec(BaseModel):
    """Arguments of `RegisteredModel`, as `Model.register` takes them in Azure ML."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
    model_path: str
    """A file or a folder; relative to the Pulumi project."""
    tags: dict[str, str] = Field(default_factory=dict)
    description: str = ""

    @field_validator("model_path")
    @classmethod
    def _exists(cls, value: str, info: ValidationInfo) -> str:
        path = resolve(value, info.context["root"] if info.context else None)
        if not path.exists():
            raise ValueError(f"model path does not exist: {path}")
        if path.is_dir() and not any(p.is_file() for p in path.rglob("*")):
            raise ValueError(f"model folder is empty: {path}")
        return str(path)


class ModelVersion(Resource, module=PACKAGE, name="ModelVersion"):
    """One registered version in the model registry (dynamic resource)."""

    version: pulumi.Output[int]
    model_dir: pulumi.Output[str]
    content_hash: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(
            ModelVersionProvider(),
            name,
            {**props, "model_dir": None, "model_id": None, "present": None},
            opts,
        )


class RegisteredModel(pulumi.ComponentResource):
    """A model in the registry; new content becomes version N+1, shown in preview."""

    model_name: pulumi.Output[str]
    version: pulumi.Output[int]
    content_hash: pulumi.Output[str]

    @takes_args
    def __init__(
        self,
        resource_name: str,
        model_name: str,
        model_path: pulumi.Input[str],
        tags: pulumi.Input[dict[str, str]] | None = None,
        description: pulumi.Input[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        # Validate before registering anything, so bad input creates nothing.
        settings = Settings.load()
        args = validate(
            RegisteredModelSpec,
            "RegisteredModel",
            resource_name,
            {"model_name": model_name, "model_path": model_path, "tags": tags or {}, "description": description or ""},
        )
        owner = f"{settings.project}/{settings.stack}/{resource_name}"
        shared = is_remote(settings.registry_root)
        # The shared registry's services mount this machine's copy of the content (named by its hash).
        cache_dir = f"{settings.state_dir.rstrip('/')}/registry-cache" if shared else ""
        copy_here = shared and not pulumi.runtime.is_dry_run()

        def declared(path: str) -> tuple[str, str]:
            """(content hash, path relative to the project) of the model's file or folder."""
            digest = content_hash(path)
            if copy_here:
                # Services on this machine that roll without a new version still find the files. The one
                # file copy left in the program: a provider's check cannot tell an up from a preview, and
                # a preview must write nothing (docs/architecture.md).
                materialize(path, local(model_folder(settings.registry_root, args.model_name, 0, digest, cache_dir)), digest)
            return digest, portable(path)

        if is_output(args.model_path):  # another resource's output: hashed once the engine knows it
            found = args.model_path.apply(declared)
            digest: pulumi.Input[str] = found.apply(lambda f: f[0])
            model_path: pulumi.Input[str] = found.apply(lambda f: f[1])
        else:
            digest, model_path = declared(args.model_path)
        super().__init__(f"{PACKAGE}:index:RegisteredModel", resource_name, None, opts)
        self.cache_dir = cache_dir
        self.args = args
        self.digest = digest
        self.registry_root = settings.registry_root
        # `mldeploy:previewSmokeTest`: at preview a service loads this content before it is registered.
        self._smoke_test = (
            {"source": model_path, "content_hash": digest, "cache_dir": f"{settings.state_dir.rstrip('/')}/smoke-tests"}
            if settings.preview_smoke_test
            else None
        )
        self._version = ModelVersion(
            f"{resource_name}-version",
            {
                "model_name": args.model_name,
                "model_path": model_path,  # relative to the project: no checkout's path
                "content_hash": digest,
                # The provider's check plans it from the registry, so that preview shows "version N => N+1".
                "version": None,
                "tags": args.tags,
                "description": args.description,
                "registry_root": settings.registry_root,
                "owner": owner,
                **({"cache_dir": self.cache_dir} if shared else {}),
            },
            pulumi.ResourceOptions(parent=self),
        )
        self.model_name = pulumi.Output.from_input(args.model_name)
        self.version = self._version.version
        self.content_hash = self._version.content_hash
        self.register_outputs(
            {"model_name": self.model_name, "version": self.version, "content_hash": self.content_hash}
        )

    def service_entry(self) -> pulumi.Input[dict[str, Any]]:
        """What a service needs of this model: name, version and the version's folder.

        In preview the version the provider's check planned (the engine previews a
        dynamic resource's outputs from its checked inputs), so a service's diff names
        the version change; in an update the registered one, which carries the
        dependency. The folder is as the registry input holds it (relative to the
        project when inside it); providers find it with `mldeploy.providers.core.paths.local`
        when they apply.
        """
        name, root, digest, cache = self.args.model_name, self.registry_root, self.digest, self.cache_dir
        smoke_test = self._smoke_test if pulumi.runtime.is_dry_run() else None

        def entry(known: list[Any]) -> dict[str, Any]:
            version, content, smoke = int(known[0]), known[1], known[2]
            found = {"name": name, "version": version, "model_dir": model_folder(root, name, version, content, cache)}
            if smoke:
                # Preview only (not stored by an update): where the unregistered content is, for the
                # Service's smoke test. Diffs compare name, version and folder, never this.
                found["preview"] = dict(smoke)
            return found

        return pulumi.Output.all(self._version.version, digest, pulumi.Output.from_input(smoke_test)).apply(entry)


RegisteredModelArgs = args_class(RegisteredModel, "The arguments of `RegisteredModel` as one object: Azure ML's `Model.register`.")
