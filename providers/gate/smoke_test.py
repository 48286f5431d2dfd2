"""The preview's smoke test (`mldeploy:previewSmokeTest: true`): do the new model versions load?

When a service's models change and its image is already built, the Service's
`check` starts a throwaway container from that image with the new content
mounted where Azure ML puts it, on no network at all, waits for `init()`, and
sends `run()` the entry script's input sample from inside the container
(`mldeploy.providers.core.scoring.exec_transport`). The words go into the Service's
`smoke_test` input, which the preview's diff and the Markdown review show; a
model that fails to load is a check failure on `models`, so the preview fails
before anything is registered or rolled. Results are cached by image id,
model content hashes and environment, so a repeated preview only reads a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from typing import Any

from pulumi.dynamic import CheckFailure
from pulumi.runtime import rpc

from mldeploy.providers.core.paths import local
from mldeploy.providers.core.naming import MODELS_ROOT

CACHE_VERSION = 1
AT_UP = "the image changes, so the new model is checked at `up`: the new backend must answer the input sample before traffic moves"


def planned(news: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The model entries with preview content, or None when the smoke test is off (or at `up`)."""
    models = news.get("models")
    if not isinstance(models, list) or not models:
        return None
    if not all(isinstance(m, dict) and isinstance(m.get("preview"), dict) for m in models):
        return None
    return models


def _models_changed(olds: dict[str, Any], models: list[dict[str, Any]]) -> bool:
    old = {m.get("name"): m.get("version") for m in olds.get("models") or [] if isinstance(m, dict)}
    return old != {m["name"]: m["version"] for m in models}


def cache_key(image_id: str, models: list[dict[str, Any]], env: dict[str, Any], sample: dict[str, Any] | None = None) -> str:
    what: dict[str, Any] = {
        "v": CACHE_VERSION,
        "image_id": image_id,
        "models": sorted((m["name"], int(m["version"]), m["preview"]["content_hash"]) for m in models),
        "env": env,
    }
    if sample:
        what["sample_request"] = sample  # only when given: earlier results keep their keys
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]


def _names(models: list[dict[str, Any]]) -> str:
    return ", ".join(f"`{m['name']}` v{int(m['version'])}" for m in models)


def run_smoke_test(
    image: str, models: list[dict[str, Any]], env: dict[str, str], labels: dict[str, str], memory_gb: float, timeout: float,
    sample_request: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Start, load, score, remove. {"ok": bool, "words": str}; never raises for the model's faults."""
    import docker
    import docker.errors

    from mldeploy.providers.core import containers
    from mldeploy.providers.core.scoring import exec_in, exec_transport
    from mldeploy.providers.gate.sample_check import check_sample

    volumes = {}
    for m in models:
        src = local(m["preview"]["source"])
        volumes[str(src)] = {"bind": f"{MODELS_ROOT}/{m['name']}/{int(m['version'])}/{src.name}", "mode": "ro"}
    model_dir = f"{MODELS_ROOT}/{models[0]['name']}/{int(models[0]['version'])}" if len(models) == 1 else MODELS_ROOT
    dc = containers.client()
    name = f"mldeploy-smoke-{uuid.uuid4().hex[:10]}"
    started = time.monotonic()
    container = dc.containers.run(
        image, name=name, detach=True, labels=labels, network_mode="none", volumes=volumes,
        environment={"HOME": "/tmp", **env, "AZUREML_MODEL_DIR": model_dir}, mem_limit=int(max(memory_gb, 0.5) * 1024**3),
        **containers.run_limits(),
        # As the scoring containers: nobody, no capabilities, no privilege escalation.
        user=containers.SCORING_USER, cap_drop=["ALL"], security_opt=["no-new-privileges"],
    )
    try:
        deadline = started + timeout
        while True:
            container.reload()
            if container.status in ("exited", "dead"):
                log = containers.logs(container.id, tail=25)
                return {"ok": False, "words": f"{_names(models)} failed to load: init() failed "
                        f"(the server exited with code {container.attrs['State'].get('ExitCode')}); the last lines of its log:\n{log}"}
            try:
                health = exec_in(container, "GET", "/", None, wait_seconds=1.0)
            except docker.errors.APIError:
                continue  # it stopped between reload and exec: the next round says why
            if health.status == 200:
                break
            if time.monotonic() > deadline:
                log = containers.logs(container.id, tail=25)
                return {"ok": False, "words": f"{_names(models)} did not load within {timeout:.0f}s; the last lines of its log:\n{log}"}
        loaded_ms = (time.monotonic() - started) * 1000
        check = check_sample(exec_transport(container), sample_request)
        if not check.gated:
            return {"ok": True, "words": f"model {_names(models)} loads (init() ran in {loaded_ms / 1000:.1f}s); "
                    "the entry script declares no input sample, so nothing was scored and the roll is gated on health only (less protected)"}
        whose = "sample_request" if sample_request else "the entry script's sample"
        if not check.ok:
            time.sleep(0.3)
            return {"ok": False, "words": f"{_names(models)} loads but fails {whose}:\n{check.report()}\n"
                    f"the last lines of its log:\n{containers.logs(container.id, tail=15)}"}
        what = "sample_request" if sample_request else "the sample"
        return {"ok": True, "words": f"model {_names(models)} loads and scores {what}: {check.summary()}"}
    finally:
        containers.remove(container.id, stop_timeout=1)


def smoke_test(olds: dict[str, Any], news: dict[str, Any]) -> tuple[str | None, list[CheckFailure]]:
    """(words for the `smoke_test` input or None, failures) for a Service's check at preview."""
    models = planned(news)
    if models is None or (olds and not _models_changed(olds, models)):
        return None, []
    image_id = news.get("image_id")
    if not isinstance(image_id, str) or not image_id or image_id == rpc.UNKNOWN or (olds and olds.get("image_id") != image_id):
        return AT_UP, []
    env = {k: str(v) for k, v in (news.get("environment_variables") or {}).items()} if isinstance(news.get("environment_variables"), dict) else {}
    sample = news.get("sample_request") if isinstance(news.get("sample_request"), dict) else None
    cache = local(models[0]["preview"]["cache_dir"]) / f"{cache_key(image_id, models, env, sample)}.json"
    result = None
    if cache.is_file():
        try:
            result = json.loads(cache.read_text())
        except ValueError:
            result = None
    if result is None:
        labels = {"mldeploy.managed": "true", "mldeploy.project": str(news.get("project")), "mldeploy.stack": str(news.get("stack")),
                  "mldeploy.resource": f"smoke-{news.get('service_name')}"}
        try:
            result = run_smoke_test(str(news.get("image_name")), models, env, labels, float(news.get("memory_gb") or 1),
                                    float(news.get("startup_timeout_seconds") or 180),
                                    **({"sample_request": sample} if sample else {}))
        except Exception as exc:  # Docker itself failed: say so, and let `up`'s gate judge the model
            return f"the smoke test could not run ({type(exc).__name__}: {exc}); the new model is checked at `up`", []
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result))
        os.replace(tmp, cache)
    if not result["ok"]:
        return None, [CheckFailure("models", f"preview smoke test: {result['words']}")]
    return result["words"], []
