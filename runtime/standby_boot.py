"""Run inside a local backend with `python -c` (never imported by the provider), before the image's own command.

A warm standby (`warm_standby=True`, docs/usage.md) is a backend started before it is needed, with
no model yet: it imports the libraries the live backend's worker had loaded once `init()` returned
(`MLDEPLOY_WARM_IN`), then waits for its go file (`MLDEPLOY_STANDBY_GO`), which names the model
folder (`AZUREML_MODEL_DIR`). Only then does the scoring server start, so a model-only update
skips the container start and the imports (scikit-learn alone takes most of a second).

Every backend of such a service records, after `init()`, which library modules its worker holds
(`MLDEPLOY_WARM_OUT`): the list the next standby imports. The server's own package is never
imported early, because its configuration reads `AZUREML_MODEL_DIR` when it is imported, and the
user's code is never run early: only modules from the environment's site-packages are listed.

The image is unchanged: the rest of the command line is its own (`-m mldeploy_serving ...`).
"""

import importlib
import json
import os
import runpy
import sys
import time

SERVER_PACKAGE = "azureml_inference_server_http"


def library_modules() -> list[str]:
    """Modules loaded from the environment's site-packages, parents first."""
    roots = tuple(p for p in sys.path if p.endswith("site-packages"))
    names = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        if path.startswith(roots) and not name.startswith(SERVER_PACKAGE) and "__main__" not in name:
            names.append(name)
    return sorted(names, key=lambda n: (n.count("."), n))


def record_after_init(out: str) -> None:
    """Write the list once the worker's init() has returned (every worker writes the same list)."""
    from azureml_inference_server_http.server.user_script import UserScript

    original = UserScript.invoke_init

    def invoke_init(self):  # noqa: ANN001 - the server's own signature
        original(self)
        try:
            tmp = f"{out}.{os.getpid()}"
            with open(tmp, "w") as fh:
                fh.write("\n".join(library_modules()) + "\n")
            os.replace(tmp, out)
        except OSError:
            pass  # a list not written only makes the next standby colder

    UserScript.invoke_init = invoke_init


def warm(listing: str) -> int:
    try:
        with open(listing) as fh:
            names = fh.read().split()
    except OSError:
        return 0
    done = 0
    for name in names:
        try:
            importlib.import_module(name)
            done += 1
        except BaseException:  # noqa: BLE001 - a module that cannot load early loads later, as usual
            pass
    return done


def wait_for_go(path: str) -> dict:
    while not os.path.exists(path):
        time.sleep(0.01)
    with open(path) as fh:
        return json.load(fh)


def main() -> None:
    go = os.environ.get("MLDEPLOY_STANDBY_GO")
    if go:
        count = warm(os.environ.get("MLDEPLOY_WARM_IN", ""))
        print(f"standby: {count} modules imported; waiting for {go}", flush=True)
        os.environ.update({k: str(v) for k, v in wait_for_go(go).items()})
        print(f"standby: activated with {os.environ.get('AZUREML_MODEL_DIR')}", flush=True)
    if os.environ.get("MLDEPLOY_WARM_OUT"):
        record_after_init(os.environ["MLDEPLOY_WARM_OUT"])
    args = sys.argv[1:]
    if args[:1] != ["-m"] or len(args) < 2:
        raise SystemExit(f"standby_boot: expected `-m <module> [args]`, got {args}")
    sys.argv = [args[1], *args[2:]]
    runpy.run_module(args[1], run_name="__main__", alter_sys=True)


if __name__ == "__main__":  # `python -c` runs it as __main__; importing it does nothing
    main()
