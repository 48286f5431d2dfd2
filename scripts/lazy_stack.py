"""The Automation API's Stack, asking the `pulumi` CLI only for what its caller reads.

Every `pulumi` CLI run costs about 0.25 CPU-seconds to start, and one that decrypts the stack's
secrets (the passphrase's key derivation) about 0.45. After each `up`, `refresh` and `destroy`
the SDK's Stack runs `stack output` twice and `stack history --show-secrets` once, whether or not
the caller reads them: about 1.5 CPU-seconds after every `up`, as much as a small stack's `up`
itself. Here they run when the result's `outputs` or `summary` is first read, and not at all
when nobody reads them; the masked `stack output`, which only tells which outputs are secret, runs
when some output's `secret` is read. docs/tests.md has the measurements.

The summary's `config` shows secrets as "[secret]" unless the operation is asked with
`show_secrets=True`: reading the history with them decrypts (about 0.2 CPU-seconds more), and the
SDK's default asks for them whether or not anyone reads the config.

A deferred result belongs to its operation: read after another operation ran on the same stack,
it would describe the later one, so it raises `StaleResult` instead.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache
from typing import Any

from pulumi import automation as auto
from semver import VersionInfo


LOCAL_SUBCHANNELS = ("grpc.use_local_subchannel_pool", 1)


def isolate_grpc_channels() -> None:
    """Give each of the SDK's gRPC channels its own connections, so an inline program reaches its engine.

    A process that runs many inline programs (a test session, `stack.py up`'s preview then up) talks
    to one engine after another, each on a port the kernel picks, and a port comes round again. By
    default gRPC shares connections between channels to the same address: a channel the SDK made for
    an engine that has gone (its late log calls fail) leaves the address backing off, and a new engine
    on the same port is then refused at once, "failed to connect to all addresses", which the program
    reports as "Resource monitor has terminated, shutting down" (seen twice in five CI runs). With a
    local pool a new channel connects afresh. tests/test_lazy_stack_unit.py shows both."""
    from pulumi.runtime import _grpc_settings

    if LOCAL_SUBCHANNELS not in _grpc_settings._GRPC_CHANNEL_OPTIONS:
        _grpc_settings._GRPC_CHANNEL_OPTIONS.append(LOCAL_SUBCHANNELS)  # the list the SDK's channels are made with


isolate_grpc_channels()


class StaleResult(RuntimeError):
    """An operation's outputs or summary, first read after a later operation on the same stack."""


_UNSET = object()
SECRET_SENTINEL = "[secret]"
"""What a masked `stack output` shows for a secret, as the SDK compares."""


class _Deferred:
    def __init__(self, stack: "LazyStack", what: str, load: Callable[[], Any]):
        self._stack, self._what, self._load = stack, what, load
        self._op = stack.operations
        self._value: Any = _UNSET

    def get(self) -> Any:
        if self._value is _UNSET:
            if self._stack.operations != self._op:
                raise StaleResult(
                    f"stack {self._stack.name}: the {self._what} of an operation were first read after a later "
                    f"operation ran; read them before the next one (they would describe the later one)")
            self._value = self._load()
        return self._value


class DeferredOutputValue(auto.OutputValue):
    """One output's value; whether it is secret asks the masked `stack output` (one run, shared) on first read."""

    def __init__(self, value: Any, key: str, masked: _Deferred):
        self.value, self._key, self._masked = value, key, masked

    @property
    def secret(self) -> bool:  # type: ignore[override]
        return self._masked.get()[self._key] == SECRET_SENTINEL


class DeferredOutputs(Mapping[str, auto.OutputValue]):
    """The stack's outputs (name -> OutputValue, as the SDK returns), read on first use."""

    def __init__(self, deferred: _Deferred):
        self._deferred = deferred

    def __getitem__(self, key: str) -> auto.OutputValue:
        return self._deferred.get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._deferred.get())

    def __len__(self) -> int:
        return len(self._deferred.get())

    def __repr__(self) -> str:
        return repr(self._deferred.get())


class DeferredSummary:
    """The operation's UpdateSummary (`stack history`), read on first use of any attribute but `result`.

    The SDK asks for the summary only after the CLI exited 0, which it does only for an update that
    succeeded (any other raises CommandError first): `result` is "succeeded" without the history."""

    result = "succeeded"

    def __init__(self, deferred: _Deferred):
        self._deferred = deferred

    def __getattr__(self, name: str) -> Any:
        return getattr(self._deferred.get(), name)

    def __repr__(self) -> str:
        return repr(self._deferred.get())


