#!/usr/bin/env bash
# The local image registry that stands in for Azure Container Registry:
# Debian's docker-registry (distribution 2.8), two processes on one storage
# folder ($MLDEPLOY_CACHE/registry/storage), both on 127.0.0.1, plain HTTP:
#
#   127.0.0.1:5000  pulls without credentials (the cluster's containerd, dockerd,
#                   the edge device) and nothing else: the storage is read-only
#                   there, so pushes and deletes are refused (405 UNSUPPORTED).
#   127.0.0.1:5001  the same images, every request with the project's own
#                   credentials (htpasswd, bcrypt): pushes and deletes. The
#                   credentials are in $MLDEPLOY_CACHE/registry/credentials.json
#                   (0600), which mldeploy.providers.image_registry.oci_registry
#                   reads to push to and delete from the local registry.
#
# A registry set up by an earlier release (5000 writable) is restarted
# read-only by `up`, because its config changes.
#
# Neither caches blob descriptors in memory, so a delete through one is seen
# by the other at once.
#
#   scripts/k8s/registry.sh up       # idempotent; restarts a process whose config changed
#   scripts/k8s/registry.sh down     # stops both; the stored images stay
#   scripts/k8s/registry.sh status   # exit 0 when both answer
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../env.sh"
log() { printf '[registry] %s\n' "$*" >&2; }
source "$HERE/lib.sh"

ADDR="127.0.0.1:5000"
ADMIN_ADDR="127.0.0.1:5001"
USER_NAME="mldeploy"
DIR="$MLDEPLOY_CACHE/registry"
CONF="$DIR/config.yml" ADMIN_CONF="$DIR/admin.yml"
PIDF="$DIR/registry.pid" ADMIN_PIDF="$DIR/registry-admin.pid"
LOGF="$DIR/registry.log" ADMIN_LOGF="$DIR/registry-admin.log"
CREDS="$DIR/credentials.json" HTPASSWD="$DIR/htpasswd"
BIN=/usr/bin/docker-registry

