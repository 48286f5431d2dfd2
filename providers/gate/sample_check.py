"""The entry script's own sample, sent to a new backend before it gets traffic.

`inference-schema` writes the entry script's `input_sample` into the Swagger
document as `definitions.ServiceInput.example` and describes what `run()`
returns as `definitions.ServiceOutput`. A backend passes when it answers that
sample with a 200 whose body matches the output schema.

An entry script without decorators (the raw `run(raw_data)` form of Azure ML's
own documents) still gets a Swagger document from `azmlinfsrv`, with a generic
placeholder where the sample would be: that is not a sample, and sending it
proves nothing (`mldeploy.providers.gate.sample_probe` writes the rule down). Such a
backend is judged on health alone, unless the service gives `sample_request`:
a request body of its own, and optionally the answer to expect.

The output schema comes from the backend, so it is the scoring script's to
write: it is checked with an empty `referencing` registry, so only
`#/definitions/...` references resolve and nothing is ever fetched.

Pure over a transport (method, path, body) -> `Answer`, so the same check runs
over HTTP on 127.0.0.1 (a roll) or through `docker exec` in a container that
has no network (the preview's smoke test): `mldeploy.providers.core.scoring`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from mldeploy.providers.core.scoring import Answer, Transport  # noqa: F401 - the gate's words for them
from mldeploy.providers.gate.sample_probe import NO_SAMPLE_WORDS, declared_input_sample, is_placeholder, judge

SHOWN_CHARS = 600
"""How much of a request or an answer a message shows."""


@dataclass
class SampleCheck:
    """What the sample request proved."""

    gated: bool
    """True: a sample (the entry script's own, or the service's `sample_request`) was sent."""
    ok: bool
    """True: a 200 whose body matches the output schema (or no sample: nothing to prove)."""
    request: str = ""
    """The request body sent (JSON), empty without a sample."""
    answer: Answer | None = None
    """The backend's answer to the sample."""
    problem: str = ""
    """Why it failed, in words."""
    schema_errors: list[str] = field(default_factory=list)
    """Where the body departs from `definitions.ServiceOutput`."""

    def summary(self) -> str:
        """One line: "200 in 35 ms" or what went wrong."""
        if not self.gated:
            return NO_SAMPLE_WORDS
        if self.ok and self.answer is not None:
            return f"{self.answer.status} in {self.answer.ms:.0f} ms"
        return self.problem

    def report(self) -> str:
        """The request, the answer and the problem, for an error message."""
        lines = [f"sample request: POST /score {_clip(self.request)}"]
        if self.answer is not None:
            lines.append(f"answer: {self.answer.status} in {self.answer.ms:.0f} ms: {_clip(self.answer.body)}")
        lines.append(f"problem: {self.problem}")
        lines += [f"  {e}" for e in self.schema_errors[:5]]
        return "\n".join(lines)


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + f"… ({len(text)} chars)"


def input_sample(swagger: Any) -> Any | None:
    """The entry script's declared `input_sample`, or None (none declared, or the server's placeholder)."""
    declared, sample = declared_input_sample(swagger)
    return sample if declared else None


class UnsafeReference(ValueError):
    """A `$ref` in the backend's output schema that points outside the document."""


def output_errors(swagger: dict[str, Any], body: Any) -> list[str]:
    """Where `body` departs from `definitions.ServiceOutput` (JSON Schema draft 4, as Swagger 2.0).

    No output schema, or the server's placeholder for an undecorated `run()`,
    means nothing to check. Unknown `format`s (`numpy.ndarray`) are
    annotations, as JSON Schema says. An empty registry: a `$ref` to anything
    but `#/...` raises `UnsafeReference` and is never retrieved.
    """
    import jsonschema
    import referencing
    import referencing.exceptions

    definitions = swagger.get("definitions") or {}
    output = definitions.get("ServiceOutput")
    if not isinstance(output, dict) or is_placeholder(output):
        return []
    schema = {**output, "definitions": definitions}  # `$ref: #/definitions/...` resolves
    validator = jsonschema.Draft4Validator(schema, registry=referencing.Registry())
    try:
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
    except referencing.exceptions.Unresolvable as exc:
        ref = getattr(exc, "ref", str(exc))
        raise UnsafeReference(f"the output schema's $ref {ref!r} points outside the Swagger document; "
                              "only #/definitions/... references are followed, nothing is fetched") from None
    return [f"at {'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message[:300]}" for e in errors]


