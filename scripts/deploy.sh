#!/usr/bin/env bash
# New machine, one command: set everything up, then deploy the sample model on
# a stack (default: dev) and print its outputs. Pass `preview` to only preview.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STACK="${1:-dev}"
ACTION="${2:-up}"
source "$HERE/env.sh"
# Before the (long) set-up: a stack other than dev needs a passphrase somebody
# chose. The rule is scripts/stack.py's (standard library only, so any python3 runs it).
python3 "$HERE/stack.py" check-passphrase "$STACK"
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
