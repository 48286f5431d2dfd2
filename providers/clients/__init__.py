"""Thin clients for the side effects: the model registry, Docker images, the gateway."""
