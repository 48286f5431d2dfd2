"""A thin Azure Resource Manager client for container groups, through Microsoft's SDK.

`azure-mgmt-containerinstance` builds the requests and runs the long-running
operation protocol (`Azure-AsyncOperation`, `Location`, `Retry-After`); this
module adds what a deployment tool needs around it: one place that makes the
client (endpoint, credential, api-version), a wait with progress lines and a
30-minute bound, and errors that say what ARM said, without a stack trace.

Credentials: `DefaultAzureCredential` (environment, managed identity, Azure
CLI). `MLDEPLOY_ARM_TOKEN` replaces it with a fixed bearer token, for tests
against a local fake ARM only; `MLDEPLOY_ARM_CA_BUNDLE` names the CA that
such a fake's HTTPS certificate is signed by.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from mldeploy.providers.core.progress import say
from mldeploy.providers.core.settings import DEFAULT_ARM_ENDPOINT

ACI_API_VERSION = "2025-09-01"
"""The api-version sent for container groups (Azure docs' default; pinned)."""
AKS_API_VERSION = "2025-10-01"
DEFAULT_ENDPOINT = DEFAULT_ARM_ENDPOINT
MAX_WAIT_SECONDS = 30 * 60
"""ACI fails a deployment that has not finished after 30 minutes (container-state.md)."""
TERMINAL = ("Succeeded", "Failed", "Canceled")


class ArmError(RuntimeError):
    """A failed ARM call, in ARM's own words (code and message), without a stack trace."""


class CredentialError(ArmError):
    """No token could be had; the message is the credential chain's own."""


@dataclass(frozen=True)
class StaticToken:
    """A fixed bearer token (MLDEPLOY_ARM_TOKEN): for a local fake ARM, never for Azure."""

    token: str

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken(self.token, int(time.time()) + 3600)


def credential() -> Any:
    token = os.environ.get("MLDEPLOY_ARM_TOKEN")
    if token:
        return StaticToken(token)
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


_progress = say  # one style of progress line for every provider


def client_kwargs(endpoint: str) -> dict[str, Any]:
    """What every SDK client here gets: the endpoint, the CA and a short retry budget.

    azure-core's retry policy already honours 429/503 with `Retry-After`; three
    retries keep a throttled `up` from hanging for minutes before it says so.
    """
    kw: dict[str, Any] = {"base_url": endpoint.rstrip("/"), "retry_total": 3, "retry_backoff_max": 30}
    ca = os.environ.get("MLDEPLOY_ARM_CA_BUNDLE")
    if ca:
        kw["connection_verify"] = ca
    return kw


def describe(exc: BaseException) -> str:
    """ARM's error code and message (or the credential chain's message)."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    if isinstance(exc, ClientAuthenticationError) and getattr(exc, "status_code", None) is None:
        return str(getattr(exc, "message", None) or exc).strip()  # the credential chain's own words
    if isinstance(exc, HttpResponseError):
        status = getattr(exc, "status_code", None)
        err = getattr(exc, "error", None)
        code = getattr(err, "code", None) if err is not None else None
        message = getattr(err, "message", None) if err is not None else None
        if not message:
            message = str(exc.message if hasattr(exc, "message") else exc).strip()
        text = f"{status} {code}: {message}" if code else f"{status}: {message}"
        if status == 429:
            retry = exc.response.headers.get("Retry-After") if exc.response is not None else None
            text += f" (throttled; ARM asked to retry after {retry or '?'} s; run `pulumi up` again later)"
        return text
    if isinstance(exc, ClientAuthenticationError):
        return str(exc).strip()
    return f"{type(exc).__name__}: {exc}"


def call(what: str, fn: Callable[[], Any]) -> Any:
    """Run one SDK call; its failure becomes an ArmError (or CredentialError) in ARM's words, no stack trace."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    try:
        return fn()
    except ClientAuthenticationError as exc:
        if getattr(exc, "status_code", None) in (401, 403):
            raise ArmError(f"{what}: {describe(exc)}") from None
        raise CredentialError(f"{what}: could not get an Azure token: {describe(exc)}") from None
    except HttpResponseError as exc:
        raise ArmError(f"{what}: {describe(exc)}") from None


class ContainerGroups:
    """Container groups of one subscription and resource group."""

    def __init__(self, subscription_id: str, resource_group: str, endpoint: str = DEFAULT_ENDPOINT, cred: Any = None):
        from azure.mgmt.containerinstance import ContainerInstanceManagementClient

        self.resource_group = resource_group
        self.client = ContainerInstanceManagementClient(
            cred or credential(), subscription_id, api_version=ACI_API_VERSION, **client_kwargs(endpoint)
        )

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        return call(what, fn)

    def get(self, name: str) -> dict[str, Any] | None:
        """The group as ARM returns it (secure values never come back), or None when gone."""
        from azure.core.exceptions import ResourceNotFoundError

        def get() -> dict[str, Any] | None:
            try:
                return self.client.container_groups.get(self.resource_group, name).as_dict(keep_readonly=True)
            except ResourceNotFoundError:
                return None

        return self._call(f"GET container group {name}", get)

    def put(self, name: str, body: dict[str, Any], timeout: float = MAX_WAIT_SECONDS, interval: float = 5.0) -> dict[str, Any]:
        """Create or update, then wait until `provisioningState` is terminal, with progress lines."""
        from azure.mgmt.containerinstance.models import ContainerGroup

        model = ContainerGroup.from_dict(body)
        poller = self._call(
            f"PUT container group {name}",
            lambda: self.client.container_groups.begin_create_or_update(self.resource_group, name, model, polling_interval=1),
        )
        return self._wait(name, poller, "deploying", timeout, interval)

    def _wait(self, name: str, poller: Any, doing: str, timeout: float, interval: float) -> dict[str, Any]:
        start = time.monotonic()
        last = None
        group: dict[str, Any] | None = None
        try:
            while True:
                done = self._call(f"container group {name}", lambda: poller.done() or (poller.wait(interval) or poller.done()))
                group = self.get(name)
                state = ((group or {}).get("provisioning_state")) or "Pending"
                elapsed = time.monotonic() - start
                if state != last:
                    _progress(f"container group {name}: {doing}, provisioningState {state} after {elapsed:.0f} s")
                    last = state
                if done or state in TERMINAL:
                    break
                if elapsed > timeout:
                    raise ArmError(f"container group {name}: still {state} after {timeout / 60:.0f} minutes; ACI gives up at 30")
            self._call(f"container group {name}", poller.result)
        except ArmError as exc:
            group = self.get(name)
            if group is None or group.get("provisioning_state") != "Failed":
                raise
            raise ArmError(f"{exc}\n{self.failure_report(name, group)}") from None
        group = self.get(name)
        if group is None:
            raise ArmError(f"container group {name}: gone after {doing}")
        if group.get("provisioning_state") == "Failed":
            raise ArmError(f"container group {name}: provisioningState Failed\n{self.failure_report(name, group)}")
        return group

    def failure_report(self, name: str, group: dict[str, Any], tail: int = 30) -> str:
        """Each container's state, its events and the tail of its log."""
        lines = []
        for c in group.get("containers") or []:
            view = c.get("instance_view") or {}
            current = view.get("current_state") or {}
            lines.append(
                f"container {c['name']}: {current.get('state', '?')} (exit code {current.get('exit_code')}, "
                f"{view.get('restart_count', 0)} restarts) {current.get('detail_status') or ''}".rstrip()
            )
            for ev in (view.get("events") or [])[-5:]:
                lines.append(f"  event {ev.get('name')}: {ev.get('message')}")
            log = self.logs(name, c["name"], tail)
            if log:
                lines.append("  log tail:\n" + "\n".join("    " + ln for ln in log.rstrip().splitlines()[-tail:]))
        return "\n".join(lines)

    def logs(self, name: str, container: str, tail: int = 30) -> str:
        try:
            return self.client.containers.list_logs(self.resource_group, name, container, tail=tail).content or ""
        except Exception:  # a log is a courtesy in an error report; never mask the error itself
            return ""

    def delete(self, name: str, timeout: float = MAX_WAIT_SECONDS) -> bool:
        """Delete and wait; a group already gone counts as deleted. True when there was one."""
        from azure.core.exceptions import ResourceNotFoundError

        def begin() -> Any:
            try:
                return self.client.container_groups.begin_delete(self.resource_group, name, polling_interval=1)
            except ResourceNotFoundError:
                return None

        if self.get(name) is None:
            return False  # ARM answers 204 for a group that is not there
        poller = self._call(f"DELETE container group {name}", begin)
        if poller is None:
            return False
        start = time.monotonic()
        while not poller.done():
            if time.monotonic() - start > timeout:
                raise ArmError(f"container group {name}: delete still running after {timeout / 60:.0f} minutes")
            self._call(f"deleting container group {name}", lambda: poller.wait(5))
        self._call(f"deleting container group {name}", poller.result)
        _progress(f"container group {name}: deleted after {time.monotonic() - start:.0f} s")
        return True
