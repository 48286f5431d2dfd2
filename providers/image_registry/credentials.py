"""Provider for a registry's credentials: given in stack config, or an ACR's, from ARM's listCredentials.

Pushes (`RegistryImage`) and pulls (ACI's `imageRegistryCredentials`) need the
same username and password. For an ACR they are read through
`azure-mgmt-containerregistry` at `up` and at `refresh` (a regenerated
password is picked up there), never written anywhere but Pulumi's encrypted
state: the password output is a secret.
"""

from __future__ import annotations

import re
from typing import Any

from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

SUBSCRIPTION_RE = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# ACR names: 5-50 alphanumerics (Microsoft.ContainerRegistry naming rules).
ACR_NAME_RE = r"^[a-zA-Z0-9]{5,50}$"
SOURCES = ("acr", "given")
INPUTS = ("source", "server", "username", "password", "subscription_id", "resource_group", "registry_name", "arm_endpoint")


def check_credentials(news: dict[str, Any]) -> list[CheckFailure]:
    """Pure: each bad field named; unknown values (preview) are not judged."""
    from pulumi.runtime import rpc

    def known(k: str) -> bool:
        return news.get(k) is not None and news.get(k) != rpc.UNKNOWN

    source = news.get("source")
    if source not in SOURCES:
        return [CheckFailure("source", f"must be one of {', '.join(SOURCES)}, got {source!r}")]
    failures = []
    if source == "acr":
        if known("subscription_id") and not re.match(SUBSCRIPTION_RE, str(news["subscription_id"])):
            failures.append(CheckFailure("subscription_id", f"must be a subscription GUID, got {news['subscription_id']!r}"))
        if known("registry_name") and not re.match(ACR_NAME_RE, str(news["registry_name"])):
            failures.append(CheckFailure("registry_name", f"an ACR name is 5-50 letters and digits, got {news['registry_name']!r}"))
        if not news.get("resource_group"):
            failures.append(CheckFailure("resource_group", "missing: set stack config mldeploy:azureResourceGroup"))
    else:
        for k in ("server", "username", "password"):
            if not news.get(k):
                failures.append(CheckFailure(k, f"missing: set stack config mldeploy:imageRegistry{'Username' if k == 'username' else 'Password' if k == 'password' else ''}"))
    return failures


def diff_credentials(olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
    """A new source or registry replaces; new credentials (a rotated password) update."""
    replaces = [k for k in ("source", "registry_name", "subscription_id", "resource_group") if olds.get(k) != news.get(k)]
    changed = replaces + [k for k in ("server", "username", "password", "arm_endpoint") if news.get("source") == "given" and olds.get(k) != news.get(k)]
    return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=False)


def resolve(props: dict[str, Any]) -> dict[str, Any]:
    """Server, username and password for these inputs (I/O for an ACR)."""
    if props["source"] == "given":
        return {"server": props["server"], "username": props["username"], "password": props["password"]}
    from mldeploy.providers.image_registry import acr
    from mldeploy.providers.targets.azure.arm import DEFAULT_ENDPOINT

    auth = acr.registry_auth(props["subscription_id"], props["resource_group"], props["registry_name"],
                             props.get("arm_endpoint") or DEFAULT_ENDPOINT)
    return {"server": auth.server, "username": auth.username, "password": auth.password}


class RegistryCredentialsProvider(ResourceProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        return CheckResult(news, check_credentials(news))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return diff_credentials(olds, news)

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = {**props, **resolve(props)}
        return CreateResult(f"{props['source']}-{outs['server']}", outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult({**news, **resolve(news)})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        try:
            return ReadResult(id_, {**props, **resolve(props)})
        except Exception:  # ARM unreachable at refresh: keep what we had; up says what went wrong
            return ReadResult(id_, props)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        """Nothing to remove: the credentials belong to the registry."""
