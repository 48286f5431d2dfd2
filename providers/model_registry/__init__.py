"""The model registry (never the image registry): a folder or a blob container holding model versions, the next-version rule, and the provider that registers a version."""
