#!/usr/bin/env bash
# New machine, one command: set everything up, then run the whole test suite
# (unit tests and end-to-end tests against the real engine and Docker).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$HERE/setup.sh"
source "$HERE/env.sh"
cd "$MLDEPLOY_ROOT"
exec python -m pytest "$@"
