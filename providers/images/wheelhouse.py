"""Thin client over the host's pip for a wheel cache shared by all image builds.

No image can reach a package index at build time (and none should: builds
must be repeatable offline), so every wheel an inference image installs is
fetched once on the host into ${MLDEPLOY_CACHE}/wheelhouse/cp3XX, and each
build context carries only the wheels its requirement set resolves to.

Resolution is tried against the wheelhouse alone first (`--no-index`), so a
warm cache needs no registry at all; only when that fails are the missing
wheels fetched: by uv's resolver and parallel downloads (lock_fetch) where
it can follow pip's settings, else by `pip wheel`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence
from urllib.parse import unquote, urlparse

from mldeploy.providers.images import lock_fetch

TAIL_LINES = 25


class WheelhouseError(Exception):
    """pip could not resolve or fetch a requirement set; carries pip's output tail."""

    def __init__(self, message: str, requirement: str | None = None, output: str = ""):
        self.requirement = requirement
        self.output = output
        super().__init__(message)


def cache_root() -> Path:
    return Path(os.environ.get("MLDEPLOY_CACHE") or Path.home() / ".cache" / "mldeploy")


def wheelhouse_dir(python_version: str = "3.11") -> Path:
    """Keyed by the target interpreter: cp311 wheels are no use to a 3.12 image."""
    return cache_root() / "wheelhouse" / ("cp" + python_version.replace(".", ""))


def clean_requirements(lines: Sequence[str]) -> list[str]:
    """Drop blanks and comments, keep order, drop exact duplicates."""
    out: list[str] = []
    for line in lines:
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line and line not in out:
            out.append(line)
    return out


def ensure_wheels(
    requirements: Sequence[str],
    python_version: str = "3.11",
    on_log: Callable[[str], None] | None = None,
    only_binary: bool = True,
) -> list[Path]:
    """Return the wheel files (in the wheelhouse) that install exactly `requirements`.

    Fetches into the wheelhouse with the host pip only when the offline
    resolution fails. Raises WheelhouseError naming the requirement pip
    could not satisfy. With `only_binary` (the default) pip fetches wheels only, so
    no package's setup code runs here; without it, sdists are built (with `_env()`).
    """
    log = on_log or (lambda _line: None)
    reqs = clean_requirements(requirements)
    if not reqs:
        return []
    house = wheelhouse_dir(python_version)
    house.mkdir(parents=True, exist_ok=True)
    memo = _memo_key(reqs, python_version, house)
    remembered = _recall(house, memo)
    if remembered is not None:
        log(f"wheelhouse: {len(remembered)} wheels, as resolved before from {house}")
        return remembered
    with tempfile.TemporaryDirectory(prefix="mldeploy-wh-") as tmp:
        req_file = Path(tmp) / "requirements.txt"
        req_file.write_text("\n".join(reqs) + "\n")
        with _locked(house):
            ok, wheels, out = False, [], ""
            if any(house.glob("*.whl")):  # an empty wheelhouse (a new machine) resolves nothing
                ok, wheels, out = _resolve(req_file, house, python_version, Path(tmp))
            if ok:
                log(f"wheelhouse: {len(wheels)} wheels resolved offline from {house}")
                _remember(house, memo, wheels)
                return wheels
            log("wheelhouse: not every requirement is cached; fetching the missing wheels")
            ok = False
            if only_binary and _same_python(python_version):
                ok, wheels, out = _quick_fill(req_file, house, log)
            if not ok:
                _fetch(req_file, house, python_version, reqs, log, only_binary)
                ok, wheels, out = _resolve(req_file, house, python_version, Path(tmp))
            if ok:
                log(f"wheelhouse: {len(wheels)} wheels resolved from {house}")
                _remember(house, _memo_key(reqs, python_version, house), wheels)
                return wheels
    raise _error("cannot resolve the requirements from the wheelhouse after fetching", reqs, out)


