"""Components that declare Azure ML's deployment workflow in Pulumi."""

from mldeploy.components.aks_cluster import AksCluster, AksClusterArgs
from mldeploy.components.aks_service import AksService, AksServiceArgs
from mldeploy.components.azureml_service import OnlineEndpointService, OnlineEndpointServiceArgs
from mldeploy.components.container_instance_service import ContainerInstanceService, ContainerInstanceServiceArgs
from mldeploy.components.edge_module import EdgeDevice, EdgeModule, EdgeModuleArgs
from mldeploy.components.inference_image import InferenceImage, InferenceImageArgs
from mldeploy.components.registered_model import RegisteredModel, RegisteredModelArgs
from mldeploy.providers.rollouts.spec import Canary, TrafficSplit

__all__ = [
    "AksCluster",
    "AksClusterArgs",
    "AksService",
    "AksServiceArgs",
    "Canary",
    "ContainerInstanceService",
    "ContainerInstanceServiceArgs",
    "EdgeDevice",
    "EdgeModule",
    "EdgeModuleArgs",
    "InferenceImage",
    "InferenceImageArgs",
    "OnlineEndpointService",
    "OnlineEndpointServiceArgs",
    "RegisteredModel",
    "RegisteredModelArgs",
    "TrafficSplit",
]
