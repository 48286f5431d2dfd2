"""The pod's startup probe without `sample_request`: the entry script's own input sample (issue 20, item 1).

The probe (`providers/gate/sample_probe.py`, standard library only) runs inside the
scoring container; here it runs against a small server on 127.0.0.1 that serves a
Swagger document as azmlinfsrv writes it and answers /score as the test says.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from mldeploy.providers.gate import sample_probe

SWAGGER = {
    "swagger": "2.0",
    "definitions": {
        "ServiceInput": {"type": "object", "properties": {"data": {"type": "array", "items": {"type": "array"}}},
                         "example": {"data": [[10, 9, 8, 7, 6, 5, 4, 3, 2, 1]]}},
        "ServiceOutput": {"type": "array", "items": {"type": "number", "format": "double"}, "example": [3726.995]},
    },
}


class Backend:
    def __init__(self) -> None:
        self.swagger: Any = SWAGGER
        self.answer: tuple[int, Any] = (200, [3726.995])
        self.posted: list[Any] = []


@pytest.fixture
def backend() -> Iterator[tuple[Backend, str]]:
    state = Backend()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass

        def _send(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send(200, state.swagger) if self.path == "/swagger.json" else self._send(404, {})

        def do_POST(self) -> None:
            state.posted.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self._send(*state.answer)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)  # shutdown() waits one poll
    thread.start()
    try:
        yield state, str(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def run_probe(folder: Path, port: str, log: Path) -> tuple[int, list[str]]:
    stopped: list[str] = []
    code = sample_probe.probe(str(folder), port, timeout=5, termination_log=str(log), stop=lambda: stopped.append("stop"))
    return code, stopped


def test_without_sample_request_the_pod_sends_the_entry_scripts_input_sample(backend, tmp_path: Path) -> None:
    state, port = backend
    code, stopped = run_probe(tmp_path, port, tmp_path / "termination-log")
    assert code == 0 and not stopped
    assert state.posted == [{"data": [[10, 9, 8, 7, 6, 5, 4, 3, 2, 1]]}]


def test_an_answer_outside_the_output_schema_ends_the_pod_with_the_report(backend, tmp_path: Path) -> None:
    state, port = backend
    state.answer = (200, "could not convert string to float")  # run()'s caught exception, returned as a 200
    log = tmp_path / "termination-log"
    code, stopped = run_probe(tmp_path, port, log)
    assert code == 1 and stopped == ["stop"]
    report = log.read_text()
    assert "the new version failed the entry script's input sample, so it gets no traffic" in report
    assert "the answer does not match the output schema" in report and "is not of type array" in report


def test_a_500_ends_the_pod_and_a_raw_script_passes_on_health(backend, tmp_path: Path) -> None:
    state, port = backend
    state.answer = (500, {"message": "boom"})
    code, stopped = run_probe(tmp_path, port, tmp_path / "termination-log")
    assert code == 1 and stopped == ["stop"]
    state.swagger = {"definitions": {"ServiceInput": sample_probe.PLACEHOLDER_SCHEMA, "ServiceOutput": sample_probe.PLACEHOLDER_SCHEMA}}
    state.posted.clear()
    code, stopped = run_probe(tmp_path, port, tmp_path / "termination-log-2")
    assert code == 0 and not stopped and state.posted == [], "a raw run() declares no sample: nothing is sent"


def test_the_subset_schema_check_agrees_with_jsonschema_on_what_inference_schema_writes() -> None:
    import jsonschema

    cases = [[1.5, 2.0], [1, 2], ["a"], "text", [], {"a": 1}, [True]]
    schemas = [SWAGGER["definitions"]["ServiceOutput"],
               {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}},
               {"$ref": "#/definitions/ServiceOutput"}]
    for schema in schemas:
        for body in cases:
            ours = not sample_probe.schema_errors(schema, body, SWAGGER["definitions"])
            theirs = jsonschema.Draft4Validator({**schema, "definitions": SWAGGER["definitions"]}).is_valid(body)
            assert ours == theirs, (schema, body)
