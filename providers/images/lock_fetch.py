"""The wheelhouse's quick fill: uv resolves, then the wheels download side by side.

`pip wheel` fetches one file after another, so a cold build waited on about 60 round
trips to the package index (10.6-12.2 s for the sample's 56 wheels here, 2.5 s of it
CPU). `uv pip compile --format pylock.toml` resolves with the same index in 2-5 s and
writes each wheel's URL, size and SHA-256; the wheels chosen from it then come down
on 8 connections (87 MB in about 1 s here). uv's resolution is the build's: the
environment is installed from exactly those wheels with --no-deps. Any failure here
(no uv, a setting uv cannot follow, no solution, a refused download) falls back to
`pip wheel`, which names the requirement it cannot satisfy.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence
from urllib.parse import unquote, urlparse

import requests
from packaging.tags import Tag, sys_tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

THREADS = 8
"""Downloads at once: the index answers each in tens of milliseconds, so the wait is latency, not bandwidth."""
TIMEOUT = (10, 60)
PIP_CONFIG_SECTIONS = (":env:", "wheel", "global")
"""Where pip's settings for `pip wheel` come from, the first that sets a key winning."""
UNFOLLOWED = ("no-index", "trusted-host", "client-cert", "proxy", "no-binary", "pre", "constraint", "use-deprecated")
"""pip settings that this fill does not translate for uv: with any of them set, pip fetches alone."""


class LockFetchError(Exception):
    """The quick fill could not finish; the caller falls back to `pip wheel`."""


@dataclass(frozen=True)
class LockedWheel:
    """One wheel file of a pylock.toml: where it is, and what it must hash to."""

    name: str
    """The file name, e.g. numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl."""
    url: str
    """An https, http or file URL, or a local path (from pip's find-links)."""
    sha256: str
    size: int | None


def uv_binary() -> str | None:
    """The project environment's `uv` (requirements.lock), or None: pip then does the work alone."""
    beside = Path(sys.executable).with_name("uv")
    found = str(beside) if beside.is_file() else shutil.which("uv")
    return found if found and os.access(found, os.X_OK) else None


# --- pip's settings, carried over to uv (pure) ------------------------------------------------

def parse_pip_config(listing: str) -> dict[str, str]:
    """`pip config list` output -> the value pip wheel would use for each key."""
    found: dict[tuple[str, str], str] = {}
    for line in listing.splitlines():
        head, sep, value = line.partition("=")
        section, dot, key = head.strip().rpartition(".")
        if not sep or not dot:
            continue
        found[(section, key)] = value.strip().strip("'\"")
    out: dict[str, str] = {}
    for section in reversed(PIP_CONFIG_SECTIONS):
        for (sec, key), value in found.items():
            if sec == section:
                out[key] = value
    return out


def uv_arguments(settings: Mapping[str, str]) -> list[str]:
    """uv flags that ask the indexes pip asks, in pip's way (the best version across all of them).

    Raises LockFetchError for a setting uv would not follow as pip does.
    """
    unfollowed = sorted(k for k in settings if k in UNFOLLOWED and settings[k].strip().lower() not in ("", "0", "false", "no", "off"))
    if unfollowed:
        raise LockFetchError("pip is configured with " + ", ".join(unfollowed))
    args: list[str] = []
    if settings.get("index-url"):
        args += ["--index-url", settings["index-url"]]
    extra = settings.get("extra-index-url", "").split()
    for url in extra:
        args += ["--extra-index-url", url]
    if extra:
        args += ["--index-strategy", "unsafe-best-match"]
    for place in settings.get("find-links", "").split():
        if "://" in place or Path(place).is_dir():  # pip ignores a missing folder; uv would refuse it
            args += ["--find-links", place]
    return args


# --- the lock, and which wheel of each package (pure) ------------------------------------------

def locked_wheels(pylock: str) -> dict[str, list[LockedWheel]]:
    """Package name -> its wheels, from a pylock.toml's text. A package without wheels is an error."""
    data = tomllib.loads(pylock)
    out: dict[str, list[LockedWheel]] = {}
    for pkg in data.get("packages", []):
        wheels: list[LockedWheel] = []
        for w in pkg.get("wheels", []):
            where = w.get("url") or w.get("path") or ""
            sha = (w.get("hashes") or {}).get("sha256", "")
            name = w.get("name") or Path(unquote(urlparse(where).path)).name
            if where and sha and name.endswith(".whl"):
                wheels.append(LockedWheel(name, where, sha, w.get("size")))
        if not wheels:
            raise LockFetchError(f"{pkg.get('name')!r} {pkg.get('version', '')} has no wheel in the lock")
        out[pkg["name"]] = wheels
    return out


def choose(packages: Mapping[str, Sequence[LockedWheel]], tags: Iterable[Tag]) -> list[LockedWheel]:
    """The wheel pip would prefer for each package: the one whose best tag comes first in `tags`."""
    rank = {t: i for i, t in enumerate(tags)}
    picked: list[LockedWheel] = []
    for name, wheels in packages.items():
        best: tuple[int, LockedWheel] | None = None
        for w in wheels:
            try:
                wheel_tags = parse_wheel_filename(w.name)[3]
            except InvalidWheelFilename:
                continue
            score = min((rank[t] for t in wheel_tags if t in rank), default=None)
            if score is not None and (best is None or score < best[0]):
                best = (score, w)
        if best is None:
            raise LockFetchError(f"no wheel of {name!r} fits this interpreter")
        picked.append(best[1])
    return picked


