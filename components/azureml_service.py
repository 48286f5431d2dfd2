"""OnlineEndpointService: a scoring service as an Azure ML managed online endpoint (the `azureml` target).

Why a component of its own: `ContainerInstanceService` keeps Azure ML v1's deployment
configuration (CPU, memory, keys), and an online deployment is sized and tuned with other
words (instance type and count, request settings, probes, auth mode). This component is
`ContainerInstanceService` on the `azureml` target plus those arguments, so models, images,
keys, the sample gate and the outputs stay one code path; the arguments are checked by the
target (`mldeploy.providers.targets.azureml.args.AzureMLArgs`) in the program, naming the field.
"""

from __future__ import annotations

from typing import Any

import pulumi

from mldeploy.components._common import args_class, takes_args
from mldeploy.components.container_instance_service import ContainerInstanceService
from mldeploy.components.inference_image import InferenceImage
from mldeploy.components.registered_model import RegisteredModel


class OnlineEndpointService(ContainerInstanceService):
    """A managed online endpoint and its live deployment; a new model version rolls blue/green."""

    @takes_args
    def __init__(
        self,
        resource_name: str,
        models: list[RegisteredModel],
        image: InferenceImage,
        *,
        endpoint_name: str | None = None,
        instance_type: str = "Standard_DS3_v2",
        instance_count: int = 1,
        request_timeout_ms: int = 5000,
        max_concurrent_requests_per_instance: int = 1,
        auth_mode: str = "key",
        liveness_probe: dict[str, int] | None = None,
        readiness_probe: dict[str, int] | None = None,
        traffic_steps: list[int] | None = None,
        mirror_percent: int = 0,
        service_name: str | None = None,
        environment_variables: dict[str, str] | None = None,
        primary_key_version: int = 1,
        secondary_key_version: int = 1,
        sample_request: Any = None,
        sample_response: Any = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        """`endpoint_name` defaults to `<stack>-<service>`. Probes take `initial_delay`, `period`,
        `timeout`, `failure_threshold`, `success_threshold` (Azure's defaults: 10, 10, 2, 30, 1).
        `traffic_steps` (default `[100]`) is the new deployment's share at each step of a roll;
        `mirror_percent` (at most 50, not with steps) is mirrored to it first. The rest is
        as `ContainerInstanceService` takes it; CPU, memory and `auth_enabled` are not Azure ML's words
        for a deployment (the instance type sizes it; the endpoint always checks a key or token).
        docs/targets/azureml.md."""
        given = {
            "endpoint_name": endpoint_name,
            "instance_type": instance_type,
            "instance_count": instance_count,
            "request_timeout_ms": request_timeout_ms,
            "max_concurrent_requests_per_instance": max_concurrent_requests_per_instance,
            "auth_mode": auth_mode,
            "liveness_probe": liveness_probe,
            "readiness_probe": readiness_probe,
            "traffic_steps": traffic_steps,
            "mirror_percent": mirror_percent,
            # Azure ML runs the scoring script from this folder, uploaded whole (providers/targets/azureml/code.py).
            "code_directory": getattr(image, "source_directory_path", None),
        }
        self._endpoint_args = {k: v for k, v in given.items() if v is not None}
        super().__init__(resource_name, models, image, target="azureml", service_name=service_name,
                         environment_variables=environment_variables, primary_key_version=primary_key_version,
                         secondary_key_version=secondary_key_version, sample_request=sample_request,
                         sample_response=sample_response, opts=opts, auth_enabled=True)

    def _target_inputs(self, resource_name: str, args: Any, settings: Any, given: dict[str, Any]) -> Any:  # type: ignore[override]
        # The endpoint's own arguments join the ones ContainerInstanceService hands the target.
        return ContainerInstanceService._target_inputs(resource_name, args, settings, {**given, **self._endpoint_args})


OnlineEndpointServiceArgs = args_class(OnlineEndpointService, "The arguments of `OnlineEndpointService` as one object.")
