#!/usr/bin/env bash
# The local single-node Kubernetes cluster: up | down | status (see scripts/k8s/README.md).
exec "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/k8s/cluster.sh" "$@"
