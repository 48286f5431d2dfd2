"""Inference images: the environment's requirements and Dockerfile policy, the Docker build with its environment cache and wheelhouse, and the provider that builds one."""
