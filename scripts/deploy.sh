#!/usr/bin/env bash
# New machine, one command: set everything up, then deploy the sample model on
# a stack (default: dev) and print its outputs. Pass `preview` to only preview.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STACK="${1:-dev}"
ACTION="${2:-up}"
source "$HERE/env.sh"
# Before the (long) set-up: a stack other than dev needs a passphrase somebody
# chose (scripts/stack.py checks the same, with the same words).
secrets="$(sed -n 's/^secretsprovider:[[:space:]]*//p' "$MLDEPLOY_ROOT/stacks/Pulumi.$STACK.yaml" 2>/dev/null | head -n1 || true)"
if [ "$STACK" != dev ] && [ -z "${PULUMI_CONFIG_PASSPHRASE+set}" ] && [ -z "${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ] \
  && case "$secrets" in ""|passphrase*) true ;; *) false ;; esac \
  && case "${PULUMI_BACKEND_URL:-}" in http://*|https://*) false ;; *) true ;; esac; then
  echo "error: stack '$STACK' needs a secrets passphrase of its own: set PULUMI_CONFIG_PASSPHRASE" \
    "(or PULUMI_CONFIG_PASSPHRASE_FILE, the path of a file that holds it) and run again." \
    "The documented dev passphrase is for the 'dev' stack only." >&2
  exit 1
fi
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