# --- memo of resolutions and wheel digests ----------------------------------
#
# An offline `pip install --dry-run` costs about 2 s; a warm deploy repeats the same
# resolution over an unchanged wheelhouse. The memo is keyed by the requirement lines,
# the interpreter and the wheelhouse's listing (names and sizes), so adding or replacing
# any wheel resolves again.

MEMO_FILE = ".resolved.json"
MEMO_ENTRIES = 64
DIGEST_FILE = ".sha256.json"


def _listing(house: Path) -> list[str]:
    return sorted(f"{p.name}:{p.stat().st_size}" for p in house.glob("*.whl"))


def _memo_key(reqs: Sequence[str], python_version: str, house: Path) -> str:
    h = hashlib.sha256()
    for part in (python_version, *reqs, "\0listing", *_listing(house)):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _recall(house: Path, memo: str) -> list[Path] | None:
    names = _read_json(house / MEMO_FILE).get(memo)
    if not isinstance(names, list):
        return None
    wheels = [house / n for n in names]
    return wheels if all(w.is_file() for w in wheels) else None


def _remember(house: Path, memo: str, wheels: list[Path]) -> None:
    data = _read_json(house / MEMO_FILE)
    data.pop(memo, None)
    data[memo] = [w.name for w in wheels]
    while len(data) > MEMO_ENTRIES:
        data.pop(next(iter(data)))
    _write_json(house / MEMO_FILE, data)


def wheel_digests(wheels: Sequence[Path]) -> list[tuple[str, str]]:
    """(file name, sha256) of each wheel: what an environment image is keyed by.

    Digests are remembered per file (by size and mtime) beside the wheels, so a
    warm deploy does not read 80 MB again.
    """
    if not wheels:
        return []
    memo_path = wheels[0].parent / DIGEST_FILE
    memo = _read_json(memo_path)
    out: list[tuple[str, str]] = []
    changed = False
    for w in wheels:
        st = w.stat()
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
        known = memo.get(w.name)
        if isinstance(known, list) and len(known) == 2 and known[0] == stamp:
            out.append((w.name, known[1]))
            continue
        h = hashlib.sha256()
        with open(w, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        memo[w.name] = [stamp, h.hexdigest()]
        out.append((w.name, h.hexdigest()))
        changed = True
    if changed:
        with contextlib.suppress(OSError):
            _write_json(memo_path, memo)
    return out


def _pip(python_version: str) -> list[str]:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]


def _host_python() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def _same_python(python_version: str) -> bool:
    return _host_python() == python_version


def _target_flags(python_version: str) -> list[str]:
    """Flags making pip pick wheels for another interpreter than the host's."""
    if _same_python(python_version):
        return []
    abi = "cp" + python_version.replace(".", "")
    return ["--python-version", python_version, "--implementation", "cp", "--abi", abi,
            "--only-binary=:all:"]


