"""The Kubernetes target: Azure ML's AKS web service on any cluster, through pulumi-kubernetes.

Unlike the local target, no dynamic provider runs the service: the component
declares pulumi-kubernetes resources (Namespace, Secret, Deployment, Service,
HorizontalPodAutoscaler, PodDisruptionBudget) and the engine's own await logic
waits for each rollout. This module keeps what the target knows and nothing
that does I/O: its arguments with Azure ML's own validation rules, the rules for
what rolls and what replaces, and pure renderers of the objects.

Pod layout, as Azure ML's front end does it on AKS: a `front` container (nginx,
the same renderer as the local gateway) owns the pod's only port, checks the
Bearer keys and proxies to the `scoring` container on 127.0.0.1 inside the pod,
so nothing reaches the scoring server without a key. The model travels as an
image layer on top of the inference image, pulled from the stack's registry, so
it works on a cluster of any size (no hostPath).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pulumi.dynamic import CheckFailure
from pydantic import BaseModel, ConfigDict, Field

from mldeploy.providers.gate import sample_probe
from mldeploy.providers.front import tls
from mldeploy.providers.targets import MAX_REQUEST_BYTES, Target
from mldeploy.providers.core.naming import service_path

NAMESPACE_RE = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
SERVICE_NAME_RE = r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$"
FRONT_PORT = 8080
SCORING_PORT = 5001
MAX_REPLICAS = 100
FRONT_CONF_DIR = "/etc/mldeploy-fe"
FRONT_RUNTIME_DIR = "/tmp/mldeploy-fe"
FRONT_TLS_DIR = "/etc/mldeploy-fe-tls"
ROUTE_DIR = f"{FRONT_RUNTIME_DIR}/route"
"""With a canary declared: the front end's route, copied at start from the config into this writable
folder (the pod's `front-run` emptyDir), so a canary can rewrite it (a split) and reload nginx."""
ROUTE_BEFORE = "service.before"
"""The route as the pod started with it, kept beside the live one: a rollback writes it back."""
CANARY_SUFFIX = "-canary"
CANARY_ROLE_LABEL = "mldeploy.azureml.net/role"
LABEL_APP = "mldeploy.azureml.net/service"
POD_SECURITY = {
    "runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534, "fsGroup": 65534,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
}
SCRATCH_SIZE = "256Mi"
NAMESPACE_LABELS = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}
"""What every namespace the cluster owns enforces, so nothing in it runs as root or privileged."""
SAMPLE_DIR = sample_probe.PROBE_DIR
SAMPLE_PERIOD_SECONDS = 2
SAMPLE_PROBE_TIMEOUT_SECONDS = 10
# One per namespace, owned by the cluster; the name never changes, so rotated credentials never roll the pods.
PULL_SECRET_NAME = "mldeploy-registry"


