"""The ACI target: one Azure container group per service, through ARM.

The group has two containers sharing one network namespace, as every ACI group
does: the scoring server listens on 127.0.0.1 only, and the key-checking nginx
front end (the gateway's own config, `render_service_conf`) takes the public
port. Its config, which holds the keys, travels as a `secureValue`, which ARM
never returns. Images come from the stack's registry by digest; a model version
is a small image layer on the inference image (`RegistryImage`).

ACI has no rolling update. A new image, model or key is a PUT of the same group
and ACI restarts its containers: a short outage. CPU, memory, OS, restart
policy and network profile need the group deleted and created again
(container-instances-update.md), so they replace.
"""

from __future__ import annotations

import base64
import re
from typing import Any, Literal, Mapping

from pulumi.dynamic import CheckFailure
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mldeploy.providers.targets import azure
from mldeploy.providers.front import tls
from mldeploy.providers.targets import ArgsInvalid, Target, check_environment, service_uris, validate_args
from mldeploy.providers.core.progress import say
from mldeploy.providers.core.naming import service_path
from mldeploy.providers.core.settings import Settings
from mldeploy.providers.targets.azure.arm import DEFAULT_ENDPOINT

# ACI's limits for one Linux container group (learn.microsoft.com container-instances-
# resource-and-quota-limits, 2023 version; regions may offer less). Keep them here only.
LIMITS_DATE = "2023"
LINUX_GROUP_MAX_CPU = 4.0
LINUX_GROUP_MAX_MEMORY_GB = 16.0
# What the front end takes out of the group's share.
FRONT_CPU = 0.1
FRONT_MEMORY_GB = 0.1
# Regions and the subscription pattern are shared with the AKS backend: one table, in providers/targets/azure/__init__.py.
LOCATIONS = azure.LOCATIONS
SUBSCRIPTION_RE = azure.SUBSCRIPTION_RE
DNS_LABEL_RE = r"^[a-z][a-z0-9-]{1,61}[a-z0-9]$"
GROUP_NAME_RE = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
RESOURCE_GROUP_RE = azure.RESOURCE_GROUP_RE

PUBLIC_PORT = 80
TLS_PORT = 443
FRONT_TLS_DIR = "/etc/mldeploy-fe-tls"
TLS_INPUTS = ("ssl_enabled", "ssl_cert_pem_file", "ssl_key_pem_file", "ssl_cname")
SCORING_PORT = 5001
FRONT_DIR = "/tmp/mldeploy-fe"
FRONT_CONF_DIR = f"{FRONT_DIR}/conf"


_progress = say  # one style of progress line for every provider


class AciArgs(BaseModel):
    """What only ACI takes: where the group lives and how it is reached."""

    model_config = ConfigDict(extra="forbid")

    subscription_id: str = Field(pattern=SUBSCRIPTION_RE)
    """The Azure subscription (a GUID), `mldeploy:azureSubscriptionId`."""
    resource_group: str = Field(pattern=RESOURCE_GROUP_RE)
    """`mldeploy:azureResourceGroup`; 1-90 characters, no final period."""
    location: str
    """An Azure region such as `westeurope` (`mldeploy:azureLocation`)."""
    group_name: str = Field(pattern=GROUP_NAME_RE)
    """The container group: derived from project, stack and service names."""
    dns_name_label: str = Field(pattern=DNS_LABEL_RE)
    """Derived from the stack and service names: `<label>.<location>.azurecontainer.io`."""
    arm_endpoint: str = Field(default=DEFAULT_ENDPOINT, pattern=r"^https://[A-Za-z0-9.:-]+/?$")
    """ARM's base URL (`mldeploy:armEndpoint`); sovereign clouds and local fakes differ."""
    image_ref: str = Field(min_length=1)
    """The scoring image with its model layer, by digest (from `RegistryImage`)."""
    front_image_ref: str = Field(min_length=1)
    """The nginx front end's image, by digest."""
    os_type: Literal["Linux"] = "Linux"
    restart_policy: Literal["Always", "OnFailure", "Never"] = "Always"
    ip_address_type: Literal["Public", "Private"] = "Public"
    ssl_enabled: bool = False
    """The front end serves HTTPS on 443 (`AciWebservice.deploy_configuration`'s TLS arguments)."""
    ssl_cert_pem_file: str | None = None
    ssl_key_pem_file: str | None = None
    ssl_cname: str | None = None
    """The host name of `scoring_uri` (the certificate must name it); the group's FQDN when not given."""

    @field_validator("location")
    @classmethod
    def _known_location(cls, value: str) -> str:
        if value not in LOCATIONS:
            raise ValueError(f"unknown Azure location {value!r}; for example westeurope, eastus (see providers/targets/azure/__init__.py LOCATIONS)")
        return value


