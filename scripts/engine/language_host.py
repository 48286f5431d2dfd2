"""A Python language host for the `pulumi` CLI, so `pulumi preview/up/destroy` work in the project.

Pulumi's own host (`pulumi-language-python`, a Go program) cannot be built here: the
module proxy refuses its module. This host serves the LanguageRuntime protocol with
the Python SDK's `LanguageServer` (what the Automation API serves inline programs
with) and runs the project's `__main__.py` in it. It supports what `preview`, `up`,
`refresh` and `destroy` need; plugin installation, code generation and packing are
not supported (they answer UNIMPLEMENTED).
"""

from __future__ import annotations

import os
import runpy
import sys
from concurrent import futures


def main() -> None:
    import grpc
    from pulumi.automation._server import LanguageServer
    from pulumi.runtime.proto import language_pb2_grpc

    class ProjectLanguageServer(LanguageServer):
        def __init__(self) -> None:
            super().__init__(program=lambda: None)

        def Run(self, request, context):  # noqa: N802 - the protocol's name
            info = request.info
            root = info.root_directory or request.pwd or os.getcwd()
            program_dir = info.program_directory or request.program or root
            entry = info.entry_point or "__main__.py"
            if os.path.isdir(os.path.join(program_dir, entry)):
                program_dir, entry = os.path.join(program_dir, entry), "__main__.py"

            def program() -> None:
                import pulumi.runtime.settings as settings

                settings.SETTINGS.root_directory = root
                if request.pwd:
                    os.chdir(request.pwd)
                if program_dir not in sys.path:
                    sys.path.insert(0, program_dir)
                runpy.run_path(os.path.join(program_dir, entry), run_name="__main__")

            self.program = program
            return super().Run(request, context)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    language_pb2_grpc.add_LanguageRuntimeServicer_to_server(ProjectLanguageServer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)  # the CLI reads the port from the first line
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:  # the CLI stops its plugins with SIGINT when it is done
        server.stop(0)


if __name__ == "__main__":
    main()
