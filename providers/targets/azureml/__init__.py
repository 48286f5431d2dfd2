"""The Azure ML target: a service is a managed online endpoint (Azure ML v2) and its deployments.

What maps to what:
- `RegisteredModel` -> a workspace model asset, version = our version (which follows content);
- `InferenceImage` -> a workspace environment, version = the image digest's first 12 hex digits;
- the entry script -> a code asset (version from its text) and the deployment's `codeConfiguration`;
- the service -> one endpoint (`<stack>-<service>`) and one live deployment (`v01`, `v02`, ...).

A new model or image is a blue/green roll (`rollout.py`): new deployment at 0 %, the sample
through the endpoint to it alone, traffic moved, old deployment deleted. An asset version
that exists is not registered again. Control plane: Azure ML's SDK v2 (`azure-ai-ml`'s `MLClient`)
for endpoints, deployments, models and environments, and ARM's REST API (api-version 2024-04-01)
for code versions and the datastore (`client.py`). Tested only against a local fake
(tests/fake_azureml.py), never against Azure.
"""

from __future__ import annotations

from typing import Any, Mapping

from pulumi.dynamic import CheckFailure

from mldeploy.providers.core.progress import say
from mldeploy.providers.core.settings import DEFAULT_ARM_ENDPOINT, Settings
from mldeploy.providers.targets import ArgsInvalid, Target, validate_args
from mldeploy.providers.targets.azureml import bodies, rules
from mldeploy.providers.targets.azureml.args import AzureMLArgs, endpoint_name
from mldeploy.providers.targets.azureml.rollout import Plan, execute, next_deployment, plan_roll

_progress = say


def predicted_uris(props: Mapping[str, Any]) -> dict[str, str]:
    """Azure's scoring URI shape (`https://<endpoint>.<region>.inference.ml.azure.com/score`) until ARM reports the real one."""
    origin = f"https://{props['endpoint_name']}.{props['location']}.inference.ml.azure.com"
    return {"scoring_uri": f"{origin}/score", "swagger_uri": f"{origin}/swagger.json"}


def endpoint_state(endpoint: Mapping[str, Any] | None, deployment: Mapping[str, Any] | None, name: str | None,
                   others: list[str] | None = None) -> str:
    """Refresh's word: Missing, Unhealthy (failed, or traffic not on our deployment), Orphaned (other
    deployments left by an interrupted roll, with no traffic) or Healthy."""
    if endpoint is None or deployment is None:
        return "Missing"
    props = endpoint.get("properties") or {}
    if props.get("provisioningState") == "Failed" or (deployment.get("properties") or {}).get("provisioningState") == "Failed":
        return "Unhealthy"
    if (props.get("traffic") or {}).get(name) != 100:
        return "Unhealthy"
    return "Orphaned" if [o for o in others or [] if o != name] else "Healthy"


def roll_words(olds: Mapping[str, Any] | None, news: Mapping[str, Any]) -> str:
    """The roll the next `up` makes, in Azure's words (the plan's own words; no I/O, any inputs)."""
    old = (olds or {}).get("deployment") or None
    steps = news.get("traffic_steps")
    steps = steps if isinstance(steps, list) and all(isinstance(s, (int, float)) for s in steps) else [100]
    mirror = news.get("mirror_percent") if isinstance(news.get("mirror_percent"), (int, float)) else 0
    plan = plan_roll(str(news.get("endpoint_name") or "?"), old, next_deployment(old), [], None if old else {}, {}, steps, mirror)
    return plan.words()


def _code(news: Mapping[str, Any]) -> Any:
    """The code folder to upload (`code.CodeFolder`), or None without an entry script."""
    from mldeploy.providers.core.paths import local
    from mldeploy.providers.targets.azureml.code import code_folder

    if not news.get("entry_script"):
        return None
    script = local(str(news["entry_script"]))
    return code_folder(local(str(news["code_directory"])) if news.get("code_directory") else script.parent, script)


