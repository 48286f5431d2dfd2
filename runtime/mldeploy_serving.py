"""Start `azmlinfsrv` with one change: input the entry script's schema rejects is a 400.

The Azure ML scoring server answers 500 whenever `run()` raises, including when the
`inference-schema` decorator rejects the input (a wrong shape or type) before the
user's code runs. That is the client's error, so it gets a 400 with the reason.
Errors raised from inside the user's `run()` stay 500: they are the script's.
"""

from __future__ import annotations

import os
import sys


def rejected_input(exc: BaseException, script: str) -> bool:
    """True when inference-schema failed to decode the input, before the script's code ran."""
    decoding = False
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if os.path.realpath(code.co_filename) == script:
            return False
        if code.co_name == "_deserialize_input_argument" and "inference_schema" in code.co_filename:
            decoding = True
        tb = tb.tb_next
    return decoding


def install() -> None:
    from azureml_inference_server_http.server.input_parsers import BadInput
    from azureml_inference_server_http.server.user_script import UserScript, UserScriptException

    original = UserScript.invoke_run

    def invoke_run(self, request, *, timeout_ms):  # noqa: ANN001 - the server's own signature
        try:
            return original(self, request, timeout_ms=timeout_ms)
        except UnicodeDecodeError as ex:  # the server's JSON parser, before any user code
            raise BadInput(f"POST body is not valid UTF-8: {ex.reason} at byte {ex.start}") from ex
        except UserScriptException as ex:
            cause = ex.__cause__
            script = os.path.realpath(os.environ.get("AZUREML_ENTRY_SCRIPT", ""))
            if isinstance(cause, Exception) and rejected_input(cause, script):
                raise BadInput(f"Invalid input: {cause}") from cause
            raise

    UserScript.invoke_run = invoke_run


def main() -> None:
    # Patched in the master before gunicorn forks its workers, so every worker has it.
    install()
    from azureml_inference_server_http import amlserver
    from azureml_inference_server_http.amlserver import run

    # The server always binds 0.0.0.0; in a pod only the front end beside it
    # may reach it, so it can be told to bind loopback instead.
    amlserver.DEFAULT_HOST = os.environ.get("MLDEPLOY_BIND_HOST") or amlserver.DEFAULT_HOST

    sys.argv[0] = "azmlinfsrv"
    run()


if __name__ == "__main__":
    main()
