"""The sample gate, the smoke test's decisions and the logs command, without Docker."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from pulumi.runtime import rpc

from mldeploy.providers.core.containers import redact
from mldeploy.providers.gate.sample_check import Answer, check_sample, input_sample, output_errors
from mldeploy.providers.gate.smoke_test import AT_UP, cache_key, smoke_test

SWAGGER = {
    "definitions": {
        "ServiceInput": {"type": "object", "properties": {"data": {"type": "array"}}, "example": {"data": [[10, 9, 8]]}},
        "ServiceOutput": {"type": "array", "items": {"type": "number", "format": "double"}, "example": [1.5], "format": "numpy.ndarray"},
    }
}


def transport_for(score: Answer, swagger: Any = SWAGGER):
    sent: list[tuple[str, str, bytes | None]] = []

    def send(method: str, path: str, body: bytes | None) -> Answer:
        sent.append((method, path, body))
        if path == "/swagger.json":
            return Answer(200, json.dumps(swagger))
        return score

    return send, sent


def test_a_good_answer_passes_and_the_sample_is_what_is_sent() -> None:
    send, sent = transport_for(Answer(200, "[3.5]", 12.0))
    check = check_sample(send)
    assert check.gated and check.ok
    assert sent[1] == ("POST", "/score", b'{"data": [[10, 9, 8]]}')
    assert check.summary() == "200 in 12 ms"


@pytest.mark.parametrize("answer, words", [
    (Answer(500, '{"message": "An unexpected error occurred in scoring script."}'), "answered 500, not 200"),
    (Answer(200, '{"predictions": [3.5]}'), "does not match the output schema"),
    (Answer(200, '["a"]'), "does not match the output schema"),
    (Answer(200, "not json"), "not JSON"),
    (Answer(0, "no answer: ConnectionError"), "answered 0"),
])
def test_bad_answers_fail_with_the_request_and_the_answer(answer: Answer, words: str) -> None:
    send, _ = transport_for(answer)
    check = check_sample(send)
    assert check.gated and not check.ok
    assert words in check.problem
    report = check.report()
    assert 'POST /score {"data": [[10, 9, 8]]}' in report and answer.body[:20] in report


def test_no_sample_means_health_alone() -> None:
    swagger = {"definitions": {"ServiceInput": {"type": "object"}, "ServiceOutput": {"type": "object"}}}
    send, sent = transport_for(Answer(500, "never sent"), swagger)
    check = check_sample(send)
    assert not check.gated and check.ok and len(sent) == 1
    assert check.summary() == "the entry script declares no input sample; the roll is gated on health only"
    assert input_sample({}) is None and input_sample(SWAGGER) == {"data": [[10, 9, 8]]}


def test_output_schema_refs_resolve() -> None:
    swagger = {"definitions": {"Row": {"type": "number"}, "ServiceOutput": {"type": "array", "items": {"$ref": "#/definitions/Row"}}}}
    assert output_errors(swagger, [1.0, 2]) == []
    assert output_errors(swagger, [1.0, "x"])[0].startswith("at 1:")


def test_bearer_tokens_are_redacted() -> None:
    assert redact("GET / Authorization: Bearer abcdefgh12345678-_xyz ok") == "GET / Authorization: Bearer [redacted] ok"
    assert redact("nothing here") == "nothing here"


def _news(tmp_path, image_id: Any = "sha256:abc", version: int = 2) -> dict[str, Any]:
    return {
        "service_name": "gate", "project": "p", "stack": "s", "image_name": "img:1", "image_id": image_id,
        "memory_gb": 1.0, "environment_variables": {},
        "models": [{"name": "m", "version": version, "model_dir": "reg/m/2",
                    "preview": {"source": str(tmp_path / "m.json"), "content_hash": f"h{version}", "cache_dir": str(tmp_path / "cache")}}],
    }


def test_smoke_test_decisions(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mldeploy.providers.gate.smoke_test as st

    runs: list[str] = []

    def fake_run(image, models, env, labels, memory_gb, timeout):
        runs.append(image)
        return {"ok": models[0]["preview"]["content_hash"] != "hbad", "words": "model `m` v2 loads and scores the sample: 200 in 5 ms"}

    monkeypatch.setattr(st, "run_smoke_test", fake_run)
    olds = {"image_id": "sha256:abc", "models": [{"name": "m", "version": 1, "model_dir": "reg/m/1"}]}
    # Off (no preview content, as at `up`): nothing.
    plain = {**_news(tmp_path), "models": [{"name": "m", "version": 2, "model_dir": "reg/m/2"}]}
    assert smoke_test(olds, plain) == (None, [])
    # Models unchanged: nothing.
    assert smoke_test({**olds, "models": [{"name": "m", "version": 2}]}, _news(tmp_path)) == (None, [])
    # The image changes (unknown at preview): checked at up.
    assert smoke_test(olds, _news(tmp_path, image_id=rpc.UNKNOWN)) == (AT_UP, [])
    # Only the model changes: run once, then cached.
    words, failures = smoke_test(olds, _news(tmp_path))
    assert "loads and scores the sample" in words and not failures
    assert smoke_test(olds, _news(tmp_path))[0] == words
    assert runs == ["img:1"]
    # A model that does not load: a failure on `models`.
    bad = _news(tmp_path)
    bad["models"][0]["preview"]["content_hash"] = "hbad"
    words, failures = smoke_test(olds, bad)
    assert words is None and failures[0].property == "models" and failures[0].reason.startswith("preview smoke test:")


def test_cache_key_follows_image_content_and_env(tmp_path) -> None:
    models = _news(tmp_path)["models"]
    key = cache_key("sha256:a", models, {})
    assert key == cache_key("sha256:a", models, {})
    assert key != cache_key("sha256:b", models, {})
    assert key != cache_key("sha256:a", models, {"X": "1"})
    other = json.loads(json.dumps(models))
    other[0]["preview"]["content_hash"] = "zzz"
    assert key != cache_key("sha256:a", other, {})


def test_logs_finds_services_and_builds_kubectl_calls() -> None:
    import service_logs

    deployment = {"resources": [
        {"type": service_logs.LOCAL_TYPE, "inputs": {"service_name": "a"}, "outputs": {"container_id": "c1"}},
        {"type": service_logs.DEPLOYMENT_TYPE, "inputs": {"metadata": {"name": "k", "namespace": "ns"},
                                                          "spec": {"selector": {"matchLabels": {"app": "k"}}}}},
    ]}
    assert service_logs.find_service(deployment, "a") == ("local", {"service_name": "a", "container_id": "c1"})
    kind, props = service_logs.find_service(deployment, "k")
    assert kind == "kubernetes"
    argv = service_logs.kubectl_argv(props, 5, True)[0]
    assert argv[:7] == ["logs", "-n", "ns", "-l", "app=k", "-c", "scoring"] and "--follow" in argv and "5" in argv
    with pytest.raises(service_logs.LogsError, match="service 'nope' is not in the stack; its services: a, k"):
        service_logs.find_service(deployment, "nope")


def test_logs_kubernetes_shows_previous_for_a_restarted_container(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    import service_logs
    from mldeploy.providers.targets.kubernetes import local_cluster as cluster

    monkeypatch.setattr(cluster, "kubectl_path", lambda: "kubectl")
    monkeypatch.setattr(cluster, "kubeconfig_path", lambda: "/kc")
    calls: list[list[str]] = []
    pods = {"items": [{"metadata": {"name": "k-1"}, "status": {"containerStatuses": [{"name": "scoring", "restartCount": 2}]}}]}

    def run(argv, **kw):
        calls.append(argv)
        if "get" in argv:
            return subprocess.CompletedProcess(argv, 0, json.dumps(pods), "")
        text = "crash: Bearer abcdefghijk12345\n" if "--previous" in argv else "serving\n"
        return subprocess.CompletedProcess(argv, 0, text, "")

    out = io.StringIO()
    props = {"metadata": {"name": "k", "namespace": "ns"}, "spec": {"selector": {"matchLabels": {"app": "k"}}}}
    service_logs.kubernetes_logs(props, None, False, out, run=run)
    printed = out.getvalue()
    assert "previous run (restarted 2x)" in printed and "crash: Bearer [redacted]" in printed and "serving" in printed
    assert any("--previous" in c for c in calls) and all(c[:3] == ["kubectl", "--kubeconfig", "/kc"] for c in calls)
