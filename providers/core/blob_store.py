"""Azure Blob Storage locations, read the way Pulumi's `azblob://` backend reads them.

A team keeps its Pulumi state and its model registry in one storage account, so
the registry takes the same URL syntax and the same environment as the engine's
backend (gocloud.dev's azureblob opener): `azblob://<container>[/<prefix>]` with
the query parameters `domain`, `protocol`, `localemu`, `storage_account`, and
the credentials in `AZURE_STORAGE_ACCOUNT` + `AZURE_STORAGE_KEY`, or
`AZURE_STORAGE_SAS_TOKEN`, or `AZURE_STORAGE_CONNECTION_STRING`, else
`DefaultAzureCredential` (azure-identity). One URL and one set of variables
therefore serve both. Parsing is pure; `container_client` is the thin side.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import parse_qs, urlsplit

SCHEME = "azblob://"
KNOWN_PARAMS = ("domain", "protocol", "localemu", "storage_account")
CONTAINER_RE = re.compile(r"^(\$root|[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9])$")
"""Azure's container-name rule: 3-63 of lowercase letters, digits and single hyphens."""


class BlobLocationError(ValueError):
    """An `azblob://` URL that cannot name a container; the message says which part."""


@dataclass(frozen=True)
class BlobLocation:
    """Where a registry lives in Blob Storage."""

    container: str
    prefix: str
    """Folder inside the container, "" or ending with "/"."""
    account: str
    service_url: str
    """The account's endpoint, e.g. http://127.0.0.1:10000/devstoreaccount1."""

    def describe(self) -> str:
        """For messages: the container's full address, never a credential."""
        return f"{self.service_url}/{self.container}" + (f"/{self.prefix.rstrip('/')}" if self.prefix else "")


def is_blob_url(value: str | None) -> bool:
    return bool(value) and str(value).startswith(SCHEME)


def _truthy(value: str, what: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "t", "true"):
        return True
    if v in ("0", "f", "false", ""):
        return False
    raise BlobLocationError(f"{what}={value!r} is not a boolean")


def parse_blob_url(url: str, environ: Mapping[str, str] = os.environ) -> BlobLocation:
    """Read an `azblob://` URL as the engine does: query first, then AZURE_STORAGE_* variables.

    Unknown query parameters are refused (as gocloud does), which also keeps SAS
    tokens and keys out of the URL: it is stored in resource inputs, unencrypted.
    """
    if not is_blob_url(url):
        raise BlobLocationError(f"{url!r} is not an azblob:// URL")
    parts = urlsplit(url)
    container = parts.netloc
    if not CONTAINER_RE.match(container):
        raise BlobLocationError(
            f"container {container!r}: 3-63 lowercase letters, digits and single hyphens (azblob://<container>[/<prefix>]?...)"
        )
    query = parse_qs(parts.query, keep_blank_values=True)
    for key, values in query.items():
        if key not in KNOWN_PARAMS:
            raise BlobLocationError(
                f"unknown query parameter {key!r} (known: {', '.join(KNOWN_PARAMS)}); credentials go in AZURE_STORAGE_* variables, never in the URL"
            )
        if len(values) > 1:
            raise BlobLocationError(f"query parameter {key!r} given {len(values)} times")
    q = {k: v[0] for k, v in query.items()}
    account = q.get("storage_account") or environ.get("AZURE_STORAGE_ACCOUNT", "")
    if not account:
        raise BlobLocationError("no storage account: set AZURE_STORAGE_ACCOUNT (or storage_account= in the URL)")
    domain = q.get("domain") or environ.get("AZURE_STORAGE_DOMAIN") or "blob.core.windows.net"
    protocol = q.get("protocol") or environ.get("AZURE_STORAGE_PROTOCOL") or "https"
    if protocol not in ("http", "https"):
        raise BlobLocationError(f"protocol={protocol!r}: http or https")
    emulator = _truthy(q["localemu"], "localemu") if "localemu" in q else _truthy(
        environ.get("AZURE_STORAGE_IS_LOCAL_EMULATOR", ""), "AZURE_STORAGE_IS_LOCAL_EMULATOR"
    )
    if emulator or domain.startswith(("127.0.0.1", "localhost")):
        service_url = f"{protocol}://{domain}/{account}"
    else:
        service_url = f"{protocol}://{account}.{domain}"
    prefix = parts.path.strip("/")
    return BlobLocation(container=container, prefix=f"{prefix}/" if prefix else "", account=account, service_url=service_url)


def credential_kind(environ: Mapping[str, str] = os.environ) -> str:
    """Which credential the engine would use, in its order: key, SAS, connection string, identity."""
    if environ.get("AZURE_STORAGE_ACCOUNT") and environ.get("AZURE_STORAGE_KEY"):
        return "shared-key"
    if environ.get("AZURE_STORAGE_SAS_TOKEN"):
        return "sas"
    if environ.get("AZURE_STORAGE_CONNECTION_STRING") or environ.get("AZURE_STORAGEBLOB_CONNECTIONSTRING"):
        return "connection-string"
    return "default-azure-credential"


def client_options() -> dict[str, Any]:
    """Short timeouts and few retries: an unreachable account fails a preview in about a second."""
    from azure.storage.blob import LinearRetry

    return {"connection_timeout": 5, "read_timeout": 60, "retry_policy": LinearRetry(backoff=0.5, random_jitter_range=0.2, retry_total=2)}


def container_client(loc: BlobLocation, environ: Mapping[str, str] = os.environ) -> Any:
    """A `ContainerClient` for the location, with the credential the engine would pick."""
    from azure.storage.blob import ContainerClient

    kind = credential_kind(environ)
    if kind == "shared-key":
        # The key is the variable's; the account the URL's (storage_account=) when it names one, as the engine does.
        cred = {"account_name": loc.account, "account_key": environ["AZURE_STORAGE_KEY"]}
        return ContainerClient(loc.service_url, loc.container, credential=cred, **client_options())
    if kind == "sas":
        return ContainerClient(loc.service_url, loc.container, credential=environ["AZURE_STORAGE_SAS_TOKEN"].lstrip("?"), **client_options())
    if kind == "connection-string":
        conn = environ.get("AZURE_STORAGE_CONNECTION_STRING") or environ["AZURE_STORAGEBLOB_CONNECTIONSTRING"]
        return ContainerClient.from_connection_string(conn, loc.container, **client_options())
    from azure.identity import DefaultAzureCredential

    return ContainerClient(loc.service_url, loc.container, credential=DefaultAzureCredential(), **client_options())


def _main(argv: list[str]) -> int:
    """`python -m mldeploy.providers.core.blob_store mkcontainer SERVICE_URL NAME`: create a container, idempotently."""
    if len(argv) != 3 or argv[0] != "mkcontainer":
        print("usage: python -m mldeploy.providers.core.blob_store mkcontainer SERVICE_URL NAME", file=sys.stderr)
        return 2
    from azure.core.exceptions import ResourceExistsError

    service_url, name = argv[1], argv[2]
    account = service_url.rstrip("/").rsplit("/", 1)[-1]
    loc = BlobLocation(container=name, prefix="", account=account, service_url=service_url.rstrip("/"))
    client = container_client(loc)
    try:
        client.create_container()
        print(f"created container {loc.describe()}", file=sys.stderr)
    except ResourceExistsError:
        print(f"container {loc.describe()} exists", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
