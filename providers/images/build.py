"""Thin client that builds inference images the Azure ML way, on the local engine.

An image = an environment image (the local base + a venv with the serving
runtime, runtime/requirements.txt, and the user's requirements) + the launcher
+ the source directory, started with `azmlinfsrv` (inference.Dockerfile). The
model is not baked in: whoever runs the container bind-mounts the model
directory read-only and sets AZUREML_MODEL_DIR, so a new model version needs
no new image.

Wheels come from the host wheelhouse (mldeploy.providers.images.wheelhouse), so nothing
reaches a package index inside Docker. The environment is installed once per
resolved wheel set, in a container with the wheelhouse mounted read-only, and
committed as one layer holding nothing deleted; mldeploy.providers.images.env_cache
keeps those images across `destroy`, under a size cap.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import docker
import docker.errors
import yaml

from mldeploy.providers.images import env_cache, wheelhouse
from mldeploy.providers.images.lock_fetch import uv_binary

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
            for entry in (str(x).strip() for x in pip_deps):
                if entry:
                    problem = requirement_problem(entry)
                    if problem:
                        raise ValueError(f"dependency file {p}, line {_line_of(p, entry)}: {entry!r}: {problem}")
                    out.append(entry)
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
    for number, raw in enumerate(text.splitlines(), start=1):
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        m = re.match(r"^(-r|--requirement)[\s=]+(.+)$", line)
        if m:
            out += _parse_requirements_txt(p.parent / m.group(2).strip(), seen)
            continue
        problem = requirement_problem(line)
        if problem:
            raise ValueError(f"dependency file {p}, line {number}: {line!r}: {problem}")
        out.append(line)
    return wheelhouse.clean_requirements(out)


PIP_OPTION_WHY = ("pip options are not allowed in a dependency file (an index or find-links line opens the "
                  "build to look-alike packages; the machine's own pip settings choose the index)")
URL_WHY = "a URL or VCS reference fetches code from outside the package index; name the package and its version"


def requirement_problem(line: str) -> str | None:
    """Why a requirement line cannot go to pip, or None (pure).

    Only plain requirements pass (`name[extras] <op> version ; marker`): any pip option
    (`--extra-index-url`, `-i`, `-f`, `--trusted-host`, `-e`, `--hash`, `--config-settings`,
    `-c`...), on its own line or after a requirement, and any URL or `name @ url`.
    `-r` files are read by the caller, and checked line by line.
    """
    if line.startswith("-"):
        option = re.split(r"[\s=]", line, maxsplit=1)[0]
        return f"{option}: {PIP_OPTION_WHY}"
    requirement = line.split(";", 1)[0]
    if "://" in line or re.search(r"(^|\s)@|^[A-Za-z0-9._\-\[\], ]+@", requirement) or re.match(r"^(git|hg|svn|bzr)\+", line):
        return URL_WHY
    option = re.search(r"\s(-{1,2}[A-Za-z][\w-]*)", requirement)
    if option:
        return f"{option.group(1)}: {PIP_OPTION_WHY}"
    return None


def _line_of(path: Path, entry: str) -> int | str:
    """The first line of a YAML file that holds `entry` (for messages), or "?"."""
    try:
        for number, raw in enumerate(path.read_text().splitlines(), start=1):
            if entry in raw:
                return number
    except OSError:
        pass
    return "?"


# --- extra Dockerfile steps and the Python pin ---------------------------------

EXTRA_ALLOWED = ("RUN", "ENV", "LABEL", "ARG", "WORKDIR", "USER", "COPY", "ADD", "SHELL", "EXPOSE", "VOLUME",
                 "STOPSIGNAL")
EXTRA_REFUSED = {
    "FROM": "the image starts from base_image and its installed environment",
    "CMD": "the scoring server is the image's command",
    "ENTRYPOINT": "the scoring server is the image's command",
    "ONBUILD": "no image is built FROM an inference image",
    "HEALTHCHECK": "the target checks the scoring server's health",
    "MAINTAINER": "use LABEL",
}


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, instruction) with backslash continuations joined, comments dropped."""
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    first = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # Docker drops comment lines inside a continuation too
        if not buf:
            first = number
        if line.endswith("\\"):
            buf.append(line[:-1].rstrip())
            continue
        buf.append(line)
        out.append((first, " ".join(p for p in buf if p)))
        buf = []
    if buf:
        out.append((first, " ".join(p for p in buf if p)))
    return out


