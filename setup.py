"""How the repository's folders become the `mldeploy` package (metadata: pyproject.toml).

The project keeps its layout: components/, providers/ and runtime/ at the top of the
repository. The wheel puts them under one import name, mldeploy.components,
mldeploy.providers and mldeploy/runtime, beside mldeploy/__init__.py, so code that
finds files from `__file__` (runtime/ from components/ and providers/clients/,
providers/schemas/ from providers/) finds them in both places. The package list and
the data files are read from the tree, so a new subpackage, template or schema
travels without editing a list here.
"""

from __future__ import annotations

from pathlib import Path

FOLDERS = {"mldeploy.components": "components", "mldeploy.providers": "providers", "mldeploy.runtime": "runtime"}
"""Package name -> the repository folder it is built from."""
SKIP_DIRS = {"__pycache__"}
SKIP_SUFFIXES = {".pyc", ".pyo"}


def layout(root: Path) -> tuple[list[str], dict[str, str], dict[str, list[str]]]:
    """(packages, package_dir, package_data) for setuptools, from the folders under `root`.

    Every folder is a package (runtime/ and providers/schemas/ have no __init__.py and
    hold only files); files that are not Python modules are its package data. A folder
    whose name is not an identifier travels as data of the package above it.
    """
    packages = ["mldeploy"]
    package_dir = {"mldeploy": "mldeploy"}
    package_data: dict[str, list[str]] = {}
    for name, folder in FOLDERS.items():
        package_dir[name] = folder
        base = root / folder
        for d in sorted([base, *(p for p in base.rglob("*") if p.is_dir())]):
            rel = d.relative_to(base).parts
            if any(part in SKIP_DIRS or part.startswith(".") for part in rel):
                continue
            n = next((i for i, part in enumerate(rel) if not part.isidentifier()), len(rel))
            owner = ".".join([name, *rel[:n]])
            if n == len(rel):
                packages.append(owner)
            files = sorted(
                f for f in d.iterdir()
                if f.is_file() and not f.name.startswith(".") and f.suffix not in SKIP_SUFFIXES
                and (f.suffix != ".py" or n < len(rel))
            )
            if files:
                package_data.setdefault(owner, []).extend(Path(*rel[n:], f.name).as_posix() for f in files)
    return packages, package_dir, package_data


if __name__ == "__main__":
    from setuptools import setup

    packages, package_dir, package_data = layout(Path(__file__).resolve().parent)
    setup(packages=packages, package_dir=package_dir, package_data=package_data)
