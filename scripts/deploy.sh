#!/usr/bin/env bash
# New machine, one command: set everything up, then deploy the sample model on
# a stack (default: dev) and print its outputs. Pass `preview` to only preview.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STACK="${1:-dev}"
ACTION="${2:-up}"
source "$HERE/env.sh"
if grep -qE '^\s*mldeploy:target:\s*kubernetes' "$MLDEPLOY_ROOT/stacks/Pulumi.$STACK.yaml" 2>/dev/null; then
  "$HERE/setup.sh" --kubernetes
else
  "$HERE/setup.sh"
fi
source "$HERE/env.sh"
cd "$MLDEPLOY_ROOT"
model="sample/models/sklearn_regression_model.pkl"
[ -f "$model" ] || python sample/train.py --out "$model"
exec python scripts/stack.py "$ACTION" "$STACK"