class LazyStack(auto.Stack):
    """auto.Stack whose up, refresh and destroy defer the outputs and the summary they return."""

    operations = 0
    _deferring = False

    @classmethod
    def of(cls, stack: auto.Stack) -> "LazyStack":
        """The same stack (same name and workspace), with deferred results."""
        lazy = cls.__new__(cls)
        lazy.__dict__.update(stack.__dict__)
        return lazy

    def _operation(self, op: Callable[..., Any], **kw: Any) -> Any:
        kw.setdefault("show_secrets", False)  # only the summary's config would show them
        self.operations += 1
        self._deferring = True
        try:
            return op(**kw)
        finally:
            self._deferring = False

    def up(self, **kw: Any) -> auto.UpResult:  # type: ignore[override]
        return self._operation(super().up, **kw)

    def refresh(self, **kw: Any) -> auto.RefreshResult:  # type: ignore[override]
        return self._operation(super().refresh, **kw)

    def destroy(self, **kw: Any) -> auto.DestroyResult:  # type: ignore[override]
        return self._operation(super().destroy, **kw)

    def outputs(self) -> Any:
        if self._deferring:
            masked = _Deferred(self, "outputs", self.masked_outputs)

            def load() -> dict[str, auto.OutputValue]:
                plain = json.loads(self._cli("stack", "output", "--json", "--show-secrets"))
                return {key: DeferredOutputValue(value, key, masked) for key, value in plain.items()}

            return DeferredOutputs(_Deferred(self, "outputs", load))
        return super().outputs()

    def info(self, show_secrets: bool = True) -> Any:
        if self._deferring:
            return DeferredSummary(_Deferred(self, "summary", lambda: super(LazyStack, self).info(show_secrets)))
        return super().info(show_secrets)

    def _cli(self, *args: str) -> str:
        """One `pulumi` run for this stack, in its workspace's folder and environment (as the SDK's own)."""
        ws = self.workspace
        env = {**({"PULUMI_HOME": ws.pulumi_home} if ws.pulumi_home else {}), **ws.env_vars}
        return ws.pulumi_command.run([*args, "--stack", self.name], ws.work_dir, env).stdout

    def pending_operations(self) -> list[dict[str, Any]]:
        """The state's pending operations, from `stack export` without decrypting the secrets."""
        deployment = json.loads(self._cli("stack", "export")).get("deployment") or {}
        return deployment.get("pending_operations") or []

    def masked_outputs(self) -> dict[str, Any]:
        """The outputs with every secret shown as "[secret]": one `stack output` that decrypts nothing."""
        return json.loads(self._cli("stack", "output", "--json"))


@lru_cache(maxsize=None)
def pulumi_command() -> auto.PulumiCommand:
    """One PulumiCommand per process: making one runs `pulumi version`, which every workspace would repeat.

    When `pulumi` on PATH is the project's own engine, which scripts/setup.sh installs complete only at
    PULUMI_VERSION (built with that version, or a found one whose `pulumi version` says so), that
    version is known without a run. Any other `pulumi` is asked, as the SDK does."""
    version = os.environ.get("PULUMI_VERSION", "")
    engine_bin = os.environ.get("MLDEPLOY_ENGINE_BIN", "")
    found = shutil.which("pulumi")
    if version and engine_bin and found and os.path.realpath(found) == os.path.realpath(os.path.join(engine_bin, "pulumi")) \
            and os.path.isfile(os.path.join(os.path.dirname(engine_bin), ".complete")):
        cmd = auto.PulumiCommand.__new__(auto.PulumiCommand)
        cmd.command, cmd.version = "pulumi", VersionInfo.parse(version)
        return cmd
    return auto.PulumiCommand()


def cli_env() -> dict[str, str]:
    """What the workspace adds to the environment of every `pulumi` run, and so of the plugins it starts.

    GOGC=400: the CLI is a short-lived Go program that allocates much as it starts and decrypts, and
    Go's default (100) collects garbage several times in each run. Measured here (45 runs of `stack
    output --show-secrets`, `config get` of a secret and `stack history`, twice each): 0.35 -> 0.29
    CPU-s a run. The heap may grow to 5 times what is live instead of twice; a GOGC the user set wins."""
    return {"GOGC": os.environ.get("GOGC") or "400"}