def _copy_sources(rest: str, number: int) -> str:
    """COPY/ADD with sources taken from the source directory (`app/` in the build context)."""
    flags: list[str] = []
    words = rest.split()
    while words and words[0].startswith("--"):
        flag = words.pop(0)
        if not flag.startswith(("--chown=", "--chmod=")):
            raise ValueError(f"line {number}: {flag.split('=')[0]} is not supported (only --chown and --chmod)")
        flags.append(flag)
    body = " ".join(words)
    if body.startswith("["):
        try:
            parts = json.loads(body)
        except ValueError:
            raise ValueError(f"line {number}: the JSON form is not a valid JSON array") from None
        if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
            raise ValueError(f"line {number}: the JSON form must be an array of strings")
    else:
        parts = body.split()
    if len(parts) < 2:
        raise ValueError(f"line {number}: needs at least one source and a destination")
    *sources, dest = parts
    fixed = []
    for src in sources:
        if "://" in src:
            raise ValueError(f"line {number}: {src!r}: the build cannot reach the network; put the file in source_directory")
        if src.startswith("/") or ".." in Path(src).parts:
            raise ValueError(f"line {number}: {src!r} must be a path inside source_directory")
        fixed.append("app/" + src.removeprefix("./"))
    return " ".join([*flags, json.dumps([*fixed, dest])])


def render_extra_steps(text: str) -> str:
    """Check a Dockerfile fragment (the seed's extraDockerFileSteps) and render it for our build.

    It runs after the environment is installed and before the source is copied. COPY
    and ADD take their sources from the source directory. Raises ValueError naming the
    line when an instruction cannot work here (FROM, CMD, a URL, a path outside).
    """
    out: list[str] = []
    for number, line in _logical_lines(text):
        word, _, rest = line.partition(" ")
        keyword = word.upper()
        if keyword in EXTRA_REFUSED:
            raise ValueError(f"line {number}: {keyword} is not allowed here: {EXTRA_REFUSED[keyword]}")
        if keyword not in EXTRA_ALLOWED:
            raise ValueError(f"line {number}: {word!r} is not a Dockerfile instruction this build supports "
                             f"({', '.join(EXTRA_ALLOWED)})")
        if not rest.strip():
            raise ValueError(f"line {number}: {keyword} needs arguments")
        if keyword in ("COPY", "ADD"):
            rest = _copy_sources(rest.strip(), number)
        out.append(f"{keyword} {rest.strip()}")
    return "\n".join(out)


def python_pin(dependency_file: str | os.PathLike[str]) -> str | None:
    """The conda file's `python` spec (`3.6.2`, `>=3.10,<3.12`, `3.11.*`), or None."""
    p = Path(dependency_file)
    if p.suffix.lower() not in (".yml", ".yaml"):
        return None
    try:
        doc = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError):
        return None
    for dep in (doc or {}).get("dependencies") or [] if isinstance(doc, dict) else []:
        if isinstance(dep, str):
            spec = dep.strip().split("::")[-1]
            m = re.match(r"^python(?![A-Za-z0-9_.\-])\s*(.*)$", spec, re.I)
            if m:
                pin = m.group(1).strip()
                return (pin[1:] if pin.startswith("=") and not pin.startswith("==") else pin) or None
    return None


def pin_allows(spec: str, version: str) -> bool:
    """Whether a conda `python` spec can be met by an interpreter `version` ("3.11" means any 3.11.x).

    Conda's `=3.6` and `3.6` mean 3.6.*; `==3.6.2` is exact; comparison operators are PEP 440's.
    """
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import Version

    def clause(part: str) -> str:
        if part.startswith("=") and not part.startswith("=="):
            part = part[1:]
        if re.fullmatch(r"[0-9][0-9.]*(\.\*)?(=[^=]+)?", part):  # conda's fuzzy `3.6`, `3.6.2`, with a build string
            return "==" + part.split("=")[0].removesuffix(".*") + ".*"
        return part

    text = spec.strip().split()[0] if spec.strip() else ""
    try:
        alternatives = [SpecifierSet(",".join(clause(c) for c in alt.split(","))) for alt in text.split("|")]
    except InvalidSpecifier:
        raise ValueError(f"python pin {spec!r} is not a version spec") from None
    candidates = [version] if version.count(".") >= 2 else [f"{version}.{patch}" for patch in range(0, 100)]
    return any(Version(c) in alt for alt in alternatives for c in candidates)


# --- environment images (the cached dependency layer) -------------------------

ENV_DIR = "/opt/azureml-env"
WHEELS_MOUNT = "/tmp/mldeploy-wheelhouse"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


UV_MOUNT = "/tmp/mldeploy-uv"
"""Where the host's `uv` binary is mounted, read-only, in the throwaway install container."""


