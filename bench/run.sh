#!/usr/bin/env bash
# Benchmarks, in one run on this machine: deploy, roll and serve, next to the
# bare scoring server. Writes bench/results/<UTC timestamp>.md and
# bench/results/latest.md, and prints the table.
#
#   bash bench/run.sh              # the full run (3 runs of each timing)
#   bash bench/run.sh --quick      # 1 run each, scale up to 5 services: checks the harness
#   bash bench/run.sh --only serve # serving only: bare azmlinfsrv vs cpu_cores 1 and 2, under wrk
#   bash bench/run.sh --help       # every option
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
case " $* " in
  *" -h "*|*" --help "*) ;;
  *) bash "$ROOT/scripts/setup.sh" ;;  # idempotent: a few seconds when all is there
esac
# The serving load generator: Debian's wrk (C, event loop), installed once.
case " $* " in
  *" -h "*|*" --help "*) ;;
  *)
    if ! command -v wrk >/dev/null; then
      if [ "$(id -u)" = 0 ]; then
        echo "[bench] installing wrk (Debian package)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
      else
        echo "[bench] wrk is missing and installing it needs root: sudo apt-get install -y wrk" >&2
        exit 1
      fi
    fi
    ;;
esac
source "$ROOT/scripts/env.sh"
cd "$ROOT"
exec python "$HERE/bench.py" "$@"