class AzureMLTarget(Target):
    """Managed online endpoints through ARM; the Service resource runs it."""

    name = "azureml"
    Args = AzureMLArgs
    sample_gate = True
    mirrors_itself = True
    # Azure pulls the environment's image from the workspace's registry with the endpoint's
    # identity, and mounts the model asset: the scoring image alone is pushed.
    pulls_images = "image_only"
    REPLACE_ON = rules.REPLACE_ON
    ROLL_ON = rules.ROLL_ON
    ROUTE_ON = rules.PATCH_ON
    INERT = rules.INERT
    OUTPUTS = ("deployment", "endpoint_id")

    def check(self, news: Mapping[str, Any]) -> list[CheckFailure]:
        failures = super().check(news)
        if news.get("auth_enabled") is False:
            _progress(f"{news.get('service_name')}: Azure ML endpoints always check a key or an AML token "
                      f"(auth_mode {news.get('auth_mode') or 'key'}); auth_enabled=False changes nothing on this target")
        models = news.get("models")
        if isinstance(models, list) and len(models) > 1:
            failures.append(CheckFailure("models", f"a managed online deployment serves one model asset; got {len(models)}"))
        return failures

    def service_inputs(self, given: Mapping[str, Any], *, service_name: str, resource_name: str, settings: Settings) -> dict[str, Any]:
        data = {
            **given,
            "subscription_id": settings.azure_subscription_id,
            "resource_group": settings.azure_resource_group,
            "workspace": getattr(settings, "azure_ml_workspace", ""),
            "location": settings.azure_location,
            "arm_endpoint": settings.arm_endpoint,
            "endpoint_name": given.get("endpoint_name") or endpoint_name(settings.stack, service_name),
        }
        missing = [
            CheckFailure(field, f"missing: set stack config mldeploy:{key}")
            for field, key in (("subscription_id", "azureSubscriptionId"), ("resource_group", "azureResourceGroup"),
                               ("workspace", "azureMlWorkspace"), ("location", "azureLocation"))
            if not data[field]
        ]
        registry_host = settings.image_registry.split("/", 1)[0].rsplit(":", 1)[0]
        if data["arm_endpoint"].rstrip("/") == DEFAULT_ARM_ENDPOINT.rstrip("/") and registry_host in ("127.0.0.1", "localhost"):
            # Azure pulls the environment's image itself: a registry on this machine cannot serve it.
            missing.append(CheckFailure("image_registry", f"{settings.image_registry} is on this machine, which Azure cannot pull from: "
                                        "set stack config mldeploy:imageRegistry to the workspace's registry (<name>.azurecr.io) "
                                        "and mldeploy:acrName to its name"))
        if missing:
            raise ArgsInvalid(missing)
        return validate_args(AzureMLArgs, data).model_dump()

    def roll_plan(self, olds: Mapping[str, Any], news: Mapping[str, Any], rolls: bool) -> tuple[str | None, dict[str, Any]]:
        # Check sees the old inputs, not the deployment the state holds, so the live deployment's
        # name is carried as an (inert) input: v01 on create and on a new endpoint, one more on a roll.
        # If the endpoint was remade behind our back it can be off until then (words only; up reads the state).
        if not olds or rules.diff(olds, news).kind == "replace":
            return None, {"live_deployment": "v01"}
        live = olds.get("live_deployment")
        if not live:
            return None, {}
        if not rolls:
            return None, {"live_deployment": live}
        return roll_words({"deployment": live}, news), {"live_deployment": next_deployment(live)}

    def change_words(self, old: Mapping[str, Any], new: Mapping[str, Any], replaced: bool) -> list[str]:
        change = rules.diff(old, new)
        if replaced or change.kind == "replace":
            why = f" ({', '.join(change.fields)})" if change.fields else ""
            return [f"Azure ML: a new online endpoint `{new.get('endpoint_name')}`{why}; "
                    "the old endpoint and its deployments are deleted, and the scoring URI and keys change"]
        if change.kind == "roll":
            return [roll_words(old, new)]
        if change.kind == "patch":
            return [f"Azure ML: endpoint `{new.get('endpoint_name')}` changed in place ({', '.join(change.fields)}); no new deployment"]
        return []

    def uris(self, props: Mapping[str, Any]) -> dict[str, str]:
        if props.get("scoring_uri") and props.get("swagger_uri"):
            return {"scoring_uri": props["scoring_uri"], "swagger_uri": props["swagger_uri"]}
        return predicted_uris(props)

    # -- the plan ----------------------------------------------------------------
    def _plan(self, olds: Mapping[str, Any] | None, news: Mapping[str, Any], endpoint_exists: bool = False) -> Plan:
        """The roll from `olds` (None: a new endpoint, or one to make again) to `news`; no I/O but reading the script."""
        from mldeploy.providers.core.paths import local

        old = (olds or {}).get("deployment") or None
        new = next_deployment(old)
        model = news["models"][0]
        model_name, model_version, model_body = bodies.model_asset(news, model)
        env_name, env_version, env_body = bodies.environment_asset(news)
        model_files = {"local": str(local(str(model.get("model_dir") or ""))), "path": bodies.model_path(model_name, model_version)}
        assets: list[tuple[Any, ...]] = [("models", model_name, model_version, model_body, model_files),
                                         ("environments", env_name, env_version, env_body, None)]
        code = _code(news)
        code_id = None
        if code is not None:
            code_name, code_version, code_body = bodies.code_asset(news, code.version)
            code_files = {"local": str(code.root), "files": list(code.files), "path": bodies.code_path(code_name, code_version)}
            assets.append(("codes", code_name, code_version, code_body, code_files))
            code_id = bodies.asset_id(news, "codes", code_name, code_version)
        deployment = bodies.deployment_body(
            news,
            bodies.asset_id(news, "models", model_name, model_version),
            bodies.asset_id(news, "environments", env_name, env_version),
            code_id,
            code.scoring_script if code is not None else None,
        )
        endpoint = None if (old or endpoint_exists) else bodies.endpoint_body(news, {})
        return plan_roll(news["endpoint_name"], old, new, assets, endpoint, deployment,
                         list(news.get("traffic_steps") or [100]), int(news.get("mirror_percent") or 0))

    # -- the backend ------------------------------------------------------------------
    def _client(self, props: Mapping[str, Any]) -> Any:
        from mldeploy.providers.targets.azureml.client import WorkspaceClient

        return WorkspaceClient(props, sample_request=props.get("sample_request"))

    def _outputs(self, client: Any, news: Mapping[str, Any], deployment: str) -> dict[str, Any]:
        endpoint = client.get_endpoint(news["endpoint_name"]) or {}
        props = endpoint.get("properties") or {}
        keys = client.list_keys(news["endpoint_name"]) if news.get("auth_mode", "key") == "key" else {"primary_key": "", "secondary_key": ""}
        return {
            **news,
            **keys,
            "scoring_uri": props.get("scoringUri") or predicted_uris(news)["scoring_uri"],
            "swagger_uri": props.get("swaggerUri") or predicted_uris(news)["swagger_uri"],
            "deployment": deployment,
            "endpoint_id": endpoint.get("id") or bodies.endpoint_id(news),
            "state": "Healthy",
            "model_versions": {m["name"]: int(m["version"]) for m in news["models"]},
        }

    def create(self, props: dict[str, Any]) -> dict[str, Any]:
        client = self._client(props)
        existing = client.get_endpoint(props["endpoint_name"])
        plan = self._plan(None, props, endpoint_exists=existing is not None)
        if existing is not None:
            # An earlier up created the endpoint and failed after it: converge from what is there.
            _progress(f"endpoint {plan.endpoint}: exists already (an earlier up stopped part way); continuing")
        execute(plan, client)
        return self._outputs(client, props, plan.new)

    def update(self, olds: dict[str, Any], news: dict[str, Any], roll: bool) -> dict[str, Any]:
        client = self._client(news)
        deployment = olds.get("deployment") or ""
        change = rules.diff(olds, news)
        exists = client.get_endpoint(news["endpoint_name"]) is not None
        if roll or change.rolls or not deployment or not exists:
            # Gone behind our back (refresh said Missing): make it again, from v01.
            plan = self._plan(olds if deployment and exists else None, news, endpoint_exists=exists)
            execute(plan, client)
            deployment = plan.new
        else:
            if olds.get("instance_count") != news.get("instance_count"):
                client.scale_deployment(news["endpoint_name"], deployment, int(news["instance_count"]))
                _progress(f"endpoint {news['endpoint_name']}: deployment {deployment} scaled to {news['instance_count']} instances in place")
        for which in ("primary", "secondary"):
            # Also after a roll: a key version bumped in the same up is rotated all the same.
            if olds.get(f"{which}_key_version") != news.get(f"{which}_key_version") and news.get("auth_mode", "key") == "key":
                client.regenerate_key(news["endpoint_name"], which.capitalize())
                _progress(f"endpoint {news['endpoint_name']}: {which} key regenerated (the other keeps working meanwhile)")
        if olds.get("state") == "Orphaned":
            self._remove_leftovers(client, news, deployment)
        return self._outputs(client, news, deployment)

    def read(self, props: dict[str, Any]) -> dict[str, Any]:
        client = self._client(props)
        endpoint = client.get_endpoint(props["endpoint_name"])
        dep = client.get_deployment(props["endpoint_name"], props.get("deployment") or "") if endpoint and props.get("deployment") else None
        others = client.list_deployments(props["endpoint_name"]) if dep is not None else []
        return {**props, "state": endpoint_state(endpoint, dep, props.get("deployment"), others)}

    def _remove_leftovers(self, client: Any, news: Mapping[str, Any], keep: str) -> None:
        """Deployments other than ours that hold no traffic: left by a roll that was interrupted."""
        endpoint = client.get_endpoint(news["endpoint_name"]) or {}
        traffic = (endpoint.get("properties") or {}).get("traffic") or {}
        for name in client.list_deployments(news["endpoint_name"]):
            if name != keep and not traffic.get(name):
                client.delete_deployment(news["endpoint_name"], name)
                _progress(f"endpoint {news['endpoint_name']}: leftover deployment {name} deleted (no traffic)")

    def delete(self, props: dict[str, Any]) -> None:
        # Deleting an endpoint deletes its deployments; the model, environment and code assets stay
        # (versions are immutable and other services may use them).
        self._client(props).delete_endpoint(props["endpoint_name"])


TARGET = AzureMLTarget()