# What serving never imports, so its bytecode is not compiled at install: test suites inside packages
# (scipy's and numpy's are most of their files) and the venv's own pip. Compiling the rest took 6 s
# against 10 s for everything (issue 22's bench; a cold `up` waits for it).
NOT_COMPILED = r"/(tests?|site-packages/pip)/"


def install_command(wheel_names: list[str]) -> list[str]:
    """Install exactly the resolved wheels (no resolution, no index) into a fresh venv.

    With uv mounted (and able to run on the base: it needs glibc) uv installs them, in parallel,
    into a venv made without ensurepip (its pip comes from the same bundled wheel, installed by uv),
    and the bytecode of everything serving can import is compiled on all cores. Otherwise the
    venv's own pip installs them. The venv keeps its pip either way, so the environment is the
    same to whoever uses it.
    """
    wheels = " ".join(f"{WHEELS_MOUNT}/{n}" for n in wheel_names)
    pip = (f"python3 -m venv {ENV_DIR} && {ENV_DIR}/bin/pip install --no-cache-dir --no-index --no-deps "
           f"--disable-pip-version-check {wheels}")
    # The pip wheel ensurepip would install: Debian keeps it in /usr/share/python-wheels, CPython in _bundled.
    bundled = ('BUNDLED_PIP=$(ls /usr/share/python-wheels/pip-*.whl '
               '"$(python3 -c \'import ensurepip, os; print(os.path.dirname(ensurepip.__file__))\')"/_bundled/pip-*.whl '
               '2>/dev/null | head -n 1)')
    uv = (f"python3 -m venv --without-pip {ENV_DIR} && {bundled} && "
          f"{UV_MOUNT} pip install --python {ENV_DIR}/bin/python --no-index --no-deps --no-cache --link-mode copy "
          f"--quiet {wheels} $BUNDLED_PIP && "
          f"{{ [ -n \"$BUNDLED_PIP\" ] || {ENV_DIR}/bin/python -m ensurepip --default-pip >/dev/null; }} && "
          f"{{ {ENV_DIR}/bin/python -m compileall -q -j 0 -x '{NOT_COMPILED}' {ENV_DIR}/lib >/dev/null 2>&1 || true; }}")
    # compileall exits 1 when any file fails to compile (a package's Python 2 example, a template);
    # pip and uv skip those files too, and Python then simply compiles them when imported.
    return ["/bin/sh", "-c", f"if {UV_MOUNT} --version >/dev/null 2>&1; then {uv}; else {pip}; fi"]


def ensure_env_image(
    api: Any,
    base_image: str,
    wheels: list[Path],
    python_version: str,
    log: Callable[[str], None],
    cache: env_cache.EnvCache | None = None,
) -> tuple[str, bool]:
    """The dependency image for this wheel set: from the cache, or installed now. Returns (tag, built).

    Installed in a container from the base with the wheelhouse bind-mounted read-only and
    no network, then committed: one layer holding the environment and nothing deleted.
    """
    cache = cache or env_cache.EnvCache(api)
    base_id = api.inspect_image(base_image)["Id"]
    key = env_cache.env_key(base_id, python_version, wheelhouse.wheel_digests(wheels))
    tag = env_cache.tag_for(key, cache.repository)
    with cache.locked():
        hit = cache.lookup(key)
    if hit is None:
        with cache.locked(key):  # this wheel set's install: one at a time, other sets meanwhile
            with cache.locked():
                hit = cache.lookup(key)  # installed by another deploy while this one waited
            if hit is None:
                return _install_and_record(api, cache, base_image, base_id, wheels, tag, key, log), True
    log(f"environment: cached {hit.tag} ({len(wheels)} wheels, {hit.size / 1e6:.0f} MB)")
    return hit.tag, False


def _install_and_record(api: Any, cache: env_cache.EnvCache, base_image: str, base_id: str, wheels: list[Path],
                        tag: str, key: str, log: Callable[[str], None]) -> str:
    log(f"environment: installing {len(wheels)} wheels into {tag}")
    t0 = time.monotonic()
    image_id = _install_env(api, base_image, wheels, tag, key, log, cache.root)
    seconds = time.monotonic() - t0
    size = int(api.inspect_image(image_id)["Size"]) - int(api.inspect_image(base_id)["Size"])
    now = cache.clock()
    with cache.locked():
        plan = cache.record(env_cache.Entry(key, tag, image_id, size, now, now, len(wheels), base_image))
    env_cache.record_build("env", tag, seconds, root=cache.root, size=size, wheels=len(wheels))
    for gone in plan.evict:
        log(f"environment cache: evicted {gone.tag} ({gone.size / 1e6:.0f} MB, least recently used)")
    log(f"environment: {tag} installed in {seconds:.1f}s ({size / 1e6:.0f} MB)")
    return tag


