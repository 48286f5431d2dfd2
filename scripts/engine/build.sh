#!/usr/bin/env bash
# Build the Pulumi engine (CLI + Python language host) from Go modules into a
# cache keyed by version. Release downloads are unreachable here; the Go module
# proxy is not. Idempotent: a finished build is reused.
set -euo pipefail

PULUMI_VERSION="${PULUMI_VERSION:-3.259.0}"
# Untagged module: pseudo-version of the commit behind tag pkg/v3.259.0.
LANGHOST_VERSION="${LANGHOST_VERSION:-v3.0.0-20260820084410-a05d88f24d05}"
CACHE_ROOT="${MLDEPLOY_CACHE:-$HOME/.cache/mldeploy}"
DEST="$CACHE_ROOT/engine/v$PULUMI_VERSION"
BIN="$DEST/bin"

log() { printf '[engine] %s\n' "$*" >&2; }

if [ -x "$BIN/pulumi" ] && [ -f "$DEST/.complete" ]; then
  echo "$BIN"; exit 0
fi

command -v go >/dev/null || { log "go is required to build the engine"; exit 1; }
mkdir -p "$BIN"
WORK="$DEST/src"
rm -rf "$WORK"; mkdir -p "$WORK/cli" "$WORK/lang"

LDFLAGS="-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$PULUMI_VERSION"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

# The CLI: a wrapper module requiring pkg and sdk at one version; pkg's own
# replace lines are ignored when it is a dependency.
cat > "$WORK/cli/go.mod" <<MOD
module mldeploy.local/engine

go 1.24

require (
	github.com/pulumi/pulumi/pkg/v3 v$PULUMI_VERSION
	github.com/pulumi/pulumi/sdk/v3 v$PULUMI_VERSION
)
MOD
cat > "$WORK/cli/tools.go" <<'GO'
//go:build tools

package tools

import _ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"
GO
log "resolving CLI modules (pulumi v$PULUMI_VERSION)"
( cd "$WORK/cli" && go mod tidy -e >/dev/null 2>&1 || true; go mod download all 2>/dev/null || true; go get github.com/pulumi/pulumi/pkg/v3/cmd/pulumi@v$PULUMI_VERSION )
log "compiling pulumi (several minutes on 2 cores)"
( cd "$WORK/cli" && go build -trimpath -tags osusergo,grpcnotrace -ldflags "$LDFLAGS" -o "$BIN/pulumi" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi )

# The Python language host.
cat > "$WORK/lang/go.mod" <<MOD
module mldeploy.local/langhost

go 1.24

require github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3 $LANGHOST_VERSION
MOD
log "resolving pulumi-language-python $LANGHOST_VERSION"
if ( cd "$WORK/lang" && go get github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3@$LANGHOST_VERSION \
      && go get github.com/pulumi/pulumi/sdk/v3@v$PULUMI_VERSION \
      && go build -trimpath -tags osusergo,grpcnotrace -ldflags "$LDFLAGS" -o "$BIN/pulumi-language-python" github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3 ) \
      >"$DEST/langhost.log" 2>&1; then
  log "built pulumi-language-python"
else
  log "pulumi-language-python could not be built (see $DEST/langhost.log); scripts/setup.sh installs the stand-in"
  tail -2 "$DEST/langhost.log" >&2
fi

# Scripts shipped inside the sdk module: the exec shim the language host
# insists on, and the dynamic-provider plugin.
SDK_DIR="$(cd "$WORK/cli" && go list -m -f '{{.Dir}}' github.com/pulumi/pulumi/sdk/v3)"
install -m 0755 "$SDK_DIR/python/cmd/pulumi-language-python-exec" "$BIN/pulumi-language-python-exec"
install -m 0755 "$SDK_DIR/python/dist/pulumi-resource-pulumi-python" "$BIN/pulumi-resource-pulumi-python"
[ -f "$SDK_DIR/python/dist/pulumi-analyzer-policy-python" ] && install -m 0755 "$SDK_DIR/python/dist/pulumi-analyzer-policy-python" "$BIN/" || true

rm -rf "$WORK"
touch "$DEST/.complete"
"$BIN/pulumi" version >&2
echo "$BIN"
