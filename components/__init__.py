"""Components that declare Azure ML's deployment workflow in Pulumi."""

from components.aks_cluster import AksCluster, AksClusterArgs
from components.aks_service import AksService
from components.container_instance_service import ContainerInstanceService, ContainerInstanceServiceArgs
from components.inference_image import InferenceImage, InferenceImageArgs
from components.registered_model import RegisteredModel, RegisteredModelArgs

__all__ = [
    "AksCluster",
    "AksClusterArgs",
    "AksService",
    "ContainerInstanceService",
    "ContainerInstanceServiceArgs",
    "InferenceImage",
    "InferenceImageArgs",
    "RegisteredModel",
    "RegisteredModelArgs",
]
