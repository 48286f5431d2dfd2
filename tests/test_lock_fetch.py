"""The wheelhouse's quick fill: uv's resolution carried over from pip's settings, the wheel
chosen for each package, checked downloads, and the fallback to pip.

The end-to-end cases serve a package index of this test's own wheels on 127.0.0.1 and point
pip at it (PIP_INDEX_URL), so the real uv and the real pip resolve against it.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import sys
import threading
import zipfile
from pathlib import Path
from typing import Iterator

import pytest
from packaging.tags import Tag

from mldeploy.providers.images import lock_fetch, wheelhouse
from mldeploy.providers.images.lock_fetch import LockedWheel, LockFetchError

PY = f"{sys.version_info[0]}.{sys.version_info[1]}"


# --- pip's settings ---------------------------------------------------------------------------

def test_pip_settings_are_read_as_pip_wheel_reads_them() -> None:
    listing = "\n".join([
        "global.index-url='https://a.example/simple'",
        "global.cert='/etc/ssl/ca.pem'",
        "wheel.index-url='https://b.example/simple'",
        ":env:.extra-index-url='https://c.example/simple https://d.example/simple'",
        ":env:.index-url='https://e.example/simple'",
        "install.no-index='1'",  # another command's section: not pip wheel's
    ])
    assert lock_fetch.parse_pip_config(listing) == {
        "index-url": "https://e.example/simple", "cert": "/etc/ssl/ca.pem",
        "extra-index-url": "https://c.example/simple https://d.example/simple"}
    assert lock_fetch.parse_pip_config("global.index-url='x'\nwheel.index-url='y'") == {"index-url": "y"}


def test_uv_asks_the_indexes_pip_asks(tmp_path: Path) -> None:
    assert lock_fetch.uv_arguments({}) == []
    assert lock_fetch.uv_arguments({"index-url": "https://a/simple", "cert": "/ca.pem"}) == ["--index-url", "https://a/simple"]
    # several indexes: pip takes the best version across all of them; uv does with unsafe-best-match
    assert lock_fetch.uv_arguments({"extra-index-url": "https://b/simple https://c/simple"}) == [
        "--extra-index-url", "https://b/simple", "--extra-index-url", "https://c/simple",
        "--index-strategy", "unsafe-best-match"]
    # pip ignores a find-links folder that is not there; uv would refuse it
    assert lock_fetch.uv_arguments({"find-links": f"{tmp_path} {tmp_path / 'missing'} https://f/links"}) == [
        "--find-links", str(tmp_path), "--find-links", "https://f/links"]


@pytest.mark.parametrize("key", ["no-index", "trusted-host", "proxy", "no-binary", "pre", "constraint"])
def test_a_pip_setting_uv_would_not_follow_leaves_the_fetch_to_pip(key: str) -> None:
    with pytest.raises(LockFetchError, match=key):
        lock_fetch.uv_arguments({key: "1", "index-url": "https://a/simple"})
    assert lock_fetch.uv_arguments({key: "0"}) == [], "a setting turned off is no reason"


# --- the lock and the choice ------------------------------------------------------------------

PYLOCK = '''
lock-version = "1.0"
created-by = "uv"

[[packages]]
name = "numpy"
version = "2.4.6"
wheels = [
  { url = "https://idx/packages/numpy-2.4.6-py3-none-any.whl", size = 10, hashes = { sha256 = "aa" } },
  { url = "https://idx/packages/numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl", size = 20, hashes = { sha256 = "bb" } },
  { url = "https://idx/packages/numpy-2.4.6-cp311-cp311-manylinux_2_34_x86_64.whl", size = 30, hashes = { sha256 = "cc" } },
]

[[packages]]
name = "joblib"
version = "1.6.0"
wheels = [{ path = "/opt/wheels/joblib-1.6.0-py3-none-any.whl", hashes = { sha256 = "dd" } }]
'''

TAGS = [Tag("cp311", "cp311", "manylinux_2_34_x86_64"), Tag("cp311", "cp311", "manylinux_2_28_x86_64"),
        Tag("py3", "none", "any")]


def test_the_lock_gives_each_packages_wheels_with_their_digests() -> None:
    packages = lock_fetch.locked_wheels(PYLOCK)
    assert sorted(packages) == ["joblib", "numpy"]
    assert [w.sha256 for w in packages["numpy"]] == ["aa", "bb", "cc"]
    assert packages["joblib"] == [LockedWheel("joblib-1.6.0-py3-none-any.whl", "/opt/wheels/joblib-1.6.0-py3-none-any.whl", "dd", None)]


def test_a_package_without_a_wheel_in_the_lock_is_named() -> None:
    with pytest.raises(LockFetchError, match="'scipy'"):
        lock_fetch.locked_wheels('[[packages]]\nname = "scipy"\nversion = "1"\nsdist = { url = "https://x/s.tar.gz" }\n')


def test_the_wheel_chosen_is_the_one_whose_tag_the_interpreter_prefers() -> None:
    chosen = lock_fetch.choose(lock_fetch.locked_wheels(PYLOCK), TAGS)
    assert [w.name for w in chosen] == ["numpy-2.4.6-cp311-cp311-manylinux_2_34_x86_64.whl", "joblib-1.6.0-py3-none-any.whl"]
    older = lock_fetch.choose(lock_fetch.locked_wheels(PYLOCK), TAGS[1:])
    assert older[0].name == "numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl"
    with pytest.raises(LockFetchError, match="'numpy'"):
        lock_fetch.choose(lock_fetch.locked_wheels(PYLOCK), [Tag("cp312", "cp312", "win_amd64"), Tag("py3", "none", "any")][:1])


# --- a package index of this test's own, on 127.0.0.1 -----------------------------------------

def make_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = (), tag: str = "py3-none-any") -> Path:
    """A minimal, valid wheel: one module and its dist-info."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist}/METADATA": "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}".format(
            name, version, "".join(f"Requires-Dist: {r}\n" for r in requires)),
        f"{dist}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    out = folder / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(out, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
        z.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return out