class KubernetesServiceArgs(BaseModel):
    """`AksWebservice.deploy_configuration`'s parameters, with its defaults (azureml-core 1.61)."""

    model_config = ConfigDict(extra="forbid")

    service_name: str = Field(pattern=SERVICE_NAME_RE)
    namespace: str = Field(default="default", pattern=NAMESPACE_RE)
    autoscale_enabled: bool | None = None
    """None means: on unless `num_replicas` is set, as in Azure ML."""
    autoscale_min_replicas: int = Field(default=1, gt=0, le=MAX_REPLICAS)
    autoscale_max_replicas: int = Field(default=10, gt=0, le=MAX_REPLICAS)
    autoscale_refresh_seconds: int = Field(default=1, gt=0)
    autoscale_target_utilization: int = Field(default=70, gt=0, le=100)
    num_replicas: int | None = Field(default=None, gt=0, le=MAX_REPLICAS)
    cpu_cores: float = Field(default=0.1, gt=0)
    memory_gb: float = Field(default=0.5, gt=0)
    cpu_cores_limit: float | None = Field(default=None, gt=0)
    memory_gb_limit: float | None = Field(default=None, gt=0)
    scoring_timeout_ms: int = Field(default=60_000, gt=0)
    replica_max_concurrent_requests: int = Field(default=1, gt=0, le=64)
    max_request_wait_time: int = Field(default=500, gt=0)
    """Milliseconds a request may wait for a free worker; added to the front end's timeout."""
    period_seconds: int = Field(default=10, gt=0)
    initial_delay_seconds: int = Field(default=310, gt=0)
    timeout_seconds: int = Field(default=2, gt=0)
    success_threshold: int = Field(default=1, gt=0)
    failure_threshold: int = Field(default=3, gt=0)
    auth_enabled: bool = True
    token_auth_enabled: bool = False
    environment_variables: dict[str, str] = Field(default_factory=dict)
    primary_key_version: int = Field(default=1, ge=1)
    secondary_key_version: int = Field(default=1, ge=1)
    max_request_bytes: int = Field(default=1_048_576, gt=0, le=MAX_REQUEST_BYTES)
    startup_timeout_seconds: int = Field(default=600, gt=0)
    """How long `up` waits for a rollout before it fails with the pods' state and log."""
    ssl_enabled: bool = False
    """The front end serves HTTPS with the certificate and key below (Azure ML v1's TLS arguments)."""
    ssl_cert_pem_file: str | None = None
    """The certificate chain's PEM file, read at program time and kept as a Pulumi secret."""
    ssl_key_pem_file: str | None = None
    """Its private key's PEM file (unencrypted), read at program time and kept as a Pulumi secret."""
    ssl_cname: str | None = None
    """The host name of `scoring_uri`, which the certificate must name; 127.0.0.1 when not given."""

    @property
    def autoscale(self) -> bool:
        return self.num_replicas is None if self.autoscale_enabled is None else self.autoscale_enabled


AUTOSCALE_FIELDS = (
    "autoscale_min_replicas",
    "autoscale_max_replicas",
    "autoscale_refresh_seconds",
    "autoscale_target_utilization",
)


def check(args: KubernetesServiceArgs) -> list[tuple[str, str]]:
    """Azure ML's `validate_configuration` rules across fields, as (field, message) pairs."""
    failures: list[tuple[str, str]] = []
    if args.autoscale_enabled and args.num_replicas is not None:
        failures.append(("num_replicas", "cannot be set when autoscale_enabled is true; set one or the other"))
    if args.autoscale_enabled is False and args.num_replicas is None:
        failures.append(("num_replicas", "is required when autoscale_enabled is false"))
    if not args.autoscale:
        for field in AUTOSCALE_FIELDS:
            if field in args.model_fields_set:
                failures.append((field, "is only valid when autoscale is enabled"))
    if args.autoscale and args.autoscale_min_replicas > args.autoscale_max_replicas:
        failures.append(
            (
                "autoscale_min_replicas",
                f"{args.autoscale_min_replicas} is greater than autoscale_max_replicas {args.autoscale_max_replicas}",
            )
        )
    if args.cpu_cores_limit is not None and args.cpu_cores_limit < args.cpu_cores:
        failures.append(("cpu_cores_limit", f"{args.cpu_cores_limit} is below cpu_cores {args.cpu_cores}"))
    if args.memory_gb_limit is not None and args.memory_gb_limit < args.memory_gb:
        failures.append(("memory_gb_limit", f"{args.memory_gb_limit} is below memory_gb {args.memory_gb}"))
    if args.timeout_seconds > args.period_seconds:
        failures.append(
            ("timeout_seconds", f"the probe timeout {args.timeout_seconds}s is longer than period_seconds {args.period_seconds}s")
        )
    if args.token_auth_enabled:
        failures.append(("token_auth_enabled", "token auth needs Azure AD and is not available on this target; use auth_enabled"))
    failures += tls.check_args(args.ssl_enabled, args.ssl_cert_pem_file, args.ssl_key_pem_file, args.ssl_cname)
    return failures


