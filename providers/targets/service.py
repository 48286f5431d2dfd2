"""Provider for a scoring web service: what every target shares, the rest is the target's.

Shared: the service's identity, its models and image, its keys' inputs and the
scoring and Swagger URIs it returns. Each target (`mldeploy.providers.targets`) adds its
own inputs, checks, update-or-replace rules and the backend calls.
"""

from __future__ import annotations

from typing import Any

from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult
from pydantic import BaseModel, ConfigDict, Field

from mldeploy.providers.core.paths import local, same_place
from mldeploy.providers.core.progress import say
from mldeploy.providers.gate.sample_check import gate_words
from mldeploy.providers.gate.smoke_test import smoke_test
from mldeploy.providers.rollouts.spec import Canary, check_rollout
from mldeploy.providers.rollouts.words import canary_words, held_weights, held_words
from mldeploy.providers.targets import TARGETS, Number, UnknownTarget, check_model, target_for

# A different name, target or stack is a different service: its URI changes.
REPLACE_ON = ("service_name", "target", "project", "stack")
# New code or new models need a new process on every target.
ROLL_ON = ("image_id", "models")
# Read when something else rolls (the image by its id; the entry script and the sample by the gate
# and the preview's words; the rollout by the roll), so alone they change nothing.
INERT = ("image_name", "startup_timeout_seconds", "entry_script", "sample_request", "rollout")
# A held split's or mirror's inputs are the target's (a target that can split puts them in ROUTE_ON).
# States found by refresh that need a new backend; "Orphaned" (leftovers of an
# interrupted roll next to a healthy backend) only needs the leftovers removed.
BROKEN_STATES = ("Missing", "Stopped", "Unhealthy")


class ServiceArgs(BaseModel):
    """The inputs every target checks the same way (a target's own: its `Args`)."""

    model_config = ConfigDict(extra="ignore")

    cpu_cores: Number = Field(gt=0)
    memory_gb: Number = Field(gt=0)
    models: list[Any] = Field(min_length=1)


def _merge(*groups: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(k for g in groups for k in g))