def _install_env(api: Any, base_image: str, wheels: list[Path], tag: str, key: str,
                 log: Callable[[str], None], cache_root: Path) -> str:
    house = str(wheels[0].parent) if wheels else tempfile.mkdtemp(prefix="mldeploy-empty-")
    # One name per key: an install interrupted earlier (Ctrl-C twice) left its container under
    # this name, and the caller holds the key's lock, so no live install has it.
    name = f"mldeploy-env-install-{key[:24]}"
    try:
        api.remove_container(name, force=True)
    except docker.errors.NotFound:
        pass
    binds = {house: {"bind": WHEELS_MOUNT, "mode": "ro"}}
    uv = uv_binary()
    if uv is not None:
        binds[uv] = {"bind": UV_MOUNT, "mode": "ro"}
    container = api.create_container(
        base_image, install_command([w.name for w in wheels]), name=name,
        host_config=api.create_host_config(binds=binds, network_mode="none"),
    )
    cid = container["Id"]
    shown = f"$ {' '.join(install_command(['<wheels>']))}"
    try:
        try:
            api.start(cid)
        except docker.errors.APIError as exc:
            raise ImageBuildError(f"installing the environment into {tag!r} failed: the base image cannot run it",
                                  f"{shown}\n{getattr(exc, 'explanation', None) or exc}") from None
        status = api.wait(cid).get("StatusCode", 1)
        output = api.logs(cid).decode(errors="replace")
        for line in output.splitlines()[-LOG_TAIL:]:
            log(line)
        if status != 0:
            tail = "\n".join(output.splitlines()[-LOG_TAIL:])
            raise ImageBuildError(f"installing the environment into {tag!r} failed (exit {status})", f"{shown}\n{tail}")
        repository, _, version = tag.rpartition(":")
        base_env = (api.inspect_image(base_image).get("Config") or {}).get("Env") or []
        base_path = next((e.split("=", 1)[1] for e in base_env if e.startswith("PATH=")), BASE_PATH)
        committed = api.commit(cid, repository=repository, tag=version, changes=[
            f"ENV PATH={ENV_DIR}/bin:{base_path}",
            'CMD ["python3"]',
            f"LABEL {env_cache.LABEL}={key}",
            f"LABEL {env_cache.ROOT_LABEL}={json.dumps(str(cache_root))}",
        ])
        return committed["Id"]
    finally:
        try:
            api.remove_container(cid, force=True)
        except docker.errors.NotFound:
            pass


# --- build -------------------------------------------------------------------

DOCKERFILE = Path(__file__).with_name("inference.Dockerfile")


def render_dockerfile(env_image: str, entry_script: str, extra_steps: str = "") -> str:
    """The inference image's Dockerfile: the environment image, extra steps, launcher, source."""
    template = DOCKERFILE.read_text()
    extra = f"# extra_docker_file_steps\n{extra_steps}\n" if extra_steps else ""
    return (template.replace("{{ENV_IMAGE}}", env_image).replace("{{ENTRY_SCRIPT}}", entry_script)
            .replace("{{EXTRA_STEPS}}\n", extra))


def pull_base_image(base_image: str, registry: dict[str, str] | None, api: Any = None) -> str:
    """Pull `base_image` with the registry's credentials when it is not here; return its id.

    Raises ImageBuildError with the registry's own words (for example a 401).
    """
    api = api or client()
    try:
        return api.inspect_image(base_image)["Id"]
    except docker.errors.ImageNotFound:
        pass
    auth = None
    if registry and registry.get("username"):
        auth = {"username": registry["username"], "password": registry.get("password", ""),
                "serveraddress": registry.get("address", "")}
    repository, tag = _split_ref(base_image)
    try:
        api.pull(repository, tag=tag, auth_config=auth)
    except docker.errors.APIError as exc:
        where = registry.get("address") if registry else repository.split("/")[0]
        raise ImageBuildError(f"pulling base image {base_image!r} from {where} failed: "
                              f"{getattr(exc, 'explanation', None) or exc}") from None
    return api.inspect_image(base_image)["Id"]


def _split_ref(ref: str) -> tuple[str, str | None]:
    """`host:5000/a/b:tag` -> (`host:5000/a/b`, `tag`); a digest stays in the repository part."""
    if "@" in ref:
        return ref, None
    name, sep, tag = ref.rpartition(":")
    if sep and "/" not in tag:
        return name, tag
    return ref, "latest"


