"""Provider for a service's two keys, for targets whose front end is not ours to run.

Keys are made once and kept in the state as secrets. Bumping one key's version
rotates that key alone, so clients move to the other key meanwhile, as with
Azure ML's `regen_key("Primary")`.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable

from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ResourceProvider, UpdateResult

KINDS = ("primary", "secondary")


def new_key() -> str:
    return secrets.token_urlsafe(32)


def rotate(olds: dict[str, Any] | None, news: dict[str, Any], make: Callable[[], str] = new_key) -> dict[str, str]:
    """Keep each key whose version did not change; make the others."""
    olds = olds or {}
    keys = {}
    for which in KINDS:
        old_key = olds.get(f"{which}_key")
        same = olds.get(f"{which}_key_version") == news.get(f"{which}_key_version")
        keys[f"{which}_key"] = old_key if old_key and same else make()
    return keys


def diff_keys(olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
    changed = [f"{w}_key_version" for w in KINDS if olds.get(f"{w}_key_version") != news.get(f"{w}_key_version")]
    return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)


class ServiceKeysProvider(ResourceProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        for which in KINDS:
            value = news.get(f"{which}_key_version")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
                failures.append(CheckFailure(f"{which}_key_version", f"must be an integer >= 1, got {value!r}"))
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return diff_keys(olds, news)

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(f"keys-{secrets.token_hex(4)}", {**props, **rotate(None, props)})

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult({**news, **rotate(olds, news)})
