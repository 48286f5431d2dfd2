"""Targets for tests of the seam: no Docker, no port, rules unlike the local target's."""

from __future__ import annotations

from typing import Any

from pulumi.dynamic import CheckFailure
from pydantic import BaseModel, ConfigDict, Field

from mldeploy.providers.targets import Target, service_uris


class FakeArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    namespace: str = Field(default="default", pattern=r"^[a-z0-9-]+$")


class FakeTarget(Target):
    """A cloud-like target: a new size replaces (as ACI's), and it has no host port."""

    name = "fake"
    Args = FakeArgs
    REPLACE_ON = ("cpu_cores", "memory_gb", "namespace")
    ROLL_ON = ("environment_variables",)
    ROUTE_ON = ("auth_enabled",)
    OUTPUTS = ("group_id",)

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.checked: list[FakeArgs] = []

    def check_args(self, args: FakeArgs) -> list[CheckFailure]:
        self.checked.append(args)
        return [CheckFailure("namespace", "is reserved")] if args.namespace == "kube-system" else []

    def uris(self, props: Any) -> dict[str, str]:
        return service_uris(f"https://{props['namespace']}.fake.example", props["service_name"])

    def create(self, props: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create", props["service_name"]))
        return {**props, **self.uris(props), "state": "Healthy", "group_id": "g-1"}

    def update(self, olds: dict[str, Any], news: dict[str, Any], roll: bool) -> dict[str, Any]:
        self.calls.append(("update", news["service_name"], roll))
        return {**news, **self.uris(news), "state": "Healthy", "group_id": olds.get("group_id")}

    def read(self, props: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("read", props["service_name"]))
        return {**props, "state": "Missing"}

    def delete(self, props: dict[str, Any]) -> None:
        self.calls.append(("delete", props["service_name"]))


class ComposedTarget(Target):
    """A target whose component composes other Pulumi resources (as Kubernetes does)."""

    name = "composed"
    deployed_by = "ComposedService"
