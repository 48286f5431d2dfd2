"""Raw `run(raw_data)` scripts and `sample_request`: what the gate sends, and what it refuses (no Docker).

The placeholder rule is checked against the Swagger document that the real
`azmlinfsrv` builds for an undecorated script, so a server upgrade that changes
its placeholder fails here first.
"""

from __future__ import annotations

import http.server
import json
import threading
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mldeploy.providers.gate.sample_check import Answer, check_sample
from mldeploy.providers.gate.sample_probe import answer_differences, declared_input_sample, is_placeholder, judge

RAW_SCRIPT = '''
import json
def init():
    pass
def run(raw_data):
    return [sum(row) for row in json.loads(raw_data)["data"]]
'''
DECORATED_SCRIPT = '''
from inference_schema.schema_decorators import input_schema, output_schema
from inference_schema.parameter_types.standard_py_parameter_type import StandardPythonParameterType
def init():
    pass
@input_schema("data", StandardPythonParameterType({}))
@output_schema(StandardPythonParameterType({}))
def run(data):
    return data
'''


BUILD_SWAGGER = """
import json, sys
from pathlib import Path
from azureml_inference_server_http.server import swagger as aml_swagger
from azureml_inference_server_http.server.user_script import UserScript
script = sys.argv[1]
user_script = UserScript(script)
user_script.load_script(str(Path(script).parent))
builder = aml_swagger.Swagger2Builder(str(Path(script).parent), str(Path(aml_swagger.__file__).parent), user_script)
print(json.dumps(builder.get_swagger()))
"""