class Index:
    """A PEP 503 simple index over a folder of wheels, with the paths it was asked for."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.asked: list[str] = []
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_a: object) -> None:
                pass

            def do_HEAD(self) -> None:  # uv asks whether ranges are served: they are not
                self.head_only = True
                self.do_GET()

            def do_GET(self) -> None:
                index.asked.append(self.command + " " + self.path)
                parts = [p for p in self.path.split("?")[0].split("/") if p]
                if len(parts) == 2 and parts[0] == "simple":
                    wheels = [w for w in sorted(index.folder.glob("*.whl"))
                              if w.name.split("-")[0].replace("_", "-") == parts[1]]
                    if not wheels:
                        return self._send(404, b"not here", "text/plain")
                    links = "".join(f'<a href="/files/{w.name}#sha256={hashlib.sha256(w.read_bytes()).hexdigest()}">{w.name}</a>\n'
                                    for w in wheels)
                    return self._send(200, f"<html><body>{links}</body></html>".encode(), "text/html")
                if len(parts) == 2 and parts[0] == "files" and (index.folder / parts[1]).is_file():
                    return self._send(200, (index.folder / parts[1]).read_bytes(), "application/octet-stream")
                self._send(404, b"not here", "text/plain")

            def _send(self, code: int, body: bytes, kind: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not getattr(self, "head_only", False):
                    self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Index]:
    folder = tmp_path / "index"
    folder.mkdir()
    make_wheel(folder, "mldprobe_app", "1.0", requires=("mldprobe-lib>=1",))
    make_wheel(folder, "mldprobe_lib", "1.0")
    make_wheel(folder, "mldprobe_lib", "2.0")
    make_wheel(folder, "mldprobe_lib", "3.0", tag="cp27-cp27m-win32")  # newest, but no use to this interpreter
    idx = Index(folder)
    monkeypatch.setenv("MLDEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_INDEX_URL", idx.url + "/simple")
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_NO_INDEX", raising=False)
    yield idx
    idx.server.shutdown()
    idx.server.server_close()


def test_download_checks_each_digest_and_leaves_nothing_partial(index: Index, tmp_path: Path) -> None:
    house = tmp_path / "house"
    house.mkdir()
    lib = index.folder / "mldprobe_lib-2.0-py3-none-any.whl"
    good = LockedWheel(lib.name, f"{index.url}/files/{lib.name}", hashlib.sha256(lib.read_bytes()).hexdigest(), lib.stat().st_size)
    assert lock_fetch.download([good], house) == lib.stat().st_size
    assert (house / lib.name).read_bytes() == lib.read_bytes()
    asked = len(index.asked)
    assert lock_fetch.download([good], house) == 0, "a wheel already there with its digest is kept"
    assert len(index.asked) == asked

    app = index.folder / "mldprobe_app-1.0-py3-none-any.whl"
    forged = LockedWheel(app.name, f"{index.url}/files/{app.name}", "0" * 64, None)
    with pytest.raises(LockFetchError, match="SHA-256"):
        lock_fetch.download([forged], house)
    missing = LockedWheel("nothere-1.0-py3-none-any.whl", f"{index.url}/files/nothere-1.0-py3-none-any.whl", "0" * 64, None)
    with pytest.raises(LockFetchError, match="HTTP 404"):
        lock_fetch.download([missing], house)
    assert sorted(p.name for p in house.iterdir()) == [lib.name], "neither a forged nor a partial file is left"


@pytest.mark.skipif(lock_fetch.uv_binary() is None, reason="uv is in requirements.lock; this environment lacks it")
def test_a_cold_wheelhouse_is_filled_by_uv_and_pip_agrees_offline(index: Index) -> None:
    lines: list[str] = []
    wheels = wheelhouse.ensure_wheels(["mldprobe-app==1.0"], python_version=PY, on_log=lines.append)
    assert [w.name for w in wheels] == ["mldprobe_app-1.0-py3-none-any.whl", "mldprobe_lib-2.0-py3-none-any.whl"]
    assert all(w.is_file() for w in wheels)
    assert any(line.startswith("uv: 2 wheels resolved") for line in lines), lines
    assert not any(line.startswith("pip:") for line in lines), f"pip fetched: {lines}"
    fetched = [p for p in index.asked if p.startswith("GET /files/")]
    assert sorted(set(fetched)) == ["GET /files/mldprobe_app-1.0-py3-none-any.whl", "GET /files/mldprobe_lib-2.0-py3-none-any.whl"]
    assert sorted(p.name for p in wheels[0].parent.glob("*.whl")) == [w.name for w in wheels], "only the chosen wheels"
    # Another spelling of the same needs is not in the memo: pip resolves it over the wheelhouse alone, to the same set.
    asked = len(index.asked)
    again: list[str] = []
    assert wheelhouse.ensure_wheels(["mldprobe-app"], python_version=PY, on_log=again.append) == wheels
    assert again == [f"wheelhouse: 2 wheels resolved offline from {wheels[0].parent}"]
    assert len(index.asked) == asked, "the index was not asked again"


def test_without_uv_pip_fills_the_wheelhouse_alike(index: Index, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lock_fetch, "uv_binary", lambda: None)
    lines: list[str] = []
    wheels = wheelhouse.ensure_wheels(["mldprobe-app==1.0"], python_version=PY, on_log=lines.append)
    assert [w.name for w in wheels] == ["mldprobe_app-1.0-py3-none-any.whl", "mldprobe_lib-2.0-py3-none-any.whl"]
    assert "wheelhouse: pip fetches instead of uv (no uv binary)" in lines
    assert any(line.startswith("pip: Saved") or line.startswith("pip: Collecting") for line in lines), lines


@pytest.mark.skipif(lock_fetch.uv_binary() is None, reason="uv is in requirements.lock; this environment lacks it")
def test_a_requirement_nobody_can_satisfy_is_named_by_pip_after_uv_gives_up(index: Index) -> None:
    lines: list[str] = []
    with pytest.raises(wheelhouse.WheelhouseError) as err:
        wheelhouse.ensure_wheels(["mldprobe-app==9.0"], python_version=PY, on_log=lines.append)
    assert err.value.requirement == "mldprobe-app==9.0", str(err.value)
    assert any(line.startswith("wheelhouse: pip fetches instead of uv (uv pip compile exited") for line in lines), lines
