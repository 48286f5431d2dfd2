"""Provider for a scoring web service; the target's backend does the work."""

from __future__ import annotations

from typing import Any

from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from providers.targets import TARGETS, backend_for

# A different name, target or stack is a different service: its URI changes.
REPLACE_ON = ("service_name", "target", "project", "stack")
# Inputs that need a new container (a rolling update).
ROLL_ON = ("image_id", "models", "cpu_cores", "memory_gb", "environment_variables", "state_dir")
# Inputs that only touch the front end (port, keys).
ROUTE_ON = ("port", "auth_enabled", "primary_key_version", "secondary_key_version", "max_request_bytes", "gateway_image")


def diff_service(olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
    """Name/target changes replace; everything else rolls or reroutes in place."""
    replaces = [k for k in REPLACE_ON if olds.get(k) != news.get(k)]
    changed = replaces + [k for k in ROLL_ON + ROUTE_ON if olds.get(k) != news.get(k)]
    if olds.get("state") not in (None, "Healthy"):
        changed.append("state")  # found broken or gone by refresh: the next up restores it
    return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=True)


# States found by refresh that need a new backend; "Orphaned" (leftovers of an
# interrupted roll next to a healthy backend) only needs the leftovers removed.
BROKEN_STATES = ("Missing", "Stopped", "Unhealthy")


def needs_roll(olds: dict[str, Any], news: dict[str, Any]) -> bool:
    return olds.get("state") in BROKEN_STATES or any(olds.get(k) != news.get(k) for k in ROLL_ON)


class ServiceProvider(ResourceProvider):
    """One component API, a backend per target (`providers.targets`)."""

    serialize_as_secret_always = False

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        if news.get("target") not in TARGETS:
            failures.append(CheckFailure("target", f"unknown target {news.get('target')!r}; known: {', '.join(TARGETS)}"))
        for key in ("cpu_cores", "memory_gb"):
            value = news.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                failures.append(CheckFailure(key, f"{key} must be greater than 0, got {value!r}"))
        port = news.get("port")
        if not isinstance(port, (int, float)) or not 1024 <= int(port) <= 65535:
            failures.append(CheckFailure("port", f"port must be between 1024 and 65535, got {port!r}"))
        if not news.get("models"):
            failures.append(CheckFailure("models", "a service needs at least one model"))
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return diff_service(olds, news)

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = backend_for(props["target"]).create(props)
        return CreateResult(f"{props['stack']}/{props['service_name']}", outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(backend_for(news["target"]).update(olds, news, roll=needs_roll(olds, news)))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_, backend_for(props["target"]).read(props))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        backend_for(props["target"]).delete(props)
