"""One source per rule (issue 19, item 2): the provider's diff and the Markdown review read the same rules.

Every input that a Service target's rules name is changed alone: the diff must
call it a change (and a replacement exactly when the rule says replace), and
the review must say something about it. A property added to a rule and not to
the words, or the other way round, fails here.
"""

from __future__ import annotations

from typing import Any

import pytest

from mldeploy.providers.targets.service import diff_service, rules
from mldeploy.providers.targets import TARGETS, target_for
from preview_markdown import describe_service

SERVICE_TARGETS = [name for name in TARGETS if target_for(name).deployed_by is None]


def base(target: str) -> dict[str, Any]:
    return {
        "service_name": "svc", "target": target, "project": "p", "stack": "s", "image_id": "sha256:a",
        "models": [{"name": "m", "version": 1, "model_dir": "reg/m/1"}], "cpu_cores": 1.0, "memory_gb": 1.0,
        "environment_variables": {}, "auth_enabled": True, "primary_key_version": 1, "secondary_key_version": 1,
        "port": 21000, "max_request_bytes": 1048576, "state": "Healthy",
    }


def changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, dict):
        return {**value, "added": "x"}
    if isinstance(value, list):
        return [{"name": "m", "version": 2, "model_dir": "reg/m/2"}]
    return f"{value or ''}-changed"


@pytest.mark.parametrize("target", SERVICE_TARGETS)
def test_every_rule_input_is_diffed_and_described(target: str) -> None:
    replace_on, roll_on, route_on = rules({"target": target})
    assert replace_on and roll_on, "every Service target has rules"
    for key in dict.fromkeys(replace_on + roll_on + route_on):
        old = {**base(target), key: base(target).get(key, "before")}
        new = {**old, key: changed(old[key])}
        new.pop("state")
        diff = diff_service(old, new)
        assert diff.changes, f"{target}: a change of {key} is no change to the diff"
        assert (key in diff.replaces) == (key in replace_on), f"{target}: {key} replace rule"
        words = describe_service(old, new)
        assert words, f"{target}: the review says nothing of a change of {key}"


def test_an_input_in_no_rule_changes_nothing_and_says_nothing() -> None:
    old = base("local")
    new = {**old, "sample_gate": "words only"}
    assert not diff_service(old, new).changes
    assert describe_service(old, new) == []
