"""The model registry on Azure Blob Storage: what every operator and CI runner of a stack shares.

Same interface and the same version rules as the folder registry
(`mldeploy.providers.model_registry.registry.ModelRegistry`): immutable versions that follow
content. What a folder lock did there, conditional requests do here:

- A version is claimed by creating its record blob `<name>/versions/<N>.json`
  with `If-None-Match: *`. Storage accepts one create per name, so two runners
  registering at once cannot both get version N: the loser re-reads and takes
  N+1 (or the winner's version, when the content is the same).
- A record moves `uploading` → `complete` → `deleting`, each step a write with
  `If-Match: <etag>` of the record read, so no change is lost to a concurrent one.
  Only `complete` versions are found; files are uploaded under `<name>/<N>/`
  before the record says `complete`, and deleted only after it says `deleting`.

Layout, under the URL's optional prefix:

    <name>/versions/<N>.json   record (JSON body; metadata content_hash, state, owners)
    <name>/<N>/<file or folder name>/...   the files, as the folder registry copies them
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from mldeploy.providers.model_registry import base
from mldeploy.providers.model_registry.base import NAME_RE, ModelVersion, RegistryError, content_hash

UPLOADING, COMPLETE, DELETING = "uploading", "complete", "deleting"
STALE_CLAIM_SECONDS = 600.0
"""An `uploading` claim this old is taken as abandoned (its runner died): its content may be adopted."""
MAX_CLOCK_SKEW_SECONDS = 300
"""How far ahead of this runner's clock another runner's claim may be dated and still be live."""
MAX_ATTEMPTS = 200


@dataclass(frozen=True)
class Entry:
    """One version record as a listing shows it (no body read)."""

    version: int
    content_hash: str
    state: str
    owners: tuple[str, ...]
    created: float
    etag: str


def entry_from_listing(name: str, blob_name: str, metadata: dict[str, str] | None, etag: str) -> Entry | None:
    """Parse a listed record blob; None for anything that is not `<N>.json` with our metadata."""
    stem = blob_name.rsplit("/", 1)[-1]
    if not stem.endswith(".json") or not stem[:-5].isdigit():
        return None
    md = {k.lower(): v for k, v in (metadata or {}).items()}
    try:
        owners = tuple(json.loads(md.get("owners") or "[]"))
        created = float(md.get("created") or 0)
    except (ValueError, TypeError):
        return None
    return Entry(int(stem[:-5]), md.get("content_hash", ""), md.get("state", ""), owners, created, etag)


def next_version(entries: Iterable[Entry]) -> int:
    """The number a new version claims: above every record, whatever its state."""
    return base.next_version(e.version for e in entries)


def with_content(entries: Iterable[Entry], digest: str, owner: str) -> Entry | None:
    """The complete version that has this content: the owner's own first, else the newest."""
    return base.with_content((e for e in entries if e.state == COMPLETE), digest, owner)


def pending_claim(entries: Iterable[Entry], digest: str, now: float) -> Entry | None:
    """A live `uploading` claim of the same content: another runner is registering it right now."""
    # A claim dated further ahead than runners' clocks drift apart is no live claim: waiting for it would never end.
    live = [e for e in entries if e.state == UPLOADING and e.content_hash == digest
            and -MAX_CLOCK_SKEW_SECONDS <= now - e.created < STALE_CLAIM_SECONDS]
    return min(live, key=lambda e: e.version) if live else None


def _files(src: Path) -> list[tuple[Path, str]]:
    """(file, path below the version folder) for a file or a folder, as the folder registry lays them out."""
    if src.is_file():
        return [(src, src.name)]
    return [(f, f"{src.name}/{f.relative_to(src).as_posix()}") for f in sorted(p for p in src.rglob("*") if p.is_file())]


