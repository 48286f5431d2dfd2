"""The nginx front end, rendered once for every target that puts one before the scoring server (the local gateway, ACI's sidecar, the Kubernetes pod's front container), and its TLS."""