# What a change does on this target. Kubernetes itself applies these rules (a
# changed pod template rolls, a changed name replaces); they are written down
# here once, and tests/test_rules_agree.py renders every argument through the
# objects AksService declares to prove each one does what its rule says.
REPLACE_ON = ("service_name", "namespace")
ROLL_ON = (
    "image",
    "models",
    "cpu_cores",
    "memory_gb",
    "cpu_cores_limit",
    "memory_gb_limit",
    "environment_variables",
    "scoring_timeout_ms",
    "replica_max_concurrent_requests",
    "max_request_wait_time",
    "period_seconds",
    "initial_delay_seconds",
    "timeout_seconds",
    "success_threshold",
    "failure_threshold",
    "auth_enabled",
    "primary_key_version",
    "secondary_key_version",
    "max_request_bytes",
    "ssl_enabled",
    "ssl_cert_pem_file",
    "ssl_key_pem_file",
)
IN_PLACE_ON = AUTOSCALE_FIELDS + ("autoscale_enabled", "num_replicas", "startup_timeout_seconds", "ssl_cname")


class KubernetesTarget(Target):
    """Deployed by `AksService` from pulumi-kubernetes resources, never by the Service provider."""

    name = "kubernetes"
    Args = KubernetesServiceArgs
    deployed_by = "AksService"
    REPLACE_ON = REPLACE_ON
    ROLL_ON = ROLL_ON
    ROUTE_ON = IN_PLACE_ON
    INERT = ("token_auth_enabled",)  # refused by check: Azure AD tokens are not available here

    def check_args(self, args: KubernetesServiceArgs) -> list[CheckFailure]:  # type: ignore[override]
        return [CheckFailure(f, m) for f, m in check(args)]


TARGET = KubernetesTarget()


# ------------------------------------------------------------------ renderers


def _quantity_cpu(cores: float) -> str:
    return f"{int(round(cores * 1000))}m"


def _quantity_memory(gb: float) -> str:
    return f"{int(round(gb * 1024))}Mi"


def labels(project: str, stack: str, service_name: str) -> dict[str, str]:
    return {
        LABEL_APP: service_name,
        "mldeploy.azureml.net/project": project,
        "mldeploy.azureml.net/stack": stack,
        "app.kubernetes.io/managed-by": "mldeploy",
    }


def selector(service_name: str) -> dict[str, str]:
    return {LABEL_APP: service_name}


def scoring_path(service_name: str) -> str:
    return service_path(service_name)