def build_inference_image(
    tag: str,
    base_image: str,
    source_directory: str,
    entry_script: str,
    dependency_file: str | None,
    labels: dict[str, str],
    on_log: Callable[[str], None] | None = None,
    extra_steps: str | None = None,
    api: Any = None,
    cache: env_cache.EnvCache | None = None,
    only_binary: bool = True,
) -> str:
    """Build `tag` and return its image id (sha256:...). Raises ImageBuildError.

    `only_binary` (the default) takes wheels only: no sdist's setup code runs on this
    machine. The Dockerfile build itself (extra steps' RUN included) has no network.

    `entry_script` is relative to `source_directory`; `extra_steps` is a Dockerfile
    fragment (checked by `render_extra_steps`). The environment comes from the
    machine's cache of dependency images, so only the small source layers are new
    when the same wheel set was installed before.
    """
    log = on_log or (lambda _line: None)
    src = Path(source_directory)
    if not src.is_dir():
        raise ImageBuildError(f"source directory {source_directory!r} does not exist")
    if not _SAFE_PATH.match(entry_script) or ".." in Path(entry_script).parts:
        raise ImageBuildError(f"entry script {entry_script!r} must be a plain path relative to the source directory")
    if not (src / entry_script).is_file():
        raise ImageBuildError(f"entry script {entry_script!r} not found in {source_directory!r}")
    try:
        steps = render_extra_steps(extra_steps) if extra_steps else ""
    except ValueError as e:
        raise ImageBuildError(f"extra_docker_file_steps: {e}") from None

    api = api or client()
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
        wheels = wheelhouse.ensure_wheels(reqs, python_version=py, on_log=log, only_binary=only_binary)
    except wheelhouse.WheelhouseError as e:
        raise ImageBuildError(f"dependencies of {tag!r} cannot be resolved: {e}") from e
    env_image, _built = ensure_env_image(api, base_image, wheels, py, log, cache)

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mldeploy-build-") as ctx_dir:
        ctx = Path(ctx_dir)
        _write_context(ctx, env_image, src, entry_script, steps)
        image_id = _build(api, ctx, tag, labels, log)
    env_cache.record_build("image", tag, time.monotonic() - t0, root=(cache.root if cache else None), env=env_image)
    return image_id


def _base_python(api: Any, base_image: str) -> str:
    """The base image's Python minor version: its label, its PYTHON_VERSION (official python
    images set it), what its tag says, else 3.11."""
    return python_of_image(api.inspect_image(base_image), base_image) or "3.11"


def python_of_image(info: dict[str, Any], ref: str) -> str | None:
    """major.minor from an image's inspect record: `mldeploy.python` label, PYTHON_VERSION, tag (`…py3.11`)."""
    config = info.get("Config") or {}
    label = (config.get("Labels") or {}).get("mldeploy.python")
    if label:
        return label
    for env in config.get("Env") or []:
        m = re.fullmatch(r"PYTHON_VERSION=(\d+\.\d+)(\.\S*)?", env)
        if m:
            return m.group(1)
    m = re.search(r"py(3\.\d+)", ref.rsplit("/", 1)[-1])
    return m.group(1) if m else None


def _write_context(ctx: Path, env_image: str, src: Path, entry_script: str, extra_steps: str) -> None:
    """Only the launcher and the source go into the context: the environment is already in `env_image`."""
    (ctx / "Dockerfile").write_text(render_dockerfile(env_image, entry_script, extra_steps))
    shutil.copytree(src, ctx / "app", ignore=_COPY_IGNORE, symlinks=True)
    (ctx / "mldeploy").mkdir()
    shutil.copy2(RUNTIME_DIR / "mldeploy_serving.py", ctx / "mldeploy" / "mldeploy_serving.py")


BUILD_NETWORK = "none"
"""The network of the Dockerfile build's RUN steps (Docker's `--network none`)."""


def _build(api: Any, ctx: Path, tag: str, labels: dict[str, str], log: Callable[[str], None]) -> str:
    tail: deque[str] = deque(maxlen=LOG_TAIL)
    created: list[str] = []  # intermediate images this build made (not the base, not cache hits)
    image_id: str | None = None
    error: str | None = None
    cached_next = False
    try:
        # network_mode="none": the build starts FROM a local image and copies the context,
        # so nothing needs the network; extra_docker_file_steps' RUN cannot fetch anything.
        for chunk in api.build(path=str(ctx), tag=tag, labels=labels, rm=True, forcerm=True,
                               pull=False, decode=True, nocache=False, network_mode=BUILD_NETWORK):
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
