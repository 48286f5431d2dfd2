"""The shared model registry on Azure Blob Storage (`mldeploy.providers.model_registry.blob_registry`).

Pure parts (URL reading, version choice) on their own; the rest against Azurite,
Microsoft's storage emulator, on 127.0.0.1 (the `azurite` fixture starts it), so
conditional requests (If-None-Match: *, If-Match) are the real service's.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import AZURITE_ACCOUNT, AZURITE_KEY, azblob_url
from mldeploy.providers.model_registry import blob_registry as br
from mldeploy.providers.model_registry.blob_registry import BlobModelRegistry, Entry
from mldeploy.providers.core.blob_store import BlobLocationError, credential_kind, parse_blob_url
from mldeploy.providers.model_registry.registry import RegistryError, content_hash, materialize, open_registry

OWNER = "mldeploy/dev/ridge"
OTHER = "mldeploy/prod/ridge"
EMU = {"AZURE_STORAGE_ACCOUNT": AZURITE_ACCOUNT}


# ---------------------------------------------------------------- reading URLs as the engine does


class TestParseBlobUrl:
    def test_emulator_url(self) -> None:
        loc = parse_blob_url("azblob://models?domain=127.0.0.1:10000&protocol=http&localemu=true", EMU)
        assert (loc.container, loc.prefix, loc.account) == ("models", "", AZURITE_ACCOUNT)
        assert loc.service_url == "http://127.0.0.1:10000/devstoreaccount1"

    def test_azure_url_with_prefix(self) -> None:
        loc = parse_blob_url("azblob://ml-team/registry/v1", {"AZURE_STORAGE_ACCOUNT": "acme"})
        assert loc.service_url == "https://acme.blob.core.windows.net"
        assert (loc.container, loc.prefix) == ("ml-team", "registry/v1/")
        assert loc.describe() == "https://acme.blob.core.windows.net/ml-team/registry/v1"

    def test_storage_account_in_the_url_wins(self) -> None:
        loc = parse_blob_url("azblob://ml-team?storage_account=other", {"AZURE_STORAGE_ACCOUNT": "acme"})
        assert loc.service_url == "https://other.blob.core.windows.net"

    def test_loopback_domain_is_path_style_like_the_engine(self) -> None:
        loc = parse_blob_url("azblob://models?domain=localhost:10000&protocol=http", EMU)
        assert loc.service_url == "http://localhost:10000/devstoreaccount1"

    def test_environment_fills_in_the_domain_and_protocol(self) -> None:
        env = {**EMU, "AZURE_STORAGE_DOMAIN": "127.0.0.1:10000", "AZURE_STORAGE_PROTOCOL": "http"}
        assert parse_blob_url("azblob://models", env).service_url == "http://127.0.0.1:10000/devstoreaccount1"

    @pytest.mark.parametrize(
        "url, words",
        [
            ("azblob://models?sig=abc", "unknown query parameter 'sig'"),
            ("azblob://models?sv=2020&sig=abc", "never in the URL"),
            ("azblob://Models", "lowercase"),
            ("azblob://ab", "3-63"),
            ("azblob://models?protocol=ftp", "protocol='ftp'"),
            ("azblob://models?localemu=maybe", "localemu='maybe' is not a boolean"),
            ("azblob://models?domain=a&domain=b", "given 2 times"),
            ("file:///tmp/x", "is not an azblob:// URL"),
        ],
    )
    def test_bad_urls_say_what_is_wrong(self, url: str, words: str) -> None:
        with pytest.raises(BlobLocationError, match=None) as info:
            parse_blob_url(url, EMU)
        assert words in str(info.value)

    def test_no_account(self) -> None:
        with pytest.raises(BlobLocationError, match="set AZURE_STORAGE_ACCOUNT"):
            parse_blob_url("azblob://models", {})

    @pytest.mark.parametrize(
        "env, kind",
        [
            ({"AZURE_STORAGE_ACCOUNT": "a", "AZURE_STORAGE_KEY": "k", "AZURE_STORAGE_SAS_TOKEN": "s"}, "shared-key"),
            ({"AZURE_STORAGE_ACCOUNT": "a", "AZURE_STORAGE_SAS_TOKEN": "s"}, "sas"),
            ({"AZURE_STORAGE_CONNECTION_STRING": "c"}, "connection-string"),
            ({"AZURE_STORAGE_ACCOUNT": "a"}, "default-azure-credential"),
        ],
    )
    def test_credentials_in_the_engines_order(self, env: dict[str, str], kind: str) -> None:
        assert credential_kind(env) == kind


# ---------------------------------------------------------------- choosing versions (pure)


def entry(version: int, digest: str = "sha256:a", state: str = br.COMPLETE, owners: tuple[str, ...] = (OWNER,), created: float = 0.0) -> Entry:
    return Entry(version, digest, state, owners, created, f"etag{version}")


class TestVersionChoice:
    def test_next_version_counts_every_record(self) -> None:
        assert br.next_version([]) == 1
        assert br.next_version([entry(1), entry(2, state=br.UPLOADING), entry(3, state=br.DELETING)]) == 4

    def test_with_content_prefers_the_owners_own_then_the_newest(self) -> None:
        entries = [entry(1, owners=(OTHER,)), entry(2, owners=(OWNER,)), entry(3, owners=(OTHER,))]
        assert br.with_content(entries, "sha256:a", OWNER).version == 2
        assert br.with_content(entries, "sha256:a", "someone/else/x").version == 3
        assert br.with_content(entries, "sha256:b", OWNER) is None

    def test_only_complete_versions_count_as_having_content(self) -> None:
        assert br.with_content([entry(1, state=br.UPLOADING), entry(2, state=br.DELETING)], "sha256:a", OWNER) is None

    def test_a_live_claim_of_the_same_content_is_pending_a_stale_one_is_not(self) -> None:
        live, stale = entry(4, state=br.UPLOADING, created=1000.0), entry(3, state=br.UPLOADING, created=0.0)
        assert br.pending_claim([live, stale], "sha256:a", now=1000.0 + 5) == live
        assert br.pending_claim([stale], "sha256:a", now=br.STALE_CLAIM_SECONDS + 1) is None
        assert br.pending_claim([live], "sha256:b", now=1000.0) is None

    def test_listing_parser_ignores_foreign_blobs(self) -> None:
        md = {"content_hash": "sha256:a", "state": "complete", "owners": '["x/y/z"]', "created": "1.5"}
        assert br.entry_from_listing("m", "m/versions/7.json", md, "e") == Entry(7, "sha256:a", "complete", ("x/y/z",), 1.5, "e")
        assert br.entry_from_listing("m", "m/versions/notes.txt", md, "e") is None
        assert br.entry_from_listing("m", "m/versions/7.json", {"owners": "not json"}, "e") is None


# ---------------------------------------------------------------- against Azurite


@pytest.fixture
def url(azurite: dict[str, str], blob_container: str) -> str:
    return azblob_url(azurite, blob_container, "registry")


@pytest.fixture
def registry(url: str) -> BlobModelRegistry:
    reg = open_registry(url)
    assert isinstance(reg, BlobModelRegistry)
    return reg


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
    (d / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    return d


def blob_names(registry: BlobModelRegistry) -> list[str]:
    return sorted(b.name for b in registry.container.list_blobs())


class TestRegistryOnAzurite:
    def test_versions_follow_content(self, registry: BlobModelRegistry, model_file: Path) -> None:
        v1 = registry.register("ridge", model_file, OWNER, {"area": "demo"}, "first")
        assert (v1.version, v1.content_hash, v1.owners) == (1, content_hash(model_file), [OWNER])
        assert registry.register("ridge", model_file, OWNER).version == 1  # same content, same version
        model_file.write_bytes(b"weights-v2")
        assert registry.planned_version("ridge", content_hash(model_file), OWNER) == 2
        assert registry.register("ridge", model_file, OWNER).version == 2
        model_file.write_bytes(b"weights-v1")  # a revert gets the version that had the content
        assert registry.planned_version("ridge", content_hash(model_file), OWNER) == 1
        assert registry.register("ridge", model_file, OWNER).version == 1
        assert [mv.version for mv in registry.versions("ridge")] == [1, 2]
        assert blob_names(registry) == [
            "registry/ridge/1/model.pkl", "registry/ridge/2/model.pkl",
            "registry/ridge/versions/1.json", "registry/ridge/versions/2.json",
        ]

    def test_a_second_client_sees_the_same_registry(self, registry: BlobModelRegistry, url: str, model_file: Path) -> None:
        """A fresh CI runner: nothing local, only the URL."""
        registry.register("ridge", model_file, OWNER, {"area": "demo"}, "Ridge")
        model_file.write_bytes(b"weights-v2")
        runner = open_registry(url)
        assert runner.planned_version("ridge", content_hash(model_file), OWNER) == 2
        got = runner.get("ridge", 1)
        assert got is not None and got.tags == {"area": "demo"} and got.description == "Ridge"

    def test_fetch_returns_the_files_checked(self, registry: BlobModelRegistry, model_folder: Path, tmp_path: Path) -> None:
        mv = registry.register("bert", model_folder, OWNER)
        dest = registry.fetch("bert", mv.version, tmp_path / "cache" / "bert" / "1")
        assert (dest / "bert" / "tokenizer" / "vocab.txt").read_text() == "a\nb\n"
        assert content_hash(dest / "bert") == mv.content_hash
        with pytest.raises(RegistryError, match="version 9 is not in the registry"):
            registry.fetch("bert", 9, tmp_path / "x")

    def test_versions_are_immutable_a_record_claim_cannot_be_overwritten(self, registry: BlobModelRegistry, model_file: Path) -> None:
        from azure.core.exceptions import ResourceExistsError

        registry.register("ridge", model_file, OWNER)
        record = {"name": "ridge", "version": 1, "content_hash": "sha256:other", "tags": {}, "description": "",
                  "owners": [OTHER], "created": 0.0, "state": br.UPLOADING}
        with pytest.raises(ResourceExistsError):
            registry._write(record, None)  # If-None-Match: *
        assert registry.get("ridge", 1).content_hash == content_hash(model_file)

    def test_release_deletes_what_nobody_owns(self, registry: BlobModelRegistry, model_file: Path) -> None:
        registry.register("ridge", model_file, OWNER)
        registry.register("ridge", model_file, OTHER)
        model_file.write_bytes(b"weights-v2")
        registry.register("ridge", model_file, OWNER)
        assert registry.release("ridge", OWNER) == [2]  # version 1 is still OTHER's
        assert [mv.version for mv in registry.versions("ridge")] == [1]
        assert registry.get("ridge", 1).owners == [OTHER]
        assert registry.release("ridge", OTHER) == [1]
        assert registry.release("ridge", OTHER) == []  # idempotent
        assert blob_names(registry) == []

    def test_update_metadata(self, registry: BlobModelRegistry, model_file: Path) -> None:
        registry.register("ridge", model_file, OWNER, {"a": "1"}, "old")
        assert registry.update_metadata("ridge", 1, {"a": "2"}, "new").tags == {"a": "2"}
        assert registry.get("ridge", 1).description == "new"
        with pytest.raises(RegistryError, match="version 5 is not in the registry"):
            registry.update_metadata("ridge", 5, {}, "")


class TestAtomicClaim:
    def test_losing_the_claim_to_another_runner_takes_the_next_number(self, url: str, tmp_path: Path) -> None:
        """Between our read and our claim, another runner claims N: ours must become N+1, not overwrite N."""
        ours, theirs = tmp_path / "ours.pkl", tmp_path / "theirs.pkl"
        ours.write_bytes(b"ours")
        theirs.write_bytes(b"theirs")
        other = open_registry(url)
        registry = open_registry(url)
        real_write, raced = registry._write, []

        def write_after_the_other_runner(record: dict[str, Any], etag: str | None) -> str:
            if etag is None and not raced:  # our first claim: the other runner gets there first
                raced.append(other.register("ridge", theirs, OTHER).version)
            return real_write(record, etag)

        registry._write = write_after_the_other_runner  # type: ignore[method-assign]
        mv = registry.register("ridge", ours, OWNER)
        assert raced == [1] and mv.version == 2
        assert registry.get("ridge", 1).content_hash == content_hash(theirs)
        assert registry.get("ridge", 2).content_hash == content_hash(ours)

    def test_concurrent_runners_never_share_a_version(self, url: str, tmp_path: Path) -> None:
        n = 6
        files = []
        for i in range(n):
            f = tmp_path / f"m{i}" / "model.pkl"
            f.parent.mkdir()
            f.write_bytes(f"weights-{i}".encode())
            files.append(f)
        barrier, got, errors = threading.Barrier(n), {}, []

        def runner(i: int) -> None:
            try:
                reg = open_registry(url)  # each runner its own client
                barrier.wait()
                got[i] = reg.register("ridge", files[i], f"mldeploy/s{i}/ridge").version
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=runner, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert sorted(got.values()) == list(range(1, n + 1))
        reg = open_registry(url)
        for i, version in got.items():
            assert reg.get("ridge", version).content_hash == content_hash(files[i])

    def test_concurrent_runners_with_the_same_content_share_one_version(self, url: str, model_file: Path) -> None:
        n = 5
        barrier, got, errors = threading.Barrier(n), [], []

        def runner(i: int) -> None:
            try:
                reg = open_registry(url)
                barrier.wait()
                got.append(reg.register("ridge", model_file, f"mldeploy/s{i}/ridge").version)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=runner, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert got == [1] * n
        assert sorted(open_registry(url).get("ridge", 1).owners) == sorted(f"mldeploy/s{i}/ridge" for i in range(n))

    def test_a_live_claim_of_the_same_content_is_waited_for_not_duplicated(self, url: str, model_file: Path) -> None:
        """Another runner is uploading this very content: we wait for its version instead of making N+1."""
        import time

        other = open_registry(url)
        record = {"name": "ridge", "version": 1, "content_hash": content_hash(model_file), "tags": {}, "description": "",
                  "owners": [OTHER], "created": time.time(), "state": br.UPLOADING}
        etag = other._write(record, None)
        waits: list[float] = []

        def other_runner_finishes(seconds: float) -> None:
            waits.append(seconds)
            if len(waits) == 3:  # a few polls later the other upload completes
                other._upload_and_complete(record, etag, model_file, record["content_hash"])

        registry = BlobModelRegistry(other.container, other.prefix, other.where, sleep=other_runner_finishes)
        assert registry.planned_version("ridge", content_hash(model_file), OWNER) == 1
        mv = registry.register("ridge", model_file, OWNER)
        assert mv.version == 1 and len(waits) == 3
        assert sorted(registry.get("ridge", 1).owners) == sorted([OTHER, OWNER])
        assert [v.version for v in registry.versions("ridge")] == [1]

    def test_an_abandoned_claim_of_the_same_content_is_finished(self, registry: BlobModelRegistry, model_file: Path) -> None:
        record = {"name": "ridge", "version": 1, "content_hash": content_hash(model_file), "tags": {}, "description": "",
                  "owners": [OTHER], "created": 0.0, "state": br.UPLOADING}  # a runner that died mid-upload, long ago
        registry._write(record, None)
        assert registry.get("ridge", 1) is None  # not complete: not found
        mv = registry.register("ridge", model_file, OWNER)
        assert mv.version == 1 and registry.get("ridge", 1).owners == [OWNER]


class TestErrorsNameTheRegistry:
    def test_missing_container(self, azurite: dict[str, str], blob_container: str) -> None:
        reg = open_registry(azblob_url(azurite, "no-such-container"))
        with pytest.raises(RegistryError, match="the container does not exist") as info:
            reg.planned_version("ridge", "sha256:a", OWNER)
        assert "http://127.0.0.1:" in str(info.value) and "/no-such-container" in str(info.value)

    def test_unreachable_account(self, blob_container: str) -> None:
        reg = open_registry("azblob://models?domain=127.0.0.1:9&protocol=http&localemu=true")
        with pytest.raises(RegistryError, match="cannot reach the storage account") as info:
            reg.planned_version("ridge", "sha256:a", OWNER)
        assert "http://127.0.0.1:9/devstoreaccount1/models" in str(info.value)

    def test_wrong_key(self, azurite: dict[str, str], blob_container: str, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AZURE_STORAGE_KEY", AZURITE_KEY[:-4] + "AAA=")
        with pytest.raises(RegistryError, match="refused the credentials"):
            open_registry(azblob_url(azurite, blob_container)).planned_version("ridge", "sha256:a", OWNER)

    def test_a_secret_in_the_url_is_refused(self) -> None:
        with pytest.raises(RegistryError, match="never in the URL"):
            open_registry("azblob://models?sig=secret")


def test_materialize_copies_once_and_checks(model_folder: Path, tmp_path: Path) -> None:
    digest = content_hash(model_folder)
    dest = materialize(model_folder, tmp_path / "cache" / "bert" / "abc", digest)
    assert content_hash(dest / "bert") == digest
    before = (dest / "bert" / "config.json").stat().st_mtime_ns
    materialize(model_folder, dest, digest)  # there already: nothing copied
    assert (dest / "bert" / "config.json").stat().st_mtime_ns == before
    with pytest.raises(RegistryError, match="does not hold content"):
        materialize(model_folder, tmp_path / "other", "sha256:" + "0" * 64)


# ---------------------------------------------------------------- scripts/azurite.sh


def _listeners(port: int) -> list[str]:
    """Local addresses of the listening TCP sockets on `port`, from /proc (no probing)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.append(addr)
    return found


def test_azurite_script_is_idempotent_and_listens_on_loopback_only(azurite: dict[str, str]) -> None:
    import os
    import subprocess

    from conftest import ROOT

    script = str(ROOT / "scripts" / "azurite.sh")
    status = subprocess.run([script, "status"], capture_output=True, text=True)
    assert status.returncode == 0 and "running" in status.stdout, status.stdout + status.stderr
    again = subprocess.run([script, "up"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already up" in again.stderr, again.stderr
    assert subprocess.run([script, "status"], capture_output=True, text=True).stdout == status.stdout  # same process
    port = int(azurite["domain"].rsplit(":", 1)[1])
    assert _listeners(port) == ["0100007F"], _listeners(port)  # 127.0.0.1, and nothing else
    home = Path(os.environ.get("MLDEPLOY_CACHE", Path.home() / ".cache" / "mldeploy"))
    assert (home / "azurite" / "3.37.0" / "node_modules" / ".bin" / "azurite-blob").exists()  # cached by version, outside the repo
