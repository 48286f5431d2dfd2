"""Azure facts that more than one backend checks at preview, in one place, dated.

No I/O: these are tables and patterns, so that a preview can refuse bad input
without calling Azure (and here, where no Azure can be reached, at all).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SUBSCRIPTION_RE = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
RESOURCE_GROUP_RE = r"^[-\w._()]{0,89}[-\w_()]$"

# Azure's public regions (name as ARM spells it), as of 2025.
LOCATIONS = frozenset(
    """eastus eastus2 westus westus2 westus3 centralus northcentralus southcentralus westcentralus
    canadacentral canadaeast brazilsouth mexicocentral northeurope westeurope uksouth ukwest
    francecentral germanywestcentral norwayeast switzerlandnorth swedencentral polandcentral
    italynorth spaincentral eastasia southeastasia japaneast japanwest koreacentral koreasouth
    australiaeast australiasoutheast australiacentral centralindia southindia westindia
    uaenorth southafricanorth qatarcentral israelcentral newzealandnorth""".split()
)


@dataclass(frozen=True)
class VmSize:
    """One VM size of the table."""

    vcpus: int
    """vCPUs per VM, as Azure's size pages state them."""
    memory_gb: float
    """Memory per VM in GiB."""


# VM sizes for AKS node pools: vCPUs and memory per VM, from learn.microsoft.com's
# virtual-machines/sizes pages (Dv2, DSv2, Dv3/Dsv3, Dv5/Dsv5/Dasv5/Ddsv5, B, Fsv2, Esv3/Esv5), 2025.
# Regions offer subsets; ARM has the last word at `up`. Azure ML's FastProd rule and
# AKS's System-pool minimum are checked against this table at preview.
VM_SIZES_DATE = "2025"
VM_SIZES: dict[str, VmSize] = {
    "Standard_B2s": VmSize(2, 4), "Standard_B2ms": VmSize(2, 8), "Standard_B4ms": VmSize(4, 16), "Standard_B8ms": VmSize(8, 32),
    "Standard_B1s": VmSize(1, 1), "Standard_B1ms": VmSize(1, 2),
    "Standard_D1_v2": VmSize(1, 3.5), "Standard_D2_v2": VmSize(2, 7), "Standard_D3_v2": VmSize(4, 14),
    "Standard_D4_v2": VmSize(8, 28), "Standard_D5_v2": VmSize(16, 56),
    "Standard_DS2_v2": VmSize(2, 7), "Standard_DS3_v2": VmSize(4, 14), "Standard_DS4_v2": VmSize(8, 28), "Standard_DS5_v2": VmSize(16, 56),
    "Standard_D2_v3": VmSize(2, 8), "Standard_D4_v3": VmSize(4, 16), "Standard_D8_v3": VmSize(8, 32), "Standard_D16_v3": VmSize(16, 64),
    "Standard_D2s_v3": VmSize(2, 8), "Standard_D4s_v3": VmSize(4, 16), "Standard_D8s_v3": VmSize(8, 32), "Standard_D16s_v3": VmSize(16, 64),
    "Standard_D2s_v5": VmSize(2, 8), "Standard_D4s_v5": VmSize(4, 16), "Standard_D8s_v5": VmSize(8, 32), "Standard_D16s_v5": VmSize(16, 64),
    "Standard_D2as_v5": VmSize(2, 8), "Standard_D4as_v5": VmSize(4, 16), "Standard_D8as_v5": VmSize(8, 32),
    "Standard_D2ds_v5": VmSize(2, 8), "Standard_D4ds_v5": VmSize(4, 16), "Standard_D8ds_v5": VmSize(8, 32),
    "Standard_F2s_v2": VmSize(2, 4), "Standard_F4s_v2": VmSize(4, 8), "Standard_F8s_v2": VmSize(8, 16), "Standard_F16s_v2": VmSize(16, 32),
    "Standard_E2s_v3": VmSize(2, 16), "Standard_E4s_v3": VmSize(4, 32), "Standard_E8s_v3": VmSize(8, 64),
    "Standard_E2s_v5": VmSize(2, 16), "Standard_E4s_v5": VmSize(4, 32), "Standard_E8s_v5": VmSize(8, 64),
    "Standard_NC6s_v3": VmSize(6, 112), "Standard_NC4as_T4_v3": VmSize(4, 28), "Standard_NC8as_T4_v3": VmSize(8, 56),
}
# AKS: "System agent pools VM SKU must have at least 2vCPUs and 4GB of memory"
# (AgentPoolMode, ContainerService 2025-10-01 specification).
SYSTEM_POOL_MIN_VCPUS = 2
SYSTEM_POOL_MIN_MEMORY_GB = 4.0


def vm_size(name: str) -> VmSize | None:
    """Case-insensitive, as ARM treats VM size names."""
    lowered = name.lower()
    return next((v for k, v in VM_SIZES.items() if k.lower() == lowered), None)


def is_subscription_id(value: str) -> bool:
    return bool(re.match(SUBSCRIPTION_RE, value or ""))
