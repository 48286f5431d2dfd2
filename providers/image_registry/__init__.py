"""The image registry (never the model registry): pushing to an OCI registry or ACR, reading digests, pull credentials, and their providers."""
