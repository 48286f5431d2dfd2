"""The deployment's code: the image's whole source folder, as Azure ML's `code_configuration.code` takes it.

Azure ML runs the scoring script from the code folder it uploaded, so helper modules and
files beside the entry script must go too, not the script alone. The code asset's version
follows the files' names and bytes, so an unchanged folder registers and uploads nothing
(Azure ML's own SDK names anonymous code by a content hash for the same reason).
Interpreter caches and version-control folders are skipped, as `.amlignore` defaults would:
they change without the code changing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

SKIPPED_DIRS = frozenset({"__pycache__", ".git", ".ipynb_checkpoints", ".pytest_cache"})
SKIPPED_SUFFIXES = (".pyc", ".pyo")


@dataclass(frozen=True)
class CodeFolder:
    """The files to upload, their content's version and the entry script's path inside the folder."""

    root: Path
    files: tuple[str, ...]
    """Relative POSIX paths, sorted."""
    version: str
    scoring_script: str


def _kept(rel: PurePosixPath) -> bool:
    return not (set(rel.parts[:-1]) & SKIPPED_DIRS or rel.name in SKIPPED_DIRS or rel.suffix in SKIPPED_SUFFIXES)


def code_folder(root: str | Path, entry_script: str | Path) -> CodeFolder:
    """The folder's kept files and a 12-hex-digit version over their names and bytes.

    `entry_script` must lie inside `root` (InferenceImage checks that at preview already)."""
    folder = Path(root)
    script = Path(entry_script)
    try:
        inside = script.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        raise ValueError(f"entry script {script} is not inside the code folder {folder}") from None
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and _kept(PurePosixPath(p.relative_to(folder).as_posix())))
    if inside not in files:
        raise ValueError(f"entry script {inside} is missing from the code folder {folder}")
    digest = hashlib.sha256()
    for rel in files:
        digest.update(rel.encode() + b"\0")
        digest.update(hashlib.sha256((folder / rel).read_bytes()).digest())
    return CodeFolder(folder, tuple(files), digest.hexdigest()[:12], inside)
