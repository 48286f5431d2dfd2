"""Names every target shares, written once: Azure ML's URL shape and where models sit in a container."""

from __future__ import annotations

MODELS_ROOT = "/var/azureml-app/azureml-models"
"""Where a scoring container finds its models (`AZUREML_MODEL_DIR` is `<MODELS_ROOT>/<name>/<version>`), as Azure ML lays them out."""


def service_path(service_name: str) -> str:
    """Azure ML's path of a web service: `/score`, `/swagger.json` and `/health` hang below it."""
    return f"/api/v1/service/{service_name}"
