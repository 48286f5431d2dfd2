"""A model registry on local disk, shaped like Azure ML's: names, immutable versions.

Each version is a copy of the registered file or folder, so later edits to the
source cannot change what a running service loads. A version is kept while
some owner (a stack's resource) still references it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from mldeploy.providers.model_registry.base import NAME_RE, ModelVersion, RegistryError, content_hash, next_version, with_content  # noqa: F401


class ModelRegistry:
    """Thin client over the registry folder; safe across threads and processes."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _meta_path(self, name: str, version: int) -> Path:
        return self.root / name / f"{version}.json"

    def _load(self, name: str, version: int) -> ModelVersion | None:
        meta = self._meta_path(name, version)
        data_dir = self.root / name / str(version)
        if not meta.is_file() or not data_dir.is_dir():
            return None
        try:
            data = json.loads(meta.read_text())
            data["path"] = str(data_dir)
            return ModelVersion(**data)
        except (ValueError, TypeError) as exc:  # empty, cut short, or not a record
            raise RegistryError(f"model {name} version {version}: its record {meta} is empty or broken ({exc}); "
                                "restore it from a backup, or remove that version's record and folder") from None

    def _save(self, mv: ModelVersion) -> None:
        data = asdict(mv)
        data.pop("path")
        meta = self._meta_path(mv.name, mv.version)
        write_atomically(meta, json.dumps(data, indent=2, sort_keys=True))

    def versions(self, name: str) -> list[ModelVersion]:
        """All complete versions of a model, oldest first."""
        folder = self.root / name
        if not folder.is_dir():
            return []
        numbers = sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit())
        found = (self._load(name, n) for n in numbers)
        return [mv for mv in found if mv is not None]

    def get(self, name: str, version: int) -> ModelVersion | None:
        return self._load(name, version)

    @staticmethod
    def _with_content(existing: list[ModelVersion], digest: str, owner: str) -> ModelVersion | None:
        """The version that has this content: the owner's own first, else the newest."""
        return with_content(existing, digest, owner)

    def planned_version(self, name: str, digest: str, owner: str) -> int:
        """The version `register` would give this content now, without writing anything."""
        existing = self.versions(name)
        same = self._with_content(existing, digest, owner)
        if same is not None:
            return same.version
        return next_version(mv.version for mv in existing)

    def register(
        self,
        name: str,
        model_path: str | os.PathLike[str],
        owner: str,
        tags: dict[str, str] | None = None,
        description: str = "",
    ) -> ModelVersion:
        """Register content; a new version (latest + 1) only for content no version has.

        Content a version already has gets that version back: a revert returns to
        the version that had the content, and the same file registered by another
        stack shares its version. (Azure ML's `Model.register` counts up on every
        call; versions here are content-addressed, so a preview can say which.)
        """
        if not NAME_RE.match(name):
            raise RegistryError(f"invalid model name {name!r}: letters, digits, '_', '.', '-'")
        src = Path(model_path)
        digest = content_hash(src)
        with self._locked():
            existing = self.versions(name)
            mv = self._with_content(existing, digest, owner)
            if mv is not None:
                if owner not in mv.owners:
                    mv.owners.append(owner)
                mv.tags, mv.description = dict(tags or {}), description
                self._save(mv)
                return mv
            version = next_version(mv.version for mv in existing)
            folder = self.root / name
            folder.mkdir(parents=True, exist_ok=True)
            staging = staged_copy(src, folder, f".{version}-", digest, f"model {name}: ")
            try:
                final = folder / str(version)
                if final.exists():
                    shutil.rmtree(final)
                os.rename(staging, final)
                os.chmod(final, 0o755)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            mv = ModelVersion(
                name=name,
                version=version,
                content_hash=digest,
                tags=dict(tags or {}),
                description=description,
                owners=[owner],
                created=time.time(),
                path=str(final),
            )
            self._save(mv)
            return mv

    def update_metadata(self, name: str, version: int, tags: dict[str, str], description: str) -> ModelVersion:
        with self._locked():
            mv = self._load(name, version)
            if mv is None:
                raise RegistryError(f"model {name} version {version} is not in the registry at {self.root}")
            mv.tags, mv.description = dict(tags), description
            self._save(mv)
            return mv

    def release(self, name: str, owner: str) -> list[int]:
        """Drop `owner` from every version of `name`; delete versions nobody owns. Idempotent."""
        deleted: list[int] = []
        with self._locked():
            for mv in self.versions(name):
                if owner not in mv.owners:
                    continue
                mv.owners.remove(owner)
                if mv.owners:
                    self._save(mv)
                    continue
                self._meta_path(name, mv.version).unlink(missing_ok=True)
                shutil.rmtree(mv.path, ignore_errors=True)
                deleted.append(mv.version)
            folder = self.root / name
            if folder.is_dir() and not any(p for p in folder.iterdir() if not p.name.startswith(".")):
                shutil.rmtree(folder, ignore_errors=True)
        return deleted


def write_atomically(path: Path, text: str) -> None:
    """Whole or not at all, even across a power cut: a temporary file, fsynced, renamed, the folder fsynced."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def is_remote(location: str | None) -> bool:
    """Whether a registry location is a shared one in Blob Storage (`azblob://…`), not a folder."""
    return bool(location) and str(location).startswith("azblob://")


def open_registry(location: str, root: Path | None = None):
    """The registry a location names: a folder (relative to the project) or `azblob://<container>[/<prefix>]?…`.

    Both have one interface (`versions`, `get`, `planned_version`, `register`,
    `update_metadata`, `release`); only the folder one is on this machine alone.
    """
    if is_remote(location):
        from mldeploy.providers.model_registry.blob_registry import BlobModelRegistry

        return BlobModelRegistry.from_url(location)
    from mldeploy.providers.core.paths import local

    return ModelRegistry(local(location, root))


def staged_copy(src: Path, parent: Path, prefix: str, digest: str, what: str = "") -> Path:
    """A copy of `src` in a new staging folder under `parent`, checked against `digest`.

    The caller renames the folder into place, so a crash never leaves half a version.
    """
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        if src.is_file():
            shutil.copy2(src, staging / src.name)
        else:
            shutil.copytree(src, staging / src.name)
        if content_hash(staging / src.name) != digest:
            raise RegistryError(f"{what}{src} changed while it was being copied")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def materialize(src: str | os.PathLike[str], dest: str | os.PathLike[str], digest: str) -> Path:
    """A copy of `src` at `dest/<src name>`, for services to mount; nothing to do when it is there already.

    Used with the shared registry: a service on this machine mounts a local copy of
    the version's content, which is this checkout's model file (the version follows
    the content). Made whole in a staging folder, checked, then renamed.
    """
    src, dest = Path(src), Path(dest)
    if dest.is_dir() and (dest / src.name).exists() and content_hash(dest / src.name) == digest:
        return dest
    if content_hash(src) != digest:
        raise RegistryError(f"{src} does not hold content {digest}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = staged_copy(src, dest.parent, f".{dest.name}-", digest)
    try:
        os.chmod(staging, 0o755)
        if dest.exists():
            shutil.rmtree(dest)
        try:
            os.rename(staging, dest)
        except OSError:
            if not (dest / src.name).exists():  # another process put the same content there first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest
