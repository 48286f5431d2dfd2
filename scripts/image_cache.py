"""The machine's cache of dependency images (one per resolved wheel set): list it, prune it.

    python scripts/stack.py image-cache list
    python scripts/stack.py image-cache prune               # down to the cap (MLDEPLOY_ENV_CACHE_MAX_MB)
    python scripts/stack.py image-cache prune --max-mb 2048 # down to 2 GiB, least recently used first
    python scripts/stack.py image-cache prune --all         # every entry that no image or container uses

`destroy` never touches this cache; a warm `up` builds only the source layers on
top of a cached entry. Entries still used by an image or a container are kept
and listed as in use.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def _age(ts: float) -> str:
    s = max(0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit} ago"
    return f"{s:.0f}s ago"


def main(argv: list[str] | None = None, cache: Any = None) -> int:
    """`cache` is an `EnvCache` (a test hands in one over a fake Docker API)."""
    parser = argparse.ArgumentParser(prog="stack.py image-cache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the entries, most recently used first")
    prune = sub.add_parser("prune", help="remove least-recently-used entries")
    group = prune.add_mutually_exclusive_group()
    group.add_argument("--max-mb", type=int, help="keep at most this many MiB (default: the cap)")
    group.add_argument("--all", action="store_true", help="remove every entry not in use")
    args = parser.parse_args(argv)
    if getattr(args, "max_mb", None) is not None and args.max_mb < 0:
        parser.error("--max-mb must be 0 or more")

    from mldeploy.providers.images import env_cache

    if cache is None:
        import docker

        try:
            cache = env_cache.EnvCache(docker.APIClient(version="auto", timeout=120))
        except ValueError as exc:  # a bad MLDEPLOY_ENV_CACHE_MAX_MB
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.command == "list":
        entries = cache.entries()
        total = sum(e.size for e in entries)
        print(f"{len(entries)} environment image(s), {_mb(total)} of a {_mb(cache.max_bytes)} cap ({cache.root})")
        for e in entries:
            print(f"  {e.tag}  {_mb(e.size):>8}  {e.wheels:3d} wheels  used {_age(e.last_used)}  base {e.base_image}")
        return 0
    limit = 0 if args.all else (args.max_mb * 1024 * 1024 if args.max_mb is not None else None)
    plan = cache.prune(limit)
    for e in plan.evict:
        print(f"removed {e.tag} ({_mb(e.size)}, used {_age(e.last_used)})")
    for e in plan.kept_in_use:
        print(f"kept {e.tag} ({_mb(e.size)}): an image or container still uses it")
    print(f"{len(plan.evict)} removed, {_mb(sum(e.size for e in plan.evict))} freed; {_mb(plan.total_after)} left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