answers() { curl -fs --max-time 2 -o /dev/null "http://$ADDR/v2/"; }
# Without credentials the admin listener answers 401, and only then.
admin_answers() { [ "$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "http://$ADMIN_ADDR/v2/")" = 401 ]; }
ours() { pid_alive "$PIDF" "$BIN serve $CONF"; }
admin_ours() { pid_alive "$ADMIN_PIDF" "$BIN serve $ADMIN_CONF"; }

# config ADDR WRITABLE [AUTH] : a docker-registry config on stdout.
config() {
  cat <<EOF
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
    enabled: $2
  maintenance:
    readonly:
      enabled: $([ "$2" = true ] && echo false || echo true)
http:
  addr: $1
  secret: $(cat "$DIR/http.secret")
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: false
EOF
  if [ -n "${3:-}" ]; then
    cat <<EOF
auth:
  htpasswd:
    realm: mldeploy-local-registry
    path: $HTPASSWD
EOF
  fi
}

# bcrypt's work factor slows a search for a guessable password; this one is 192 random bits, out of
# any search's reach at any cost. The registry checks it on every request with credentials: at
# htpasswd's usual cost (10) that took 74 ms of CPU a request, about 100 CPU-s in a CI run; at 4,
# bcrypt's least, about 1 ms.
BCRYPT_COST=04
REHASHED=""

# credentials : the project's user and password, made once (0600); hashed again at BCRYPT_COST
# when an earlier release hashed it at another cost (the password stays).
credentials() {
  local pw
  if [ -s "$CREDS" ] && [ -s "$HTPASSWD" ]; then
    grep -q "^$USER_NAME:\\\$2[aby]\\\$$BCRYPT_COST\\\$" "$HTPASSWD" && return 0
    pw="$(sed -n 's/.*"password": "\([0-9a-f]*\)".*/\1/p' "$CREDS")"
    [ -n "$pw" ] || { log "no password in $CREDS: remove it and $HTPASSWD to make new credentials"; return 1; }
    (umask 077; printf '%s\n' "$pw" | htpasswd -niB -C "$BCRYPT_COST" "$USER_NAME" >"$HTPASSWD.new")
    mv "$HTPASSWD.new" "$HTPASSWD"; REHASHED=1
    log "hashed the registry password again at bcrypt cost $BCRYPT_COST ($HTPASSWD)"
    return 0
  fi
  pw="$(openssl rand -hex 24)"
  ( umask 077
    printf '%s\n' "$pw" | htpasswd -niB -C "$BCRYPT_COST" "$USER_NAME" >"$HTPASSWD.new"
    printf '{"address": "%s", "username": "%s", "password": "%s"}\n' "$ADMIN_ADDR" "$USER_NAME" "$pw" >"$CREDS.new" )
  mv "$HTPASSWD.new" "$HTPASSWD"; mv "$CREDS.new" "$CREDS"
  log "made the project's registry credentials ($CREDS)"
}

# serve NAME FILE ADDR PIDFILE LOGFILE CHECK : (re)start one process when its config changed or it is not running.
serve() {
  local name="$1" file="$2" addr="$3" pidf="$4" logf="$5" check="$6"
  if [ -f "$file" ] && cmp -s "$file" "$file.new"; then
    rm -f "$file.new"
    if pid_alive "$pidf" "$BIN serve $file" && "$check"; then return 0; fi
  else
    mv "$file.new" "$file"
    pid_alive "$pidf" "$BIN serve $file" && { log "the config of $name changed: restarting it"; stop_pid "$pidf" "$name" "$BIN serve $file"; }
  fi
  if ! pid_alive "$pidf" "$BIN serve $file"; then
    if curl -s --max-time 2 -o /dev/null "http://$addr/v2/"; then
      log "something else answers on $addr; not starting a second registry"; return 1
    fi
    start_bg "$pidf" "$logf" "$BIN" serve "$file"
    log "starting $name on $addr (pid $(cat "$pidf"), log $logf)"
  fi
  if ! wait_until 20 "$name on $addr" "$check"; then
    tail -20 "$logf" >&2; return 1
  fi
}

up() {
  ensure_packages docker-registry curl apache2-utils
  mkdir -p "$DIR/storage"; chmod 700 "$DIR"
  # Uploads are signed with this; kept across restarts so none breaks mid-push.
  [ -s "$DIR/http.secret" ] || (umask 077; openssl rand -hex 32 >"$DIR/http.secret")
  credentials
  # A running writes listener would go on checking the old hash: started again below.
  [ -z "$REHASHED" ] || stop_pid "$ADMIN_PIDF" "docker-registry (writes)" "$BIN serve $ADMIN_CONF"
  (umask 077; config "$ADDR" false >"$CONF.new"; config "$ADMIN_ADDR" true auth >"$ADMIN_CONF.new")
  serve docker-registry "$CONF" "$ADDR" "$PIDF" "$LOGF" answers
  serve "docker-registry (writes, with credentials)" "$ADMIN_CONF" "$ADMIN_ADDR" "$ADMIN_PIDF" "$ADMIN_LOGF" admin_answers
  log "up: http://$ADDR (pull only), http://$ADMIN_ADDR (with $CREDS: push and delete); storage $DIR/storage"
}

down() {
  stop_pid "$ADMIN_PIDF" "docker-registry (writes)" "$BIN serve $ADMIN_CONF"
  stop_pid "$PIDF" docker-registry "$BIN serve $CONF"
  log "down"
}

status() {
  local rc=0
  if ours && answers; then echo "registry: running (pid $(cat "$PIDF")) on http://$ADDR, storage $DIR/storage"
  elif ours; then echo "registry: process $(cat "$PIDF") runs but $ADDR does not answer"; rc=1
  else echo "registry: not running"; rc=3; fi
  if admin_ours && admin_answers; then echo "registry writes: running (pid $(cat "$ADMIN_PIDF")) on http://$ADMIN_ADDR, credentials $CREDS"
  else echo "registry writes: not running on $ADMIN_ADDR"; [ "$rc" != 0 ] || rc=3; fi
  return "$rc"
}

case "${1:-}" in
  up) take_lock "$DIR.lock"; up ;;
  down) take_lock "$DIR.lock"; down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