def server_swagger(tmp_path: Path, source: str) -> dict[str, Any]:
    """The Swagger 2.0 document azmlinfsrv itself serves for `source`.

    In a process of its own: the server loads every script as `entry_module`,
    and inference-schema keeps its registry by that name for the process's life.
    """
    script = tmp_path / "score.py"
    script.write_text(source)
    out = subprocess.run([sys.executable, "-c", BUILD_SWAGGER, str(script)], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc is not None
    return doc


def transport(swagger: Any, score: Answer):
    sent: list[tuple[str, str, bytes | None]] = []

    def send(method: str, path: str, body: bytes | None) -> Answer:
        sent.append((method, path, body))
        return Answer(200, json.dumps(swagger)) if path == "/swagger.json" else score

    return send, sent


def test_the_servers_placeholder_for_a_raw_script_is_no_sample(tmp_path: Path) -> None:
    doc = server_swagger(tmp_path, RAW_SCRIPT)
    assert is_placeholder(doc["definitions"]["ServiceInput"]) and is_placeholder(doc["definitions"]["ServiceOutput"])
    assert declared_input_sample(doc) == (False, None)
    # Nothing is sent: before, `POST /score {}` met the script's KeyError and the roll was refused.
    send, sent = transport(doc, Answer(500, "KeyError: 'data'"))
    check = check_sample(send)
    assert not check.gated and check.ok
    assert [s[:2] for s in sent] == [("GET", "/swagger.json")]
    assert check.summary() == "the entry script declares no input sample; the roll is gated on health only"


def test_a_declared_empty_sample_is_still_a_sample(tmp_path: Path) -> None:
    doc = server_swagger(tmp_path, DECORATED_SCRIPT)
    assert declared_input_sample(doc) == (True, {"data": {}})
    send, sent = transport(doc, Answer(200, "{}"))
    assert check_sample(send).gated
    assert sent[1] == ("POST", "/score", b'{"data": {}}')


def test_sample_request_is_sent_to_a_raw_script_and_its_answer_compared(tmp_path: Path) -> None:
    doc = server_swagger(tmp_path, RAW_SCRIPT)
    sample = {"body": '{"data": [[1, 2], [3, 4]]}', "response": "[3.0, 7.0]"}
    send, sent = transport(doc, Answer(200, "[3.0000000001, 7.0]"))
    check = check_sample(send, sample)
    assert check.gated and check.ok, check.problem
    assert sent[1] == ("POST", "/score", b'{"data": [[1, 2], [3, 4]]}')

    send, _ = transport(doc, Answer(200, "[3.0, 8.5]"))
    check = check_sample(send, sample)
    assert check.gated and not check.ok
    assert check.problem == "the answer differs from sample_request's expected answer"
    assert check.schema_errors == ["at 1: expected 7.0, got 8.5"]
    assert "sample request: POST /score {\"data\": [[1, 2], [3, 4]]}" in check.report()

    # Without an expected answer: any 200 passes, anything else fails with the status.
    send, _ = transport(doc, Answer(200, "whatever the script returns"))
    assert check_sample(send, {"body": '{"data": [[1]]}'}).ok
    send, _ = transport(doc, Answer(500, "KeyError: 'data'"))
    check = check_sample(send, {"body": '{"data": [[1]]}'})
    assert not check.ok and check.problem == "the sample was answered 500, not 200"


@pytest.mark.parametrize("expected, got, words", [
    ([1.0, 2.0], [1.0], "expected 2 items, got 1"),
    ({"a": 1}, {"b": 1}, "expected keys ['a'], got ['b']"),
    ({"a": [1, {"b": 2.0}]}, {"a": [1, {"b": 2.5}]}, "at a/1/b: expected 2.0, got 2.5"),
    ("x", 1, 'at (top): expected "x", got 1'),
    (True, 1, "at (top): expected true, got 1"),
])
def test_answer_differences_name_the_place(expected: Any, got: Any, words: str) -> None:
    assert words in answer_differences(expected, got)[0]


def test_judge_needs_a_200_and_json_when_an_answer_is_expected() -> None:
    assert judge(200, "[1]", [1], True) == ("", [])
    assert judge(404, "", None, False)[0] == "the sample was answered 404, not 200"
    assert judge(200, "not json", [1], True)[0] == "the answer is not JSON"


def test_a_remote_ref_in_the_backends_swagger_is_never_fetched() -> None:
    """The output schema is the scoring script's to write: a $ref elsewhere fails the check, naming it."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            hits.append(self.path)
            body = b'{"type": "array"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        ref = f"http://127.0.0.1:{server.server_address[1]}/schema.json"
        swagger = {"definitions": {
            "ServiceInput": {"type": "object", "properties": {"data": {}}, "example": {"data": [1]}},
            "ServiceOutput": {"$ref": ref},
        }}
        for answer_ref in (ref, "file:///etc/passwd"):
            swagger["definitions"]["ServiceOutput"] = {"$ref": answer_ref}
            send, _ = transport(swagger, Answer(200, "[1]"))
            check = check_sample(send)
            assert check.gated and not check.ok
            assert f"$ref {answer_ref!r} points outside the Swagger document" in check.problem
    finally:
        server.shutdown()
        server.server_close()
    assert hits == [], "nothing was fetched"


@pytest.mark.parametrize("source, declared", [
    (RAW_SCRIPT, False),
    (DECORATED_SCRIPT, True),
    ("import inference_schema.schema_decorators as sd\n@sd.input_schema('d', None)\ndef run(d):\n    pass\n", True),
    ("def init():\n    pass\n", None),
    ("def run(:\n", None),
])
def test_the_preview_reads_the_entry_script_for_a_declared_sample(source: str, declared: bool | None) -> None:
    from mldeploy.providers.gate.sample_check import declares_input_sample

    assert declares_input_sample(source) is declared


def test_the_service_check_says_what_gates_the_roll(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The preview's one line: in the diff (the `sample_gate` input) and on the provider's stderr."""
    from mldeploy.providers.targets.service import ServiceProvider

    monkeypatch.setenv("MLDEPLOY_PROJECT_DIR", str(tmp_path))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "score.py").write_text(RAW_SCRIPT)
    model = {"name": "m", "version": 1, "model_dir": "reg/m/1"}
    news = {"service_name": "aciservice", "target": "local", "project": "p", "stack": "dev", "image_name": "i", "image_id": "sha256:1",
            "models": [model], "cpu_cores": 1, "memory_gb": 1, "port": 21000, "state_dir": ".pulumi-state", "gateway_image": "g",
            "entry_script": "src/score.py"}
    result = ServiceProvider().check({}, news)
    assert not result.failures, result.failures
    assert result.inputs["sample_gate"] == "the entry script declares no input sample; the roll is gated on health only"
    assert "[mldeploy] aciservice: the entry script declares no input sample; the roll is gated on health only" in capsys.readouterr().err

    with_sample = {**news, "sample_request": {"body": '{"data": [[1]]}', "response": "[1.0]"}}
    words = ServiceProvider().check({}, with_sample).inputs["sample_gate"]
    assert words.startswith('the roll is gated on sample_request: POST /score {"data": [[1]]} must answer the expected answer')
    # Nothing rolls: nothing to say, and the inputs stay as they were.
    same = ServiceProvider().check({**news, "state": "Healthy"}, news)
    assert "sample_gate" not in same.inputs


def test_a_target_without_the_gate_says_sample_request_is_not_sent(capsys) -> None:
    from mldeploy.providers.targets.service import ServiceProvider

    news = {"service_name": "svc", "target": "aci", "sample_request": {"body": "[1]"}, "models": [{"name": "m", "version": 1}],
            "cpu_cores": 1, "memory_gb": 1}
    result = ServiceProvider().check({}, news)
    assert "sample_gate" not in result.inputs
    assert "svc: target 'aci' sends no sample before traffic moves; sample_request is kept, not sent" in capsys.readouterr().err
