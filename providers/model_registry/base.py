"""What both model registries (a folder, a blob container) share: names, versions, content, and the version rule.

A version is content-addressed: content some version already has gets that
version back (the owner's own first), and new content gets one above every
version the name has ever had. Written once here, read by the folder registry,
the blob registry and the preview's planned version.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol, Sequence, TypeVar

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")


class RegistryError(Exception):
    """A registration or lookup failed; the message names the model and path."""


@dataclass
class ModelVersion:
    """One immutable version of a registered model."""

    name: str
    version: int
    content_hash: str
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""
    owners: list[str] = field(default_factory=list)
    created: float = 0.0
    path: str = ""
    """Directory holding the copy; what AZUREML_MODEL_DIR points at for this model."""


def content_hash(path: str | os.PathLike[str]) -> str:
    """Hash of every file under `path` (names and bytes), stable across machines."""
    src = Path(path)
    if not src.exists():
        raise RegistryError(f"model path does not exist: {src}")
    digest = hashlib.sha256()
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    if not files:
        raise RegistryError(f"model folder is empty: {src}")
    for f in files:
        rel = f.name if src.is_file() else f"{src.name}/{f.relative_to(src).as_posix()}"
        digest.update(rel.encode() + b"\0")
        with open(f, "rb") as fh:
            digest.update(hashlib.file_digest(fh, "sha256").digest())
    return "sha256:" + digest.hexdigest()


class _Versioned(Protocol):
    version: int
    content_hash: str

    @property
    def owners(self) -> Sequence[str]: ...


V = TypeVar("V", bound=_Versioned)


def next_version(versions: Iterable[int]) -> int:
    """The number new content gets: above every version the name has had, so a number is never reused."""
    return max(versions, default=0) + 1


def with_content(versions: Iterable[V], digest: str, owner: str) -> V | None:
    """The version that already has this content: the owner's own first, else the newest."""
    same = sorted((v for v in versions if v.content_hash == digest), key=lambda v: v.version)
    mine = [v for v in same if owner in v.owners]
    return (mine or same or [None])[-1]
