"""scripts/lazy_stack.py: an operation's outputs and summary cost CLI runs only when read, and never describe a later operation."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from pulumi import automation as auto

from lazy_stack import DeferredOutputs, LazyStack, StaleResult


class FakeWorkspace:
    """Records what the stack asks the CLI for."""

    def __init__(self) -> None:
        self.calls: list[object] = []
        self.values = {"scoring_uri": auto.OutputValue("http://127.0.0.1:1/score", False),
                       "primary_key": auto.OutputValue("k", True)}
        self.pulumi_home, self.env_vars, self.work_dir = None, {}, "/w"
        self.pulumi_command = SimpleNamespace(run=self.run)

    def run(self, args: list[str], cwd: str, env: dict) -> SimpleNamespace:
        """`pulumi stack output --json [--show-secrets] --stack NAME`, as the CLI answers it."""
        assert args[:3] == ["stack", "output", "--json"] and args[-2:] == ["--stack", "t1"], args
        plain = "--show-secrets" in args
        self.calls.append(("output", "plain" if plain else "masked"))
        return SimpleNamespace(stdout=json.dumps({k: v.value if plain or not v.secret else "[secret]"
                                                  for k, v in self.values.items()}))

    def stack_outputs(self, name: str) -> dict:
        self.calls.append(("outputs", name))
        return dict(self.values)


class Probe(LazyStack):
    def history(self, page_size=None, page=None, show_secrets=True):  # type: ignore[override]
        self.workspace.calls.append(("history", show_secrets))
        return [SimpleNamespace(result="succeeded", resource_changes={"same": 3}, op=self.operations)]


def make() -> Probe:
    st = Probe.__new__(Probe)
    st.name, st.workspace = "t1", FakeWorkspace()
    return st


def sdk_like_op(st: LazyStack, show_secrets: bool = True):  # the SDK's default
    """What auto.Stack.up, refresh and destroy do after the engine returns: ask for the outputs and the summary."""
    return SimpleNamespace(outputs=st.outputs(), summary=st.info(show_secrets))


def test_nothing_is_asked_until_read_and_each_is_asked_once():
    st = make()
    result = st._operation(sdk_like_op, st=st)
    assert st.workspace.calls == []
    assert result.outputs["scoring_uri"].value == "http://127.0.0.1:1/score"
    assert result.outputs["primary_key"].value == "k" and set(result.outputs) == {"scoring_uri", "primary_key"}
    assert st.workspace.calls == [("output", "plain")]  # which is secret: not asked until read
    assert result.outputs["primary_key"].secret and not result.outputs["scoring_uri"].secret
    assert repr(result.outputs["primary_key"]) == "[secret]"
    assert st.workspace.calls == [("output", "plain"), ("output", "masked")]
    assert result.summary.result == "succeeded"  # the operation returned: no history needed
    assert st.workspace.calls == [("output", "plain"), ("output", "masked")]
    assert result.summary.resource_changes == {"same": 3}
    assert dict(result.outputs.items())["scoring_uri"].value.endswith("/score")
    assert st.workspace.calls == [("output", "plain"), ("output", "masked"), ("history", False)]


def test_the_deferred_history_decrypts_only_when_asked():
    st = make()
    assert st._operation(sdk_like_op, st=st).summary.op == 1  # the SDK's default (True) is not asked for
    assert st._operation(sdk_like_op, st=st, show_secrets=True).summary.op == 2
    assert st.workspace.calls == [("history", False), ("history", True)]


def test_a_result_first_read_after_a_later_operation_is_stale_and_says_so():
    st = make()
    first = st._operation(sdk_like_op, st=st)
    read_in_time = first.summary.resource_changes
    st._operation(sdk_like_op, st=st)
    assert first.summary.resource_changes == read_in_time  # read before: kept
    with pytest.raises(StaleResult, match="stack t1: the outputs of an operation were first read after a later"):
        first.outputs["scoring_uri"]
    second = st._operation(sdk_like_op, st=st)
    st._operation(sdk_like_op, st=st)
    assert second.summary.result == "succeeded"  # known when the operation returned
    with pytest.raises(StaleResult, match="stack t1: the summary of an operation were first read after a later"):
        second.summary.resource_changes
    assert st.workspace.calls == [("history", False)]


def test_outside_an_operation_outputs_and_info_are_the_sdks():
    st = make()
    outputs = st.outputs()
    assert isinstance(outputs, dict) and not isinstance(outputs, DeferredOutputs)
    assert st.info().result == "succeeded"
    assert st.workspace.calls == [("outputs", "t1"), ("history", True)]


def test_an_operation_that_fails_stops_deferring():
    st = make()

    def boom(**_):
        raise auto.CommandError(auto.CommandResult(stdout="", stderr="engine failed", code=1))

    with pytest.raises(auto.CommandError):
        st._operation(boom)
    assert isinstance(st.outputs(), dict) and st.operations == 1


def test_masked_outputs_and_pending_operations_ask_the_cli_without_decrypting():
    runs: list[tuple] = []

    class Command:
        def run(self, args, cwd, env):
            runs.append((tuple(args), cwd, env))
            out = '{"scoring_uri": "http://127.0.0.1:1/score", "primary_key": "[secret]"}' if args[1] == "output" else \
                '{"version": 3, "deployment": {"pending_operations": [{"type": "creating"}]}}'
            return SimpleNamespace(stdout=out)

    st = make()
    st.workspace = SimpleNamespace(pulumi_home=None, env_vars={"PULUMI_CONFIG_PASSPHRASE": "p"}, work_dir="/w",
                                   pulumi_command=Command())
    assert st.masked_outputs() == {"scoring_uri": "http://127.0.0.1:1/score", "primary_key": "[secret]"}
    assert st.pending_operations() == [{"type": "creating"}]
    assert [r[0] for r in runs] == [("stack", "output", "--json", "--stack", "t1"), ("stack", "export", "--stack", "t1")]
    assert all(r[1] == "/w" and r[2] == {"PULUMI_CONFIG_PASSPHRASE": "p"} for r in runs)
    assert not any("--show-secrets" in r[0] for r in runs)


def test_which_outputs_are_secret_belongs_to_the_operation_too():
    st = make()
    first = st._operation(sdk_like_op, st=st)
    assert first.outputs["primary_key"].value == "k"
    st._operation(sdk_like_op, st=st)
    with pytest.raises(StaleResult, match="the outputs of an operation were first read after a later"):
        first.outputs["primary_key"].secret
    assert st.workspace.calls == [("output", "plain")]


def engine(tmp_path, complete: bool = True):
    bin_dir = tmp_path / "engine" / "v3.259.0" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "pulumi").write_text("#!/bin/sh\nexit 3\n")
    (bin_dir / "pulumi").chmod(0o755)
    if complete:
        (bin_dir.parent / ".complete").touch()
    return bin_dir


@pytest.mark.parametrize("case", ["ours", "incomplete", "another on PATH", "ours not installed"])
def test_the_projects_own_engine_is_not_asked_its_version_and_any_other_pulumi_is(tmp_path, monkeypatch, case):
    import lazy_stack

    ours = engine(tmp_path, complete=case != "incomplete")
    other = tmp_path / "other"
    other.mkdir()
    (other / "pulumi").write_text("#!/bin/sh\necho v3.1.0\n")
    (other / "pulumi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{other if case == 'another on PATH' else ours}:/usr/bin:/bin")
    monkeypatch.setenv("PULUMI_VERSION", "3.259.0")
    # A fresh runner's cache may not hold the engine that PATH finds elsewhere.
    monkeypatch.setenv("MLDEPLOY_ENGINE_BIN", str(tmp_path / "empty" / "bin") if case == "ours not installed" else str(ours))
    asked: list[str] = []
    monkeypatch.setattr(lazy_stack.auto, "PulumiCommand", type("Asked", (auto.PulumiCommand,), {
        "__init__": lambda self: asked.append("pulumi version")}))
    lazy_stack.pulumi_command.cache_clear()
    try:
        cmd = lazy_stack.pulumi_command()
    finally:
        lazy_stack.pulumi_command.cache_clear()
    if case == "ours":
        assert asked == [] and cmd.command == "pulumi" and str(cmd.version) == "3.259.0"
    else:
        assert asked == ["pulumi version"]


def test_the_cli_collects_garbage_less_often_unless_the_user_chose(monkeypatch):
    from lazy_stack import cli_env

    monkeypatch.delenv("GOGC", raising=False)
    assert cli_env() == {"GOGC": "400"}
    monkeypatch.setenv("GOGC", "50")
    assert cli_env() == {"GOGC": "50"}


def answer_after_a_dead_channel(options: list) -> str:
    """A channel to a 127.0.0.1 port nobody serves fails (an engine that has gone); then a server takes the port
    (the next engine) and a new channel with `options` calls it at once: what it gets."""
    import socket
    from concurrent import futures

    import grpc

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    # A long backoff, so a slow machine cannot outwait it (gRPC's first is about 1 s).
    options = [*options, ("grpc.initial_reconnect_backoff_ms", 20000), ("grpc.min_reconnect_backoff_ms", 20000)]
    gone = grpc.insecure_channel(address, options=options)
    with pytest.raises(grpc.RpcError):
        gone.unary_unary("/t.Engine/Log")(b"", timeout=5)

    class Echo(grpc.GenericRpcHandler):
        def service(self, details):
            return grpc.unary_unary_rpc_method_handler(lambda request, context: b"registered")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    server.add_generic_rpc_handlers((Echo(),))
    server.add_insecure_port(address)
    server.start()
    try:
        return grpc.insecure_channel(address, options=options).unary_unary("/t.Monitor/Register")(b"", timeout=5).decode()
    except grpc.RpcError as exc:
        return exc.code().name
    finally:
        server.stop(0)
        gone.close()


def test_a_new_engine_on_a_port_a_gone_one_used_is_reached_with_the_sdks_channel_options():
    from pulumi.runtime._grpc_settings import _GRPC_CHANNEL_OPTIONS

    import lazy_stack

    assert lazy_stack.LOCAL_SUBCHANNELS in _GRPC_CHANNEL_OPTIONS  # set when imported
    lazy_stack.isolate_grpc_channels()
    assert _GRPC_CHANNEL_OPTIONS.count(lazy_stack.LOCAL_SUBCHANNELS) == 1
    assert answer_after_a_dead_channel(list(_GRPC_CHANNEL_OPTIONS)) == "registered"
    # gRPC's default (connections shared between channels): refused at once, what the program calls
    # "Resource monitor has terminated".
    assert answer_after_a_dead_channel([o for o in _GRPC_CHANNEL_OPTIONS if o != lazy_stack.LOCAL_SUBCHANNELS]) == "UNAVAILABLE"
