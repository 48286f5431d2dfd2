"""What the Azure ML target takes, checked at preview so that bad input creates nothing.

Every rule here is Azure's, with its source: a name or a number that Azure would
refuse at `up` is refused at preview instead, naming the field.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mldeploy.providers.targets import WholeNumber, azure
from mldeploy.providers.core.settings import DEFAULT_ARM_ENDPOINT

API_VERSION = "2024-04-01"
"""The Microsoft.MachineLearningServices api-version every request sends (a stable version; pinned)."""

# Online endpoint names: "begin with a letter, 3 to 32 characters, letters, digits and '-'"
# (learn.microsoft.com, how-to-deploy-online-endpoints, "endpoint name" rules), and end with a letter
# or digit (azure-ai-ml 1.35.2, entities/_endpoint/_endpoint_helpers.py, validate_endpoint_or_deployment_name).
ENDPOINT_NAME_RE = r"^[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]$"
# Deployment names follow the same rule; ours are v01, v02, ... (see rollout.py).
DEPLOYMENT_NAME_RE = ENDPOINT_NAME_RE
# Workspace names: 3-33 characters, letters, digits, '-' and '_', a letter or digit first (ARM's pattern).
WORKSPACE_RE = r"^[a-zA-Z0-9][a-zA-Z0-9_-]{2,32}$"

# Instance types a managed online deployment takes: a subset of Azure's list
# ("Managed online endpoints SKU list", learn.microsoft.com reference-managed-online-endpoints-vm-sku-list,
# as of 2024). Regions and quota offer less; ARM has the last word at `up`.
INSTANCE_TYPES_DATE = "2024"
INSTANCE_TYPES = frozenset(
    """Standard_DS1_v2 Standard_DS2_v2 Standard_DS3_v2 Standard_DS4_v2 Standard_DS5_v2
    Standard_F2s_v2 Standard_F4s_v2 Standard_F8s_v2 Standard_F16s_v2 Standard_F32s_v2 Standard_F48s_v2 Standard_F64s_v2 Standard_F72s_v2
    Standard_E2s_v3 Standard_E4s_v3 Standard_E8s_v3 Standard_E16s_v3 Standard_E32s_v3 Standard_E48s_v3 Standard_E64s_v3
    Standard_NC4as_T4_v3 Standard_NC8as_T4_v3 Standard_NC16as_T4_v3 Standard_NC64as_T4_v3
    Standard_NC6s_v3 Standard_NC12s_v3 Standard_NC24s_v3 Standard_NC24ads_A100_v4 Standard_NC48ads_A100_v4 Standard_NC96ads_A100_v4
    Standard_ND96asr_v4 Standard_ND96amsr_A100_v4 Standard_ND40rs_v2""".split()
)

# requestSettings: request_timeout_ms defaults to 5000 and may be at most 180000
# (managed online deployment YAML reference, `request_settings`).
DEFAULT_REQUEST_TIMEOUT_MS = 5000
MAX_REQUEST_TIMEOUT_MS = 180_000
# Mirror traffic: at most 50 %, to one deployment (how-to-safely-rollout-online-endpoints).
MAX_MIRROR_PERCENT = 50


class ProbeArgs(BaseModel):
    """A liveness or readiness probe; the defaults are Azure's (ProbeSettings, 2024-04-01; deployment YAML reference)."""

    model_config = ConfigDict(extra="forbid")

    initial_delay: WholeNumber = Field(default=10, ge=0)
    """Seconds before the first probe."""
    period: WholeNumber = Field(default=10, ge=1)
    timeout: WholeNumber = Field(default=2, ge=1)
    failure_threshold: WholeNumber = Field(default=30, ge=1)
    success_threshold: WholeNumber = Field(default=1, ge=1)


