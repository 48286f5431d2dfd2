"""The dependency-image cache, without Docker: keys, LRU eviction, prune, and no rebuild when warm.

A fake Docker API stands in for the engine (the same calls `EnvCache` and
`ensure_env_image` make); it counts installs, so "no rebuild on a warm deploy" is
checked by counting, never by timing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import docker.errors
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mldeploy.providers.images import env_cache, build as images, wheelhouse  # noqa: E402
from mldeploy.providers.images.env_cache import EnvCache, Entry, env_key, plan_eviction  # noqa: E402

MB = 1024 * 1024
BASE = "mldeploy/base:bookworm-py3.11"
BASE_ID = "sha256:" + "b" * 64


class FakeAPI:
    """Just enough of docker.APIClient: images by id and tag, parents, containers, commit."""

    def __init__(self) -> None:
        self.images_by_id: dict[str, dict[str, Any]] = {
            BASE_ID: {"Id": BASE_ID, "Size": 170 * MB, "RepoTags": [BASE], "ParentId": "", "Labels": {},
                      "Config": {"Env": ["PATH=/usr/bin:/bin"], "Labels": {"mldeploy.python": "3.11"}}},
        }
        self.containers_: dict[str, dict[str, Any]] = {}
        self.created: list[dict[str, Any]] = []
        self.commits: list[dict[str, Any]] = []
        self.removed: list[str] = []
        self.exit_code = 0
        self.env_size = 400 * MB
        self._n = 0

    # images
    def _find(self, ref: str) -> dict[str, Any]:
        for img in self.images_by_id.values():
            if img["Id"] == ref or ref in img["RepoTags"]:
                return img
        raise docker.errors.ImageNotFound(ref)

    def inspect_image(self, ref: str) -> dict[str, Any]:
        return self._find(ref)

    def images(self, all: bool = False, filters: dict[str, str] | None = None) -> list[dict[str, Any]]:
        out = list(self.images_by_id.values())
        if filters and "label" in filters:
            out = [i for i in out if filters["label"] in (i.get("Labels") or {})]
        return [dict(i, Created=1) for i in out]

    def remove_image(self, ref: str, force: bool = False, noprune: bool = False) -> None:
        img = self._find(ref)
        if any(i.get("ParentId") == img["Id"] for i in self.images_by_id.values()):
            raise docker.errors.APIError("conflict", response=type("R", (), {"status_code": 409})())
        del self.images_by_id[img["Id"]]
        self.removed.append(img["Id"])

    def add_child(self, parent_id: str) -> str:
        self._n += 1
        cid = f"sha256:child{self._n}"
        self.images_by_id[cid] = {"Id": cid, "Size": 1, "RepoTags": [f"app:{self._n}"], "ParentId": parent_id,
                                  "Labels": {}}
        return cid

    # containers
    def containers(self, all: bool = False) -> list[dict[str, Any]]:
        return [{"ImageID": c["image"]} for c in self.containers_.values() if c.get("running_from")]

    def create_host_config(self, **kw: Any) -> dict[str, Any]:
        return kw

    def create_container(self, image: str, command: list[str], host_config: dict[str, Any], name: str):
        self._n += 1
        cid = f"c{self._n}"
        if any(c["name"] == name for c in self.containers_.values()):
            raise docker.errors.APIError("conflict: name in use", response=type("R", (), {"status_code": 409})())
        self.containers_[cid] = {"image": image, "command": command, "host_config": host_config, "name": name}
        self.created.append(self.containers_[cid])
        return {"Id": cid}

    def start(self, cid: str) -> None:
        pass

    def wait(self, cid: str) -> dict[str, Any]:
        return {"StatusCode": self.exit_code}

    def logs(self, cid: str) -> bytes:
        return b"Successfully installed things\n" if self.exit_code == 0 else b"ERROR: bad wheel\n"

    def commit(self, cid: str, repository: str, tag: str, changes: list[str]) -> dict[str, str]:
        self._n += 1
        iid = f"sha256:env{self._n}"
        labels = dict(c.removeprefix("LABEL ").split("=", 1) for c in changes if c.startswith("LABEL "))
        labels = {k: json.loads(v) if v.startswith('"') else v for k, v in labels.items()}
        self.images_by_id[iid] = {"Id": iid, "Size": 170 * MB + self.env_size, "RepoTags": [f"{repository}:{tag}"],
                                  "ParentId": BASE_ID, "Labels": labels}
        self.commits.append({"tag": f"{repository}:{tag}", "changes": changes})
        return {"Id": iid}

    def remove_container(self, cid: str, force: bool = False) -> None:
        found = [k for k, c in self.containers_.items() if k == cid or c["name"] == cid]
        if not found:
            raise docker.errors.NotFound(cid)
        for k in found:
            del self.containers_[k]


class Clock:
    """Each reading is `step` seconds after the last (by default longer than IN_FLIGHT_SECONDS)."""

    def __init__(self, step: float = 1000.0) -> None:
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture
def wheels(tmp_path: Path) -> list[Path]:
    house = tmp_path / "wheelhouse"
    house.mkdir()
    out = []
    for name in ("numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl", "joblib-1.6.0-py3-none-any.whl"):
        (house / name).write_bytes(name.encode())
        out.append(house / name)
    return out


def cache_for(api: FakeAPI, tmp_path: Path, cap_mb: int = 10_000, step: float = 1000.0) -> EnvCache:
    return EnvCache(api, root=tmp_path / "env-images", max_bytes=cap_mb * MB, clock=Clock(step))


# --- keys ------------------------------------------------------------------------------

def test_key_is_the_resolved_wheel_set_not_its_order() -> None:
    a = [("numpy-2.4.6.whl", "1" * 64), ("joblib-1.6.0.whl", "2" * 64)]
    assert env_key(BASE_ID, "3.11", a) == env_key(BASE_ID, "3.11", list(reversed(a)))
    assert env_key(BASE_ID, "3.11", a) != env_key(BASE_ID, "3.11", [a[0], ("joblib-1.6.0.whl", "3" * 64)])
    assert env_key(BASE_ID, "3.11", a) != env_key(BASE_ID, "3.11", a[:1])
    assert env_key(BASE_ID, "3.11", a) != env_key("sha256:" + "c" * 64, "3.11", a)
    assert env_key(BASE_ID, "3.11", a) != env_key(BASE_ID, "3.12", a)


def test_wheel_digests_are_content_hashes_remembered_by_stamp(wheels: list[Path]) -> None:
    first = wheelhouse.wheel_digests(wheels)
    assert [n for n, _ in first] == [w.name for w in wheels]
    assert (wheels[0].parent / wheelhouse.DIGEST_FILE).is_file()
    wheels[1].write_bytes(b"rebuilt with other content")  # same name, new bytes: a new digest
    second = wheelhouse.wheel_digests(wheels)
    assert second[0] == first[0] and second[1] != first[1]


def test_resolution_is_remembered_until_the_wheelhouse_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLDEPLOY_CACHE", str(tmp_path))
    house = wheelhouse.wheelhouse_dir("3.11")
    house.mkdir(parents=True)
    (house / "joblib-1.6.0-py3-none-any.whl").write_bytes(b"x")
    calls: list[int] = []

    def resolve(req_file: Path, house_: Path, py: str, tmp: Path):
        calls.append(1)
        return True, sorted(house_.glob("*.whl")), ""

    monkeypatch.setattr(wheelhouse, "_resolve", resolve)
    assert [w.name for w in wheelhouse.ensure_wheels(["joblib"])] == ["joblib-1.6.0-py3-none-any.whl"]
    assert [w.name for w in wheelhouse.ensure_wheels(["joblib"])] == ["joblib-1.6.0-py3-none-any.whl"]
    assert len(calls) == 1, "the second resolution came from the memo"
    wheelhouse.ensure_wheels(["joblib", "numpy"])
    assert len(calls) == 2, "other requirements resolve again"
    (house / "joblib-1.7.0-py3-none-any.whl").write_bytes(b"y")
    wheelhouse.ensure_wheels(["joblib"])
    assert len(calls) == 3, "a new wheel in the wheelhouse resolves again"


# --- eviction plan (pure) ------------------------------------------------------------------

def entry(key: str, size_mb: int, last_used: float) -> Entry:
    return Entry(key, f"r:{key}", f"sha256:{key}", size_mb * MB, last_used, last_used)


def test_plan_evicts_least_recently_used_until_under_the_cap() -> None:
    entries = [entry("a", 400, 3), entry("b", 400, 1), entry("c", 400, 2)]
    plan = plan_eviction(entries, 900 * MB)
    assert [e.key for e in plan.evict] == ["b"]
    assert plan.total_after == 800 * MB
    plan = plan_eviction(entries, 300 * MB)
    assert [e.key for e in plan.evict] == ["b", "c", "a"]
    assert plan_eviction(entries, 1200 * MB).evict == []


def test_plan_never_evicts_what_was_just_used_or_what_is_in_use() -> None:
    entries = [entry("a", 400, 3), entry("b", 400, 1), entry("c", 400, 2)]
    plan = plan_eviction(entries, 400 * MB, keep={"b"}, in_use={"sha256:c"})
    assert [e.key for e in plan.evict] == ["a"]
    assert [e.key for e in plan.kept_in_use] == ["c"]
    assert plan.total_after == 800 * MB  # over the cap: what is in use cannot go


# --- ensure_env_image: built once, then reused (counted) --------------------------------------

def test_warm_build_installs_nothing(tmp_path: Path, wheels: list[Path]) -> None:
    api = FakeAPI()
    cache = cache_for(api, tmp_path)
    tag, built = images.ensure_env_image(api, BASE, wheels, "3.11", lambda _l: None, cache)
    assert built and len(api.commits) == 1
    again, built_again = images.ensure_env_image(api, BASE, wheels, "3.11", lambda _l: None, cache)
    assert (again, built_again) == (tag, False)
    assert len(api.created) == 1 and len(api.commits) == 1, "a warm build made a container or an image"
    # What a deploy's provider records: one environment build.
    builds = env_cache.read_builds(cache.root)
    assert [b["kind"] for b in builds] == ["env"] and builds[0]["name"] == tag


def test_a_different_wheel_set_is_a_new_entry(tmp_path: Path, wheels: list[Path]) -> None:
    api = FakeAPI()
    cache = cache_for(api, tmp_path)
    first, _ = images.ensure_env_image(api, BASE, wheels, "3.11", lambda _l: None, cache)
    second, built = images.ensure_env_image(api, BASE, wheels[:1], "3.11", lambda _l: None, cache)
    assert built and second != first
    assert {e.tag for e in cache.entries()} == {first, second}


def test_install_is_offline_exact_and_from_a_read_only_wheelhouse(tmp_path: Path, wheels: list[Path]) -> None:
    api = FakeAPI()
    images.ensure_env_image(api, BASE, wheels, "3.11", lambda _l: None, cache_for(api, tmp_path))
    (made,) = api.created
    assert made["host_config"]["network_mode"] == "none"
    binds = {str(wheels[0].parent): {"bind": images.WHEELS_MOUNT, "mode": "ro"}}
    uv = images.uv_binary()
    assert uv is not None, "requirements.lock installs uv beside the project's Python"
    binds[uv] = {"bind": images.UV_MOUNT, "mode": "ro"}  # issue 22: uv installs, pip is the fallback
    assert made["host_config"]["binds"] == binds, "only the wheelhouse and the uv binary, both read-only"
    script = made["command"][-1]
    assert "--no-index" in script and "--no-deps" in script and "--no-cache-dir" in script
    uv_part, pip_part = script.split("; else ")
    assert f"{images.UV_MOUNT} pip install" in uv_part and "--no-index" in uv_part and "--no-deps" in uv_part
    assert "-m compileall" in uv_part and images.NOT_COMPILED in uv_part, "compiled as pip would, but tests and pip"
    assert "--without-pip" in uv_part and "$BUNDLED_PIP" in uv_part, "the venv keeps its pip, from the bundled wheel"
    assert f"{images.ENV_DIR}/bin/pip install" in pip_part
    for w in wheels:
        assert f"{images.WHEELS_MOUNT}/{w.name}" in script
    changes = api.commits[0]["changes"]
    assert "ENV PATH=/opt/azureml-env/bin:/usr/bin:/bin" in changes  # the base's own PATH, after the venv
    assert api.containers_ == {}, "the install container was left behind"


def test_an_interrupted_install_is_cleaned_up_by_the_next(tmp_path: Path, wheels: list[Path]) -> None:
    api = FakeAPI()
    cache = cache_for(api, tmp_path)
    key = env_key(BASE_ID, "3.11", wheelhouse.wheel_digests(wheels))
    api.containers_["stale"] = {"image": BASE, "command": [], "host_config": {}, "name": f"mldeploy-env-install-{key[:24]}"}
    images.ensure_env_image(api, BASE, wheels, "3.11", lambda _l: None, cache)
    assert api.containers_ == {} and len(api.commits) == 1


def test_failed_install_leaves_no_entry_and_no_container(tmp_path: Path, wheels: list[Path]) -> None:
    api = FakeAPI()
    api.exit_code = 1
    cache = cache_for(api, tmp_path)
    with pytest.raises(images.ImageBuildError, match="bad wheel"):
        images.ensure_env_image(api, BASE, wheels, "3.11", lambda _l: None, cache)
    assert api.commits == [] and api.containers_ == {} and cache.entries() == []


# --- the cache: LRU eviction over the cap, prune, reconcile -----------------------------------

def _fill(api: FakeAPI, cache: EnvCache, tmp_path: Path, n: int, start: int = 0) -> list[str]:
    tags = []
    for i in range(start, start + n):
        w = tmp_path / f"house{i}" / f"pkg{i}-1.0-py3-none-any.whl"
        w.parent.mkdir()
        w.write_bytes(str(i).encode())
        tags.append(images.ensure_env_image(api, BASE, [w], "3.11", lambda _l: None, cache)[0])
    return tags


def test_recording_over_the_cap_evicts_the_least_recently_used(tmp_path: Path) -> None:
    api = FakeAPI()
    cache = cache_for(api, tmp_path, cap_mb=1000)  # room for two 400 MB environments
    a, b = _fill(api, cache, tmp_path, 2)
    # `a` is used again (a warm deploy), so `b` is now the least recently used.
    key_a = next(e.key for e in cache.entries() if e.tag == a)
    with cache.locked():
        assert cache.lookup(key_a) is not None
    (tmp_path / "more").mkdir()
    (c,) = _fill(api, cache, tmp_path / "more", 1, start=2)
    tags = {e.tag for e in cache.entries()}
    assert tags == {a, c}, tags
    assert all(b not in img["RepoTags"] for img in api.images_by_id.values()), "the evicted image is still in Docker"


def test_an_entry_used_moments_ago_is_not_evicted_automatically(tmp_path: Path) -> None:
    """Another deploy may be about to build FROM it; a prune by hand may still remove it."""
    api = FakeAPI()
    cache = cache_for(api, tmp_path, cap_mb=500, step=1.0)
    a, b = _fill(api, cache, tmp_path, 2)
    assert {e.tag for e in cache.entries()} == {a, b}, "over the cap, but both were used seconds ago"
    assert [e.tag for e in cache.prune().evict] == [a]


def test_an_entry_in_use_is_kept_over_the_cap(tmp_path: Path) -> None:
    api = FakeAPI()
    cache = cache_for(api, tmp_path, cap_mb=1000)
    a, b = _fill(api, cache, tmp_path, 2)
    api.add_child(api.inspect_image(a)["Id"])  # an inference image built on `a`, the oldest
    (tmp_path / "more").mkdir()
    (c,) = _fill(api, cache, tmp_path / "more", 1, start=2)
    assert {e.tag for e in cache.entries()} == {a, c}  # `b` went instead of `a`


def test_prune_to_zero_removes_every_entry_not_in_use(tmp_path: Path) -> None:
    api = FakeAPI()
    cache = cache_for(api, tmp_path)
    a, b = _fill(api, cache, tmp_path, 2)
    api.add_child(api.inspect_image(b)["Id"])
    plan = cache.prune(0)
    assert [e.tag for e in plan.evict] == [a]
    assert [e.tag for e in plan.kept_in_use] == [b]
    assert [e.tag for e in cache.entries()] == [b]
    assert BASE_ID in api.images_by_id, "pruning removed the base image"


def test_index_follows_docker(tmp_path: Path) -> None:
    """An image removed by hand leaves the index; a labelled image the index lost is adopted."""
    api = FakeAPI()
    cache = cache_for(api, tmp_path)
    a, b = _fill(api, cache, tmp_path, 2)
    api.remove_image(a)
    assert [e.tag for e in cache.entries()] == [b]
    (cache.root / "index.json").unlink()
    assert [e.tag for e in cache.entries()] == [b]


def test_a_cache_never_adopts_or_prunes_another_caches_images(tmp_path: Path) -> None:
    """Two caches on one machine (a test's, a bench's, the default): each prunes only its own."""
    api = FakeAPI()
    mine = cache_for(api, tmp_path / "mine")
    theirs = cache_for(api, tmp_path / "theirs")
    (a,) = _fill(api, mine, tmp_path, 1)
    (tmp_path / "more").mkdir()
    (b,) = _fill(api, theirs, tmp_path / "more", 1, start=1)
    (mine.root / "index.json").unlink()  # lost: only labelled images of its own come back
    assert [e.tag for e in mine.entries()] == [a]
    assert [e.tag for e in mine.prune(0).evict] == [a]
    assert [e.tag for e in theirs.entries()] == [b]


def test_cap_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLDEPLOY_ENV_CACHE_MAX_MB", "1024")
    assert env_cache.max_bytes_from_env() == 1024 * MB
    monkeypatch.setenv("MLDEPLOY_ENV_CACHE_MAX_MB", "lots")
    with pytest.raises(ValueError, match="MLDEPLOY_ENV_CACHE_MAX_MB"):
        env_cache.max_bytes_from_env()
    monkeypatch.delenv("MLDEPLOY_ENV_CACHE_MAX_MB")
    assert env_cache.max_bytes_from_env() == env_cache.DEFAULT_MAX_MB * MB


def test_prune_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import image_cache

    api = FakeAPI()
    cache = cache_for(api, tmp_path)
    a, b = _fill(api, cache, tmp_path, 2)
    assert image_cache.main(["list"], cache=cache) == 0
    out = capsys.readouterr().out
    assert "2 environment image(s)" in out and a in out and b in out
    assert image_cache.main(["prune", "--max-mb", "500"], cache=cache) == 0
    out = capsys.readouterr().out
    assert f"removed {a}" in out and "1 removed" in out
    assert image_cache.main(["prune", "--all"], cache=cache) == 0
    assert cache.entries() == []
    with pytest.raises(SystemExit):
        image_cache.main(["prune", "--max-mb", "-1"], cache=cache)


def test_stack_cli_knows_the_command() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import stack

    assert stack.TOOLS["image-cache"] == "image_cache"