def deployment_spec(
    args: KubernetesServiceArgs,
    *,
    project: str,
    stack: str,
    image_ref: Any,
    front_image_ref: Any,
    model_versions: dict[str, Any],
    config_secret: str,
    config_checksum: Any,
    image_pull_secret: str | None = None,
    sample_config: str | None = None,
    tls_secret: str | None = None,
    tls_checksum: Any = None,
    canary: bool = False,
) -> dict[str, Any]:
    """The Deployment's spec: rolls with no replica down, probes from the Azure ML parameters.

    `canary`: the front end starts from a writable copy of its route (`ROUTE_DIR`), which a canary
    rewrites into a split; without it the spec is what it always was.

    Values typed Any may be Pulumi outputs: they are only placed, never read,
    so the spec's shape stays known at preview.
    """
    name = args.service_name
    resources: dict[str, Any] = {
        "requests": {"cpu": _quantity_cpu(args.cpu_cores), "memory": _quantity_memory(args.memory_gb)}
    }
    limits = {}
    if args.cpu_cores_limit is not None:
        limits["cpu"] = _quantity_cpu(args.cpu_cores_limit)
    if args.memory_gb_limit is not None:
        limits["memory"] = _quantity_memory(args.memory_gb_limit)
    if limits:
        resources["limits"] = limits
    health = {"path": f"{scoring_path(name)}/health", "port": FRONT_PORT}
    env = [{"name": k, "value": v} for k, v in sorted(args.environment_variables.items())]
    env += [
        {"name": "HOME", "value": "/tmp"},
        {"name": "SERVICE_NAME", "value": name},
        {"name": "SERVICE_PATH_PREFIX", "value": scoring_path(name).lstrip("/")},
        # Only the front container in the same pod can reach the scoring server.
        {"name": "MLDEPLOY_BIND_HOST", "value": "127.0.0.1"},
        {"name": "WORKER_COUNT", "value": str(args.replica_max_concurrent_requests)},
        {"name": "SCORING_TIMEOUT_MS", "value": str(args.scoring_timeout_ms)},
    ]
    # AZUREML_MODEL_DIR comes with the model layer of the image.
    model_annotations = {f"mldeploy.azureml.net/model.{n}": v for n, v in sorted(model_versions.items())}
    template_labels = labels(project, stack, name)
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector(name)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "minReadySeconds": 0,
        "revisionHistoryLimit": 3,
        "progressDeadlineSeconds": max(args.startup_timeout_seconds, 60),
        "template": {
            "metadata": {
                "labels": template_labels,
                # A new model version or a new key changes the template, so the pods roll.
                "annotations": {**model_annotations, "mldeploy.azureml.net/config-checksum": config_checksum},
            },
            "spec": {
                "terminationGracePeriodSeconds": 20,
                # The `restricted` Pod Security Standard: nobody, no capabilities, read-only root.
                "securityContext": POD_SECURITY,
                "enableServiceLinks": False,
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": "scoring",
                        "image": image_ref,
                        "imagePullPolicy": "IfNotPresent",
                        "env": env,
                        "resources": resources,
                        # The last log lines become the termination message, so a
                        # crashing init() shows in `pulumi up`'s error.
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                        # The root is read-only: scratch space (HOME, gunicorn's heartbeat files) is /tmp.
                        "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}],
                        # Outlives the front end's drain below, so no request meets a stopping server.
                        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "8"]}}},
                        "securityContext": CONTAINER_SECURITY,
                    },
                    {
                        "name": "front",
                        "image": front_image_ref,
                        "imagePullPolicy": "IfNotPresent",
                        # -e stderr: as nobody, nginx cannot open its built-in log path before reading the config.
                        "command": ["nginx", "-e", "stderr", "-c", f"{FRONT_CONF_DIR}/nginx.main", "-g", "daemon off;"],
                        "ports": [{"name": "http", "containerPort": FRONT_PORT}],
                        "resources": {"requests": {"cpu": "20m", "memory": "16Mi"}},
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                        # Endpoints drop the pod first, then nginx finishes what it has.
                        "lifecycle": {
                            "preStop": {
                                "exec": {"command": ["sh", "-c", f"sleep 4; nginx -c {FRONT_CONF_DIR}/nginx.main -s quit; sleep 2"]}
                            }
                        },
                        "readinessProbe": {
                            "httpGet": health,
                            "periodSeconds": 1,
                            "timeoutSeconds": args.timeout_seconds,
                            "failureThreshold": 2,
                            "successThreshold": 1,
                        },
                        "livenessProbe": {
                            "httpGet": health,
                            "periodSeconds": args.period_seconds,
                            "initialDelaySeconds": args.initial_delay_seconds,
                            "timeoutSeconds": args.timeout_seconds,
                            "successThreshold": args.success_threshold,
                            "failureThreshold": args.failure_threshold,
                        },
                        "volumeMounts": [
                            {"name": "front-conf", "mountPath": FRONT_CONF_DIR, "readOnly": True},
                            {"name": "front-run", "mountPath": FRONT_RUNTIME_DIR},
                        ],
                        "securityContext": CONTAINER_SECURITY,
                    },
                ],
                "volumes": [
                    # 0440 with fsGroup 65534: readable by the pod's own group only (nginx runs as nobody).
                    {"name": "front-conf", "secret": {"secretName": config_secret, "defaultMode": 0o440}},
                    {"name": "scratch", "emptyDir": {"sizeLimit": SCRATCH_SIZE}},
                    {"name": "front-run", "emptyDir": {}},
                ],
            },
        },
    }
    if sample_config:
        add_sample_gate(spec, sample_config, args.startup_timeout_seconds)
    if tls_secret:
        # Only with `ssl_enabled`: without it the spec is what it always was.
        add_tls(spec, tls_secret, tls_checksum)
    if canary:
        front = next(c for c in spec["template"]["spec"]["containers"] if c["name"] == "front")
        front["command"] = ["sh", "-c", front_start_script()]
    if image_pull_secret:
        # Only for a registry that wants credentials: without one the spec is what it always was.
        spec["template"]["spec"]["imagePullSecrets"] = [{"name": image_pull_secret}]
    if not args.autoscale:
        spec["replicas"] = args.num_replicas
    # Autoscaled: the HPA owns the count; setting it here would undo its scaling on every up.
    return spec


