#!/usr/bin/env bash
# New machine, one command: set everything up, then run the whole test suite
# (unit tests and end-to-end tests against the real engine and Docker).
#
#   bash scripts/test.sh [pytest options]       # the whole suite, in lanes (scripts/lanes.py)
#   bash scripts/test.sh -m unit                # a subset (-m, -k or test paths): one plain pytest run
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The Kubernetes suite needs the cluster and the provider plugin: built from Go
# modules once (about 20 min on 2 cores, then cached). The test session starts
# the cluster and stops it at the end.
"$HERE/setup.sh" --kubernetes
source "$HERE/env.sh"
cd "$MLDEPLOY_ROOT"
for arg in "$@"; do
  case "$arg" in
    -m|-m*|-k|-k*|tests/*|*.py|*::*) exec python -m pytest "$@" ;;
  esac
done
# The whole suite: the cluster's tests beside the rest, then those that must run alone.
exec python scripts/lanes.py "$@"
