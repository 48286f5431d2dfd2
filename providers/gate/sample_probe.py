"""What counts as a declared sample, and as the expected answer: one rule for the provider and the pod.

Standard library only: on Kubernetes this file itself runs inside the scoring
container, as the startup probe that gates every new pod on the entry script's
own input sample, or the user's `sample_request` (`python
/etc/mldeploy/sample/probe.py`), so it cannot import the rest of the package. The local target and the preview's smoke test import
the same functions through `mldeploy.providers.gate.sample_check`.

The generic placeholder. `azmlinfsrv` (azureml-inference-server-http 1.5.1,
`server/swagger.py`, `_SwaggerBuilder._generate_swagger`) serves a Swagger
document for every entry script. When `run()` carries no `inference-schema`
decorator it sets both `definitions.ServiceInput` and `definitions.ServiceOutput`
to exactly `{"type": "object", "example": {}}`. A decorated `run()` always
yields an input schema with `properties` (one per parameter of `run`), so an
input schema equal to the placeholder is never a declared sample: sending its
`{}` to a raw `run(raw_data)` only proves that the script cannot read it.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import urllib.error
import urllib.request
from typing import Any

PLACEHOLDER_SCHEMA: dict[str, Any] = {"type": "object", "example": {}}
"""What azmlinfsrv writes as ServiceInput and ServiceOutput for an undecorated run()."""
REL_TOLERANCE = 1e-6
"""Numbers in an expected answer match within this relative tolerance (floats differ across BLAS builds)."""
ABS_TOLERANCE = 1e-9
SHOWN_DIFFERENCES = 5
NO_SAMPLE_WORDS = "the entry script declares no input sample; the roll is gated on health only"
"""The one line the preview and `up` print for a script without a declared sample and no `sample_request`."""


def is_placeholder(schema: Any) -> bool:
    """True for the schema azmlinfsrv writes when run() declares nothing."""
    return schema == PLACEHOLDER_SCHEMA


def declared_input_sample(swagger: Any) -> tuple[bool, Any]:
    """(declared, sample): the entry script's own `input_sample`, never the server's placeholder."""
    definitions = swagger.get("definitions") if isinstance(swagger, dict) else None
    service_input = definitions.get("ServiceInput") if isinstance(definitions, dict) else None
    if not isinstance(service_input, dict) or "example" not in service_input or is_placeholder(service_input):
        return False, None
    return True, service_input["example"]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def answer_differences(expected: Any, got: Any, path: str = "") -> list[str]:
    """Where `got` departs from `expected`: same JSON shape, numbers within the tolerances."""
    here = path or "(top)"
    if _number(expected) and _number(got):
        if math.isclose(float(expected), float(got), rel_tol=REL_TOLERANCE, abs_tol=ABS_TOLERANCE):
            return []
        return [f"at {here}: expected {expected!r}, got {got!r}"]
    if isinstance(expected, dict) and isinstance(got, dict):
        if set(expected) != set(got):
            return [f"at {here}: expected keys {sorted(expected)}, got {sorted(got)}"]
        out: list[str] = []
        for k in expected:
            out += answer_differences(expected[k], got[k], f"{path}/{k}" if path else str(k))
        return out
    if isinstance(expected, list) and isinstance(got, list):
        if len(expected) != len(got):
            return [f"at {here}: expected {len(expected)} items, got {len(got)}"]
        out = []
        for i, (e, g) in enumerate(zip(expected, got)):
            out += answer_differences(e, g, f"{path}/{i}" if path else str(i))
        return out
    if expected == got and type(expected) is type(got):
        return []
    return [f"at {here}: expected {json.dumps(expected)[:200]}, got {json.dumps(got)[:200]}"]


def judge(status: int, body: str, expected: Any = None, has_expected: bool = False) -> tuple[str, list[str]]:
    """(problem, details) for an answer to the sample; ("", []) when it passes."""
    if status != 200:
        return f"the sample was answered {status}, not 200", []
    if not has_expected:
        return "", []
    try:
        got = json.loads(body)
    except ValueError:
        return "the answer is not JSON", []
    differences = answer_differences(expected, got)
    if differences:
        return "the answer differs from sample_request's expected answer", differences[:SHOWN_DIFFERENCES]
    return "", []


_JSON_TYPES: dict[str, Any] = {
    "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
    "number": (int, float), "integer": int,
}


def _is_type(value: Any, name: str) -> bool:
    if name in ("number", "integer") and isinstance(value, bool):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    kind = _JSON_TYPES.get(name)
    return kind is None or isinstance(value, kind)


def schema_errors(schema: Any, body: Any, definitions: dict[str, Any], path: str = "", depth: int = 0) -> list[str]:
    """Where `body` departs from a Swagger output schema: `$ref` (to `#/definitions/` only), `type`,
    `enum`, `items`, `properties` and `required`; other keywords are annotations here.

    The startup probe on a pod has only the standard library (the scoring image has no jsonschema),
    so it checks this subset; the local target checks the whole schema with jsonschema
    (`mldeploy.providers.gate.sample_check.output_errors`). For the schemas inference-schema writes
    (arrays of numbers, objects of them) both say the same.
    """
    here = path or "(top)"
    if not isinstance(schema, dict) or depth > 32:
        return []
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.removeprefix("#/definitions/")
        if name == ref or name not in definitions:
            return [f"at {here}: $ref {ref!r} is not a #/definitions/ entry of the document"]
        return schema_errors(definitions[name], body, definitions, path, depth + 1)
    types = schema.get("type")
    names = [types] if isinstance(types, str) else list(types) if isinstance(types, list) else []
    if names and not any(_is_type(body, t) for t in names):
        return [f"at {here}: {json.dumps(body)[:120]} is not of type {' or '.join(names)}"]
    if isinstance(schema.get("enum"), list) and body not in schema["enum"]:
        return [f"at {here}: {json.dumps(body)[:120]} is not one of {json.dumps(schema['enum'])[:120]}"]
    out: list[str] = []
    if isinstance(body, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(body):
            out += schema_errors(schema["items"], item, definitions, f"{path}/{i}" if path else str(i), depth + 1)
            if len(out) >= SHOWN_DIFFERENCES:
                break
    if isinstance(body, dict):
        for key in schema.get("required") or []:
            if key not in body:
                out.append(f"at {here}: {key!r} is a required property")
        for key, sub in (schema.get("properties") or {}).items():
            if key in body:
                out += schema_errors(sub, body[key], definitions, f"{path}/{key}" if path else str(key), depth + 1)
    return out[:SHOWN_DIFFERENCES]


def output_schema_problem(swagger: Any, text: str) -> tuple[str, list[str]]:
    """(problem, details) when an answer's body departs from the document's `ServiceOutput`; ("", []) otherwise."""
    definitions = swagger.get("definitions") if isinstance(swagger, dict) else None
    output = definitions.get("ServiceOutput") if isinstance(definitions, dict) else None
    if not isinstance(output, dict) or is_placeholder(output):
        return "", []
    try:
        body = json.loads(text)
    except ValueError:
        return "the answer is not JSON", []
    errors = schema_errors(output, body, definitions)
    return ("the answer does not match the output schema", errors) if errors else ("", [])


# --- the startup probe, run inside the scoring container ---------------------------------

PROBE_DIR = "/etc/mldeploy/sample"
TERMINATION_LOG = "/dev/termination-log"


def _post(port: str, body: bytes, timeout: float) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/score", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def _get(port: str, path: str, timeout: float) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def _stop_server() -> None:
    """SIGTERM to the container's first process, the scoring server (gunicorn's master)."""
    os.kill(1, signal.SIGTERM)


def probe(folder: str = PROBE_DIR, port: str = "5001", timeout: float = 8.0,
          termination_log: str | None = TERMINATION_LOG, stop: Any = _stop_server) -> int:
    """0 when the server answers the sample as expected; 1 while it is not up; a wrong answer ends the container.

    A wrong answer is final: the report goes to the termination log and the
    server is stopped, so the pod's status says why at once instead of after
    the probe's whole failure budget.
    """
    given = os.path.exists(os.path.join(folder, "request.json"))
    swagger: Any = None
    try:
        if given:
            with open(os.path.join(folder, "request.json"), "rb") as fh:
                body = fh.read()
        else:
            # The entry script's own input_sample, from the Swagger document the server wrote from it.
            code, doc = _get(port, "/swagger.json", timeout)
            if code != 200:
                print(f"the scoring server does not serve its Swagger document yet: {code}")
                return 1
            swagger = json.loads(doc)
            declared, sample = declared_input_sample(swagger)
            if not declared:
                print(NO_SAMPLE_WORDS)
                return 0
            body = json.dumps(sample).encode()
        expected, has_expected = None, os.path.exists(os.path.join(folder, "response.json"))
        if has_expected:
            with open(os.path.join(folder, "response.json"), encoding="utf-8") as fh:
                expected = json.load(fh)
        status, text = _post(port, body, timeout)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        print(f"the scoring server does not answer yet: {exc}")
        return 1
    problem, details = judge(status, text, expected, has_expected)
    if not problem and swagger is not None:
        problem, details = output_schema_problem(swagger, text)
    what = "sample_request" if given else "the entry script's input sample"
    if not problem:
        print(f"{what} answered {status}")
        return 0
    shown = body.decode("utf-8", "replace").strip()
    report = "\n".join([
        f"the new version failed {what}, so it gets no traffic:",
        f"sample request: POST /score {shown[:600]}",
        f"answer: {status}: {text.strip()[:600]}",
        f"problem: {problem}",
        *(f"  {d}" for d in details),
    ])
    print(report)
    if termination_log is None or stop is None:
        return 1
    try:
        with open(termination_log, "w", encoding="utf-8") as fh:
            fh.write(report[:4000])
        stop()
    except OSError:
        pass  # the probe's own failures still keep the pod out of service
    return 1


if __name__ == "__main__":
    # Only in a container (the kubelet made its termination log): never signal a host's first process.
    in_pod = os.path.exists(TERMINATION_LOG)
    sys.exit(probe(port=os.environ.get("MLDEPLOY_PROBE_PORT", "5001"),
                   termination_log=TERMINATION_LOG if in_pod else None, stop=_stop_server if in_pod else None))
