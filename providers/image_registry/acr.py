"""Azure Container Registry through ARM: the registry's login server and its credentials.

`azure-mgmt-containerregistry` makes the calls (`registries.get`,
`registries.list_credentials`); the password it returns goes straight into a
`RegistryAuth` and from there only into Pulumi secrets, docker's push and
ACI's `imageRegistryCredentials` (which ARM never returns). Docker's token
protocol against the registry itself (ACR's `/oauth2/token`) is done by
`oci_registry.AuthSession` and by dockerd.
"""

from __future__ import annotations

from typing import Any

from mldeploy.providers.targets.azure.arm import DEFAULT_ENDPOINT, ArmError, call, client_kwargs, credential
from mldeploy.providers.image_registry.oci_registry import RegistryAuth

ACR_API_VERSION = "2025-11-01"
"""The api-version azure-mgmt-containerregistry 15.0.0 sends (its default; pinned)."""
REFRESH_TOKEN_USER = "00000000-0000-0000-0000-000000000000"
"""The username that goes with an ACR refresh token (what `az acr login` hands to docker login)."""
ARM_SCOPE = "https://management.azure.com/.default"


def _client(subscription_id: str, endpoint: str, cred: Any = None) -> Any:
    from azure.mgmt.containerregistry import ContainerRegistryManagementClient

    return ContainerRegistryManagementClient(
        cred or credential(), subscription_id, api_version=ACR_API_VERSION, **client_kwargs(endpoint)
    )


def pick_password(passwords: list[dict[str, Any]]) -> str:
    """ACR returns two admin passwords (`password`, `password2`) so either can be regenerated; use the first."""
    for name in ("password", "password2"):
        for p in passwords:
            if p.get("name") == name and p.get("value"):
                return str(p["value"])
    raise ArmError("listCredentials returned no password: enable the registry's admin user (adminUserEnabled)")


def login_server(
    subscription_id: str, resource_group: str, registry_name: str, endpoint: str = DEFAULT_ENDPOINT, cred: Any = None
) -> str:
    client = _client(subscription_id, endpoint, cred)
    reg = call(f"GET container registry {registry_name}", lambda: client.registries.get(resource_group, registry_name))
    return str(getattr(reg, "login_server", None) or (reg.get("properties") or {}).get("loginServer"))


def exchange_token(server: str, cred: Any = None, session: Any = None) -> RegistryAuth:
    """An Entra ID access token exchanged for an ACR refresh token (`POST /oauth2/exchange`), as `az acr login`.

    For registries whose admin user is off. The registry's own challenge names its
    token endpoint (`.../oauth2/token`); the exchange endpoint sits beside it.
    """
    import requests

    from mldeploy.providers.image_registry import oci_registry

    s = session or requests.Session()
    base = oci_registry.base_url(server)
    try:
        challenge = s.get(f"{base}/v2/", timeout=10).headers.get("WWW-Authenticate", "")
    except requests.RequestException as exc:
        raise ArmError(f"registry {server} did not answer: {exc}") from None
    scheme, params = oci_registry._challenge(challenge)
    if scheme != "bearer" or not params.get("realm", "").endswith("/oauth2/token"):
        raise ArmError(f"registry {server} does not offer ACR's token exchange (challenge: {challenge or 'none'})")
    exchange = params["realm"][: -len("/token")] + "/exchange"
    access = call(f"token for {server}", lambda: (cred or credential()).get_token(ARM_SCOPE).token)
    try:
        r = s.post(exchange, data={"grant_type": "access_token", "service": params.get("service", server), "access_token": access},
                   timeout=10)
    except requests.RequestException as exc:
        raise ArmError(f"{exchange} did not answer: {exc}") from None
    if r.status_code != 200 or not r.json().get("refresh_token"):
        raise ArmError(f"token exchange at {exchange}: {r.status_code} {r.text.strip()[:300]}")
    return RegistryAuth(server=server, username=REFRESH_TOKEN_USER, password=r.json()["refresh_token"])


def registry_auth(
    subscription_id: str, resource_group: str, registry_name: str, endpoint: str = DEFAULT_ENDPOINT, cred: Any = None
) -> RegistryAuth:
    """The registry's login server and admin credentials (listCredentials)."""
    client = _client(subscription_id, endpoint, cred)
    what = f"container registry {registry_name}"
    reg = call(f"GET {what}", lambda: client.registries.get(resource_group, registry_name))
    server = getattr(reg, "login_server", None) or (reg.get("properties") or {}).get("loginServer")
    creds = call(f"listCredentials of {what}", lambda: client.registries.list_credentials(resource_group, registry_name))
    data = creds.as_dict() if hasattr(creds, "as_dict") else dict(creds)
    return RegistryAuth(
        server=str(server),
        username=str(data.get("username") or registry_name),
        password=pick_password(list(data.get("passwords") or [])),
    )
