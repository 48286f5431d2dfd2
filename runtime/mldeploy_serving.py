"""Start `azmlinfsrv` with one change: input the entry script's schema rejects is a 400.

The Azure ML scoring server answers 500 whenever `run()` raises, including when the
`inference-schema` decorator rejects the input (a wrong shape or type) before the
user's code runs. That is the client's error, so it gets a 400 with the reason.
Errors raised from inside the user's `run()` stay 500: they are the script's.
"""

from __future__ import annotations

import os
import sys


def _entered(exc: BaseException, script: str) -> bool:
    """Whether the traceback reached the entry script's own code."""
    tb = exc.__traceback__
    while tb is not None:
        if os.path.realpath(tb.tb_frame.f_code.co_filename) == script:
            return True
        tb = tb.tb_next
    return False


def install() -> None:
    from azureml_inference_server_http.server.input_parsers import BadInput
    from azureml_inference_server_http.server.user_script import UserScript, UserScriptException

    original = UserScript.invoke_run

    def invoke_run(self, request, *, timeout_ms):  # noqa: ANN001 - the server's own signature
        try:
            return original(self, request, timeout_ms=timeout_ms)
        except UserScriptException as ex:
            cause = ex.__cause__
            script = os.path.realpath(os.environ.get("AZUREML_ENTRY_SCRIPT", ""))
            if isinstance(cause, (ValueError, TypeError, KeyError)) and not _entered(cause, script):
                raise BadInput(f"Invalid input: {cause}") from cause
            raise

    UserScript.invoke_run = invoke_run


def main() -> None:
    # Patched in the master before gunicorn forks its workers, so every worker has it.
    install()
    from azureml_inference_server_http.amlserver import run

    sys.argv[0] = "azmlinfsrv"
    run()


if __name__ == "__main__":
    main()
