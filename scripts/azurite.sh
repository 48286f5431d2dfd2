#!/usr/bin/env bash
# Azurite, Microsoft's Azure Storage emulator (Blob service only), on 127.0.0.1:
# the local stand-in for the Azure Blob Storage account that holds a team's
# Pulumi state (azblob:// backend) and model registry (mldeploy:registry).
# npm `azurite` is installed once into $MLDEPLOY_CACHE/azurite/<version>; its
# data lives under $MLDEPLOY_CACHE/azurite/run (kept across restarts).
#
#   scripts/azurite.sh up                 # idempotent
#   scripts/azurite.sh down               # stops it; the stored blobs stay
#   scripts/azurite.sh status             # exit 0 when it answers
#   scripts/azurite.sh env                # the exports a shell needs (eval "$(scripts/azurite.sh env)")
#   scripts/azurite.sh mkcontainer NAME   # create a container (idempotent)
#
# Account devstoreaccount1 with Azurite's documented development key: it
# protects nothing, so Azurite listens on loopback only.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/env.sh"
log() { printf '[azurite] %s\n' "$*" >&2; }
source "$HERE/k8s/lib.sh"

VERSION="${AZURITE_VERSION:-3.37.0}"
PORT="${MLDEPLOY_AZURITE_PORT:-10000}"
ADDR="127.0.0.1:$PORT"
PKG="$MLDEPLOY_CACHE/azurite/$VERSION"
BIN="$PKG/node_modules/.bin/azurite-blob"
RUN="${MLDEPLOY_AZURITE_RUN:-$MLDEPLOY_CACHE/azurite/run}"
PIDF="$RUN/azurite-$PORT.pid"
LOGF="$RUN/azurite-$PORT.log"
ACCOUNT=devstoreaccount1
# Azurite's well-known development key (published in its README); not a secret.
KEY="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

answers() { curl -s --max-time 2 -o /dev/null -w '%{http_code}' "http://$ADDR/$ACCOUNT?comp=list" | grep -q '^[1-5]'; }
ours() { pid_alive "$PIDF" "--blobPort $PORT"; }

install() {
  [ -x "$BIN" ] && return 0
  command -v npm >/dev/null || { log "npm is required (Debian: nodejs npm)"; ensure_packages nodejs npm; }
  log "installing npm azurite@$VERSION into $PKG"
  mkdir -p "$PKG.tmp"
  npm install --silent --no-audit --no-fund --prefix "$PKG.tmp" "azurite@$VERSION" >&2
  rm -rf "$PKG"; mv "$PKG.tmp" "$PKG"
}

up() {
  ensure_packages curl
  take_lock "$RUN/azurite.lock"
  install
  if ours && answers; then log "already up on $ADDR (pid $(cat "$PIDF"))"; return 0; fi
  if ! ours && answers; then
    log "something else answers on $ADDR; not starting a second Azurite"; return 1
  fi
  mkdir -p "$RUN/data-$PORT"
  # --skipApiVersionCheck: the current azure-storage-blob sends a newer api-version
  # than Azurite 3.37.0 knows, which it otherwise refuses (InvalidHeaderValue).
  ours || start_bg "$PIDF" "$LOGF" "$BIN" --blobHost 127.0.0.1 --blobPort "$PORT" \
    --location "$RUN/data-$PORT" --skipApiVersionCheck --silent
  log "starting Azurite $VERSION on $ADDR (pid $(cat "$PIDF"), log $LOGF)"
  if ! wait_until 60 "Azurite on $ADDR" answers; then
    tail -20 "$LOGF" >&2; return 1
  fi
  log "up: http://$ADDR/$ACCOUNT (data $RUN/data-$PORT)"
}

down() {
  take_lock "$RUN/azurite.lock"
  if ! ours; then rm -f "$PIDF"; log "down"; return 0; fi
  local pid lines i
  pid="$(cat "$PIDF")"
  lines="$(wc -l <"$LOGF" 2>/dev/null || echo 0)"
  log "stopping azurite (pid $pid)"
  kill -INT "$pid" 2>/dev/null || true
  # Azurite saves its data and says so, then may linger on clients' keep-alive
  # connections: once it has said so, or after 15 s, it is killed.
  for i in $(seq 1 75); do
    ours || break
    tail -n +"$((lines + 1))" "$LOGF" 2>/dev/null | grep -q "successfully closed" && break
    sleep 0.2
  done
  ours && kill -KILL "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do ours || break; sleep 0.1; done
  rm -f "$PIDF"
  log "down"
}

status() {
  if ours && answers; then
    echo "azurite: running (pid $(cat "$PIDF")) on http://$ADDR/$ACCOUNT, data $RUN/data-$PORT"
    return 0
  fi
  if ours; then echo "azurite: process $(cat "$PIDF") runs but $ADDR does not answer"; return 1; fi
  echo "azurite: not running"
  return 3
}

env_lines() {
  echo "export AZURE_STORAGE_ACCOUNT=$ACCOUNT"
  echo "export AZURE_STORAGE_KEY='$KEY'"
}

mkcontainer() {
  [ -n "${1:-}" ] || { log "usage: $0 mkcontainer NAME"; return 2; }
  AZURE_STORAGE_ACCOUNT=$ACCOUNT AZURE_STORAGE_KEY="$KEY" \
    python -m mldeploy.providers.core.blob_store mkcontainer "http://$ADDR/$ACCOUNT" "$1"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) env_lines ;;
  mkcontainer) cd "$MLDEPLOY_ROOT"; mkcontainer "${2:-}" ;;
  *) echo "usage: $0 up|down|status|env|mkcontainer NAME" >&2; exit 2 ;;
esac
