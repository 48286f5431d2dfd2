"""The machine's cache of dependency images: one image per resolved wheel set.

An inference image is `FROM` a dependency image (the base plus the installed
environment, one layer). Many stacks and many image versions share one, and
`destroy` never removes it, so a stack whose wheel set was installed before on
this machine builds only its small source layers. Entries are kept under a size
cap with least-recently-used eviction; `python scripts/stack.py image-cache`
lists and prunes them.

The index (`<MLDEPLOY_CACHE>/env-images/index.json`) records when each entry was
last used; Docker holds the images. Planning (`plan_eviction`) is pure; `EnvCache`
does the I/O through a Docker API client handed in (a fake in unit tests).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from mldeploy.providers.images.wheelhouse import cache_root

REPOSITORY = "mldeploy-cache/env"
"""Where dependency images are tagged: `mldeploy-cache/env:<key[:24]>`."""
LABEL = "mldeploy.env-cache"
"""Label on every dependency image; its value is the full cache key."""
ROOT_LABEL = "mldeploy.env-cache.root"
"""The index folder of the cache that made the image: a cache adopts only its own images."""
RECIPE = "venv-commit-v3-uv-compileall"
"""Changes when the way an environment is installed changes, so old entries are not reused."""
IN_FLIGHT_SECONDS = 600
"""An entry used this recently is not evicted automatically: a build may be starting FROM it."""
DEFAULT_MAX_MB = 6144
"""The cap when MLDEPLOY_ENV_CACHE_MAX_MB is unset: about a dozen wheel sets of the sample's size."""


def cache_dir() -> Path:
    return cache_root() / "env-images"


def max_bytes_from_env() -> int:
    """MLDEPLOY_ENV_CACHE_MAX_MB, a whole number of MiB (0 keeps only what is in use)."""
    raw = os.environ.get("MLDEPLOY_ENV_CACHE_MAX_MB", "").strip()
    if not raw:
        return DEFAULT_MAX_MB * 1024 * 1024
    try:
        mb = int(raw)
    except ValueError:
        raise ValueError(f"MLDEPLOY_ENV_CACHE_MAX_MB={raw!r} is not a whole number of MiB") from None
    if mb < 0:
        raise ValueError(f"MLDEPLOY_ENV_CACHE_MAX_MB={raw!r} must be 0 or more")
    return mb * 1024 * 1024


def env_key(base_image_id: str, python_version: str, wheels: Sequence[tuple[str, str]]) -> str:
    """The cache key: the base image's id, its Python, and the resolved wheel set (name, sha256).

    Order does not matter (pip installs a set); the recipe is part of it.
    """
    h = hashlib.sha256()
    for part in (RECIPE, base_image_id, python_version, *(f"{n} {d}" for n, d in sorted(wheels))):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def tag_for(key: str, repository: str = REPOSITORY) -> str:
    return f"{repository}:{key[:24]}"


@dataclass
class Entry:
    """One dependency image in the cache."""

    key: str
    """The full cache key (`env_key`)."""
    tag: str
    image_id: str
    size: int
    """Bytes the environment layer adds to the base (what evicting it frees)."""
    created: float
    last_used: float
    wheels: int = 0
    base_image: str = ""


@dataclass
class EvictionPlan:
    """What `plan_eviction` decided."""

    evict: list[Entry] = field(default_factory=list)
    """Least recently used first."""
    kept_in_use: list[Entry] = field(default_factory=list)
    """Would have been evicted, but an image or container still uses them."""
    total_after: int = 0
    """Bytes of the entries that stay."""


def plan_eviction(entries: Sequence[Entry], max_bytes: int, keep: set[str] = frozenset(),
                  in_use: set[str] = frozenset(), used_after: float = float("inf")) -> EvictionPlan:
    """Evict least-recently-used entries until the rest fit in `max_bytes`.

    `keep` (keys) is never evicted: the entry a build just made or used; nor is an entry
    used after `used_after` (a build may be about to start FROM it).
    `in_use` (image ids) cannot be: an image built on it, or a container, still needs its layers.
    """
    plan = EvictionPlan()
    total = sum(e.size for e in entries)
    for entry in sorted(entries, key=lambda e: (e.last_used, e.created, e.key)):
        if total <= max_bytes:
            break
        if entry.key in keep or entry.last_used > used_after:
            continue
        if entry.image_id in in_use:
            plan.kept_in_use.append(entry)
            continue
        plan.evict.append(entry)
        total -= entry.size
    plan.total_after = total
    return plan