def rules(news: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(replace, roll, route) inputs: the shared rules plus the new target's."""
    try:
        target = target_for(news.get("target"))
    except UnknownTarget:
        return REPLACE_ON, ROLL_ON, ()  # check has failed already; the shared rules still hold
    return _merge(REPLACE_ON, target.REPLACE_ON), _merge(ROLL_ON, target.ROLL_ON), _merge(target.ROUTE_ON)


def inert(news: dict[str, Any]) -> tuple[str, ...]:
    """Inputs that change nothing on their own: the shared ones and the target's."""
    try:
        return _merge(INERT, target_for(news.get("target")).INERT)
    except UnknownTarget:
        return INERT


def path_inputs(news: dict[str, Any]) -> tuple[str, ...]:
    """The new target's inputs that hold a path (compared as places)."""
    try:
        return target_for(news.get("target")).PATHS
    except UnknownTarget:
        return ()


def same_models(old: Any, new: Any) -> bool:
    """The same models at the same versions, from the same folders (as places: see `mldeploy.providers.core.paths`)."""
    if not isinstance(old, list) or not isinstance(new, list) or len(old) != len(new):
        return old == new
    for o, n in zip(old, new):
        if not isinstance(o, dict) or not isinstance(n, dict):
            if o != n:
                return False
            continue
        if o.get("name") != n.get("name") or o.get("version") != n.get("version"):
            return False
        if not same_place(o.get("model_dir"), n.get("model_dir")):
            return False
    return True


def _differs(key: str, olds: dict[str, Any], news: dict[str, Any], paths: tuple[str, ...]) -> bool:
    old, new = olds.get(key), news.get(key)
    if key == "models":
        return not same_models(old, new)
    if key in paths:
        return not same_place(old, new)
    return old != new


def diff_service(olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
    """Replace, roll or reroute, as the shared rules and the target's say."""
    replace_on, roll_on, route_on = rules(news)
    paths = path_inputs(news)
    replaces = [k for k in replace_on if _differs(k, olds, news, paths)]
    changed = replaces + [k for k in roll_on + route_on if _differs(k, olds, news, paths)]
    if olds.get("state") not in (None, "Healthy"):
        changed.append("state")  # found broken or gone by refresh: the next up restores it
    elif _target_needs_roll(olds, news):
        changed.append("state")  # a backend of an older kind: the next up rolls it
    return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=True)


def _target_needs_roll(olds: dict[str, Any], news: dict[str, Any]) -> bool:
    try:
        target = target_for(news.get("target"))
    except UnknownTarget:
        return False
    return olds.get("target") == news.get("target") and target.needs_roll(olds)


def needs_roll(olds: dict[str, Any], news: dict[str, Any]) -> bool:
    _, roll_on, _ = rules(news)
    paths = path_inputs(news)
    return (
        olds.get("state") in BROKEN_STATES
        or _target_needs_roll(olds, news)
        or any(_differs(k, olds, news, paths) for k in roll_on)
    )


def sample_gate_words(news: dict[str, Any]) -> str | None:
    """What gates the next roll, in one line (the entry script is read here, in the provider)."""
    source = None
    if isinstance(news.get("entry_script"), str) and news["entry_script"]:
        try:
            source = local(news["entry_script"]).read_text(encoding="utf-8")
        except OSError:
            source = None
    return gate_words(news.get("sample_request"), source)


class ServiceProvider(ResourceProvider):
    """One component API, a backend per target (`mldeploy.providers.targets`)."""

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        _, failures = check_model(ServiceArgs, news)
        try:
            target = target_for(news.get("target"))
        except UnknownTarget as exc:
            failures.append(CheckFailure("target", str(exc)))
        else:
            if target.deployed_by:
                failures.append(CheckFailure("target", f"{target.name!r} services are deployed with {target.deployed_by}"))
            else:
                failures += target.check(news)
        own_mirror = news.get("target") in TARGETS and target_for(news.get("target")).mirrors_itself
        declared = {k: news.get(k) for k in ("rollout", "traffic") + (() if own_mirror else ("mirror_percent",))}
        if any(v is not None for v in declared.values()) and not failures:
            failures += [CheckFailure(f, reason) for f, reason in check_rollout(news.get("target"), declared)]
        rolls = bool(olds) and not failures and needs_roll(olds, news)
        # A target's own mirror (Azure ML's mirrorTraffic) is its roll's words, not a held mirror's.
        shared = {k: v for k, v in news.items() if k != "mirror_percent"} if own_mirror else news
        plan = None
        if not failures:
            plan, carried = target.roll_plan(olds, news, rolls)
            news = {**news, **carried}
        if plan:
            pass
        elif rolls and news.get("rollout"):
            plan = canary_words(Canary.model_validate(news["rollout"]))
        elif not failures and held_weights(shared) is not None and (rolls or not (olds or {}).get("candidate")):
            plan = held_words(shared)
        elif not failures and olds and olds.get("candidate") and held_weights(shared) is None:
            plan = "the held version takes all traffic (traffic and mirror_percent dropped)"
        if plan and olds:
            news = {**news, "rollout_plan": plan}
            say(f"{news.get('service_name')}: {plan}")
        words = sample_gate_words(news) if not failures and target.sample_gate and (not olds or needs_roll(olds, news)) else None
        if words:
            news = {**news, "sample_gate": words}
            say(f"{news.get('service_name')}: {words}")
        elif news.get("sample_request") and news.get("target") in TARGETS and not target_for(news.get("target")).sample_gate:
            say(f"{news.get('service_name')}: target {news.get('target')!r} sends no sample before traffic moves; sample_request is kept, not sent")
        if not failures:
            # `mldeploy:previewSmokeTest`: at preview only (the model entries carry their content then).
            words, smoke_failures = smoke_test(olds, news)
            failures += smoke_failures
            if words:
                news = {**news, "smoke_test": words}
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return diff_service(olds, news)

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = target_for(props["target"]).create(props)
        return CreateResult(f"{props['stack']}/{props['service_name']}", outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(target_for(news["target"]).update(olds, news, roll=needs_roll(olds, news)))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_, target_for(props["target"]).read(props))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        target_for(props["target"]).delete(props)
