#!/usr/bin/env bash
# Build the single-node cluster's binaries and the pulumi-kubernetes provider
# plugin from Go modules, cached by version outside the repository. Release
# downloads are unreachable here; the Go module proxy and Debian are not.
# Idempotent: a finished build is reused, so a second run changes nothing.
#
#   scripts/k8s/build.sh            # both
#   scripts/k8s/build.sh cluster    # kube-* binaries, kubectl, etcd
#   scripts/k8s/build.sh provider   # pulumi-resource-kubernetes
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../env.sh"
log() { printf '[k8s-build] %s\n' "$*" >&2; }
what="${1:-all}"

export CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"
command -v go >/dev/null || { log "go is required"; exit 1; }

build_cluster() {
  local dest="$MLDEPLOY_K8S_HOME" bin="$MLDEPLOY_K8S_HOME/bin"
  if [ -f "$dest/.complete" ]; then return 0; fi
  mkdir -p "$bin"
  local work="$dest/src"; rm -rf "$work"; mkdir -p "$work/k8s" "$work/etcd"
  local v="$K8S_VERSION" minor
  minor="$(echo "$v" | cut -d. -f2)"
  # kubernetes requires its staging modules at v0.0.0 and replaces them with
  # ./staging paths, which a dependency cannot use: replace each with its
  # published v0.<minor>.<patch> instead.
  log "resolving k8s.io/kubernetes v$v"
  local gomod
  gomod="$(cd "$work/k8s" && go mod download -json "k8s.io/kubernetes@v$v" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  {
    echo "module mldeploy.local/k8sbuild"
    echo
    grep -E '^(go|godebug) ' "$gomod" || echo "go 1.26.0"
    echo
    echo "require k8s.io/kubernetes v$v"
    echo
    echo "replace ("
    go mod edit -json "$gomod" | python3 -c '
import json, sys
staging = "v0." + sys.argv[1].split(".", 1)[1]
for r in json.load(sys.stdin).get("Replace") or []:
    if r["New"]["Path"].startswith("./staging/"):
        print("\t%s => %s %s" % (r["Old"]["Path"], r["Old"]["Path"], staging))
' "$v"
    echo ")"
  } > "$work/k8s/go.mod"
  cat > "$work/k8s/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
  ( cd "$work/k8s" && go mod tidy >/dev/null )
  local ld="-s -w -X k8s.io/component-base/version.gitVersion=v$v -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
  # One binary at a time: two cores, and the first fills the build cache.
  for cmd in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    [ -x "$bin/$cmd" ] && continue
    log "compiling $cmd v$v"
    ( cd "$work/k8s" && go build -trimpath -ldflags "$ld" -o "$bin/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd" )
    mv "$bin/$cmd.tmp" "$bin/$cmd"
  done
  # etcd in a module of its own, so its dependency versions never meet kubernetes'.
  if [ ! -x "$bin/etcd" ]; then
    log "compiling etcd v$ETCD_VERSION"
    cat > "$work/etcd/go.mod" <<MOD
module mldeploy.local/etcdbuild

go 1.24

require go.etcd.io/etcd/server/v3 v$ETCD_VERSION
MOD
    cat > "$work/etcd/tools.go" <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
    ( cd "$work/etcd" && go mod tidy >/dev/null && go build -trimpath -ldflags "-s -w" -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3 )
    mv "$bin/etcd.tmp" "$bin/etcd"
  fi
  rm -rf "$work"
  touch "$dest/.complete"
  log "cluster binaries ready in $bin ($("$bin/kubectl" version --client 2>/dev/null | head -1))"
}

build_provider() {
  local dest="$MLDEPLOY_K8S_PROVIDER_HOME" bin="$MLDEPLOY_K8S_PROVIDER_HOME/bin"
  if [ ! -f "$dest/.complete" ]; then
    mkdir -p "$bin"
    local work="$dest/src"; rm -rf "$work"; mkdir -p "$work"
    local mod="github.com/pulumi/pulumi-kubernetes/provider/v4"
    log "resolving $mod@$K8S_PROVIDER_MODULE (the parent commit of v$K8S_PROVIDER_VERSION)"
    cat > "$work/go.mod" <<MOD
module mldeploy.local/pulumik8s

go 1.24.7

require $mod $K8S_PROVIDER_MODULE
MOD
    local dir
    dir="$(cd "$work" && go mod download -json "$mod@$K8S_PROVIDER_MODULE" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
    for f in main.go generate.go schema.json terraform-mapping.json; do
      [ -f "$dir/cmd/pulumi-resource-kubernetes/$f" ] && install -m 0644 "$dir/cmd/pulumi-resource-kubernetes/$f" "$work/$f"
    done
    ( cd "$work" && go mod tidy >/dev/null )
    log "generating the embedded schema"
    ( cd "$work" && VERSION="$K8S_PROVIDER_VERSION" go run generate.go >/dev/null )
    log "compiling pulumi-resource-kubernetes v$K8S_PROVIDER_VERSION (about 9 min on 2 cores)"
    ( cd "$work" && go build -trimpath -ldflags "-s -w -X $mod/pkg/version.Version=$K8S_PROVIDER_VERSION" -o "$bin/pulumi-resource-kubernetes.tmp" . )
    mv "$bin/pulumi-resource-kubernetes.tmp" "$bin/pulumi-resource-kubernetes"
    rm -rf "$work"
    touch "$dest/.complete"
  fi
  # Installed for the engine under PULUMI_HOME, once.
  if [ -x "$MLDEPLOY_ENGINE_BIN/pulumi" ] && \
     [ ! -x "$PULUMI_HOME/plugins/resource-kubernetes-v$K8S_PROVIDER_VERSION/pulumi-resource-kubernetes" ]; then
    log "installing plugin resource kubernetes v$K8S_PROVIDER_VERSION"
    "$MLDEPLOY_ENGINE_BIN/pulumi" plugin install resource kubernetes "v$K8S_PROVIDER_VERSION" \
      --file "$bin/pulumi-resource-kubernetes" >/dev/null
  fi
}

case "$what" in
  cluster) build_cluster ;;
  provider) build_provider ;;
  all) build_cluster; build_provider ;;
  *) log "usage: $0 [all|cluster|provider]"; exit 2 ;;
esac
