#!/usr/bin/env bash
# New machine, one command: set everything up, then run the whole test suite
# (unit tests and end-to-end tests against the real engine and Docker).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The Kubernetes suite needs the cluster and the provider plugin: built from Go
# modules once (about 20 min on 2 cores, then cached). The test session starts
# the cluster and stops it at the end.
"$HERE/setup.sh" --kubernetes
source "$HERE/env.sh"
cd "$MLDEPLOY_ROOT"
exec python -m pytest "$@"