class AzureMLArgs(BaseModel):
    """Where the endpoint lives and how its deployments run."""

    model_config = ConfigDict(extra="forbid")

    subscription_id: str = Field(pattern=azure.SUBSCRIPTION_RE)
    """`mldeploy:azureSubscriptionId` (a GUID)."""
    resource_group: str = Field(pattern=azure.RESOURCE_GROUP_RE)
    """`mldeploy:azureResourceGroup`."""
    workspace: str = Field(pattern=WORKSPACE_RE)
    """The Azure ML workspace (`workspace=` or `mldeploy:azureMlWorkspace`)."""
    location: str
    """The workspace's region (`mldeploy:azureLocation`); endpoints and deployments are tracked resources there."""
    arm_endpoint: str = Field(default=DEFAULT_ARM_ENDPOINT, pattern=r"^https://[A-Za-z0-9.:-]+/?$")
    """ARM's base URL (`mldeploy:armEndpoint`): a sovereign cloud, or a local fake in tests."""
    endpoint_name: str = Field(pattern=ENDPOINT_NAME_RE)
    """The online endpoint: 3-32 characters, a letter first, letters, digits and '-'."""
    instance_type: str = "Standard_DS3_v2"
    instance_count: WholeNumber = Field(default=1, ge=1)
    request_timeout_ms: WholeNumber = Field(default=DEFAULT_REQUEST_TIMEOUT_MS, ge=1, le=MAX_REQUEST_TIMEOUT_MS)
    max_concurrent_requests_per_instance: WholeNumber = Field(default=1, ge=1)
    auth_mode: Literal["key", "aml_token"] = "key"
    """`key` (keys never expire; rotated with regenerateKeys) or `aml_token` (tokens expire)."""
    liveness_probe: ProbeArgs = Field(default_factory=ProbeArgs)
    readiness_probe: ProbeArgs = Field(default_factory=ProbeArgs)
    traffic_steps: list[WholeNumber] = Field(default_factory=lambda: [100])
    """The new deployment's share at each step of a roll, rising to 100 (the default: all at once)."""
    image_ref: str = ""
    """The scoring image in the workspace's container registry, by digest: pushed there by the
    component (stack config `mldeploy:imageRegistry`, with `mldeploy:acrName` for its credentials)
    and named by the environment, so Azure can pull it. Empty: the local image's name (tests only)."""
    code_directory: str = ""
    """The image's source folder (project-relative), uploaded whole as the deployment's code; set by
    `OnlineEndpointService` from its `InferenceImage`. Empty: the entry script's own folder."""
    mirror_percent: WholeNumber = Field(default=0, ge=0, le=MAX_MIRROR_PERCENT)
    """A copy of this share of live traffic goes to the new deployment before it takes any (`mirrorTraffic`)."""

    @field_validator("location")
    @classmethod
    def _known_location(cls, value: str) -> str:
        if value not in azure.LOCATIONS:
            raise ValueError(f"unknown Azure location {value!r}; for example westeurope, eastus")
        return value

    @field_validator("instance_type")
    @classmethod
    def _known_instance_type(cls, value: str) -> str:
        if value not in INSTANCE_TYPES:
            close = sorted(t for t in INSTANCE_TYPES if t.lower() == value.lower())
            hint = f" (did you mean {close[0]}?)" if close else " (for example Standard_DS3_v2, Standard_F4s_v2)"
            raise ValueError(f"not an instance type of managed online endpoints (Azure's list, {INSTANCE_TYPES_DATE}){hint}")
        return value

    @field_validator("traffic_steps")
    @classmethod
    def _steps_rise_to_100(cls, value: list[int]) -> list[int]:
        if not value or value[-1] != 100 or any(not 0 < s <= 100 for s in value) or any(a >= b for a, b in zip(value, value[1:])):
            raise ValueError("must rise from above 0 to 100, for example [10, 50, 100]")
        return value

    @model_validator(mode="after")
    def _mirror_not_with_a_split(self) -> AzureMLArgs:
        if self.mirror_percent and self.traffic_steps != [100]:
            # Azure mirrors to one deployment and not while live traffic is split (how-to-safely-rollout-online-endpoints).
            raise ValueError("mirror_percent cannot go with canary traffic_steps: Azure mirrors to one deployment, "
                             "not while live traffic is split; use one or the other")
        return self


def endpoint_name(stack: str, service_name: str) -> str:
    """The default endpoint name: `<stack>-<service>`, cut to Azure's 32 characters (letter first)."""
    name = re.sub(r"[^a-zA-Z0-9-]+", "-", f"{stack}-{service_name}").strip("-")[:32].rstrip("-")
    return name if name[:1].isalpha() else f"e-{name}"[:32]


def timeout_iso(ms: int) -> str:
    """milliseconds as the ISO 8601 duration `requestSettings.requestTimeout` takes."""
    return f"PT{ms / 1000:g}S"