def sample_from(value: Mapping[str, Any] | None) -> tuple[bool, str, bool, Any]:
    """(given, body as JSON text, has_expected, expected) from a service's `sample_request` input."""
    if not isinstance(value, Mapping) or not isinstance(value.get("body"), str):
        return False, "", False, None
    has_expected = isinstance(value.get("response"), str)
    return True, value["body"], has_expected, json.loads(value["response"]) if has_expected else None


def check_sample(transport: Transport, sample_request: Mapping[str, Any] | None = None) -> SampleCheck:
    """Fetch the backend's Swagger, send the sample (the service's own, else the script's), judge the answer."""
    got = transport("GET", "/swagger.json", None)
    if got.status != 200:
        return SampleCheck(True, False, answer=got, problem=f"GET /swagger.json answered {got.status}, not 200")
    try:
        swagger = json.loads(got.body)
    except ValueError as exc:
        return SampleCheck(True, False, answer=got, problem=f"the Swagger document is not JSON: {exc}")
    given, request, has_expected, expected = sample_from(sample_request)
    if not given:
        declared, body = declared_input_sample(swagger)
        if not declared:
            return SampleCheck(False, True)
        request = json.dumps(body)
    answer = transport("POST", "/score", request.encode())
    problem, details = judge(answer.status, answer.body, expected, has_expected)
    if problem:
        return SampleCheck(True, False, request, answer, problem, details)
    output = (swagger.get("definitions") or {}).get("ServiceOutput")
    if not isinstance(output, dict) or is_placeholder(output):
        return SampleCheck(True, True, request, answer)  # nothing declared about the answer
    try:
        parsed = json.loads(answer.body)
    except ValueError:
        return SampleCheck(True, False, request, answer, "the answer is not JSON")
    try:
        errors = output_errors(swagger, parsed)
    except UnsafeReference as exc:
        return SampleCheck(True, False, request, answer, str(exc))
    if errors:
        return SampleCheck(True, False, request, answer, "the answer does not match the output schema (definitions.ServiceOutput)", errors)
    return SampleCheck(True, True, request, answer)


def declares_input_sample(source: str) -> bool | None:
    """Does the entry script's module-level `run` carry an `@input_schema` decorator? None: cannot tell.

    What the preview can say before any backend runs; at `up` the backend's own
    Swagger decides (`check_sample`), so a `run` decorated in some other way is
    still gated then.
    """
    import ast

    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    runs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == "run"]
    if not runs:
        return None

    def name_of(node: ast.expr) -> str:
        node = node.func if isinstance(node, ast.Call) else node
        return node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""

    return any(name_of(d) == "input_schema" for d in runs[-1].decorator_list)


def gate_words(sample_request: Mapping[str, Any] | None, entry_script_source: str | None) -> str | None:
    """One line for the preview: what a new backend must answer before traffic moves (None: cannot tell yet)."""
    given, body, has_expected, _ = sample_from(sample_request)
    if given:
        expecting = "the expected answer (sample_response)" if has_expected else "a 200"
        return f"the roll is gated on sample_request: POST /score {_clip(body)[:120]} must answer {expecting}"
    declared = declares_input_sample(entry_script_source) if entry_script_source is not None else None
    if declared is None:
        return None  # the backend's own Swagger decides at `up`
    if declared:
        return "the roll is gated on the entry script's input sample"
    return NO_SAMPLE_WORDS
