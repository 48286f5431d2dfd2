"""A warm standby: the next backend of a local service, started before it is needed.

A model-only update spends most of its wait starting a container and importing the
libraries (the bench: 1.5 s of 2.4 s). With `warm_standby=True` a second container of the
same image, limits and environment waits beside the live one with those libraries imported
and no model loaded; the update hands it the new model's folder and it starts serving
(`runtime/standby_boot.py`). It sees every version of its one model, read-only (its
folder is the model's, not one version's), and nothing else; it has no network and no
socket until it is handed a model. Any other change, or a standby that is gone, falls back
to a new container as before.

Pure parts only; the target starts and hands over (`mldeploy.providers.targets.local`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from mldeploy.providers.core.naming import MODELS_ROOT
from mldeploy.providers.core.paths import local

BOOT = Path(__file__).resolve().parents[3] / "runtime" / "standby_boot.py"
WARM_MODULES = "warm-modules.txt"
"""In the service's socket folder: what the live worker had imported once `init()` returned."""
STARTED_AS_LABEL = "mldeploy.started-as"
KIND = "standby"
"""`mldeploy.started-as=standby` beside the backend's own labels: it may be live now, or still waiting."""


def boot_command(image_cmd: list[str] | None) -> list[str] | None:
    """`python -c <boot> -m <module> ...`: the image's own `python -m` command behind the boot;
    None when the image's command is not one (no standby then)."""
    if not image_cmd or len(image_cmd) < 3 or image_cmd[0] not in ("python", "python3") or image_cmd[1] != "-m":
        return None
    return [image_cmd[0], "-c", BOOT.read_text(), *image_cmd[1:]]


def model_home(props: Mapping[str, Any]) -> tuple[str, str] | None:
    """(host folder of every version, its place in the container) for a one-model service whose
    version folder is `<...>/<version>`; None otherwise (no standby then)."""
    models = props.get("models") or []
    if len(models) != 1:
        return None
    m = models[0]
    version_dir = local(m["model_dir"])
    if version_dir.name != str(int(m["version"])):
        return None
    return str(version_dir.parent), f"{MODELS_ROOT}/{m['name']}"


def signature(props: Mapping[str, Any]) -> str:
    """What a standby must share with the backend it replaces: everything fixed when a container starts."""
    home = model_home(props)
    fixed = {
        "image": props.get("image_name"), "image_id": props.get("image_id"), "cpu_cores": props.get("cpu_cores"),
        "memory_gb": props.get("memory_gb"), "environment_variables": props.get("environment_variables") or {},
        "worker_count": props.get("worker_count"), "service_name": props.get("service_name"),
        "model": (props.get("models") or [{}])[0].get("name"), "home": home[0] if home else None,
    }
    return hashlib.sha256(json.dumps(fixed, sort_keys=True, default=str).encode()).hexdigest()[:16]


def wanted(props: Mapping[str, Any]) -> bool:
    return bool(props.get("warm_standby")) and model_home(props) is not None


def usable(standby: Mapping[str, Any] | None, props: Mapping[str, Any]) -> bool:
    """A standby recorded in the state that can take this version (its container is checked apart)."""
    return bool(standby) and wanted(props) and standby.get("signature") == signature(props)  # type: ignore[union-attr]


def go_file(socket_name: str) -> str:
    return socket_name.rsplit(".", 1)[0] + ".go"


def write_go(run_dir: str | Path, socket_name: str, model_dir: str) -> None:
    """Hand the standby its model, atomically (it polls for the file)."""
    path = Path(run_dir) / go_file(socket_name)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"AZUREML_MODEL_DIR": model_dir}))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
