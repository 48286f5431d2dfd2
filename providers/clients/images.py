"""Thin client that builds inference images the Azure ML way, on the local engine.

An image = the local base image + a venv with the serving runtime
(runtime/requirements.txt) and the user's requirements + the source
directory, started with `azmlinfsrv`. The model is not baked in: whoever
runs the container bind-mounts the model directory read-only and sets
AZUREML_MODEL_DIR, so a new model version needs no new image.

Wheels come from the host wheelhouse (providers.clients.wheelhouse), so the
build itself never reaches a package index.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections import deque
from pathlib import Path
from typing import Any, Callable

import docker
import docker.errors
import yaml

from providers.clients import wheelhouse

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_DIR = ROOT / "runtime"
LOG_TAIL = 40
# Entry script paths go into ENV and an exec-form CMD: keep them plain.
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_.\-][A-Za-z0-9_.\-/]*$")
_COPY_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".git", ".pytest_cache", ".venv")


class ImageBuildError(Exception):
    """The image could not be built; the message carries the tail of the build log."""

    def __init__(self, message: str, log_tail: str = ""):
        self.log_tail = log_tail
        super().__init__(message + (f"\n--- build log (last {LOG_TAIL} lines) ---\n{log_tail}" if log_tail else ""))


def client() -> docker.APIClient:
    return docker.APIClient(version="auto", timeout=600)


def runtime_requirements() -> list[str]:
    return wheelhouse.clean_requirements((RUNTIME_DIR / "requirements.txt").read_text().splitlines())


# --- dependency files -------------------------------------------------------


def parse_dependency_file(path: str | os.PathLike[str]) -> list[str]:
    """Pip requirement lines from a conda environment YAML or a pip requirements file.

    Images install with pip only, so a conda file contributes its `pip:`
    section and its plain package entries (`scikit-learn=1.9` becomes
    `scikit-learn==1.9`); `python` and `pip` themselves are the base image's.
    """
    p = Path(path)
    if p.suffix.lower() in (".yml", ".yaml"):
        return _parse_conda(p)
    return _parse_requirements_txt(p, seen=set())


def _parse_conda(p: Path) -> list[str]:
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"dependency file {p}: invalid YAML: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("dependencies", []), list):
        raise ValueError(f"dependency file {p}: expected a conda environment mapping with a 'dependencies' list")
    out: list[str] = []
    for dep in doc.get("dependencies") or []:
        if isinstance(dep, dict):
            pip_deps = dep.get("pip")
            if set(dep) != {"pip"} or not isinstance(pip_deps, list):
                raise ValueError(f"dependency file {p}: unsupported dependencies entry {dep!r}")
            out += [str(x).strip() for x in pip_deps if str(x).strip()]
        elif isinstance(dep, str):
            req = _conda_to_pip(dep)
            if req:
                out.append(req)
        else:
            raise ValueError(f"dependency file {p}: unsupported dependencies entry {dep!r}")
    return wheelhouse.clean_requirements(out)


def _conda_to_pip(spec: str) -> str | None:
    """`conda-forge::numpy=1.26=py311_0` -> `numpy==1.26`; python and pip are dropped."""
    spec = spec.strip().split("::")[-1]
    m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", spec)
    if not m:
        return spec or None
    name, rest = m.group(1), m.group(2).strip()
    if name.lower() in ("python", "pip"):
        return None
    if not rest:
        return name
    if rest.startswith("="):
        version = rest.lstrip("=").split("=")[0].strip()  # drop a build string
        return f"{name}=={version}" if version else name
    if rest[0] in "<>!~":
        return name + rest.replace(" ", "")
    return f"{name}=={rest.split()[0]}"  # match-spec form: `numpy 1.26 py311_0`


def _parse_requirements_txt(p: Path, seen: set[Path]) -> list[str]:
    real = p.resolve()
    if real in seen:
        return []
    seen.add(real)
    try:
        text = p.read_text()
    except OSError as e:
        raise ValueError(f"dependency file {p}: {e.strerror}") from None
    out: list[str] = []
    for line in wheelhouse.clean_requirements(text.splitlines()):
        m = re.match(r"^(-r|--requirement)[\s=]+(.+)$", line)
        if m:
            out += _parse_requirements_txt(p.parent / m.group(2).strip(), seen)
        else:
            out.append(line)
    return out


# --- build -------------------------------------------------------------------


def build_inference_image(
    tag: str,
    base_image: str,
    source_directory: str,
    entry_script: str,
    dependency_file: str | None,
    labels: dict[str, str],
    on_log: Callable[[str], None] | None = None,
) -> str:
    """Build `tag` and return its image id (sha256:...). Raises ImageBuildError.

    `entry_script` is relative to `source_directory`. Layers are ordered so
    that changing the source files reuses the dependency layer.
    """
    log = on_log or (lambda _line: None)
    src = Path(source_directory)
    if not src.is_dir():
        raise ImageBuildError(f"source directory {source_directory!r} does not exist")
    if not _SAFE_PATH.match(entry_script) or ".." in Path(entry_script).parts:
        raise ImageBuildError(f"entry script {entry_script!r} must be a plain path relative to the source directory")
    if not (src / entry_script).is_file():
        raise ImageBuildError(f"entry script {entry_script!r} not found in {source_directory!r}")

    api = client()
    try:
        api.inspect_image(base_image)
    except docker.errors.ImageNotFound:
        raise ImageBuildError(
            f"base image {base_image!r} is not present locally (build it with scripts/base-image.sh)"
        ) from None

    try:
        user_reqs = parse_dependency_file(dependency_file) if dependency_file else []
    except ValueError as e:
        raise ImageBuildError(str(e)) from None
    reqs = runtime_requirements() + user_reqs
    py = _base_python(api, base_image)
    try:
        wheels = wheelhouse.ensure_wheels(reqs, python_version=py, on_log=log)
    except wheelhouse.WheelhouseError as e:
        raise ImageBuildError(f"dependencies of {tag!r} cannot be resolved: {e}") from e

    with tempfile.TemporaryDirectory(prefix="mldeploy-build-") as ctx_dir:
        ctx = Path(ctx_dir)
        _write_context(ctx, base_image, src, entry_script, reqs, wheels)
        return _build(api, ctx, tag, labels, log)


def _base_python(api: docker.APIClient, base_image: str) -> str:
    """The base image's Python minor version: its label, else what its tag says, else 3.11."""
    info = api.inspect_image(base_image)
    label = ((info.get("Config") or {}).get("Labels") or {}).get("mldeploy.python")
    if label:
        return label
    m = re.search(r"py(3\.\d+)", base_image)
    return m.group(1) if m else "3.11"


