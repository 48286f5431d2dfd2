"""The pull-request renderer says what changes in words, and update versus replace."""

from __future__ import annotations

from preview_markdown import describe_image, describe_model, describe_service, render

MODEL_URN = "urn:pulumi:dev::mldeploy::mldeploy:index:RegisteredModel$pulumi-python:dynamic/mldeploy:ModelVersion::ridge-version"
SERVICE_URN = "urn:pulumi:dev::mldeploy::mldeploy:index:ContainerInstanceService$pulumi-python:dynamic/mldeploy:Service::aciservice-service"


def model(version: int, digest: str, **kw) -> dict:
    return {"model_name": "sklearn_regression_model", "version": version, "content_hash": digest, "tags": {}, **kw}


def service(**kw) -> dict:
    base = {
        "service_name": "aciservice", "target": "local", "cpu_cores": 1, "memory_gb": 1, "port": 26847,
        "auth_enabled": True, "image_id": "sha256:a", "primary_key_version": 1, "secondary_key_version": 1,
        "models": [{"name": "sklearn_regression_model", "version": 3, "model_dir": "/r/3"}], "state": "Healthy",
    }
    return {**base, **kw}


def test_model_version_bump_in_words() -> None:
    assert describe_model(model(3, "a"), model(4, "b")) == ["model `sklearn_regression_model` version 3 → 4 (new content)"]
    assert describe_model(model(3, "a"), model(3, "a", tags={"x": "1"})) == ["tags {} → {'x': '1'}"]


def test_service_changes_in_words() -> None:
    new = service(cpu_cores=2, models=[{"name": "sklearn_regression_model", "version": 4, "model_dir": "/r/4"}])
    new.pop("state")
    assert describe_service(service(), new) == [
        "rolls to model `sklearn_regression_model` version 3 → 4",
        "cpu_cores 1 → 2",
    ]
    rotated = service(primary_key_version=2)
    assert describe_service(service(), rotated) == ["rotates the primary key (version 1 → 2)"]
    renamed = service(service_name="other")
    assert "replaced" in describe_service(service(), renamed)[0]
    env = describe_service(service(environment_variables={"A": "secret-value"}), service(environment_variables={"A": "x"}))
    assert env == ["environment variables changed: `A`"], "values are not shown, only names"


def test_image_rebuild_names_the_cause() -> None:
    old = {"base_image": "b", "source_hash": "s1", "dependency_hash": "d", "entry_script": "score.py", "build_hash": "h1"}
    new = {**old, "source_hash": "s2", "build_hash": "h2"}
    assert describe_image(old, new) == ["source directory changed", "image is rebuilt"]


def test_render_marks_update_and_replace_and_skips_unchanged() -> None:
    steps = [
        {"op": "update", "type": "pulumi-python:dynamic/mldeploy:ModelVersion", "urn": MODEL_URN, "old": model(3, "a"), "new": model(4, "b")},
        {"op": "replace", "type": "pulumi-python:dynamic/mldeploy:Service", "urn": SERVICE_URN, "old": service(), "new": service(service_name="svc2")},
        {"op": "delete-replaced", "type": "pulumi-python:dynamic/mldeploy:Service", "urn": SERVICE_URN, "old": service(), "new": {}},
        {"op": "same", "type": "pulumi-python:dynamic/mldeploy:Image", "urn": "urn:x::scoring-image", "old": {}, "new": {}},
        {"op": "update", "type": "mldeploy:index:RegisteredModel", "urn": "urn:x::ridge", "old": {}, "new": {}},
    ]
    md = render("dev", steps, {"update": 1, "replace": 1, "same": 5})
    assert "| ✏️ update | RegisteredModel `ridge` | model `sklearn_regression_model` version 3 → 4 (new content) |" in md
    assert "| ♻️ replace | ContainerInstanceService `aciservice` |" in md
    assert md.count("ContainerInstanceService") == 1
    assert "**1 to replace, 1 to update**; 5 unchanged." in md


def test_render_without_changes() -> None:
    assert "No changes." in render("dev", [], {"same": 7})


def test_registry_image_changes_in_words() -> None:
    from preview_markdown import describe_registry_image

    old = {"repository": "r/svc", "source_image_id": "sha256:a", "models": [{"name": "m", "version": 1}],
           "registry_auth": "[secret]"}
    assert describe_registry_image(old, {**old, "models": [{"name": "m", "version": 2}]}) == [
        "model layer: `m` version 1 → 2", "pushes a new digest of `r/svc`"]
    assert describe_registry_image(old, {**old, "registry_auth": "[secret2]"}) == [
        "new registry credentials, kept for later reads and deletes; nothing is pushed"]
    assert describe_registry_image({**old, "present": False}, old) == [
        "missing from the registry (found by refresh): pushes `r/svc` again"]
    assert describe_registry_image(old, {**old, "repository": "r/other"}) == ["pushes `r/other` (was `r/svc`)"]


