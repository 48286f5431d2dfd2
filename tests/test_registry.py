"""Unit tests of the local model registry (`mldeploy.providers.model_registry.registry`) on tmp_path."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from mldeploy.providers.model_registry.registry import ModelRegistry, RegistryError, content_hash

OWNER = "proj/dev/ridge"
OTHER = "proj/prod/ridge"


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    f = tmp_path / "src" / "model.pkl"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"weights-v1")
    return f


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    d = tmp_path / "src" / "bert"
    (d / "tokenizer").mkdir(parents=True)
    (d / "config.json").write_text('{"layers": 2}')
    (d / "weights.bin").write_bytes(b"\x00\x01\x02")
    (d / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    return d


def files_under(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- content_hash


class TestContentHash:
    def test_file_is_stable_and_prefixed(self, model_file: Path) -> None:
        h = content_hash(model_file)
        assert h.startswith("sha256:") and len(h) == len("sha256:") + 64
        assert content_hash(model_file) == h
        assert content_hash(str(model_file)) == h

    def test_bytes_change_the_hash(self, model_file: Path) -> None:
        before = content_hash(model_file)
        model_file.write_bytes(b"weights-v2")
        assert content_hash(model_file) != before

    def test_renaming_a_file_changes_the_hash(self, model_file: Path) -> None:
        before = content_hash(model_file)
        renamed = model_file.rename(model_file.with_name("other.pkl"))
        assert content_hash(renamed) != before

    def test_same_bytes_same_name_elsewhere_same_hash(self, model_file: Path, tmp_path: Path) -> None:
        twin = tmp_path / "elsewhere" / model_file.name
        twin.parent.mkdir()
        twin.write_bytes(model_file.read_bytes())
        assert content_hash(twin) == content_hash(model_file)

    def test_folder_covers_nested_files(self, model_folder: Path) -> None:
        before = content_hash(model_folder)
        (model_folder / "tokenizer" / "vocab.txt").write_text("a\nb\nc\n")
        assert content_hash(model_folder) != before

    def test_renaming_a_nested_file_changes_the_hash(self, model_folder: Path) -> None:
        before = content_hash(model_folder)
        (model_folder / "tokenizer" / "vocab.txt").rename(model_folder / "tokenizer" / "words.txt")
        assert content_hash(model_folder) != before

    def test_moving_a_nested_file_changes_the_hash(self, model_folder: Path) -> None:
        before = content_hash(model_folder)
        (model_folder / "tokenizer" / "vocab.txt").rename(model_folder / "vocab.txt")
        assert content_hash(model_folder) != before

    def test_renaming_the_folder_changes_the_hash(self, model_folder: Path) -> None:
        before = content_hash(model_folder)
        assert content_hash(model_folder.rename(model_folder.with_name("roberta"))) != before

    def test_empty_subfolders_do_not_count(self, model_folder: Path) -> None:
        before = content_hash(model_folder)
        (model_folder / "empty").mkdir()
        assert content_hash(model_folder) == before

    def test_missing_path(self, tmp_path: Path) -> None:
        missing = tmp_path / "nope.pkl"
        with pytest.raises(RegistryError, match="does not exist") as exc:
            content_hash(missing)
        assert str(missing) in str(exc.value)

    def test_empty_folder(self, tmp_path: Path) -> None:
        empty = tmp_path / "empty"
        (empty / "sub").mkdir(parents=True)
        with pytest.raises(RegistryError, match="empty") as exc:
            content_hash(empty)
        assert str(empty) in str(exc.value)


# ---------------------------------------------------------------- register


class TestRegister:
    def test_first_registration_is_version_1(self, registry: ModelRegistry, model_file: Path) -> None:
        mv = registry.register("ridge", model_file, OWNER)
        assert mv.name == "ridge"
        assert mv.version == 1
        assert mv.content_hash == content_hash(model_file)
        assert mv.owners == [OWNER]
        assert mv.created > 0
        assert Path(mv.path) == registry.root / "ridge" / "1"
        assert [v.version for v in registry.versions("ridge")] == [1]

    def test_registration_is_a_copy(self, registry: ModelRegistry, model_file: Path) -> None:
        mv = registry.register("ridge", model_file, OWNER)
        copy = Path(mv.path) / model_file.name
        assert copy.read_bytes() == b"weights-v1"
        assert not copy.samefile(model_file)
        model_file.write_bytes(b"edited-afterwards")
        assert copy.read_bytes() == b"weights-v1"
        assert content_hash(copy) == mv.content_hash
        again = registry.get("ridge", 1)
        assert again is not None and again.content_hash == mv.content_hash

    def test_identical_content_same_version(self, registry: ModelRegistry, model_file: Path) -> None:
        first = registry.register("ridge", model_file, OWNER)
        listing = sorted(p.name for p in (registry.root / "ridge").iterdir())
        second = registry.register("ridge", model_file, OWNER)
        assert second.version == first.version == 1
        assert second.owners == [OWNER]  # not appended twice
        assert sorted(p.name for p in (registry.root / "ridge").iterdir()) == listing
        assert [v.version for v in registry.versions("ridge")] == [1]

    def test_identical_content_from_another_path_same_version(
        self, registry: ModelRegistry, model_file: Path, tmp_path: Path
    ) -> None:
        registry.register("ridge", model_file, OWNER)
        twin = tmp_path / "copy" / model_file.name
        twin.parent.mkdir()
        twin.write_bytes(model_file.read_bytes())
        assert registry.register("ridge", twin, OWNER).version == 1

    def test_changed_content_is_version_2(self, registry: ModelRegistry, model_file: Path) -> None:
        v1 = registry.register("ridge", model_file, OWNER)
        model_file.write_bytes(b"weights-v2")
        v2 = registry.register("ridge", model_file, OWNER)
        assert v2.version == 2
        assert v2.content_hash != v1.content_hash
        assert (Path(v2.path) / model_file.name).read_bytes() == b"weights-v2"
        # version 1 untouched
        old = registry.get("ridge", 1)
        assert old is not None
        assert old.content_hash == v1.content_hash
        assert (Path(old.path) / model_file.name).read_bytes() == b"weights-v1"
        assert [v.version for v in registry.versions("ridge")] == [1, 2]

    def test_folder_model_keeps_its_name_and_tree(
        self, registry: ModelRegistry, model_folder: Path
    ) -> None:
        mv = registry.register("bert", model_folder, OWNER)
        copied = Path(mv.path) / model_folder.name
        assert copied.is_dir()
        assert files_under(copied) == files_under(model_folder)
        assert content_hash(copied) == mv.content_hash == content_hash(model_folder)

    def test_folder_nested_change_is_new_version(self, registry: ModelRegistry, model_folder: Path) -> None:
        registry.register("bert", model_folder, OWNER)
        (model_folder / "tokenizer" / "vocab.txt").write_text("changed")
        mv = registry.register("bert", model_folder, OWNER)
        assert mv.version == 2
        assert (Path(mv.path) / "bert" / "tokenizer" / "vocab.txt").read_text() == "changed"
        assert (registry.root / "bert" / "1" / "bert" / "tokenizer" / "vocab.txt").read_text() == "a\nb\n"

    def test_separate_models_are_versioned_separately(
        self, registry: ModelRegistry, model_file: Path, model_folder: Path
    ) -> None:
        assert registry.register("ridge", model_file, OWNER).version == 1
        assert registry.register("bert", model_folder, OWNER).version == 1

    def test_empty_folder_raises_naming_the_path(self, registry: ModelRegistry, tmp_path: Path) -> None:
        empty = tmp_path / "emptymodel"
        empty.mkdir()
        with pytest.raises(RegistryError) as exc:
            registry.register("ridge", empty, OWNER)
        assert str(empty) in str(exc.value)
        assert registry.versions("ridge") == []

    def test_missing_path_raises_naming_the_path(self, registry: ModelRegistry, tmp_path: Path) -> None:
        missing = tmp_path / "missing.pkl"
        with pytest.raises(RegistryError) as exc:
            registry.register("ridge", missing, OWNER)
        assert str(missing) in str(exc.value)
        assert registry.versions("ridge") == []

    @pytest.mark.parametrize("name", ["", "-lead", "has space", "a/b", "../up", "x" * 256])
    def test_invalid_name(self, registry: ModelRegistry, model_file: Path, name: str) -> None:
        with pytest.raises(RegistryError, match="invalid model name"):
            registry.register(name, model_file, OWNER)

    def test_tags_and_description_stored(self, registry: ModelRegistry, model_file: Path) -> None:
        registry.register("ridge", model_file, OWNER, {"area": "demo", "type": "regression"}, "Ridge, 10 features")
        mv = registry.get("ridge", 1)
        assert mv is not None
        assert mv.tags == {"area": "demo", "type": "regression"}
        assert mv.description == "Ridge, 10 features"
        meta = json.loads((registry.root / "ridge" / "1.json").read_text())
        assert meta["tags"] == {"area": "demo", "type": "regression"}
        assert meta["description"] == "Ridge, 10 features"
        assert "path" not in meta

    def test_tags_updated_on_same_content(self, registry: ModelRegistry, model_file: Path) -> None:
        registry.register("ridge", model_file, OWNER, {"area": "demo"}, "first")
        mv = registry.register("ridge", model_file, OWNER, {"area": "prod"}, "second")
        assert mv.version == 1
        stored = registry.get("ridge", 1)
        assert stored is not None
        assert (stored.tags, stored.description) == ({"area": "prod"}, "second")

    def test_tags_per_version(self, registry: ModelRegistry, model_file: Path) -> None:
        registry.register("ridge", model_file, OWNER, {"v": "1"}, "one")
        model_file.write_bytes(b"weights-v2")
        registry.register("ridge", model_file, OWNER, {"v": "2"}, "two")
        v1, v2 = registry.get("ridge", 1), registry.get("ridge", 2)
        assert v1 is not None and v2 is not None
        assert (v1.tags, v1.description) == ({"v": "1"}, "one")
        assert (v2.tags, v2.description) == ({"v": "2"}, "two")

    def test_update_metadata(self, registry: ModelRegistry, model_file: Path) -> None:
        registry.register("ridge", model_file, OWNER, {"a": "1"}, "d")
        registry.update_metadata("ridge", 1, {"b": "2"}, "e")
        mv = registry.get("ridge", 1)
        assert mv is not None and (mv.tags, mv.description) == ({"b": "2"}, "e")
        with pytest.raises(RegistryError, match="version 9"):
            registry.update_metadata("ridge", 9, {}, "")

    def test_get_unknown(self, registry: ModelRegistry) -> None:
        assert registry.get("nothing", 1) is None
        assert registry.versions("nothing") == []

    def test_incomplete_version_is_ignored(self, registry: ModelRegistry, model_file: Path) -> None:
        # a crash between copying and writing the metadata leaves a folder without its json
        registry.register("ridge", model_file, OWNER)
        (registry.root / "ridge" / "1.json").unlink()
        assert registry.get("ridge", 1) is None
        assert registry.versions("ridge") == []
        mv = registry.register("ridge", model_file, OWNER)
        assert mv.version == 1
        assert (Path(mv.path) / model_file.name).read_bytes() == b"weights-v1"


# ---------------------------------------------------------------- planned_version


class TestPlannedVersion:
    def test_empty_registry_plans_1_without_writing(self, registry: ModelRegistry, model_file: Path) -> None:
        assert registry.planned_version("ridge", content_hash(model_file), OWNER) == 1
        assert not registry.root.exists()

    def test_predicts_register(self, registry: ModelRegistry, model_file: Path) -> None:
        digest = content_hash(model_file)
        planned = registry.planned_version("ridge", digest, OWNER)
        assert registry.register("ridge", model_file, OWNER).version == planned == 1
        # same content: plan stays
        assert registry.planned_version("ridge", digest, OWNER) == 1
        assert registry.register("ridge", model_file, OWNER).version == 1
        # after a change: plan N+1 and get it
        model_file.write_bytes(b"weights-v2")
        digest2 = content_hash(model_file)
        planned2 = registry.planned_version("ridge", digest2, OWNER)
        assert planned2 == 2
        assert [v.version for v in registry.versions("ridge")] == [1]  # planning wrote nothing
        assert registry.register("ridge", model_file, OWNER).version == planned2

    def test_predicts_register_for_another_owner(self, registry: ModelRegistry, model_file: Path) -> None:
        registry.register("ridge", model_file, OWNER)
        digest = content_hash(model_file)
        planned = registry.planned_version("ridge", digest, OTHER)
        assert planned == 1
        assert registry.register("ridge", model_file, OTHER).version == planned

    def test_a_revert_gets_the_version_that_had_the_content(self, registry: ModelRegistry, model_file: Path) -> None:
        """Decided: identical content reuses its version (Azure ML would count up to 3; see docs/usage.md)."""
        registry.register("ridge", model_file, OWNER)
        model_file.write_bytes(b"weights-v2")
        registry.register("ridge", model_file, OWNER)
        model_file.write_bytes(b"weights-v1")
        assert registry.planned_version("ridge", content_hash(model_file), OWNER) == 1
        mv = registry.register("ridge", model_file, OWNER)
        assert mv.version == 1
        assert (Path(mv.path) / model_file.name).read_bytes() == b"weights-v1"
        assert [v.version for v in registry.versions("ridge")] == [1, 2]  # no copy of known content

    def test_another_owner_reverting_shares_the_version(self, registry: ModelRegistry, model_file: Path) -> None:
        registry.register("ridge", model_file, OWNER)
        model_file.write_bytes(b"weights-v2")
        registry.register("ridge", model_file, OWNER)
        model_file.write_bytes(b"weights-v1")  # content of version 1, which only OWNER holds
        assert registry.planned_version("ridge", content_hash(model_file), OTHER) == 1
        mv = registry.register("ridge", model_file, OTHER)
        assert mv.version == 1 and sorted(mv.owners) == sorted([OWNER, OTHER])
        assert [v.version for v in registry.versions("ridge")] == [1, 2]


# ---------------------------------------------------------------- release


class TestRelease:
    def test_release_deletes_owned_versions_and_folder(self, registry: ModelRegistry, model_file: Path) -> None:
        registry.register("ridge", model_file, OWNER)
        model_file.write_bytes(b"weights-v2")
        registry.register("ridge", model_file, OWNER)
        assert sorted(registry.release("ridge", OWNER)) == [1, 2]
        assert registry.versions("ridge") == []
        assert not (registry.root / "ridge").exists()

    def test_release_is_idempotent(self, registry: ModelRegistry, model_file: Path) -> None:
        registry.register("ridge", model_file, OWNER)
        assert registry.release("ridge", OWNER) == [1]
        assert registry.release("ridge", OWNER) == []
        assert registry.release("never-registered", OWNER) == []

    def test_release_keeps_versions_other_owners_hold(self, registry: ModelRegistry, model_file: Path) -> None:
        v1 = registry.register("ridge", model_file, OWNER)
        shared = registry.register("ridge", model_file, OTHER)
        assert shared.version == v1.version == 1
        assert sorted(shared.owners) == sorted([OWNER, OTHER])
        model_file.write_bytes(b"weights-v2")
        assert registry.register("ridge", model_file, OWNER).version == 2

        assert registry.release("ridge", OWNER) == [2]
        kept = registry.get("ridge", 1)
        assert kept is not None
        assert kept.owners == [OTHER]
        assert (Path(kept.path) / model_file.name).read_bytes() == b"weights-v1"
        assert registry.get("ridge", 2) is None
        assert not (registry.root / "ridge" / "2").exists()

        assert registry.release("ridge", OTHER) == [1]
        assert not (registry.root / "ridge").exists()

    def test_release_ignores_other_models(
        self, registry: ModelRegistry, model_file: Path, model_folder: Path
    ) -> None:
        registry.register("ridge", model_file, OWNER)
        registry.register("bert", model_folder, OWNER)
        registry.release("ridge", OWNER)
        assert [v.version for v in registry.versions("bert")] == [1]

    def test_release_by_stranger_changes_nothing(self, registry: ModelRegistry, model_file: Path) -> None:
        registry.register("ridge", model_file, OWNER)
        assert registry.release("ridge", "someone/else/x") == []
        mv = registry.get("ridge", 1)
        assert mv is not None and mv.owners == [OWNER]

    def test_register_after_release_starts_again(self, registry: ModelRegistry, model_file: Path) -> None:
        registry.register("ridge", model_file, OWNER)
        registry.release("ridge", OWNER)
        mv = registry.register("ridge", model_file, OWNER)
        assert mv.version == 1
        assert (Path(mv.path) / model_file.name).is_file()


# ---------------------------------------------------------------- concurrency


class TestConcurrency:
    N = 12

    def _run(self, target) -> list[BaseException]:
        errors: list[BaseException] = []
        barrier = threading.Barrier(self.N)

        def worker(i: int) -> None:
            try:
                barrier.wait()
                target(i)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(self.N)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        return errors

    def test_identical_content_same_owner_one_version(self, registry: ModelRegistry, model_folder: Path) -> None:
        versions: list[int] = []
        errors = self._run(lambda i: versions.append(registry.register("bert", model_folder, OWNER).version))
        assert errors == []
        assert versions == [1] * self.N
        assert [v.version for v in registry.versions("bert")] == [1]
        assert sorted(p.name for p in (registry.root / "bert").iterdir()) == ["1", "1.json"]
        mv = registry.get("bert", 1)
        assert mv is not None and mv.owners == [OWNER]

    def test_identical_content_many_owners_one_version(self, registry: ModelRegistry, model_folder: Path) -> None:
        versions: list[int] = []
        errors = self._run(lambda i: versions.append(registry.register("bert", model_folder, f"p/s/r{i}").version))
        assert errors == []
        assert versions == [1] * self.N
        assert [v.version for v in registry.versions("bert")] == [1]
        mv = registry.get("bert", 1)
        assert mv is not None
        # no lost update: every owner recorded exactly once
        assert sorted(mv.owners) == sorted(f"p/s/r{i}" for i in range(self.N))

    def test_two_registry_clients_share_the_lock(self, registry: ModelRegistry, model_file: Path) -> None:
        root = registry.root
        versions: list[int] = []
        errors = self._run(lambda i: versions.append(ModelRegistry(root).register("ridge", model_file, OWNER).version))
        assert errors == []
        assert set(versions) == {1}
        assert [v.version for v in ModelRegistry(root).versions("ridge")] == [1]