def sample_config_data(sample: dict[str, Any] | None) -> dict[str, str]:
    """The ConfigMap that gates a new pod: the probe itself and, with `sample_request`, the request and the
    answer to expect; without one the probe sends the entry script's own input sample (from /swagger.json)."""
    data = {"probe.py": Path(sample_probe.__file__).read_text(encoding="utf-8")}
    if sample is not None:
        data["request.json"] = sample["body"]
        if "response" in sample:
            data["response.json"] = sample["response"]
    return data


def add_sample_gate(spec: dict[str, Any], config_map: str, startup_timeout_seconds: int) -> None:
    """A startup probe on the scoring container that sends the sample (`mldeploy.providers.gate.sample_probe`).

    A pod is not ready, so it gets no traffic and the rolling update does not
    go on, until the probe passes once; a wrong answer ends the container with
    the report as its termination message, which `up`'s error shows.
    """
    pod = spec["template"]["spec"]
    scoring = next(c for c in pod["containers"] if c["name"] == "scoring")
    scoring["startupProbe"] = {
        "exec": {"command": ["python", f"{SAMPLE_DIR}/probe.py"]},
        "periodSeconds": SAMPLE_PERIOD_SECONDS,
        "timeoutSeconds": SAMPLE_PROBE_TIMEOUT_SECONDS,
        "failureThreshold": max(1, -(-int(startup_timeout_seconds) // SAMPLE_PERIOD_SECONDS)),
        "successThreshold": 1,
    }
    scoring.setdefault("volumeMounts", []).append({"name": "sample", "mountPath": SAMPLE_DIR, "readOnly": True})
    pod["volumes"].append({"name": "sample", "configMap": {"name": config_map, "defaultMode": 0o444}})


def add_tls(spec: dict[str, Any], tls_secret: str, tls_checksum: Any) -> None:
    """The front end serves HTTPS on its one port with the certificate and key of a `kubernetes.io/tls` Secret.

    A renewed certificate changes the checksum annotation, so the pods roll and nginx reads it.
    """
    pod = spec["template"]["spec"]
    front = next(c for c in pod["containers"] if c["name"] == "front")
    front["ports"] = [{"name": "https", "containerPort": FRONT_PORT}]
    for probe in ("readinessProbe", "livenessProbe"):
        front[probe]["httpGet"] = {**front[probe]["httpGet"], "scheme": "HTTPS"}
    front["volumeMounts"].append({"name": "front-tls", "mountPath": FRONT_TLS_DIR, "readOnly": True})
    # 0440 with fsGroup 65534, as the front end's config: nginx runs as nobody.
    pod["volumes"].append({"name": "front-tls", "secret": {"secretName": tls_secret, "defaultMode": 0o440}})
    spec["template"]["metadata"]["annotations"]["mldeploy.azureml.net/tls-checksum"] = tls_checksum


def tls_secret_data(cert_pem: str, key_pem: str) -> dict[str, str]:
    """A `kubernetes.io/tls` Secret's data, under the file names the front end's config reads."""
    return {tls.CERT_FILE: cert_pem, tls.KEY_FILE: key_pem}


def deny_egress_policy() -> dict[str, Any]:
    """A NetworkPolicy spec: no pod of the namespace opens a connection out (the pod's own loopback is not egress)."""
    return {"podSelector": {}, "policyTypes": ["Egress"], "egress": []}


def plain_http_warning(args: KubernetesServiceArgs, resource_name: str, loopback_only: bool) -> str | None:
    """Words for the preview when keys would cross a network in the clear (None: they do not)."""
    if not args.auth_enabled or args.ssl_enabled or loopback_only:
        return None
    return tls.plain_http_warning("AksService", resource_name, "the cluster's node ports (every node's address)")


def service_spec(service_name: str) -> dict[str, Any]:
    """A NodePort: on the local cluster kube-proxy binds node ports on 127.0.0.1 only."""
    return {
        "type": "NodePort",
        "selector": selector(service_name),
        "ports": [{"name": "http", "port": 80, "targetPort": FRONT_PORT, "protocol": "TCP"}],
    }


def hpa_spec(args: KubernetesServiceArgs, deployment_name: str) -> dict[str, Any]:
    """autoscaling/v2 on CPU, with the refresh period as the scaling policies' period."""
    policy = {"type": "Percent", "value": 100, "periodSeconds": args.autoscale_refresh_seconds}
    return {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment_name},
        "minReplicas": args.autoscale_min_replicas,
        "maxReplicas": args.autoscale_max_replicas,
        "metrics": [
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": args.autoscale_target_utilization},
                },
            }
        ],
        "behavior": {"scaleUp": {"policies": [policy]}, "scaleDown": {"policies": [policy]}},
    }


