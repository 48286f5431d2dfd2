#!/usr/bin/env bash
# Build the local base image every inference image (and the gateway) starts
# FROM. No image registry can be pulled from, so the root filesystem is made
# with Debian's debootstrap from the apt mirror this machine already uses and
# turned into an image with `docker import`.
#
# Idempotent: exits at once when the image exists. Prints the image reference
# on stdout (progress goes to stderr), so callers can do
#   base="$(scripts/base-image.sh)"
# MLDEPLOY_BASE_IMAGE=<ref> means "use my own base image": it is only checked.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
log() { printf '[base-image] %s\n' "$*" >&2; }

SUITE=bookworm
REPO=mldeploy/base
LABEL_KEY=mldeploy.base
INCLUDE=python3,python3-venv,ca-certificates,nginx-light
CACHE_DIR="$MLDEPLOY_CACHE/base"

# A user's own base image: never build, only check that it is there.
if [ -n "${MLDEPLOY_BASE_IMAGE:-}" ]; then
  if docker image inspect "$MLDEPLOY_BASE_IMAGE" >/dev/null 2>&1; then
    log "using MLDEPLOY_BASE_IMAGE=$MLDEPLOY_BASE_IMAGE"
    printf '%s\n' "$MLDEPLOY_BASE_IMAGE"
    exit 0
  fi
  log "MLDEPLOY_BASE_IMAGE=$MLDEPLOY_BASE_IMAGE is not a local image (no registry can be pulled from: build or load it first)"
  exit 1
fi

# Fast path: an image we imported earlier, found by its label (the tag holds
# the Python version, which is only known once the rootfs exists).
existing="$(docker images --filter "label=$LABEL_KEY=$SUITE" --format '{{.Repository}}:{{.Tag}}' | grep "^$REPO:$SUITE-py" | head -1 || true)"
if [ -n "$existing" ]; then
  printf '%s\n' "$existing"
  exit 0
fi

mkdir -p "$CACHE_DIR"
tarball="$(ls -1 "$CACHE_DIR"/"$SUITE"-py*.tar.gz 2>/dev/null | head -1 || true)"

if [ -z "$tarball" ]; then
  [ "$(id -u)" = 0 ] || { log "debootstrap needs root; run as root or set MLDEPLOY_BASE_IMAGE"; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    apt-get update -qq >/dev/null
    apt-get install -y -qq debootstrap >/dev/null
  fi
  # The mirror this machine's apt uses: the first deb822 stanza (or one-line
  # entry) serving the plain suite. Never hard-coded.
  mirror="$(awk -v suite="$SUITE" '
    /^[[:space:]]*$/ { if (uris != "" && ok) { print uris; exit } uris=""; ok=0; next }
    /^URIs:/   { uris=$2 }
    /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) ok=1 }
    END { if (uris != "" && ok) print uris }' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)"
  if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
    mirror="$(awk -v suite="$SUITE" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { if ($(i+1) == suite) { print $i; exit } } }' /etc/apt/sources.list)"
  fi
  [ -n "$mirror" ] || { log "no apt mirror for $SUITE found in /etc/apt/sources.list.d/debian.sources"; exit 1; }
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  keyopt=(); [ -f "$keyring" ] && keyopt=(--keyring="$keyring")

  work="$(mktemp -d "$CACHE_DIR/.build.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  log "debootstrap --variant=minbase $SUITE (+ $INCLUDE); this takes a few minutes"
  if ! debootstrap --variant=minbase --include="$INCLUDE" "${keyopt[@]}" \
        "$SUITE" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
    log "debootstrap failed; last lines of its log:"
    tail -30 "$work/debootstrap.log" >&2
    [ -f "$work/rootfs/debootstrap/debootstrap.log" ] && tail -30 "$work/rootfs/debootstrap/debootstrap.log" >&2
    exit 1
  fi
  root="$work/rootfs"
  # The Python minor version goes into the tag, read from the rootfs itself.
  pyver="$(readlink "$root/usr/bin/python3" | sed -n 's/^python\([0-9]*\.[0-9]*\)$/\1/p')"
  [ -n "$pyver" ] || { log "cannot tell the Python version of the rootfs (/usr/bin/python3 -> $(readlink "$root/usr/bin/python3"))"; exit 1; }
  log "rootfs has python $pyver; cleaning apt lists and caches"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
         "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
         "$root"/tmp/* "$root"/debootstrap
  # Services must not start in image builds; a container has no init anyway.
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"; chmod 755 "$root/usr/sbin/policy-rc.d"
  log "packing the rootfs"
  tar --numeric-owner -C "$root" -czf "$work/rootfs.tar.gz" .
  tarball="$CACHE_DIR/$SUITE-py$pyver.tar.gz"
  mv "$work/rootfs.tar.gz" "$tarball"
  rm -rf "$work"; trap - EXIT
fi

pyver="$(basename "$tarball" .tar.gz)"; pyver="${pyver#"$SUITE"-py}"
tag="$REPO:$SUITE-py$pyver"
log "importing $tarball as $tag"
docker import \
  --change 'CMD ["python3"]' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL $LABEL_KEY=$SUITE" \
  --change "LABEL mldeploy.python=$pyver" \
  --change "LABEL mldeploy.packages=$INCLUDE" \
  --change 'LABEL org.opencontainers.image.description="Debian minbase + python3, venv, nginx-light; built by scripts/base-image.sh"' \
  "$tarball" "$tag" >/dev/null
log "built $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
printf '%s\n' "$tag"
