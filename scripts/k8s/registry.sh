#!/usr/bin/env bash
# The local image registry that stands in for Azure Container Registry:
# Debian's docker-registry (distribution 2.8) on 127.0.0.1:5000, plain HTTP,
# no auth, deletes enabled, storage under $MLDEPLOY_CACHE/registry.
#
#   scripts/k8s/registry.sh up       # idempotent
#   scripts/k8s/registry.sh down     # stops it; the stored images stay
#   scripts/k8s/registry.sh status   # exit 0 when it answers
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../env.sh"
log() { printf '[registry] %s\n' "$*" >&2; }
source "$HERE/lib.sh"

ADDR="127.0.0.1:5000"
DIR="$MLDEPLOY_CACHE/registry"
CONF="$DIR/config.yml"
PIDF="$DIR/registry.pid"
LOGF="$DIR/registry.log"
BIN=/usr/bin/docker-registry

answers() { curl -fs --max-time 2 -o /dev/null "http://$ADDR/v2/"; }
ours() { pid_alive "$PIDF" "$BIN serve $CONF"; }

up() {
  ensure_packages docker-registry curl
  if ours && answers; then log "already up on $ADDR (pid $(cat "$PIDF"))"; return 0; fi
  if ! ours && answers; then
    log "something else answers on $ADDR; not starting a second registry"; return 1
  fi
  mkdir -p "$DIR/storage"
  # Uploads are signed with this; kept across restarts so none breaks mid-push.
  [ -s "$DIR/http.secret" ] || (umask 077; openssl rand -hex 32 >"$DIR/http.secret")
  (umask 077; cat >"$CONF.new") <<EOF
# Written by scripts/k8s/registry.sh: the local stand-in for Azure Container Registry.
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $DIR/storage
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: $ADDR
  secret: $(cat "$DIR/http.secret")
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: false
EOF
  mv "$CONF.new" "$CONF"
  ours || start_bg "$PIDF" "$LOGF" "$BIN" serve "$CONF"
  log "starting docker-registry on $ADDR (pid $(cat "$PIDF"), log $LOGF)"
  if ! wait_until 20 "the registry on $ADDR" answers; then
    tail -20 "$LOGF" >&2; return 1
  fi
  log "up: http://$ADDR (storage $DIR/storage)"
}

down() {
  stop_pid "$PIDF" docker-registry "$BIN serve $CONF"
  log "down"
}

status() {
  if ours && answers; then
    echo "registry: running (pid $(cat "$PIDF")) on http://$ADDR, storage $DIR/storage"
    return 0
  fi
  if ours; then echo "registry: process $(cat "$PIDF") runs but $ADDR does not answer"; return 1; fi
  echo "registry: not running"
  return 3
}

case "${1:-}" in
  up) take_lock "$DIR.lock"; up ;;
  down) take_lock "$DIR.lock"; down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
