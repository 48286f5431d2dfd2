"""Components that declare Azure ML's deployment workflow in Pulumi."""

from components.container_instance_service import ContainerInstanceService, ContainerInstanceServiceArgs
from components.inference_image import InferenceImage, InferenceImageArgs
from components.registered_model import RegisteredModel, RegisteredModelArgs

__all__ = [
    "ContainerInstanceService",
    "ContainerInstanceServiceArgs",
    "InferenceImage",
    "InferenceImageArgs",
    "RegisteredModel",
    "RegisteredModelArgs",
]
