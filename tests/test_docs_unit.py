"""The manual stays true (issue 19, item 8): a README of a few screens, links that lead somewhere,
and an architecture page whose every named function exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "providers" / "targets" / "README.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_the_readme_fits_on_a_few_screens() -> None:
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 200


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:|^#", target):
            continue
        if not (page.parent / target.split("#")[0]).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def resolve(name: str) -> object:
    """`a.b.c.f` or `a.b.Class.method`: import the longest module prefix, then take attributes."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            found = getattr(found, attr)
        return found
    raise ModuleNotFoundError(name)


def test_every_name_in_the_architecture_page_exists() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    names = sorted(set(re.findall(r"`(mldeploy\.[A-Za-z_][\w.]*)`", text)))
    assert len(names) >= 30, "the walk names the functions it passes through"
    missing = []
    for name in names:
        try:
            resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert not missing, missing
    for path in re.findall(r"`((?:runtime|scripts)/[\w./-]+)`", text):
        assert (ROOT / path).exists(), path


def test_the_readme_program_is_short_and_imports_what_exists() -> None:
    """The README's program is 15 lines of Python that compiles and imports only the public surface."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1, "the README has one program"
    program = blocks[0]
    assert len(program.splitlines()) <= 15
    compile(program, "README.md", "exec")
    components = importlib.import_module("mldeploy.components")
    for names in re.findall(r"from mldeploy\.components import ([\w, ]+)", program):
        for name in (n.strip() for n in names.split(",")):
            assert name in components.__all__, name


# Named in the README while other engineers write them; a name here may exist or not.
BEING_WRITTEN = {"providers/targets/azureml/", "docs/targets/azureml.md", "docs/rollouts.md"}
# Made on first use, never committed: a page may name it if the script that makes it does too.
GENERATED = {"sample/models/sklearn_regression_model.pkl": "scripts/deploy.sh"}
PATH_IN_CODE = re.compile(r"`((?:components|providers|scripts|runtime|tests|bench|stacks|examples|sample|docs|\.ci)/[\w./-]*)`")


def _made_by_a_script(path: str) -> bool:
    maker = GENERATED.get(path)
    return maker is not None and path in (ROOT / maker).read_text(encoding="utf-8")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_a_page_names_exists(page: Path) -> None:
    """A path in backticks (`providers/targets/aci/__init__.py`) is a file or folder of the repository."""
    missing = [
        path
        for path in PATH_IN_CODE.findall(page.read_text(encoding="utf-8"))
        if path not in BEING_WRITTEN and not (ROOT / path).exists() and not _made_by_a_script(path)
    ]
    assert not missing, f"{page.relative_to(ROOT)}: {missing}"
