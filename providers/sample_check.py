"""The entry script's own sample, sent to a new backend before it gets traffic.

`inference-schema` writes the entry script's `input_sample` into the Swagger
document as `definitions.ServiceInput.example` and describes what `run()`
returns as `definitions.ServiceOutput`. A backend passes when it answers that
sample with a 200 whose body matches the output schema. An entry script
without samples has no example: its backend is judged on health alone.

Pure over a transport (method, path, body) -> `Answer`, so the same check runs
over HTTP on 127.0.0.1 (a roll) or through `docker exec` in a container that
has no network (the preview's smoke test): `mldeploy.providers.clients.scoring`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

SHOWN_CHARS = 600
"""How much of a request or an answer a message shows."""


@dataclass
class Answer:
    """One HTTP answer of the scoring server."""

    status: int
    """HTTP status; 0 when no answer came (the message is in `body`)."""
    body: str
    """The body as text."""
    ms: float = 0.0
    """Wall time of the request in milliseconds."""


Transport = Callable[[str, str, "bytes | None"], Answer]
"""(method, path, body) -> Answer; the path is the scoring server's own (`/score`)."""


@dataclass
class SampleCheck:
    """What the sample request proved."""

    gated: bool
    """True: the entry script has an input sample and it was sent."""
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
            return "the entry script has no input_sample: judged on health alone"
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
    """`definitions.ServiceInput.example`, or None when the entry script has no sample."""
    definitions = swagger.get("definitions") if isinstance(swagger, dict) else None
    service_input = definitions.get("ServiceInput") if isinstance(definitions, dict) else None
    if not isinstance(service_input, dict) or "example" not in service_input:
        return None
    return service_input["example"]


def output_errors(swagger: dict[str, Any], body: Any) -> list[str]:
    """Where `body` departs from `definitions.ServiceOutput` (JSON Schema draft 4, as Swagger 2.0).

    No output schema means nothing to check. Unknown `format`s (`numpy.ndarray`)
    are annotations, as JSON Schema says.
    """
    import jsonschema

    definitions = swagger.get("definitions") or {}
    output = definitions.get("ServiceOutput")
    if not isinstance(output, dict):
        return []
    schema = {**output, "definitions": definitions}  # `$ref: #/definitions/...` resolves
    validator = jsonschema.Draft4Validator(schema)
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
    return [f"at {'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message[:300]}" for e in errors]


def check_sample(transport: Transport) -> SampleCheck:
    """Fetch the backend's Swagger, send its input sample, judge the answer."""
    got = transport("GET", "/swagger.json", None)
    if got.status != 200:
        return SampleCheck(True, False, answer=got, problem=f"GET /swagger.json answered {got.status}, not 200")
    try:
        swagger = json.loads(got.body)
    except ValueError as exc:
        return SampleCheck(True, False, answer=got, problem=f"the Swagger document is not JSON: {exc}")
    sample = input_sample(swagger)
    if sample is None:
        return SampleCheck(False, True)
    request = json.dumps(sample)
    answer = transport("POST", "/score", request.encode())
    if answer.status != 200:
        return SampleCheck(True, False, request, answer, f"the sample was answered {answer.status}, not 200")
    try:
        body = json.loads(answer.body)
    except ValueError:
        return SampleCheck(True, False, request, answer, "the answer is not JSON")
    errors = output_errors(swagger, body)
    if errors:
        return SampleCheck(True, False, request, answer, "the answer does not match the output schema (definitions.ServiceOutput)", errors)
    return SampleCheck(True, True, request, answer)