def _write_context(ctx: Path, base_image: str, src: Path, entry_script: str, reqs: list[str], wheels: list[Path]) -> None:
    template = (RUNTIME_DIR / "Dockerfile.inference").read_text()
    dockerfile = template.replace("{{BASE_IMAGE}}", base_image).replace("{{ENTRY_SCRIPT}}", entry_script)
    (ctx / "Dockerfile").write_text(dockerfile)
    wdir = ctx / "wheels"
    wdir.mkdir()
    for w in wheels:
        try:
            os.link(w, wdir / w.name)  # same filesystem: no copy of ~100 MB
        except OSError:
            shutil.copy2(w, wdir / w.name)
    # Sorted so the same set gives the same layer checksum (cache hit).
    (wdir / "requirements.txt").write_text("\n".join(reqs) + "\n")
    shutil.copytree(src, ctx / "app", ignore=_COPY_IGNORE, symlinks=True)
    (ctx / "mldeploy").mkdir()
    shutil.copy2(RUNTIME_DIR / "mldeploy_serving.py", ctx / "mldeploy" / "mldeploy_serving.py")


def _build(api: docker.APIClient, ctx: Path, tag: str, labels: dict[str, str], log: Callable[[str], None]) -> str:
    tail: deque[str] = deque(maxlen=LOG_TAIL)
    created: list[str] = []  # intermediate images this build made (not the base, not cache hits)
    image_id: str | None = None
    error: str | None = None
    cached_next = False
    try:
        for chunk in api.build(path=str(ctx), tag=tag, labels=labels, rm=True, forcerm=True,
                               pull=False, decode=True, nocache=False):
            if "stream" in chunk:
                for line in chunk["stream"].splitlines():
                    if not line.strip():
                        continue
                    tail.append(line)
                    log(line)
                    s = line.strip()
                    if re.match(r"^Step \d+/\d+ : FROM ", s, re.I):
                        cached_next = True  # the base image: never ours to remove
                    elif s == "---> Using cache":
                        cached_next = True
                    elif s.startswith("---> ") and re.fullmatch(r"---> [0-9a-f]{12,}", s):
                        if not cached_next:
                            created.append(s[5:])
                        cached_next = False
            elif "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
            elif "error" in chunk:
                error = chunk["error"].strip()
                tail.append(error)
                log(error)
    except docker.errors.APIError as e:
        error = str(e)
        tail.append(error)
    if error or not image_id:
        _remove_intermediates(api, created)
        raise ImageBuildError(f"building image {tag!r} failed: {error or 'no image id reported'}", "\n".join(tail))
    return api.inspect_image(tag)["Id"]


def _remove_intermediates(api: docker.APIClient, ids: list[str]) -> None:
    """A failed build leaves its last good step as an untagged image: remove what it made."""
    for image in reversed(ids):
        try:
            api.remove_image(image, force=False, noprune=True)
        except docker.errors.APIError:
            pass


# --- removal -----------------------------------------------------------------


def remove_image(tag_or_id: str) -> bool:
    """Remove an image; True when it is gone (or was), False when a container still uses it."""
    api = client()
    try:
        api.remove_image(tag_or_id, force=False, noprune=False)
        return True
    except docker.errors.ImageNotFound:
        return True
    except docker.errors.APIError as e:
        if e.status_code == 409:
            return False
        raise


def image_info(tag_or_id: str) -> dict[str, Any] | None:
    """The engine's inspect record, or None when the image is absent."""
    try:
        return client().inspect_image(tag_or_id)
    except docker.errors.ImageNotFound:
        return None
