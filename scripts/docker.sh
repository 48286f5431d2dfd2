#!/usr/bin/env bash
# Make sure a Docker engine answers: install Debian's docker.io and start
# dockerd in the background (log in the cache) when none does.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
log() { printf '[docker] %s\n' "$*" >&2; }
docker info >/dev/null 2>&1 && exit 0
if ! command -v dockerd >/dev/null; then
  [ "$(id -u)" = 0 ] || { log "no Docker engine answers and installing one needs root; install Docker and retry"; exit 1; }
  log "installing docker.io"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq docker.io >/dev/null
fi
command -v docker >/dev/null || { log "docker client missing after install"; exit 1; }
[ "$(id -u)" = 0 ] || { log "dockerd is installed but not running, and starting it needs root"; exit 1; }
mkdir -p "$MLDEPLOY_CACHE"
log "starting dockerd (log: $MLDEPLOY_CACHE/dockerd.log)"
nohup dockerd >>"$MLDEPLOY_CACHE/dockerd.log" 2>&1 </dev/null &
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && { log "dockerd is up"; exit 0; }
  sleep 1
done
log "dockerd did not answer within 60s; last lines of its log:"
tail -20 "$MLDEPLOY_CACHE/dockerd.log" >&2
exit 1