def test_a_deployment_whose_images_are_unknown_at_preview_is_not_called_a_roll() -> None:
    from preview_markdown import UNKNOWN, describe_deployment

    def dep(image: str, version: str = "1") -> dict:
        return {"metadata": {"namespace": "ml", "name": "svc"}, "spec": {"replicas": 1, "template": {
            "metadata": {"annotations": {"mldeploy.azureml.net/model.m": version}},
            "spec": {"containers": [{"name": "scoring", "image": image}]}}}}

    # Only new registry credentials: up decides, and the words say so.
    assert describe_deployment(dep("r/svc@sha256:1"), dep(UNKNOWN), images_change=False) == [
        "`ml/svc`: image references are known only at up; the pods roll only if a digest changes"]
    # A new inference image leaves the same unknown reference, and that rolls.
    assert describe_deployment(dep("r/svc@sha256:1"), dep(UNKNOWN))[0].startswith("rolls `ml/svc`")
    words = describe_deployment(dep("r/svc@sha256:1"), dep(UNKNOWN, "2"))
    assert words[0].startswith("rolls `ml/svc`") and "model `m` version 1 → 2" in words


def test_at_scale_edge_deployments_in_words() -> None:
    from preview_markdown import describe_edge_deployment

    def props(version: int, priority: int = 0, condition: str = "tags.env='prod'") -> dict:
        return {"device": {"device_id": "edge1", "backend": "iothub"}, "target_condition": condition, "priority": priority,
                "module_versions": {"scorer": version}, "modules": [{"name": "scorer", "models": {"m": version}}]}

    assert describe_edge_deployment(props(1), props(1, priority=5)) == [
        "priority 0 → 5", "the same configuration is updated in place"]
    assert describe_edge_deployment(props(1), props(1, condition="tags.env='test'")) == [
        "target condition tags.env='prod' → tags.env='test'", "the same configuration is updated in place"]
    drifted = describe_edge_deployment({**props(1), "drift": {"configuration": "deleted on the hub"}}, props(1))
    assert drifted == ["found by refresh: configuration deleted on the hub: restored"]
    words = describe_edge_deployment(props(1), props(2))
    assert words == ["module `scorer` image → v2; model `m` version 1 → 2",
                     "a new configuration for the devices where `tags.env='prod'` (an at-scale configuration, priority 0) "
                     "replaces the old one, which is deleted"]


def test_render_hedges_a_roll_only_when_every_image_keeps_its_digest() -> None:
    from preview_markdown import UNKNOWN

    def dep(image: str) -> dict:
        return {"metadata": {"namespace": "ml", "name": "svc"},
                "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "scoring", "image": image}]}}}}

    image = {"repository": "r/svc", "source_image_id": "sha256:a", "models": [], "registry_auth": "[secret]"}
    deployment = {"op": "update", "type": "kubernetes:apps/v1:Deployment", "urn": "urn:x::svc-deployment",
                  "old": dep("r/svc@sha256:1"), "new": dep(UNKNOWN)}

    def step(new_image: dict) -> dict:
        return {"op": "update", "type": "pulumi-python:dynamic/mldeploy:RegistryImage", "urn": "urn:x::svc-image",
                "old": image, "new": new_image}

    rotated = render("s", [step({**image, "registry_auth": "[secret2]"}), deployment], {"update": 2})
    assert "the pods roll only if a digest changes" in rotated and "rolls `ml/svc`" not in rotated
    rebuilt = render("s", [step({**image, "source_image_id": UNKNOWN}), deployment], {"update": 2})
    assert "rolls `ml/svc`" in rebuilt and "only if a digest changes" not in rebuilt


def test_the_review_says_what_gates_a_roll() -> None:
    words = "the entry script declares no input sample; the roll is gated on health only"
    bump = service(models=[{"name": "sklearn_regression_model", "version": 4, "model_dir": "/r/4"}], sample_gate=words)
    assert describe_service(service(), bump) == ["rolls to model `sklearn_regression_model` version 3 → 4", words]
    created = describe_service({}, bump)
    assert created[1] == words
    # Nothing rolls: the words alone change nothing.
    assert describe_service(service(), service(sample_gate=words)) == []


def test_the_target_says_what_a_change_costs_on_it() -> None:
    """ACI's words come from the ACI package (`change_words`), chosen by its own replace rule."""
    old = {"service_name": "svc", "target": "aci", "project": "p", "stack": "s", "image_id": "sha256:a", "cpu_cores": 1.0,
           "memory_gb": 1.0, "environment_variables": {}, "models": [], "state": "Healthy"}
    resized = describe_service(old, {**old, "cpu_cores": 2.0})
    assert resized[-1].startswith("ACI cannot change this in place: the container group is deleted and created again")
    env = describe_service(old, {**old, "environment_variables": {"A": "1"}})
    assert env[-1].startswith("ACI restarts the container group in place")
    local = describe_service({**old, "target": "local"}, {**old, "target": "local", "cpu_cores": 2.0})
    assert not any("ACI" in w for w in local)