class BlobModelRegistry:
    """Thin client over a container (any object with ContainerClient's methods: the test seam)."""

    def __init__(self, container: Any, prefix: str = "", where: str = "", sleep: Callable[[float], None] = time.sleep):
        self.container = container
        self.prefix = prefix
        self.where = where or getattr(container, "url", "blob container")
        self._sleep = sleep

    @classmethod
    def from_url(cls, url: str, environ: Any = os.environ) -> "BlobModelRegistry":
        from mldeploy.providers.core.blob_store import BlobLocationError, container_client, parse_blob_url

        try:
            loc = parse_blob_url(url, environ)
        except BlobLocationError as exc:
            raise RegistryError(f"model registry {url}: {exc}") from None
        return cls(container_client(loc, environ), loc.prefix, loc.describe())

    # ------------------------------------------------------------ names

    def _record(self, name: str, version: int) -> str:
        return f"{self.prefix}{name}/versions/{int(version)}.json"

    def _files_prefix(self, name: str, version: int) -> str:
        return f"{self.prefix}{name}/{int(version)}/"

    # ------------------------------------------------------------ storage calls, with errors in words

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError, ServiceRequestError

        try:
            return fn(*args, **kw)
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "ContainerNotFound" or "ContainerNotFound" in str(exc):
                raise RegistryError(
                    f"model registry {self.where}: the container does not exist; create it first "
                    f"(scripts/azurite.sh mkcontainer NAME locally, or `az storage container create`)"
                ) from None
            raise
        except ClientAuthenticationError as exc:
            raise RegistryError(f"model registry {self.where}: the storage account refused the credentials ({_first_line(exc)})") from None
        except ServiceRequestError as exc:
            raise RegistryError(f"model registry {self.where}: cannot reach the storage account ({_first_line(exc)})") from None
        except HttpResponseError as exc:
            if getattr(exc, "status_code", None) in (409, 412):
                raise
            if getattr(exc, "status_code", None) == 403:
                raise RegistryError(f"model registry {self.where}: the storage account refused the credentials ({_first_line(exc)})") from None
            raise RegistryError(f"model registry {self.where}: {what} failed: {_first_line(exc)}") from None

    def _index(self, name: str) -> list[Entry]:
        blobs = self._call(
            f"listing {name}", lambda: list(self.container.list_blobs(name_starts_with=f"{self.prefix}{name}/versions/", include=["metadata"]))
        )
        found = (entry_from_listing(name, b.name, b.metadata, b.etag) for b in blobs)
        return sorted((e for e in found if e is not None), key=lambda e: e.version)

    def _read(self, name: str, version: int) -> tuple[dict[str, Any], str] | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            dl = self._call(f"reading {name} version {version}", self.container.download_blob, self._record(name, version))
            return json.loads(dl.readall()), dl.properties.etag
        except ResourceNotFoundError:
            return None

    def _write(self, record: dict[str, Any], etag: str | None) -> str:
        """Write a record: create-only when `etag` is None (the claim), else only over that etag."""
        from azure.core import MatchConditions
        from azure.storage.blob import ContentSettings

        metadata = {
            "content_hash": record["content_hash"],
            "state": record["state"],
            "owners": json.dumps(record["owners"], ensure_ascii=True),
            "created": repr(float(record["created"])),
        }
        body = json.dumps(record, indent=2, sort_keys=True).encode()
        kw: dict[str, Any] = {"metadata": metadata, "content_settings": ContentSettings(content_type="application/json")}
        if etag is None:
            kw["overwrite"] = False  # If-None-Match: *
        else:
            kw.update(overwrite=True, etag=etag, match_condition=MatchConditions.IfNotModified)  # If-Match
        blob = self.container.get_blob_client(self._record(record["name"], record["version"]))
        return self._call("writing a version record", blob.upload_blob, body, **kw)["etag"]

    # ------------------------------------------------------------ the registry interface

    def _version(self, record: dict[str, Any]) -> ModelVersion:
        fields = {k: record[k] for k in ("name", "version", "content_hash", "tags", "description", "owners", "created")}
        return ModelVersion(**fields, path=f"{self.where}/{record['name']}/{int(record['version'])}")

    def versions(self, name: str) -> list[ModelVersion]:
        """All complete versions of a model, oldest first."""
        out = []
        for e in self._index(name):
            if e.state == COMPLETE and (got := self.get(name, e.version)) is not None:
                out.append(got)
        return out

    def get(self, name: str, version: int) -> ModelVersion | None:
        read = self._read(name, version)
        if read is None or read[0].get("state") != COMPLETE:
            return None
        return self._version(read[0])

    def planned_version(self, name: str, digest: str, owner: str) -> int:
        """The version `register` would give this content now, without writing anything."""
        entries = self._index(name)
        same = with_content(entries, digest, owner) or pending_claim(entries, digest, time.time())
        return same.version if same is not None else next_version(entries)

    def register(
        self,
        name: str,
        model_path: str | os.PathLike[str],
        owner: str,
        tags: dict[str, str] | None = None,
        description: str = "",
    ) -> ModelVersion:
        """Register content; a new version (latest + 1) only for content no version has.

        The same rules as the folder registry. The claim of a new number is one
        create-if-absent; losing it to another runner means reading again.
        """
        if not NAME_RE.match(name):
            raise RegistryError(f"invalid model name {name!r}: letters, digits, '_', '.', '-'")
        src = Path(model_path)
        digest = content_hash(src)
        attempts = 0
        while attempts < MAX_ATTEMPTS:
            entries = self._index(name)
            found = with_content(entries, digest, owner)
            if found is not None:
                mv = self._adopt(name, found.version, owner, tags, description)
                if mv is not None:
                    return mv
                attempts += 1
                continue  # changed under us: read again
            if pending_claim(entries, digest, time.time()) is not None:
                # Another runner is uploading this very content: wait for its version (however long the
                # upload takes, until its claim goes stale), rather than make a second version of it.
                self._sleep(0.5)
                continue
            attempts += 1
            stale = [e for e in entries if e.state == UPLOADING and e.content_hash == digest]
            if stale:
                mv = self._finish_stale(name, stale[0], src, digest, owner, tags, description)
                if mv is not None:
                    return mv
                continue
            mv = self._claim_and_upload(name, next_version(entries), src, digest, owner, tags, description)
            if mv is not None:
                return mv
        raise RegistryError(f"model {name}: could not claim a version in {self.where} after {MAX_ATTEMPTS} attempts")

    def _adopt(self, name: str, version: int, owner: str, tags: dict[str, str] | None, description: str) -> ModelVersion | None:
        read = self._read(name, version)
        if read is None or read[0].get("state") != COMPLETE:
            return None
        record, etag = read
        if owner not in record["owners"]:
            record["owners"].append(owner)
        record["tags"], record["description"] = dict(tags or {}), description
        if not self._write_if_match(record, etag):
            return None
        return self._version(record)

    def _write_if_match(self, record: dict[str, Any], etag: str) -> bool:
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        try:
            self._write(record, etag)
            return True
        except (ResourceModifiedError, ResourceNotFoundError):
            return False

    def _claim_and_upload(
        self, name: str, version: int, src: Path, digest: str, owner: str, tags: dict[str, str] | None, description: str
    ) -> ModelVersion | None:
        from azure.core.exceptions import ResourceExistsError

        record = {
            "name": name, "version": version, "content_hash": digest, "tags": dict(tags or {}),
            "description": description, "owners": [owner], "created": time.time(), "state": UPLOADING,
        }
        try:
            etag = self._write(record, None)
        except ResourceExistsError:
            return None  # another runner claimed this number first
        return self._upload_and_complete(record, etag, src, digest)

    def _finish_stale(
        self, name: str, entry: Entry, src: Path, digest: str, owner: str, tags: dict[str, str] | None, description: str
    ) -> ModelVersion | None:
        """Adopt an abandoned claim of the same content: take it over (If-Match), then upload."""
        read = self._read(name, entry.version)
        if read is None or read[0].get("state") != UPLOADING:
            return None
        record, etag = read
        record.update(owners=[owner], tags=dict(tags or {}), description=description, created=time.time())
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        try:
            etag = self._write(record, etag)
        except (ResourceModifiedError, ResourceNotFoundError):
            return None
        return self._upload_and_complete(record, etag, src, digest)

    def _upload_and_complete(self, record: dict[str, Any], etag: str, src: Path, digest: str) -> ModelVersion | None:
        name, version = record["name"], record["version"]
        base = self._files_prefix(name, version)
        for path, rel in _files(src):
            with open(path, "rb") as fh:
                self._call(f"uploading {rel}", self.container.upload_blob, base + rel, fh, overwrite=True)
        if content_hash(src) != digest:
            self._delete_files(name, version)
            self._delete_record(name, version, etag)
            raise RegistryError(f"model {name}: {src} changed while it was being uploaded")
        record["state"] = COMPLETE
        if not self._write_if_match(record, etag):
            return None  # taken over as stale meanwhile: read again
        return self._version(record)

    def update_metadata(self, name: str, version: int, tags: dict[str, str], description: str) -> ModelVersion:
        for _ in range(MAX_ATTEMPTS):
            read = self._read(name, version)
            if read is None or read[0].get("state") != COMPLETE:
                raise RegistryError(f"model {name} version {version} is not in the registry at {self.where}")
            record, etag = read
            record["tags"], record["description"] = dict(tags), description
            if self._write_if_match(record, etag):
                return self._version(record)
        raise RegistryError(f"model {name} version {version}: kept changing under us in {self.where}")

    def release(self, name: str, owner: str) -> list[int]:
        """Drop `owner` from every version of `name`; delete versions nobody owns. Idempotent."""
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        deleted: list[int] = []
        for _ in range(MAX_ATTEMPTS):
            retry = False
            for e in self._index(name):
                if e.state == DELETING:
                    self._finish_delete(name, e.version, e.etag)  # a release that stopped half way
                    continue
                if e.state != COMPLETE or owner not in e.owners:
                    continue
                read = self._read(name, e.version)
                if read is None:
                    continue
                record, etag = read
                if owner not in record["owners"]:
                    continue
                record["owners"].remove(owner)
                if record["owners"]:
                    retry |= not self._write_if_match(record, etag)
                    continue
                record["state"] = DELETING  # from here on nobody adopts it
                try:
                    etag = self._write(record, etag)
                except (ResourceModifiedError, ResourceNotFoundError):  # a concurrent change: read again
                    retry = True
                    continue
                self._finish_delete(name, e.version, etag)
                deleted.append(e.version)
            if not retry:
                return deleted
        raise RegistryError(f"model {name}: records kept changing under us in {self.where}")

    def _finish_delete(self, name: str, version: int, etag: str) -> None:
        self._delete_files(name, version)
        self._delete_record(name, version, etag)

    def _delete_files(self, name: str, version: int) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        blobs = self._call("listing files", lambda: list(self.container.list_blobs(name_starts_with=self._files_prefix(name, version))))
        for b in blobs:
            try:
                self._call(f"deleting {b.name}", self.container.delete_blob, b.name)
            except ResourceNotFoundError:
                pass

    def _delete_record(self, name: str, version: int, etag: str) -> None:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        try:
            self._call("deleting a record", self.container.delete_blob, self._record(name, version), etag=etag, match_condition=MatchConditions.IfNotModified)
        except (ResourceNotFoundError, ResourceModifiedError):
            pass

    # ------------------------------------------------------------ files on this machine

    def fetch(self, name: str, version: int, dest: str | os.PathLike[str]) -> Path:
        """Download a complete version into `dest` (made whole, then renamed; checked against its hash)."""
        mv = self.get(name, version)
        if mv is None:
            raise RegistryError(f"model {name} version {version} is not in the registry at {self.where}")
        dest = Path(dest)
        if dest.is_dir() and _hash_of_version_dir(dest) == mv.content_hash:
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
        try:
            base = self._files_prefix(name, version)
            for b in self._call("listing files", lambda: list(self.container.list_blobs(name_starts_with=base))):
                target = staging / b.name[len(base):]
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as fh:
                    self._call(f"downloading {b.name}", self.container.download_blob, b.name).readinto(fh)
            if _hash_of_version_dir(staging) != mv.content_hash:
                raise RegistryError(f"model {name} version {version} in {self.where}: its files do not match {mv.content_hash}")
            os.chmod(staging, 0o755)
            if dest.exists():
                shutil.rmtree(dest)
            os.rename(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return dest


def _hash_of_version_dir(folder: Path) -> str:
    """The content hash of what a version folder holds (its one file or folder)."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")] if folder.is_dir() else []
    if len(entries) != 1:
        return ""
    try:
        return content_hash(entries[0])
    except RegistryError:
        return ""


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

