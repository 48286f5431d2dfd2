"""Components that declare Azure ML's deployment workflow in Pulumi."""

from components.aks_cluster import AksCluster, AksClusterArgs
from components.aks_service import AksService
from components.container_instance_service import ContainerInstanceService, ContainerInstanceServiceArgs
from components.edge_module import EdgeDevice, EdgeModule
from components.inference_image import InferenceImage, InferenceImageArgs
from components.registered_model import RegisteredModel, RegisteredModelArgs

__all__ = [
    "AksCluster",
    "AksClusterArgs",
    "AksService",
    "ContainerInstanceService",
    "ContainerInstanceServiceArgs",
    "EdgeDevice",
    "EdgeModule",
    "InferenceImage",
    "InferenceImageArgs",
    "RegisteredModel",
    "RegisteredModelArgs",
]