def _resolve(req_file: Path, house: Path, python_version: str, tmp: Path) -> tuple[bool, list[Path], str]:
    """Offline resolution against the wheelhouse; returns (ok, wheels, pip output)."""
    report = tmp / "report.json"
    # --only-binary: an sdist left in the wheelhouse would have its build code run just to read
    # its metadata; it is ignored, and the fetch that follows builds it (only_binary=False) or refuses.
    cmd = [*_pip(python_version), "install", "--dry-run", "--ignore-installed", "--quiet",
           "--no-index", "--only-binary=:all:", "--find-links", str(house), "--report", str(report), "-r", str(req_file)]
    if not _same_python(python_version):
        cmd += [*_target_flags(python_version), "--target", str(tmp / "target")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        return False, [], out
    wheels: list[Path] = []
    for item in json.loads(report.read_text()).get("install", []):
        url = item.get("download_info", {}).get("url", "")
        path = Path(unquote(urlparse(url).path))
        if not path.name.endswith(".whl") or not path.is_file():
            # An sdist slipped in (cannot happen with `pip wheel`, but a file
            # dropped in by hand could): force a fetch that builds the wheel.
            return False, [], out + f"\nnot a wheel in the wheelhouse: {url}"
        wheels.append(path)
    return True, sorted(wheels), out


def _quick_fill(req_file: Path, house: Path, log: Callable[[str], None]) -> tuple[bool, list[Path], str]:
    """uv's resolution and parallel downloads (lock_fetch): the wheels uv chose, now in the wheelhouse.

    uv's resolution stands as pip's would (the environment is installed with --no-deps from
    exactly this list; a later, different requirement set is resolved by pip offline over the
    same wheelhouse). Returns (False, ...) whenever pip should fetch instead, having logged why.
    """
    try:
        chosen = lock_fetch.fill(req_file, house, _pip(_host_python()), _env(), cache_root() / "uv", log)
    except lock_fetch.LockFetchError as e:
        log(f"wheelhouse: pip fetches instead of uv ({e})")
        return False, [], str(e)
    return True, sorted(house / w.name for w in chosen), ""


def _fetch(req_file: Path, house: Path, python_version: str, reqs: list[str], log: Callable[[str], None],
           only_binary: bool = True) -> None:
    """Fill the wheelhouse: `pip wheel` builds sdists only when `only_binary` is off; cross-version can only download wheels."""
    if _same_python(python_version):
        cmd = [*_pip(python_version), "wheel", "--wheel-dir", str(house), "--find-links", str(house),
               *(["--only-binary=:all:"] if only_binary else []), "-r", str(req_file)]
    else:
        cmd = [*_pip(python_version), "download", "--dest", str(house), "--find-links", str(house),
               *_target_flags(python_version), "-r", str(req_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        lines.append(line)
        if line.startswith(("Collecting", "Saved", "Building wheel", "ERROR")):
            log(f"pip: {line.strip()}")
    if proc.wait() != 0:
        what = "pip could not fetch the requirements into the wheelhouse"
        if only_binary:
            what += (" (wheels only: a package published only as source needs only_binary=False on"
                     " InferenceImage, which runs its setup code on this machine)")
        raise _error(what, reqs, "\n".join(lines))
    # pip wheel leaves nothing but wheels; drop stray sdists a download may leave.
    for p in house.iterdir():
        if p.is_file() and not p.name.endswith(".whl") and not p.name.startswith("."):  # .lock, memos
            p.unlink()


_FAILED_REQ = [
    re.compile(r"No matching distribution found for ([^\s]+)"),
    re.compile(r"Could not find a version that satisfies the requirement ([^\s]+)"),
    re.compile(r"Cannot install ([^\s]+)"),
    re.compile(r"Invalid requirement: '?([^'\n]+)'?"),
]


def _error(message: str, reqs: list[str], output: str) -> WheelhouseError:
    requirement = None
    for pattern in _FAILED_REQ:
        m = pattern.search(output)
        if m:
            requirement = m.group(1).rstrip(",'\"")
            break
    tail = "\n".join(output.strip().splitlines()[-TAIL_LINES:])
    named = f"requirement {requirement!r}" if requirement else "requirements " + ", ".join(map(repr, reqs))
    return WheelhouseError(f"{message}: {named}\n--- pip output (tail) ---\n{tail}", requirement, output)


PIP_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME",
                "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
                "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "NETRC")
"""What pip needs from the environment: where things are, the proxies and the CAs to reach
the index. With PIP_* (pip's own settings), nothing else reaches it."""


def _env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment for pip: `pip wheel` runs sdists' setup code, which must not
    see the passphrase, the storage key or an ARM token (PULUMI_*, AZURE_*, ARM_*...)."""
    source = os.environ if environ is None else environ
    env = {k: v for k, v in source.items() if k in PIP_ENV_KEEP or k.startswith("PIP_")}
    env["PIP_NO_INPUT"] = "1"
    env.pop("PIP_REQUIRE_VIRTUALENV", None)
    return env


@contextlib.contextmanager
def _locked(house: Path) -> Iterator[None]:
    """Two builds filling the same wheelhouse at once would race on partial files."""
    with open(house / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
