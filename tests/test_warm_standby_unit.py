"""The warm standby's pure rules (providers/targets/local/standby.py) and its boot script (runtime/standby_boot.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from mldeploy.providers.targets.local import standby as warm

ROOT = Path(__file__).resolve().parents[1]


def props(tmp_path: Path, **over) -> dict:
    version_dir = tmp_path / "registry" / "ridge" / "3"
    version_dir.mkdir(parents=True, exist_ok=True)
    base = {"warm_standby": True, "image_name": "img:1", "image_id": "sha256:a", "cpu_cores": 1.0, "memory_gb": 1.0,
            "environment_variables": {}, "worker_count": None, "service_name": "svc",
            "models": [{"name": "ridge", "version": 3, "model_dir": str(version_dir)}]}
    return {**base, **over}


def test_the_boot_runs_the_images_own_python_m_command() -> None:
    cmd = warm.boot_command(["python", "-m", "mldeploy_serving", "--entry_script", "/var/azureml-app/score.py", "--port", "5001"])
    assert cmd is not None and cmd[:2] == ["python", "-c"] and "def wait_for_go" in cmd[2]
    assert cmd[3:] == ["-m", "mldeploy_serving", "--entry_script", "/var/azureml-app/score.py", "--port", "5001"]
    assert warm.boot_command(["/bin/sh", "-c", "serve"]) is None and warm.boot_command(None) is None


def test_a_standby_sees_every_version_of_its_one_model_and_nothing_else(tmp_path: Path) -> None:
    p = props(tmp_path)
    assert warm.model_home(p) == (str(tmp_path / "registry" / "ridge"), "/var/azureml-app/azureml-models/ridge")
    assert warm.wanted(p)
    two = {**p, "models": p["models"] * 2}
    assert warm.model_home(two) is None and not warm.wanted(two), "one-model services only"
    odd = {**p, "models": [{**p["models"][0], "model_dir": str(tmp_path)}]}
    assert warm.model_home(odd) is None, "a folder not named by its version is not a registry layout"
    assert not warm.wanted({**p, "warm_standby": None})


def test_only_a_model_version_change_keeps_the_standby_usable(tmp_path: Path) -> None:
    p = props(tmp_path)
    standby = {"id": "c1", "name": "n", "socket": "ab.sock", "signature": warm.signature(p)}
    newer = tmp_path / "registry" / "ridge" / "4"
    newer.mkdir()
    assert warm.usable(standby, {**p, "models": [{"name": "ridge", "version": 4, "model_dir": str(newer)}]})
    for key, value in (("image_id", "sha256:b"), ("cpu_cores", 2.0), ("memory_gb", 2.0), ("worker_count", 2),
                       ("environment_variables", {"A": "1"})):
        assert not warm.usable(standby, {**p, key: value}), key
    assert not warm.usable(None, p) and not warm.usable(standby, {**p, "warm_standby": False})


def test_the_go_file_names_the_model_folder_and_appears_whole(tmp_path: Path) -> None:
    warm.write_go(tmp_path, "ab12.sock", "/var/azureml-app/azureml-models/ridge/4")
    assert json.loads((tmp_path / "ab12.go").read_text()) == {"AZUREML_MODEL_DIR": "/var/azureml-app/azureml-models/ridge/4"}
    assert [p.name for p in tmp_path.iterdir()] == ["ab12.go"]


@pytest.fixture
def boot():
    spec = importlib.util.spec_from_file_location("standby_boot_under_test", ROOT / "runtime" / "standby_boot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: nothing runs
    return module


def test_the_boot_lists_library_modules_only_and_never_the_server(boot, monkeypatch: pytest.MonkeyPatch) -> None:
    import pydantic  # noqa: F401 - a library from site-packages, loaded here

    names = boot.library_modules()
    assert "pydantic" in names and "json" not in names, "site-packages only: the standard library loads fast"
    assert not any(n.startswith("azureml_inference_server_http") for n in names), "its config reads AZUREML_MODEL_DIR"
    assert not any(n.startswith("conftest") or n.startswith("test_") for n in names), "never the user's own code"
    assert names.index("pydantic") < min(i for i, n in enumerate(names) if n.startswith("pydantic."))


def test_the_boot_imports_what_it_can_and_skips_the_rest(boot, tmp_path: Path) -> None:
    listing = tmp_path / "warm-modules.txt"
    listing.write_text("json\nno_such_module_here\ncolorsys\n")
    sys.modules.pop("colorsys", None)
    assert boot.warm(str(listing)) == 2 and "colorsys" in sys.modules
    assert boot.warm(str(tmp_path / "missing.txt")) == 0