def replicas_floor(args: KubernetesServiceArgs) -> int:
    return args.autoscale_min_replicas if args.autoscale else int(args.num_replicas or 1)


def needs_pdb(args: KubernetesServiceArgs) -> bool:
    if not args.autoscale and not isinstance(args.num_replicas, (int, float)):
        return True  # another resource's Output, known at apply: one replica at a time holds for any count
    return replicas_floor(args) > 1 or (args.autoscale and args.autoscale_max_replicas > 1 and replicas_floor(args) > 1)


def pdb_spec(service_name: str) -> dict[str, Any]:
    """Voluntary disruptions (node drains) take at most one replica at a time."""
    return {"maxUnavailable": 1, "selector": {"matchLabels": selector(service_name)}}


def front_start_script() -> str:
    """The front container's command with a canary declared: its route copied where a canary can rewrite it."""
    return (f"mkdir -p {ROUTE_DIR} && cp {FRONT_CONF_DIR}/service.conf {ROUTE_DIR}/service.conf && "
            f"cp {FRONT_CONF_DIR}/service.conf {ROUTE_DIR}/{ROUTE_BEFORE} && "
            f"exec nginx -e stderr -c {FRONT_CONF_DIR}/nginx.main -g 'daemon off;'")


def route_write_script() -> str:
    """Run in a front container with the new route on stdin: nginx checks it, then reloads; a route nginx
    refuses is put back and the script fails (exit 3), so a pod never keeps a broken route."""
    main = f"{FRONT_CONF_DIR}/nginx.main"
    # umask 077: the route holds the keys. The last route is kept to put back if nginx refuses the new one.
    return (f"set -e; umask 077; cd {ROUTE_DIR}; cat > service.next; rm -f service.prev; cp service.conf service.prev; "
            "mv service.next service.conf; "
            f"if ! nginx -e stderr -q -t -c {main}; then mv service.prev service.conf; exit 3; fi; "
            f"nginx -e stderr -c {main} -s reload")


def canary_name(service_name: str) -> str:
    return f"{service_name}{CANARY_SUFFIX}"


def candidate_deployment_spec(spec: dict[str, Any], service_name: str) -> dict[str, Any]:
    """The candidate's Deployment: the new pod template, one replica, labelled so that neither the service's
    NodePort, HPA nor PodDisruptionBudget selects it. Its pod is a serving pod like any other: its own front
    container checks the service's keys (the same Secret), and its scoring server listens on 127.0.0.1 only,
    so the current pods' split reaches it through that front end with the key it received, and a request
    without one gets 401 wherever it comes from (a NetworkPolicy guards it only where one is enforced)."""
    import copy

    cand = canary_name(service_name)
    out = copy.deepcopy(spec)
    out["replicas"] = 1
    out["selector"] = {"matchLabels": {LABEL_APP: cand}}
    template = out["template"]
    template["metadata"]["labels"] = {**template["metadata"]["labels"], LABEL_APP: cand, CANARY_ROLE_LABEL: "candidate"}
    return out


def candidate_service_spec(service_name: str) -> dict[str, Any]:
    """A ClusterIP in front of the candidate's front end (which checks the key): the split's second upstream."""
    return {
        "type": "ClusterIP",
        "selector": {LABEL_APP: canary_name(service_name)},
        "ports": [{"name": "front", "port": FRONT_PORT, "targetPort": FRONT_PORT, "protocol": "TCP"}],
    }