# --- I/O: uv, pip config, downloads ------------------------------------------------------------

def read_pip_config(pip: Sequence[str], env: Mapping[str, str]) -> dict[str, str]:
    proc = subprocess.run([*pip, "config", "list"], capture_output=True, text=True, env=dict(env))
    if proc.returncode != 0:
        raise LockFetchError(f"pip config list exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return parse_pip_config(proc.stdout)


def lock(uv: str, req_file: Path, out_dir: Path, uv_args: Sequence[str], env: Mapping[str, str],
         cache_dir: Path) -> str:
    """Run uv's resolver for this interpreter, wheels only; returns the pylock.toml text."""
    out = out_dir / "pylock.toml"
    cmd = [uv, "pip", "compile", "--quiet", "--no-config", "--no-header", "--python", sys.executable,
           "--only-binary", ":all:", "--format", "pylock.toml", "--output-file", str(out),
           "--cache-dir", str(cache_dir), *uv_args, str(req_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(env))
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
        raise LockFetchError(f"uv pip compile exited {proc.returncode}: " + " | ".join(tail))
    return out.read_text()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(wheels: Sequence[LockedWheel], house: Path, session: requests.Session | None = None,
             verify: str | bool = True, threads: int = THREADS) -> int:
    """Put each wheel in `house`, checked against its SHA-256; returns the bytes fetched.

    A wheel already there under its name with the right digest is kept. Files arrive under
    a temporary name and are renamed only once checked, so a failure leaves no partial wheel.
    """
    session = session or requests.Session()
    session.mount("https://", requests.adapters.HTTPAdapter(pool_maxsize=threads))
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=threads))

    def one(w: LockedWheel) -> int:
        dest = house / w.name
        if dest.is_file() and (w.size is None or dest.stat().st_size == w.size) and _sha256(dest) == w.sha256:
            return 0
        part = house / f".{w.name}.{os.getpid()}.part"
        h, size = hashlib.sha256(), 0
        try:
            parsed = urlparse(w.url)
            if parsed.scheme in ("http", "https"):
                with session.get(w.url, stream=True, timeout=TIMEOUT, verify=verify) as r:
                    if r.status_code != 200:
                        raise LockFetchError(f"{w.name}: HTTP {r.status_code} from the index")
                    with open(part, "wb") as fh:
                        for block in r.iter_content(1 << 16):
                            h.update(block)
                            size += len(block)
                            fh.write(block)
            else:
                src = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(w.url)
                with open(src, "rb") as sf, open(part, "wb") as fh:
                    for block in iter(lambda: sf.read(1 << 20), b""):
                        h.update(block)
                        size += len(block)
                        fh.write(block)
            if h.hexdigest() != w.sha256:
                raise LockFetchError(f"{w.name}: SHA-256 {h.hexdigest()} is not the locked {w.sha256}")
            os.replace(part, dest)
            return size
        except (OSError, requests.RequestException) as e:
            raise LockFetchError(f"{w.name}: {e}") from e
        finally:
            part.unlink(missing_ok=True)

    fetched = 0
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for n in pool.map(one, sorted(wheels, key=lambda w: -(w.size or 0))):  # the largest first
            fetched += n
    return fetched


def fill(req_file: Path, house: Path, pip: Sequence[str], env: Mapping[str, str], cache_dir: Path,
         log: Callable[[str], None], uv: str | None = None) -> list[LockedWheel]:
    """Resolve `req_file` with uv and download the chosen wheels into `house`.

    Raises LockFetchError on anything it cannot do as pip would; nothing partial is left.
    """
    uv = uv or uv_binary()
    if uv is None:
        raise LockFetchError("no uv binary")
    settings = read_pip_config(pip, env)
    uv_env = {k: v for k, v in env.items() if not k.startswith(("PIP_", "UV_"))}
    if settings.get("cert") and "SSL_CERT_FILE" not in uv_env:
        uv_env["SSL_CERT_FILE"] = settings["cert"]
    args = uv_arguments(settings)
    t0 = time.monotonic()
    chosen = choose(locked_wheels(lock(uv, req_file, req_file.parent, args, uv_env, cache_dir)), sys_tags())
    total = sum(w.size or 0 for w in chosen)
    log(f"uv: {len(chosen)} wheels resolved in {time.monotonic() - t0:.1f} s; downloading "
        f"{total / 1e6:.0f} MB on {THREADS} connections")
    t1 = time.monotonic()
    fetched = download(chosen, house, verify=env.get("REQUESTS_CA_BUNDLE") or settings.get("cert") or True)
    log(f"uv: {fetched / 1e6:.0f} MB downloaded and checked in {time.monotonic() - t1:.1f} s")
    return chosen
