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
from test_components_unit import no_docker, project  # noqa: F401 - fixtures

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


# ---------------------------------------------------------------- every input the component sends has one rule


def _service_inputs(target: str, **kw: Any) -> dict[str, Any]:
    """The Service resource's inputs, as ContainerInstanceService sends them for `target` (under mocks)."""
    import pulumi

    from test_components_unit import make_image, make_model
    from test_kubernetes_unit import K8sMocks

    mocks = K8sMocks()
    pulumi.runtime.set_mocks(mocks, project="proj", stack="dev", preview=False)
    config = {"mldeploy:target": target}
    if target in ("aci", "azureml"):
        config.update({"mldeploy:azureSubscriptionId": "00000000-0000-0000-0000-000000000000",
                       "mldeploy:azureResourceGroup": "rg-ml", "mldeploy:azureLocation": "westeurope",
                       "mldeploy:azureMlWorkspace": "ws-ml"})
    if target == "azureml":  # Azure pulls the environment's image from the workspace's registry
        config["mldeploy:imageRegistry"] = "mlws.azurecr.io"
    pulumi.runtime.set_all_config(config, [])

    @pulumi.runtime.test
    def program() -> Any:
        from mldeploy.components import ContainerInstanceService

        svc = ContainerInstanceService("svc", models=[make_model()], image=make_image(), auth_enabled=True, **kw)
        return svc.state

    try:
        program()
    finally:
        pulumi.runtime.set_all_config({}, [])
    return mocks.resources["svc-service"][1]


@pytest.mark.parametrize("target", ["local", "aci", "azureml"])
def test_every_input_a_service_sends_has_exactly_one_rule(target: str, project: Any, tmp_path: Any) -> None:
    """A property added to what the component sends, and to no rule, fails here (and so one the rules name twice)."""
    import pulumi

    from mldeploy.providers.targets.service import inert, rules
    from tls_certs import make_ca_and_cert

    env = {"A": "1", "TOKEN": pulumi.Output.secret("t0ps3cret")}
    if target == "aci":
        pem = make_ca_and_cert(tmp_path / "tls")
        kw = {"environment_variables": env, "ssl_enabled": True, "ssl_cname": "svc.example.org",
              "ssl_cert_pem_file": str(pem["cert"]), "ssl_key_pem_file": str(pem["key"])}
    elif target == "azureml":
        kw = {"environment_variables": env, "sample_request": {"data": [[1.0]]}}
    else:
        kw = {"environment_variables": env, "sample_request": {"data": [[1.0]]}, "worker_count": 1}
    inputs = _service_inputs(target, **kw)
    replace_on, roll_on, route_on = rules(inputs)
    groups = {"replace": set(replace_on), "roll": set(roll_on), "route": set(route_on), "inert": set(inert(inputs))}
    outputs = set(target_for(target).OUTPUTS) | {"scoring_uri", "swagger_uri", "primary_key", "secondary_key", "state", "model_versions"}
    sent = sorted(k for k, v in inputs.items() if k not in outputs and v is not None and k != "__provider")
    assert {"cpu_cores", "models", "image_id", "environment_variables"} <= set(sent), sent
    for key in sent:
        found = [g for g, keys in groups.items() if key in keys]
        assert len(found) == 1, f"{target}: input {key!r} is in {found or 'no rule'}; give it exactly one"


def test_inert_inputs_change_nothing_alone() -> None:
    from mldeploy.providers.targets.service import inert

    old = base("local")
    for key in inert(old):
        new = {**old, key: changed(old.get(key, "before"))}
        assert not diff_service(old, new).changes, f"{key} is inert but the diff calls it a change"


# ---------------------------------------------------------------- Kubernetes: the rules say what the renderers do