class EnvCache:
    """The index plus Docker: look up, record, evict, prune. Takes a `docker.APIClient` (or a fake)."""

    def __init__(self, api: Any, root: Path | None = None, repository: str = REPOSITORY,
                 max_bytes: int | None = None, clock: Any = time.time):
        self.api = api
        self.root = root or cache_dir()
        self.repository = repository
        self.max_bytes = max_bytes_from_env() if max_bytes is None else max_bytes
        self.clock = clock

    # --- index -------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, key: str | None = None) -> Iterator[None]:
        """The index's lock (short), or with `key` that key's install lock (long): two stacks
        deploying the same wheel set install it once; other keys install meanwhile."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / (f".lock-{key[:24]}" if key else ".lock"), "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _index_path(self) -> Path:
        return self.root / "index.json"

    def _load(self) -> dict[str, Entry]:
        try:
            raw = json.loads(self._index_path().read_text())
        except (OSError, ValueError):
            return {}
        out: dict[str, Entry] = {}
        for item in raw.get("entries", []):
            with contextlib.suppress(TypeError):
                entry = Entry(**item)
                out[entry.key] = entry
        return out

    def _save(self, entries: dict[str, Entry]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self._index_path().with_suffix(".tmp")
        tmp.write_text(json.dumps({"entries": [asdict(e) for e in entries.values()]}, indent=1))
        os.replace(tmp, self._index_path())

    def _image_id(self, ref: str) -> str | None:
        import docker.errors

        try:
            return self.api.inspect_image(ref)["Id"]
        except docker.errors.ImageNotFound:
            return None

    def _reconciled(self) -> dict[str, Entry]:
        """The index, less entries whose image is gone, plus labelled images it lost track of."""
        entries = {k: e for k, e in self._load().items() if self._image_id(e.tag) == e.image_id}
        known = {e.image_id for e in entries.values()}
        for img in self.api.images(filters={"label": LABEL}):
            labels = img.get("Labels") or {}
            key = labels.get(LABEL, "")
            tags = [t for t in img.get("RepoTags") or [] if t.startswith(self.repository + ":")]
            if not key or not tags or img["Id"] in known or labels.get(ROOT_LABEL) != str(self.root):
                continue
            created = float(img.get("Created") or 0)
            entries[key] = Entry(key, tags[0], img["Id"], int(img.get("Size") or 0), created, created)
        return entries

    # --- use ---------------------------------------------------------------

    def lookup(self, key: str) -> Entry | None:
        """The entry for `key` if its image is present; marks it used now. Call under `locked()`."""
        entries = self._reconciled()
        entry = entries.get(key)
        if entry is None:
            self._save(entries)
            return None
        entry.last_used = self.clock()
        self._save(entries)
        return entry

    def record(self, entry: Entry) -> EvictionPlan:
        """Add a new entry, then evict least-recently-used others over the cap. Call under `locked()`."""
        entries = self._reconciled()
        entries[entry.key] = entry
        plan = self._evict(entries, self.max_bytes, keep={entry.key}, used_after=self.clock() - IN_FLIGHT_SECONDS)
        self._save(entries)
        return plan

    def entries(self) -> list[Entry]:
        with self.locked():
            entries = self._reconciled()
            self._save(entries)
        return sorted(entries.values(), key=lambda e: e.last_used, reverse=True)

    def prune(self, max_bytes: int | None = None) -> EvictionPlan:
        """Evict down to `max_bytes` (the cap when None; 0 removes every entry not in use)."""
        with self.locked():
            entries = self._reconciled()
            plan = self._evict(entries, self.max_bytes if max_bytes is None else max_bytes, keep=set())
            self._save(entries)
        return plan

    def _in_use(self) -> set[str]:
        """Image ids that an image (its child) or a container still needs."""
        used = {img.get("ParentId") for img in self.api.images(all=True)}
        used |= {c.get("ImageID") for c in self.api.containers(all=True)}
        return {u for u in used if u}

    def _evict(self, entries: dict[str, Entry], max_bytes: int, keep: set[str],
               used_after: float = float("inf")) -> EvictionPlan:
        if sum(e.size for e in entries.values()) <= max_bytes:
            return EvictionPlan(total_after=sum(e.size for e in entries.values()))
        plan = plan_eviction(list(entries.values()), max_bytes, keep, self._in_use(), used_after)
        import docker.errors

        for entry in list(plan.evict):
            try:
                # By id, so a tag that another build just moved is never mistaken for it.
                self.api.remove_image(entry.image_id, force=False, noprune=False)
            except docker.errors.ImageNotFound:
                pass
            except docker.errors.APIError as exc:
                if getattr(exc, "status_code", None) != 409:
                    raise
                plan.evict.remove(entry)  # something started using it meanwhile
                plan.kept_in_use.append(entry)
                continue
            entries.pop(entry.key, None)
        plan.total_after = sum(e.size for e in entries.values())
        return plan


def record_build(kind: str, name: str, seconds: float, root: Path | None = None, **extra: Any) -> None:
    """Append one line to `<cache>/env-images/builds.jsonl`: how many builds a deploy caused, and how long.

    Provider processes come and go with each `up`; this file is how a test or the
    bench counts builds across them. Kept under 1 MB (the older half is dropped).
    """
    path = (root or cache_dir()) / "builds.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"kind": kind, "name": name, "seconds": round(seconds, 3), "at": time.time(), **extra})
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(line + "\n")
    with contextlib.suppress(OSError):
        if path.stat().st_size > 1_000_000:
            lines = path.read_text().splitlines()
            path.write_text("\n".join(lines[len(lines) // 2:]) + "\n")


def read_builds(root: Path | None = None, since: float = 0.0) -> list[dict[str, Any]]:
    """The build records since a time (seconds since the epoch)."""
    path = (root or cache_dir()) / "builds.jsonl"
    out: list[dict[str, Any]] = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if rec.get("at", 0) >= since:
                    out.append(rec)
    return out
