"""The image provider without Docker: a private base's check, the diff, names and labels."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import docker.errors
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mldeploy.providers.images import provider as provider  # noqa: E402
from mldeploy.providers.images import build as images  # noqa: E402

REF = "127.0.0.1:5000/team/base:py3.11"
PULLED_ID = "sha256:" + "5" * 64


def props(**kw: Any) -> dict[str, Any]:
    base = {"image_repo": "mldeploy-p-s/scoring", "base_image": REF, "source_directory": "src",
            "entry_script": "score.py", "build_hash": "sha256:" + "a" * 64, "labels": {"mldeploy.stack": "s"}}
    return {**base, **kw}


class FakePullAPI:
    def __init__(self, refuse: bool = False) -> None:
        self.present: set[str] = set()
        self.pulls: list[tuple[str, str | None, dict[str, str] | None]] = []
        self.refuse = refuse

    def inspect_image(self, ref: str) -> dict[str, str]:
        if ref not in self.present:
            raise docker.errors.ImageNotFound(ref)
        return {"Id": PULLED_ID}

    def pull(self, repository: str, tag: str | None = None, auth_config: dict[str, str] | None = None) -> None:
        self.pulls.append((repository, tag, auth_config))
        if self.refuse:
            raise docker.errors.APIError("denied", explanation="unauthorized: authentication required")
        self.present.add(f"{repository}:{tag}")


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakePullAPI:
    fake = FakePullAPI()
    monkeypatch.setattr(images, "client", lambda: fake)
    return fake


REGISTRY = {"address": "127.0.0.1:5000", "username": "ci", "password": "s3cret"}


def test_check_pulls_a_private_base_with_the_credentials_and_records_its_id(api: FakePullAPI) -> None:
    result = provider.ImageProvider().check({}, props(base_image_registry=REGISTRY))
    assert result.failures == []
    assert result.inputs["base_image_id"] == PULLED_ID
    assert api.pulls == [("127.0.0.1:5000/team/base", "py3.11",
                          {"username": "ci", "password": "s3cret", "serveraddress": "127.0.0.1:5000"})]
    provider.ImageProvider().check({}, props(base_image_registry=REGISTRY))
    assert len(api.pulls) == 1, "a base already here is not pulled again"


def test_refused_credentials_fail_the_check_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakePullAPI(refuse=True)
    monkeypatch.setattr(images, "client", lambda: fake)
    result = provider.ImageProvider().check({}, props(base_image_registry=REGISTRY))
    assert [f.property for f in result.failures] == ["base_image_registry"]
    assert "authentication required" in result.failures[0].reason and "s3cret" not in result.failures[0].reason


@pytest.mark.parametrize("registry,words", [
    ({"address": "127.0.0.1:5000", "username": "ci"}, "needs password"),
    ("127.0.0.1:5000", "must be a mapping"),
])
def test_incomplete_registry_fails_the_check(api: FakePullAPI, registry: Any, words: str) -> None:
    result = provider.ImageProvider().check({}, props(base_image_registry=registry))
    assert [f.property for f in result.failures] == ["base_image_registry"] and words in result.failures[0].reason
    assert api.pulls == []


def test_unknown_credentials_at_preview_pull_nothing(api: FakePullAPI) -> None:
    unknown = {**REGISTRY, "password": provider.UNKNOWN}
    result = provider.ImageProvider().check({}, props(base_image_registry=unknown))
    assert result.failures == [] and "base_image_id" not in result.inputs and api.pulls == []


def test_a_new_private_base_rebuilds_under_a_new_name() -> None:
    old = props(base_image_id="sha256:" + "1" * 64)
    new = props(base_image_id="sha256:" + "2" * 64)
    assert provider.diff_image(old, new).changes is True
    assert provider.image_name(old) != provider.image_name(new)
    assert provider.diff_image(old, dict(old)).changes is False


def test_names_of_images_without_a_private_base_are_unchanged() -> None:
    """Stacks made before base_image_registry existed keep their image names (no rebuild, no roll)."""
    assert provider.image_name(props()) == "mldeploy-p-s/scoring:" + "a" * 12


def test_gpu_is_recorded_as_labels() -> None:
    assert provider.build_labels(props()) == {"mldeploy.stack": "s"}
    assert provider.build_labels(props(enable_gpu=True, cuda_version="10.0")) == {
        "mldeploy.stack": "s", "mldeploy.enable_gpu": "true", "mldeploy.cuda_version": "10.0"}