K8S_CHANGED: dict[str, Any] = {
    "service_name": "svc2", "namespace": "other", "autoscale_enabled": False, "autoscale_min_replicas": 2,
    "autoscale_max_replicas": 5, "autoscale_refresh_seconds": 5, "autoscale_target_utilization": 50, "num_replicas": 3,
    "cpu_cores": 0.5, "memory_gb": 1.0, "cpu_cores_limit": 1.0, "memory_gb_limit": 2.0, "scoring_timeout_ms": 5000,
    "replica_max_concurrent_requests": 2, "max_request_wait_time": 5000, "period_seconds": 20, "initial_delay_seconds": 30,
    "timeout_seconds": 3, "success_threshold": 2, "failure_threshold": 5, "auth_enabled": False, "token_auth_enabled": True,
    "environment_variables": {"A": "2"}, "primary_key_version": 2, "secondary_key_version": 2, "max_request_bytes": 2048,
    "startup_timeout_seconds": 900, "ssl_enabled": False, "ssl_cert_pem_file": "c2.pem", "ssl_key_pem_file": "k2.pem",
    "ssl_cname": "svc.example.org",
}
K8S_BASE: dict[str, Any] = {"service_name": "svc", "environment_variables": {"A": "1"}, "ssl_enabled": True, "ssl_cert_pem_file": "c.pem",
                            "ssl_key_pem_file": "k.pem"}


def _k8s_objects(fields: dict[str, Any]) -> dict[str, Any]:
    """What AksService declares for these arguments, with the same indirections: keys by their versions
    (the ServiceKeys provider rotates them), the TLS pair by its files' contents (a digest of them)."""
    from mldeploy.providers.targets import kubernetes as k8s

    args = k8s.KubernetesServiceArgs.model_construct(**{**k8s.KubernetesServiceArgs.model_construct().__dict__, **fields})
    keys = [f"primary-key-{args.primary_key_version:08d}", f"secondary-key-{args.secondary_key_version:08d}"] if args.auth_enabled else []
    tls = {"pair": f"{args.ssl_cert_pem_file}+{args.ssl_key_pem_file}"} if args.ssl_enabled else None
    spec = k8s.deployment_spec(args, project="p", stack="s", image_ref="i", front_image_ref="f", model_versions={"m": "1"},
                               config_secret="c", config_checksum=k8s.checksum(k8s.front_config(args, keys)),
                               tls_secret="t" if tls else None, tls_checksum=k8s.checksum(tls) if tls else None)
    return {
        "identity": (args.service_name, args.namespace),
        "template": spec["template"],
        "in_place": (spec.get("replicas"), spec["progressDeadlineSeconds"], k8s.hpa_spec(args, "d") if args.autoscale else None,
                     k8s.needs_pdb(args), args.ssl_cname),
    }


def test_every_kubernetes_argument_has_one_rule_and_the_renderers_keep_it() -> None:
    """REPLACE_ON names what renames an object, ROLL_ON what changes the pod template (Kubernetes rolls
    the pods), ROUTE_ON what changes only replicas, the autoscaler, the budget or the words; INERT nothing."""
    from mldeploy.providers.targets import kubernetes as k8s

    target = target_for("kubernetes")
    groups = {"replace": set(target.REPLACE_ON), "roll": set(target.ROLL_ON), "route": set(target.ROUTE_ON),
              "inert": set(target.INERT)}
    assert set(K8S_CHANGED) == set(k8s.KubernetesServiceArgs.model_fields), "a new argument needs a value here and a rule"
    before = _k8s_objects(K8S_BASE)
    for field, value in K8S_CHANGED.items():
        [group] = [g for g, keys in groups.items() if field in keys] or [None]
        assert group, f"kubernetes: {field} has no rule"
        after = _k8s_objects({**K8S_BASE, field: value})
        did = ("replace" if after["identity"] != before["identity"] else "roll" if after["template"] != before["template"]
               else "route" if after["in_place"] != before["in_place"] else "inert")
        assert did == group, f"kubernetes: {field} is declared {group} but the renderers {did}"
