#!/usr/bin/env bash
# Set up everything the project needs on this machine, idempotently:
# Python environment, Pulumi engine, state folder, Docker engine, base image.
# Caches live outside the repo (MLDEPLOY_CACHE, default ~/.cache/mldeploy).
# With --kubernetes, also the Kubernetes target's pieces: the cluster binaries
# and the pulumi-kubernetes plugin, both built from Go modules. The cluster
# itself starts on demand (scripts/k8s/cluster.sh up, or an AksCluster's preview).
set -euo pipefail
with_k8s=""
for arg in "$@"; do
  case "$arg" in
    --kubernetes) with_k8s=1 ;;
    *) printf '[setup] unknown option %s (known: --kubernetes)\n' "$arg" >&2; exit 2 ;;
  esac
done
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/env.sh"
cd "$MLDEPLOY_ROOT"
log() { printf '[setup] %s\n' "$*" >&2; }

# 1. Python environment, keyed by the lock file and the interpreter.
PY="${MLDEPLOY_PYTHON:-python3}"
command -v "$PY" >/dev/null || { log "python3 (3.11) is required"; exit 1; }
key="$( (cat requirements.lock; "$PY" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-16)"
venv="$MLDEPLOY_CACHE/venv/$key"
if [ ! -f "$venv/.complete" ]; then
  log "creating Python environment $venv"
  rm -rf "$venv"; "$PY" -m venv "$venv"
  # Every file is checked against the lock's SHA-256: pip itself first (its block of the lock),
  # then the closure. A file that differs from the one locked fails the set-up.
  "$venv/bin/pip" install -q --require-hashes --no-deps -r <(sed -n '/^pip==/,/^[^ ]/{/^pip==\|^ /p}' requirements.lock) >/dev/null
  "$venv/bin/pip" install -q --require-hashes -r requirements.lock
  touch "$venv/.complete"
fi
ln -sfn "$venv" .venv

# 2. The Pulumi engine: one on PATH at the right version, or built from Go modules.
found="$(command -v pulumi 2>/dev/null || true)"
if [ -n "$found" ] && [ "$("$found" version 2>/dev/null)" = "v$PULUMI_VERSION" ] && [ "$(dirname "$found")" != "$MLDEPLOY_ENGINE_BIN" ]; then
  log "using pulumi v$PULUMI_VERSION at $found"
  mkdir -p "$MLDEPLOY_ENGINE_BIN"
  for f in pulumi pulumi-language-python pulumi-language-python-exec pulumi-resource-pulumi-python; do
    src="$(command -v "$f" 2>/dev/null || true)"; [ -n "$src" ] && ln -sfn "$src" "$MLDEPLOY_ENGINE_BIN/$f"
  done
  touch "$MLDEPLOY_CACHE/engine/v$PULUMI_VERSION/.complete"
else
  PULUMI_VERSION="$PULUMI_VERSION" "$HERE/engine/build.sh" >/dev/null
fi
# The Go language host cannot be fetched here: a stand-in built on the Python
# SDK's own language server lets the plain CLI run the project (kept in sync).
if [ ! -x "$MLDEPLOY_ENGINE_BIN/pulumi-language-python" ] || [ -f "$MLDEPLOY_ENGINE_BIN/language_host.py" ]; then
  for f in pulumi-language-python language_host.py; do
    cmp -s "$HERE/engine/$f" "$MLDEPLOY_ENGINE_BIN/$f" || install -m 0755 "$HERE/engine/$f" "$MLDEPLOY_ENGINE_BIN/$f"
  done
fi
# The dynamic provider host: the SDK's own, through mldeploy's guard against forged
# providers in the state (providers/host.py), under the SDK's plugin name.
host=pulumi-resource-pulumi-python
if ! cmp -s "$HERE/engine/$host" "$MLDEPLOY_ENGINE_BIN/$host"; then
  rm -f "$MLDEPLOY_ENGINE_BIN/$host"; install -m 0755 "$HERE/engine/$host" "$MLDEPLOY_ENGINE_BIN/$host"
fi
export PATH="$MLDEPLOY_ENGINE_BIN:$MLDEPLOY_ROOT/.venv/bin:$PATH"

# 3. State folder (git-ignored) for the file backend and the model registry.
# Private to this user (0700): it holds the stack's state, the gateway's keys and the model files.
mkdir -p "$MLDEPLOY_STATE_DIR/backend"
chmod 0700 "$MLDEPLOY_STATE_DIR" "$MLDEPLOY_STATE_DIR/backend"

# 4. Docker engine, and 5. the base image.
"$HERE/docker.sh"
"$HERE/base-image.sh"

# 6. The Kubernetes target: cluster binaries and the provider plugin.
if [ -n "$with_k8s" ]; then
  "$HERE/k8s/build.sh" all
fi

log "ready: pulumi $(pulumi version), $(python --version 2>&1), docker $(docker version -f '{{.Server.Version}}')"
