# Sourced by scripts/k8s/cluster.sh and registry.sh: packages, background
# processes with real PIDs, and graceful stops.
# shellcheck shell=bash

# ensure_packages PKG... : install the Debian packages that are missing
# (apt-get update first, only when one is). Services a package ships are
# never started by the install (policy-rc.d), so nothing listens beyond what
# our scripts start.
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || { log "missing Debian packages: ${missing[*]} (installing them needs root)"; return 1; }
  log "installing Debian packages: ${missing[*]}"
  local made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made_policy=1
  fi
  local rc=0 out
  out="$(mktemp)"
  { DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$out" 2>&1 || rc=$?
  [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
  if [ "$rc" -ne 0 ]; then log "apt-get failed ($rc):"; tail -20 "$out" >&2; fi
  rm -f "$out"
  return "$rc"
}

# pid_alive FILE [PATTERN] : the PID recorded in FILE runs, and its command
# line contains PATTERN (guards against a recycled PID).
pid_alive() {
  local file="$1" pattern="${2:-}" pid
  [ -s "$file" ] || return 1
  pid="$(cat "$file")"
  [ -d "/proc/$pid" ] || return 1
  # A zombie has exited already.
  [ "$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null)" != "Z" ] || return 1
  [ -z "$pattern" ] && return 0
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$pattern"
}

# take_lock FILE : serialise up/down across processes (fd 9, released at exit).
take_lock() {
  mkdir -p "$(dirname "$1")"
  exec 9>"$1"
  flock -w 600 9 || { log "another up/down holds $1"; exit 1; }
}

# start_bg PIDFILE LOGFILE CMD ARGS... : run CMD in a session of its own,
# detached from ours, and record its real PID (setsid execs in place: a
# background job of a non-interactive shell is never a group leader).
start_bg() {
  local pidfile="$1" logfile="$2"; shift 2
  # No descriptor of ours reaches a daemon: not fd 9 (cluster.sh's own lock), nor
  # the one `flock /tmp/k8s.lock cluster.sh up` holds its lock on (the daemon
  # would keep that lock for as long as it runs). The subshell execs setsid, and
  # setsid the command, so $! stays its PID.
  (
    for fd in /proc/self/fd/*; do fd="${fd##*/}"; [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done 2>/dev/null
    exec setsid "$@" </dev/null >>"$logfile" 2>&1
  ) &
  echo "$!" >"$pidfile"
}

# stop_pid FILE NAME [PATTERN] : SIGTERM, wait up to 30 s, then SIGKILL.
stop_pid() {
  local file="$1" name="$2" pattern="${3:-}" pid i
  if ! pid_alive "$file" "$pattern"; then rm -f "$file"; return 0; fi
  pid="$(cat "$file")"
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 300); do
    pid_alive "$file" "$pattern" || { rm -f "$file"; return 0; }
    sleep 0.1
  done
  log "$name did not exit within 30 s of SIGTERM: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do
    pid_alive "$file" "$pattern" || break
    sleep 0.1
  done
  rm -f "$file"
}

# wait_until SECONDS WHAT CMD... : poll CMD every 0.2 s.
wait_until() {
  local secs="$1" what="$2"; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$end" ]; then log "timed out after ${secs}s waiting for $what"; return 1; fi
    sleep 0.2
  done
}
