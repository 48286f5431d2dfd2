"""Paths in resource inputs: relative to the Pulumi project, never one machine's checkout.

A stack is run from many checkouts (each engineer's, a CI runner's), each at its
own path. So a path that a resource input holds is written relative to the
project when it lies inside it (`sample/src`, `.pulumi-state/registry`), and only
a place outside every checkout (a shared mount) stays absolute. Whoever needs
the files (a provider at create or update time) finds them with `local()`,
under the project folder of the run at hand.

Stacks made by earlier releases hold absolute paths of the checkout that
deployed them; `same_place` lets a provider's diff take such a path as the
relative one it ends with, so the next `up` migrates them with no replace and
no roll.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

PROJECT_DIR_ENV = "MLDEPLOY_PROJECT_DIR"


def project_dir() -> Path:
    """The Pulumi project's folder (where Pulumi.yaml is).

    `MLDEPLOY_PROJECT_DIR` when set (scripts/stack.py sets it for the program and
    the engine), else the program's root directory, else the working directory:
    the engine starts dynamic providers in the project's folder.
    """
    root = os.environ.get(PROJECT_DIR_ENV)
    if not root:
        import pulumi

        # A program knows its root; elsewhere (a provider's process) the SDK answers a placeholder.
        given = pulumi.get_root_directory()
        root = given if given and os.path.isabs(given) else None
    return Path(root or os.getcwd()).resolve()


def local(path: str | os.PathLike[str], root: Path | None = None) -> Path:
    """Where a path from resource inputs is on this machine: a relative one is under the project."""
    p = Path(path).expanduser()
    return (p if p.is_absolute() else (root or project_dir()) / p).resolve()


def portable(path: str | os.PathLike[str], root: Path | None = None) -> str:
    """A path as resource inputs hold it: relative to the project (POSIX form) when inside it, else absolute."""
    base = root or project_dir()
    p = local(path, base)
    try:
        rel = p.relative_to(base)
    except ValueError:
        return str(p)
    return rel.as_posix() or "."


def same_place(old: object, new: object) -> bool:
    """Whether two input paths name the same place.

    Equal strings do. So does an absolute path written by an earlier release
    (`/home/ana/mldeploy/.pulumi-state/registry`) and a relative one that it ends
    with (`.pulumi-state/registry`): that release wrote the checkout's own folder.
    A relative path that was made absolute later is a move, not a migration.
    """
    if old == new:
        return True
    if not isinstance(old, str) or not isinstance(new, str) or not old or not new:
        return False
    o, n = PurePosixPath(old), PurePosixPath(new)
    if not o.is_absolute() or n.is_absolute() or ".." in n.parts or n.parts in ((), (".",)):
        return False
    # The absolute one must name a folder (the checkout) before the relative part.
    return len(o.parts) > len(n.parts) + 1 and o.parts[-len(n.parts):] == n.parts
