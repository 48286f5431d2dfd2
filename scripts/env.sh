# Sourced by the project's scripts: where the engine, the Python environment,
# the state backend and the caches live. Every value can be overridden.
_mldeploy_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${MLDEPLOY_ROOT:-}" ] && [ "$MLDEPLOY_ROOT" != "$_mldeploy_root" ]; then
  # Sourced before for another checkout: its derived defaults must not carry over.
  [ "${MLDEPLOY_STATE_DIR:-}" = "$MLDEPLOY_ROOT/.pulumi-state" ] && unset MLDEPLOY_STATE_DIR
  [ "${PULUMI_BACKEND_URL:-}" = "file://$MLDEPLOY_ROOT/.pulumi-state/backend" ] && unset PULUMI_BACKEND_URL
fi
export MLDEPLOY_ROOT="$_mldeploy_root"
unset _mldeploy_root
export MLDEPLOY_CACHE="${MLDEPLOY_CACHE:-$HOME/.cache/mldeploy}"
export PULUMI_VERSION="${PULUMI_VERSION:-3.259.0}"
export MLDEPLOY_ENGINE_BIN="${MLDEPLOY_ENGINE_BIN:-$MLDEPLOY_CACHE/engine/v$PULUMI_VERSION/bin}"
# State: a local file backend inside the git-ignored .pulumi-state folder.
export MLDEPLOY_STATE_DIR="${MLDEPLOY_STATE_DIR:-$MLDEPLOY_ROOT/.pulumi-state}"
export PULUMI_BACKEND_URL="${PULUMI_BACKEND_URL:-file://$MLDEPLOY_STATE_DIR/backend}"
# Secrets passphrases are per stack and never set here: scripts/stack.py gives
# the dev stack its documented passphrase (mldeploy-dev-passphrase, which
# protects nothing); any other stack stops until you set PULUMI_CONFIG_PASSPHRASE
# (or PULUMI_CONFIG_PASSPHRASE_FILE) yourself.
export PULUMI_HOME="${PULUMI_HOME:-$MLDEPLOY_CACHE/pulumi-home}"
export PULUMI_SKIP_UPDATE_CHECK=true
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
export PULUMI_SKIP_CONFIRMATIONS=true
if [ -x "$MLDEPLOY_ENGINE_BIN/pulumi" ]; then
  export PATH="$MLDEPLOY_ENGINE_BIN:$PATH"
fi
if [ -d "$MLDEPLOY_ROOT/.venv/bin" ]; then
  export PATH="$MLDEPLOY_ROOT/.venv/bin:$PATH"
fi
# The local Kubernetes cluster and the pulumi-kubernetes provider plugin, both
# built from Go modules by scripts/k8s/build.sh and cached by version.
export K8S_VERSION="${K8S_VERSION:-1.37.2}"
export ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
export K8S_PROVIDER_VERSION="${K8S_PROVIDER_VERSION:-4.25.0}"
export K8S_PROVIDER_MODULE="${K8S_PROVIDER_MODULE:-v4.0.0-20260115033456-f47bc2d6f199}"
export MLDEPLOY_K8S_HOME="${MLDEPLOY_K8S_HOME:-$MLDEPLOY_CACHE/kubernetes/v$K8S_VERSION}"
# The running cluster's state (certs, etcd data, containerd root, logs, PIDs):
# scripts/k8s/cluster.sh up|down|status.
export MLDEPLOY_K8S_RUN="${MLDEPLOY_K8S_RUN:-$MLDEPLOY_CACHE/kubernetes/run}"
export MLDEPLOY_K8S_PROVIDER_HOME="${MLDEPLOY_K8S_PROVIDER_HOME:-$MLDEPLOY_CACHE/engine/plugins/kubernetes-v$K8S_PROVIDER_VERSION}"
