"""A look at the Pulumi state backend before the engine runs, so bad settings fail in words.

The engine's own errors for an unreachable account, a missing container or a
missing shared folder name neither the setting nor what to do, and a `file://`
backend whose folder is missing (a shared mount that is not mounted) would be
created afresh: a new, empty state beside the team's. So `scripts/stack.py`
asks first, and stops naming `PULUMI_BACKEND_URL` before anything is created.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import unquote, urlsplit

SETTING = "PULUMI_BACKEND_URL"


class BackendError(RuntimeError):
    """The state backend cannot be used; the message names the setting and what to do."""


def file_backend_problem(url: str) -> str | None:
    """What is wrong with a `file://` backend's folder, None when it is usable (pure but for stat)."""
    path = Path(unquote(urlsplit(url).path) or "/")
    if url.startswith("file://~"):
        path = Path(url.removeprefix("file://")).expanduser()
    if not path.exists():
        return f"the folder {path} does not exist (a shared mount that is not mounted?); create it, or point {SETTING} elsewhere"
    if not path.is_dir():
        return f"{path} is a file, not a folder"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"the folder {path} is not writable by this user"
    return None


def blob_backend_problem(url: str, environ: Mapping[str, str] = os.environ, client: Callable[..., Any] | None = None) -> str | None:
    """Whether the engine's `azblob://` backend can be read: the account answers and the container exists.

    Asked by listing one blob, what the engine does first, rather than by the container's
    properties: a container SAS cannot read those, and a read-only preview (a SAS with read
    and list only, examples/pull-request-preview) must pass.
    """
    from mldeploy.providers.core.blob_store import BlobLocationError, container_client, parse_blob_url

    try:
        loc = parse_blob_url(url, environ)
    except BlobLocationError as exc:
        return str(exc)
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError, ServiceRequestError

    try:
        next(iter((client or container_client)(loc, environ).list_blobs(results_per_page=1).by_page()), None)
    except ResourceNotFoundError:
        return f"the container {loc.describe()} does not exist; create it first (scripts/azurite.sh mkcontainer {loc.container} locally, or `az storage container create`)"
    except ServiceRequestError as exc:
        return f"cannot reach the storage account at {loc.service_url} ({_first_line(exc)})"
    except ClientAuthenticationError as exc:
        return f"the storage account {loc.service_url} refused the credentials in AZURE_STORAGE_* ({_first_line(exc)})"
    except HttpResponseError as exc:
        if getattr(exc, "status_code", None) == 403:
            return f"the storage account {loc.service_url} refused the credentials in AZURE_STORAGE_* ({_first_line(exc)})"
        return f"the storage account {loc.service_url} answered: {_first_line(exc)}"
    return None


def check_backend(url: str, environ: Mapping[str, str] = os.environ) -> None:
    """Raise `BackendError` when the backend a URL names cannot be used; backends we do not know pass."""
    if url.startswith("file://"):
        problem = file_backend_problem(url)
    elif url.startswith("azblob://"):
        problem = blob_backend_problem(url, environ)
    else:
        return
    if problem:
        raise BackendError(f"{SETTING}={url}: {problem}. Nothing was created or changed.")


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