def canary_egress_policy(service_name: str) -> dict[str, Any]:
    """The one way out of the namespace's deny-egress policy during a canary: the service's own pods to its
    candidate's front end, nothing else."""
    return {
        "podSelector": {"matchLabels": selector(service_name)},
        "policyTypes": ["Egress"],
        "egress": [{"to": [{"podSelector": {"matchLabels": {LABEL_APP: canary_name(service_name)}}}],
                    "ports": [{"protocol": "TCP", "port": FRONT_PORT}]}],
    }


def split_route(args: KubernetesServiceArgs, keys: list[str] | None, candidate_address: str, candidate: int,
                log_path: str, mirror_percent: int = 0) -> str:
    """The current pods' route during a canary: their own scoring server and the candidate's front end (its
    address), split by request, each answer logged with its version (`providers/front/split.py`). The
    candidate's share carries the client's key, which the candidate's front end checks again. Rendered from the
    current version's own arguments and keys, so nothing else about the route changes."""
    from mldeploy.providers.front.gateway_config import SplitRoute, render_service_conf

    service = render_service_conf(
        args.service_name,
        FRONT_PORT,
        SCORING_PORT,
        keys if args.auth_enabled else None,
        args.max_request_bytes,
        listen_host="0.0.0.0",
        read_timeout_s=max(1, -(-(args.scoring_timeout_ms + args.max_request_wait_time) // 1000)),
        split=SplitRoute(candidate_address, candidate, log_path, mirror_percent,
                         candidate_front=f"{scoring_path(args.service_name)}/score", candidate_tls=args.ssl_enabled),
        runtime_dir=FRONT_RUNTIME_DIR,
    )
    return tls.with_tls(service, FRONT_TLS_DIR) if args.ssl_enabled else service


def front_config(args: KubernetesServiceArgs, keys: list[str] | None, canary: bool = False) -> dict[str, str]:
    """The front container's nginx files (they hold the keys: they go into a Secret).

    `canary`: nginx includes the writable copy of the route (`ROUTE_DIR`) instead of the Secret's."""
    from mldeploy.providers.front.gateway_config import render_nginx_conf, render_service_conf

    # nginx includes every *.conf of the folder, so the main file is named otherwise.
    main = render_nginx_conf(
        include_dir=ROUTE_DIR if canary else f"{FRONT_CONF_DIR}",
        runtime_dir=FRONT_RUNTIME_DIR,
        worker_processes=1,
        user=None,
        worker_shutdown_timeout=max(5, args.scoring_timeout_ms // 1000 + 5),
    )
    service = render_service_conf(
        args.service_name,
        FRONT_PORT,
        SCORING_PORT,
        keys if args.auth_enabled else None,
        args.max_request_bytes,
        listen_host="0.0.0.0",
        read_timeout_s=max(1, -(-(args.scoring_timeout_ms + args.max_request_wait_time) // 1000)),
    )
    if args.ssl_enabled:
        service = tls.with_tls(service, FRONT_TLS_DIR)
    return {"nginx.main": main, "service.conf": service}


def docker_config_json(auth: dict[str, str]) -> str:
    """A `kubernetes.io/dockerconfigjson` Secret's `.dockerconfigjson` for a registry's credentials.

    The kubelet hands these to the container runtime, which speaks the registry's
    token protocol with them, as `docker login` would (an ACR's admin user or a
    service principal alike).
    """
    import base64

    server, username, password = auth["server"], auth["username"], auth["password"]
    basic = base64.b64encode(f"{username}:{password}".encode()).decode()
    entry = {"username": username, "password": password, "auth": basic}
    return json.dumps({"auths": {server: entry}}, sort_keys=True)


def checksum(data: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def uris(node_port: int, service_name: str, host: str = "127.0.0.1", scheme: str = "http") -> dict[str, str]:
    base = f"{scheme}://{host}:{int(node_port)}{scoring_path(service_name)}"
    return {"scoring_uri": f"{base}/score", "swagger_uri": f"{base}/swagger.json"}
