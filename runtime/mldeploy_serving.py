"""Start `azmlinfsrv` with two changes: input the entry script's schema rejects is a 400,
and the server can listen on a Unix socket instead of a TCP port.

The Azure ML scoring server answers 500 whenever `run()` raises, including when the
`inference-schema` decorator rejects the input (a wrong shape or type) before the
user's code runs. That is the client's error, so it gets a 400 with the reason.
Errors raised from inside the user's `run()` stay 500: they are the script's.

`MLDEPLOY_BIND_SOCKET=/run/mldeploy/<name>.sock` (the local target): gunicorn binds that
path and nothing else, so a container with no network at all serves the gateway that
mounts the same folder. The socket is made group-accessible only (umask 007).
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


SOCKET_UMASK = "0o007"


def gunicorn_argv(prog: str, bind: str, worker_count: int, timeout: str, preload: bool) -> list[str]:
    """azmlinfsrv 1.5.1's own gunicorn arguments (`amlserver_linux.run`), with `bind` as given."""
    argv = [prog, "-b", bind, "-w", str(worker_count), "--timeout", timeout,
            "--access-logfile", "-", "--error-logfile", "/dev/null"]
    if bind.startswith("unix:"):
        argv += ["--umask", SOCKET_UMASK]
    if preload:
        argv.append("--preload")
    return argv + ["azureml_inference_server_http.server.entry:app"]


def bind_unix_socket(path: str) -> None:
    """Make azmlinfsrv's Linux runner bind `path` instead of host:port."""
    from azureml_inference_server_http import amlserver_linux
    from azureml_inference_server_http.constants import (
        DEFAULT_WORKER_PRELOAD,
        DEFAULT_WORKER_TIMEOUT_SECONDS,
        ENV_WORKER_PRELOAD,
        ENV_WORKER_TIMEOUT,
    )

    def run(host, port, worker_count, health_port=None):  # noqa: ANN001, ARG001 - the runner's signature
        import gunicorn.app.wsgiapp

        sys.argv = gunicorn_argv(
            sys.argv[0],
            f"unix:{path}",
            worker_count,
            os.environ.get(ENV_WORKER_TIMEOUT, DEFAULT_WORKER_TIMEOUT_SECONDS),
            os.environ.get(ENV_WORKER_PRELOAD, DEFAULT_WORKER_PRELOAD).lower() == "true",
        )
        gunicorn.app.wsgiapp.WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]").run()

    amlserver_linux.run = run


def main() -> None:
    # Patched in the master before gunicorn forks its workers, so every worker has it.
    install()
    from azureml_inference_server_http import amlserver
    from azureml_inference_server_http.amlserver import run

    # The server always binds 0.0.0.0; in a pod only the front end beside it
    # may reach it, so it can be told to bind loopback instead.
    amlserver.DEFAULT_HOST = os.environ.get("MLDEPLOY_BIND_HOST") or amlserver.DEFAULT_HOST
    if os.environ.get("MLDEPLOY_BIND_SOCKET"):
        bind_unix_socket(os.environ["MLDEPLOY_BIND_SOCKET"])

    sys.argv[0] = "azmlinfsrv"
    run()


if __name__ == "__main__":
    main()
