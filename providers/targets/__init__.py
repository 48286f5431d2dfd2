"""Compute targets. Each backend turns the same service inputs into a running service.

Only `local` (Docker on this machine, as Azure ML's local web service) exists
today; ACI, AKS and IoT Edge backends slot in here with the same four calls.
"""

from __future__ import annotations

from typing import Any, Protocol

TARGETS = ("local",)


class Backend(Protocol):
    def create(self, props: dict[str, Any]) -> dict[str, Any]: ...
    def update(self, olds: dict[str, Any], news: dict[str, Any], roll: bool) -> dict[str, Any]: ...
    def read(self, props: dict[str, Any]) -> dict[str, Any]: ...
    def delete(self, props: dict[str, Any]) -> None: ...


def backend_for(target: str) -> Backend:
    if target == "local":
        from providers.targets.local import LocalBackend

        return LocalBackend()
    raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