def dns_label(stack: str, service_name: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", f"{stack}-{service_name}".lower()).strip("-")


def group_name(project: str, stack: str, service_name: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", f"{project}-{stack}-{service_name}".lower()).strip("-")


def check_resources(cpu_cores: Any, memory_gb: Any) -> list[CheckFailure]:
    """ACI's per-group Linux limits, with the front end's share taken out."""
    failures = []
    max_cpu = round(LINUX_GROUP_MAX_CPU - FRONT_CPU, 2)
    max_mem = round(LINUX_GROUP_MAX_MEMORY_GB - FRONT_MEMORY_GB, 2)
    if isinstance(cpu_cores, (int, float)) and not isinstance(cpu_cores, bool) and cpu_cores > max_cpu:
        failures.append(CheckFailure(
            "cpu_cores",
            f"at most {max_cpu} on ACI: a Linux container group gets {LINUX_GROUP_MAX_CPU:g} CPUs "
            f"(ACI limits, {LIMITS_DATE}) and the key-checking front end takes {FRONT_CPU}, got {cpu_cores!r}",
        ))
    if isinstance(memory_gb, (int, float)) and not isinstance(memory_gb, bool) and memory_gb > max_mem:
        failures.append(CheckFailure(
            "memory_gb",
            f"at most {max_mem} on ACI: a Linux container group gets {LINUX_GROUP_MAX_MEMORY_GB:g} GB "
            f"(ACI limits, {LIMITS_DATE}) and the key-checking front end takes {FRONT_MEMORY_GB}, got {memory_gb!r}",
        ))
    return failures


def scoring_path(service_name: str) -> str:
    return service_path(service_name)


def uris(props: Mapping[str, Any]) -> dict[str, str]:
    fqdn = f"{props['dns_name_label']}.{props['location']}.azurecontainer.io"
    if props.get("ssl_enabled"):
        return service_uris(f"https://{props.get('ssl_cname') or fqdn}", props["service_name"])
    return service_uris(f"http://{fqdn}", props["service_name"])


def plain_http_warning(props: Mapping[str, Any], resource_name: str) -> str | None:
    """Words for the preview: a group's address is never this machine's loopback, so keys need TLS."""
    if not props.get("auth_enabled") or props.get("ssl_enabled"):
        return None
    where = "its public IP" if (props.get("ip_address_type") or "Public") == "Public" else "its private IP in the virtual network"
    return tls.plain_http_warning("ContainerInstanceService", resource_name, f"{where} (port {PUBLIC_PORT})")


def front_files(props: Mapping[str, Any], keys: list[str] | None) -> dict[str, str]:
    """The front end's nginx files; `service.conf` holds the keys."""
    from mldeploy.providers.front.gateway_config import render_nginx_conf, render_service_conf

    main = render_nginx_conf(include_dir=FRONT_CONF_DIR, runtime_dir=FRONT_DIR, worker_processes=1, user=None)
    service = render_service_conf(
        props["service_name"],
        TLS_PORT if props.get("ssl_enabled") else PUBLIC_PORT,
        SCORING_PORT,
        keys if props.get("auth_enabled") else None,
        int(props.get("max_request_bytes") or 1_048_576),
        listen_host="0.0.0.0",
    )
    if props.get("ssl_enabled"):
        service = tls.with_tls(service, FRONT_TLS_DIR)
    return {"nginx.main": main, "service.conf": service}


FRONT_COMMAND = (
    f"mkdir -p {FRONT_CONF_DIR} && umask 077"
    f' && printf %s "$MLDEPLOY_NGINX_MAIN" > {FRONT_CONF_DIR}/nginx.main'
    f' && printf %s "$MLDEPLOY_SERVICE_CONF" > {FRONT_CONF_DIR}/service.conf'
    f' && unset MLDEPLOY_SERVICE_CONF && exec nginx -c {FRONT_CONF_DIR}/nginx.main -g "daemon off;"'
)


def registry_credentials(props: Mapping[str, Any]) -> list[dict[str, str]]:
    """`imageRegistryCredentials` for a registry that wants them (an ACR); ARM never returns the password."""
    if not (props.get("registry_server") and props.get("registry_username") and props.get("registry_password")):
        return []
    return [{"server": str(props["registry_server"]), "username": str(props["registry_username"]),
             "password": str(props["registry_password"])}]


def container_group_body(props: Mapping[str, Any], keys: list[str] | None) -> dict[str, Any]:
    """The PUT body of the service's container group (api-version 2025-09-01). Pure.

    It holds the keys (as a `secureValue`) and any registry password: never log it.
    """
    name = props["service_name"]
    files = front_files(props, keys)
    # Values that were Pulumi secrets in the program travel as secureValue, which ARM never returns.
    secure = set(props.get("secure_environment_variables") or [])
    env = [{"name": k, "secureValue" if k in secure else "value": str(v)}
           for k, v in sorted((props.get("environment_variables") or {}).items())]
    env += [
        {"name": "SERVICE_NAME", "value": name},
        {"name": "SERVICE_PATH_PREFIX", "value": scoring_path(name).lstrip("/")},
        # Only the front end, in the same group, reaches the scoring server.
        {"name": "MLDEPLOY_BIND_HOST", "value": "127.0.0.1"},
    ]
    versions = {f"mldeploy.model.{m['name']}": str(int(m["version"])) for m in props.get("models") or []}
    pull = registry_credentials(props)
    port, scheme = (TLS_PORT, "https") if props.get("ssl_enabled") else (PUBLIC_PORT, "http")
    body: dict[str, Any] = {
        "location": props["location"],
        "tags": {
            "mldeploy.project": props["project"],
            "mldeploy.stack": props["stack"],
            "mldeploy.service": name,
            **versions,
        },
        "properties": {
            "osType": props.get("os_type") or "Linux",
            "restartPolicy": props.get("restart_policy") or "Always",
            "containers": [
                {
                    "name": "scoring",
                    "properties": {
                        "image": props["image_ref"],
                        "resources": {"requests": {"cpu": float(props["cpu_cores"]), "memoryInGB": float(props["memory_gb"])}},
                        "environmentVariables": env,
                        "ports": [],
                        # Through the front end to the scoring server's root route: ready once init() is done.
                        "readinessProbe": {
                            "httpGet": {"path": f"{scoring_path(name)}/health", "port": port, "scheme": scheme},
                            "initialDelaySeconds": 1,
                            "periodSeconds": 2,
                            "timeoutSeconds": 2,
                            "failureThreshold": 3,
                            "successThreshold": 1,
                        },
                    },
                },
                {
                    "name": "front",
                    "properties": {
                        "image": props["front_image_ref"],
                        "command": ["/bin/sh", "-c", FRONT_COMMAND],
                        "resources": {"requests": {"cpu": FRONT_CPU, "memoryInGB": FRONT_MEMORY_GB}},
                        "ports": [{"port": port, "protocol": "TCP"}],
                        "environmentVariables": [
                            {"name": "MLDEPLOY_NGINX_MAIN", "value": files["nginx.main"]},
                            {"name": "MLDEPLOY_SERVICE_CONF", "secureValue": files["service.conf"]},
                        ],
                    },
                },
            ],
            "ipAddress": {
                "type": props.get("ip_address_type") or "Public",
                "ports": [{"port": port, "protocol": "TCP"}],
                "dnsNameLabel": props["dns_name_label"],
            },
            **({"imageRegistryCredentials": pull} if pull else {}),
        },
    }
    if props.get("ssl_enabled"):
        # A secret volume: tmpfs files in the front end only, and ARM never returns their content.
        files_b64 = {f: base64.b64encode(str(props[k]).encode()).decode()
                     for f, k in ((tls.CERT_FILE, "ssl_certificate"), (tls.KEY_FILE, "ssl_key"))}
        body["properties"]["volumes"] = [{"name": "front-tls", "secret": files_b64}]
        front = body["properties"]["containers"][1]["properties"]
        front["volumeMounts"] = [{"name": "front-tls", "mountPath": FRONT_TLS_DIR, "readOnly": True}]
    return body


def group_state(group: Mapping[str, Any] | None) -> str:
    """Refresh's word for a group as ARM returns it (SDK attribute names)."""
    if group is None:
        return "Missing"
    view = (group.get("instance_view") or {}).get("state")
    if view == "Stopped":
        return "Stopped"
    if group.get("provisioning_state") == "Failed" or view == "Failed":
        return "Unhealthy"
    if view == "Running" and group.get("provisioning_state") == "Succeeded":
        return "Healthy"
    return "Unhealthy"


class AciTarget(Target):
    """One container group per service: scoring server plus key-checking front end."""

    name = "aci"
    Args = AciArgs
    pulls_images = "with_front"
    # A new group (container-instances-update.md: delete and recreate), or a new place.
    REPLACE_ON = (
        "cpu_cores", "memory_gb", "os_type", "restart_policy", "ip_address_type",
        "subscription_id", "resource_group", "location", "group_name", "arm_endpoint",
    )
    # A PUT of the same group; ACI restarts its containers (a short outage).
    ROLL_ON = ("image_ref", "front_image_ref", "environment_variables", "registry_server", "registry_username", "registry_password",
               "secure_environment_variables", "ssl_enabled", "ssl_certificate", "ssl_key")
    ROUTE_ON = ("dns_name_label", "auth_enabled", "primary_key_version", "secondary_key_version", "max_request_bytes", "ssl_cname")
    # Where the PEM files were read from: their contents (ssl_certificate, ssl_key) are what roll.
    INERT = ("ssl_cert_pem_file", "ssl_key_pem_file")
    OUTPUTS = ("fqdn", "group_id")

    def change_words(self, old: Mapping[str, Any], new: Mapping[str, Any], replaced: bool) -> list[str]:
        """ACI has no rolling update: say what the change costs."""
        if replaced:
            return ["ACI cannot change this in place: the container group is deleted and created again, so the service is down meanwhile"]
        return ["ACI restarts the container group in place: a short outage (the Kubernetes target rolls with no downtime)"]

    def check(self, news: Mapping[str, Any]) -> list[CheckFailure]:
        from pulumi.output import Unknown
        from pulumi.runtime import rpc

        # The image refs are unknown at preview (the images are pushed at up): not judged.
        news = {k: rpc.UNKNOWN if isinstance(v, Unknown) else v for k, v in news.items()}
        return (
            super().check(news)
            + check_resources(news.get("cpu_cores"), news.get("memory_gb"))
            + check_environment(news.get("environment_variables"))  # the group's server settings are ours
        )

    def check_args(self, args: AciArgs) -> list[CheckFailure]:  # type: ignore[override]
        return [CheckFailure(f, m) for f, m in tls.check_args(args.ssl_enabled, args.ssl_cert_pem_file, args.ssl_key_pem_file, args.ssl_cname)]

    def service_inputs(
        self, given: Mapping[str, Any], *, service_name: str, resource_name: str, settings: Settings
    ) -> dict[str, Any]:
        """Everything from the stack's settings; the image refs come from the component."""
        data = {
            **given,
            "subscription_id": settings.azure_subscription_id,
            "resource_group": settings.azure_resource_group,
            "location": settings.azure_location,
            "arm_endpoint": settings.arm_endpoint or DEFAULT_ENDPOINT,
            "group_name": group_name(settings.project, settings.stack, service_name),
            "dns_name_label": dns_label(settings.stack, service_name),
            "image_ref": "(set by the component)",
            "front_image_ref": "(set by the component)",
        }
        missing = [
            CheckFailure(field, f"missing: set stack config mldeploy:{key}")
            for field, key in (("subscription_id", "azureSubscriptionId"), ("resource_group", "azureResourceGroup"), ("location", "azureLocation"))
            if not data[field]
        ]
        if missing:
            raise ArgsInvalid(missing)
        model = validate_args(AciArgs, data)
        failures = self.check_args(model)
        if failures:
            raise ArgsInvalid(failures)
        args = model.model_dump()
        for k in ("image_ref", "front_image_ref"):
            args.pop(k)
        if not model.ssl_enabled:
            # Without TLS the inputs stay what they were, so existing groups see no change.
            for k in TLS_INPUTS:
                args.pop(k)
            return args
        if not args["ssl_cname"]:
            args.pop("ssl_cname")
        try:
            # The component makes both secrets before any resource sees them.
            args["ssl_certificate"], args["ssl_key"] = tls.read_pair(model.ssl_cert_pem_file or "", model.ssl_key_pem_file or "")
        except tls.TlsError as exc:
            field, _, reason = str(exc).partition(": ")
            raise ArgsInvalid([CheckFailure(field, reason)]) from None
        return args

    def uris(self, props: Mapping[str, Any]) -> dict[str, str]:
        return uris(props)

    def _groups(self, props: Mapping[str, Any]) -> Any:
        from mldeploy.providers.targets.azure.arm import ContainerGroups

        return ContainerGroups(props["subscription_id"], props["resource_group"], props.get("arm_endpoint") or DEFAULT_ENDPOINT)

    def _keys(self, olds: dict[str, Any] | None, news: dict[str, Any]) -> dict[str, str]:
        from mldeploy.providers.core.keys import rotate

        if not news.get("auth_enabled"):
            return {"primary_key": "", "secondary_key": ""}
        return rotate(olds if (olds or {}).get("auth_enabled") else None, news)

    def _deploy(self, olds: dict[str, Any] | None, news: dict[str, Any]) -> dict[str, Any]:
        keys = self._keys(olds, news)
        body = container_group_body(news, [k for k in keys.values() if k] or None)
        group = self._groups(news).put(news["group_name"], body)
        return {
            **news,
            **uris(news),
            **keys,
            "fqdn": (group.get("ip_address") or {}).get("fqdn") or f"{news['dns_name_label']}.{news['location']}.azurecontainer.io",
            "group_id": group.get("id") or "",
            "state": group_state(group),
            "model_versions": {m["name"]: int(m["version"]) for m in news["models"]},
        }

    def create(self, props: dict[str, Any]) -> dict[str, Any]:
        return self._deploy(None, props)

    def update(self, olds: dict[str, Any], news: dict[str, Any], roll: bool) -> dict[str, Any]:
        _progress(f"{news['service_name']}: ACI has no rolling update; the container group restarts (a short outage)")
        return self._deploy(olds, news)

    def read(self, props: dict[str, Any]) -> dict[str, Any]:
        group = self._groups(props).get(props["group_name"])
        return {**props, "state": group_state(group)}

    def delete(self, props: dict[str, Any]) -> None:
        self._groups(props).delete(props["group_name"])


TARGET = AciTarget()

